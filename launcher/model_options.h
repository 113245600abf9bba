// Options that name a model checkpoint and where to run it, shared by the subcommands that load one.
#pragma once

#include <torch/torch.h>

#include <string>

#include "launcher/options.h"

namespace carve::launcher {

struct ModelOptions {
  std::string path;           // Hugging Face checkpoint folder
  std::string weight_prefix;  // e.g. "language_model." inside a VLM checkpoint
  std::string dtype = "float32";
  std::string device = "cpu";
};

// Declares --<flag>, --<flag>-prefix, --dtype, --device.
po::options_description model_options(ModelOptions& o, const std::string& flag, const std::string& what);

// "float32" | "bfloat16" | "float16"; the error names the flag.
torch::ScalarType parse_dtype(const std::string& text, const std::string& flag);
// "cpu" | "cuda" | "cuda:N"; refuses CUDA when this build or machine has none.
torch::Device parse_device(const std::string& text, const std::string& flag);
// Under mpirun or SLURM, plain "cuda" means one GPU per local rank: cuda:(local rank mod GPUs). An explicit
// cuda:N, or cpu, is kept.
torch::Device rank_device(torch::Device device, const std::string& text);

}  // namespace carve::launcher
