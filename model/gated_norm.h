/*
 * Gated RMSNorm closing a Mamba-2 mixer, in the two orders the students use:
 *   norm_before_gate = true:  out = rmsnorm(y) * w * silu(z)     (mmMamba: per-head norm, then the W_G gate)
 *   norm_before_gate = false: out = rmsnorm(y * silu(z)) * w     (MaTVLM / mamba_ssm RMSNormGated)
 * The RMS is taken over groups of group_size consecutive channels (one group per head in both students).
 * Math in float32 (float64 stays float64); the output has y's dtype.
 */
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace carve::model {

// y [..., d]; z optional [..., d] (undefined: no gate, a plain grouped RMSNorm); weight [d] (one scale per channel)
// or [group_size] (one scale shared by every group); group_size divides d (0 means d: one group); eps > 0 is added
// to the mean square. Returns [..., d] in y's dtype.
torch::Tensor gated_rmsnorm(const torch::Tensor& y, const torch::Tensor& z, const torch::Tensor& weight,
                            int64_t group_size, double eps, bool norm_before_gate);

// The argument checks of gated_rmsnorm, for other implementations (the CUDA kernels); returns the group size.
int64_t validate_gated_rmsnorm(const torch::Tensor& y, const torch::Tensor& z, const torch::Tensor& weight,
                               int64_t group_size, double eps, const char* fn);

}  // namespace carve::model
