/*
 * Causal depthwise conv1d over time (+ optional SiLU), the short convolution in front of a Mamba-2 SSD, with the
 * rolling state a decoder carries between tokens.
 *
 * Tap convention (as mamba_ssm's causal_conv1d / nn.Conv1d with padding k - 1): with k taps,
 *   y[t, c] = bias[c] + sum_j weight[c, j] * x[t - (k - 1) + j, c]
 * so weight[:, k - 1] multiplies the current token. Positions before the row start read initial_state (zeros when
 * absent). The conv state is the last k - 1 inputs, oldest first: state[:, :, k - 2] is the newest token.
 * Math runs in float32 for low-precision inputs (float64 stays float64).
 */
#pragma once

#include <torch/torch.h>

namespace carve::model {

struct CausalConvOutputs {
  torch::Tensor y;            // [b, l, c] in x's dtype
  torch::Tensor final_state;  // [b, c, k - 1] last k - 1 inputs, in x's dtype: the state to decode on from
};

// x [b, l, c]; weight [c, k] (k >= 1); bias optional [c]; silu applies SiLU to the output; seq_idx optional [b, l]
// integer sample index per token (a tap never reads a token of another sample; initial_state belongs to the row's
// first sample, and final_state keeps only inputs of the row's last sample, zeros elsewhere); initial_state
// optional [b, c, k - 1].
CausalConvOutputs causal_conv1d(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {},
                                bool silu = false, const torch::Tensor& seq_idx = {},
                                const torch::Tensor& initial_state = {});

// The argument checks of the two functions above, for other implementations (the CUDA kernels); return k.
int64_t validate_causal_conv1d(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                               const torch::Tensor& seq_idx, const torch::Tensor& initial_state, const char* fn);
int64_t validate_causal_conv1d_step(const torch::Tensor& x, const torch::Tensor& state, const torch::Tensor& weight,
                                    const torch::Tensor& bias, const char* fn);

// One decode step. x [b, c]; state [b, c, k - 1] is shifted in place (oldest input dropped, x appended) without
// autograd and keeps its dtype. Returns y [b, c] in x's dtype.
torch::Tensor causal_conv1d_step(const torch::Tensor& x, torch::Tensor& state, const torch::Tensor& weight,
                                 const torch::Tensor& bias = {}, bool silu = false);

}  // namespace carve::model
