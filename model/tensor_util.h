// Helpers shared by the tensor-level numerics (SSD, causal conv, gated norm, norms, attention): argument checks
// with one wording for "name, expected layout and sizes, what we got", the accumulation dtype, segment ids.
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

// The dtype reductions and scans run in: float32 for low-precision inputs, float64 kept for float64.
torch::ScalarType accumulate_dtype(const torch::Tensor& x);

// Sample number of each token counted from 0 at the row start ([b, l] seq_idx -> [b, l] int64). Unlike raw seq_idx
// it is non-decreasing by construction, so "same segment at both ends" means "no reset in between".
torch::Tensor segment_ids(const torch::Tensor& seq_idx);

}  // namespace carve::model
