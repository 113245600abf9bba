/*
 * Mamba-2 SSD (state space duality) scan in plain LibTorch tensor ops.
 *
 * This is the reference the Mamba-2 mixers run on (and the oracle the fused kernels are tested against): it works on
 * CPU and CUDA tensors, is differentiable by autograd, and matches mamba_ssm's `mamba_chunk_scan_combined` /
 * `ssd_minimal` semantics. Per token t and head h (head h reads group h / (H / G) of B and C):
 *   dt'   = softplus?(dt + dt_bias)
 *   state = exp(dt'_t * A) * state + dt'_t * x_t (outer) B_t          state [p, n]
 *   y_t   = (state . C_t over n + D * x_t) * silu(z_t)
 * Math runs in float32 whatever the input dtype (bf16 / fp16 in, float32 accumulate), or in float64 when x is float64.
 * With seq_idx, several samples packed in one row do not see each other: the state resets to zero wherever seq_idx
 * changes along the row, and initial_state only seeds the row's first sample.
 */
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace carve::model {

// Inputs of a whole-sequence scan. Optional tensors are left undefined to mean "absent".
struct SsdInputs {
  torch::Tensor x;              // [b, l, h, p] any float dtype; y comes back in this dtype
  torch::Tensor dt;             // [b, l, h] raw step sizes (before dt_bias / softplus)
  torch::Tensor A;              // [h] negative decay rates (usually float32 = -exp(A_log))
  torch::Tensor B;              // [b, l, g, n] input projection, h % g == 0
  torch::Tensor C;              // [b, l, g, n] output projection
  torch::Tensor D;              // optional [h] or [h, p] skip connection: y += D * x
  torch::Tensor z;              // optional [b, l, h, p] output gate: y *= silu(z)
  torch::Tensor dt_bias;        // optional [h], added to dt before the softplus
  torch::Tensor initial_state;  // optional [b, h, p, n] state before the first token of each row
  torch::Tensor seq_idx;        // optional [b, l] int32/int64 sample index per token, non-decreasing along a row
  bool dt_softplus = false;     // apply softplus to dt + dt_bias
  int64_t chunk_size = 128;     // chunk length of the chunked form; any positive value, l need not be a multiple
};

struct SsdOutputs {
  torch::Tensor y;            // [b, l, h, p] in x's dtype
  torch::Tensor final_state;  // [b, h, p, n] float32 (float64 for float64 x); undefined unless asked for
};

// Chunked SSD: quadratic masked (segsum) form inside each chunk, per-chunk states, then a linear recurrence over
// chunks. The last chunk is padded internally; a chunk_size above l acts as chunk_size = l.
SsdOutputs ssd_chunked(const SsdInputs& in, bool want_final_state);

// The plain per-token recurrence. Slow (one step per token) but obviously right: the oracle for ssd_chunked, and
// differentiable by autograd as well.
SsdOutputs ssd_sequential(const SsdInputs& in, bool want_final_state);

// Inputs of one decode step (one token per row, no seq_idx: a decode row is one sample).
struct SsdStepInputs {
  torch::Tensor x;        // [b, h, p]
  torch::Tensor dt;       // [b, h] raw step sizes
  torch::Tensor A;        // [h]
  torch::Tensor B;        // [b, g, n]
  torch::Tensor C;        // [b, g, n]
  torch::Tensor D;        // optional [h] or [h, p]
  torch::Tensor z;        // optional [b, h, p]
  torch::Tensor dt_bias;  // optional [h]
  bool dt_softplus = false;
};

// The argument checks of ssd_chunked / ssd_sequential and of ssd_step, for other implementations of the same
// operation (the CUDA kernels); errors start with `fn`.
void validate_ssd_inputs(const SsdInputs& in, const char* fn);
void validate_ssd_step_inputs(const SsdStepInputs& in, const torch::Tensor& state, const char* fn);

// One recurrence step. `state` [b, h, p, n] (float32, or float64) is advanced in place without autograd; the math
// runs in state's dtype. Returns y [b, h, p] in x's dtype.
torch::Tensor ssd_step(const SsdStepInputs& in, torch::Tensor& state);

}  // namespace carve::model
