// A llama-family teacher with random weights at chosen dimensions, written as a Hugging Face folder. Benchmarks use
// it to measure carve at the sizes of real teachers (HoVLE-2.6B: hidden 2048, 16/8 heads, MLP 8192) without
// shipping their weights; numbers that depend on what the weights are (losses, quality) never come from it.
// `carve pretrain` starts the example's teacher from one.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <string>

#include "model/transformer.h"

namespace carve::model {

struct RandomTeacherDims {
  int64_t hidden = 2048, layers = 2, heads = 16, kv_heads = 8, intermediate = 8192, vocab = 92553;
};

// "hovle" (HoVLE-2.6B's language model, with `layers` layers) or "HIDDENxLAYERSxHEADSxKVxMLPxVOCAB".
RandomTeacherDims parse_random_teacher_dims(const std::string& text, const std::string& flag);

// The config.json of such a teacher (llama; `dtype` as its torch_dtype, the seed recorded).
nlohmann::json random_teacher_config(const RandomTeacherDims& dims, torch::ScalarType dtype, uint64_t seed);
// The model of that config in float32 on the CPU: matrices N(0, 0.02), norm weights 1, biases 0, from `seed`.
CausalLM make_random_teacher(const nlohmann::json& config, uint64_t seed);

// Writes config.json and model.safetensors (dtype) into `folder`.
void write_random_teacher(const std::string& folder, const RandomTeacherDims& dims, torch::ScalarType dtype,
                          uint64_t seed);

}  // namespace carve::model
