// Argument checks shared by the tensor-level numerics (SSD, causal conv, gated norm): one wording for "name,
// expected layout and sizes, what we got".
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace carve::model {

// "3-D [2, 5, 4] Float on cpu", or "an undefined tensor".
std::string describe_tensor(const torch::Tensor& t);

// `t` must be defined with exactly `expected` sizes (described as `layout`), live on `device` and, with
// `floating`, hold floating-point values; errors start with `fn: name`.
void expect_tensor(const char* fn, const char* name, const torch::Tensor& t, const std::vector<int64_t>& expected,
                   const char* layout, const torch::Device& device, bool floating = true);

}  // namespace carve::model
