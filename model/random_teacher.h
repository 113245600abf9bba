// A llama-family teacher with random weights at chosen dimensions, written as a Hugging Face folder. Benchmarks use
// it to measure carve at the sizes of real teachers (HoVLE-2.6B: hidden 2048, 16/8 heads, MLP 8192) without
// shipping their weights; numbers that depend on what the weights are (losses, quality) never come from it.
#pragma once

#include <torch/torch.h>

#include <string>

namespace carve::model {

struct RandomTeacherDims {
  int64_t hidden = 2048, layers = 2, heads = 16, kv_heads = 8, intermediate = 8192, vocab = 92553;
};

// "hovle" (HoVLE-2.6B's language model, with `layers` layers) or "HIDDENxLAYERSxHEADSxKVxMLPxVOCAB".
RandomTeacherDims parse_random_teacher_dims(const std::string& text, const std::string& flag);

// Writes config.json and model.safetensors (dtype) into `folder`; weights N(0, 0.02), norms 1.
void write_random_teacher(const std::string& folder, const RandomTeacherDims& dims, torch::ScalarType dtype,
                          uint64_t seed);

}  // namespace carve::model
