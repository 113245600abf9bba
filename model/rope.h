// Rotary position embedding as Hugging Face applies it: rotate_half on the first rotary_dim channels of each
// head (all of them unless partial_rotary_factor < 1), frequencies theta^(-2i/rotary_dim) in float32.
#pragma once

#include <torch/torch.h>

namespace carve::model {

struct RopeTables {
  torch::Tensor cos;  // [b, 1, l, rotary_dim], the dtype of the activations
  torch::Tensor sin;  // [b, 1, l, rotary_dim]
};

RopeTables rope_tables(const torch::Tensor& positions /* [b, l] */, int64_t rotary_dim, double theta,
                       torch::ScalarType dtype);
// x [b, h, l, head_dim] -> same shape, the first rotary_dim channels rotated.
torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& tables);

}  // namespace carve::model
