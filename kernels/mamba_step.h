/*
 * The rest of a Mamba-2 mixer's decode step after its input product and conv (kernels/gemv.h does those): the SSD
 * recurrence of every head, the skip term D x and the gated RMSNorm, in one kernel. Unfused it is an SSD step
 * kernel, a gated norm kernel and the float32 conversions of their parameters, every token and layer.
 *
 * Each (row, head) is a cluster of up to 8 blocks of 4 warps where the kernel runs clusters (compute capability
 * 9.0+), one block of 16 warps elsewhere. Each block takes an equal share of the head's p state rows (16 at p =
 * 128): it holds the head's B and C in shared memory and streams its rows of the [p, n] float32 state once (read,
 * update, write back), several rows per warp in flight. The gated RMSNorm over the head's p outputs (group size p)
 * then adds the blocks' sums of squares through distributed shared memory. Numerics follow kernels/ssd_scan.cu's
 * step and kernels/gated_norm.cu's forward, rounding y to the element type between them as the unfused path does.
 */
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/element.h"

namespace carve::kernels {

struct MambaStep {
  int b = 0, h = 0, p = 0, n = 0;
  int x_heads = 0, b_heads = 0, c_heads = 0;  // head i reads x head i / (h / x_heads), and so on; each divides h
  ElementType dtype = ElementType::bf16;
  // Row r of each input starts at pointer + r * row (elements); heads are consecutive within a row.
  const void* x = nullptr;   // x_heads * p values (after the conv)
  const void* B = nullptr;   // b_heads * n
  const void* C = nullptr;   // c_heads * n
  const void* dt = nullptr;  // h, before dt_bias and softplus
  const void* z = nullptr;   // h * p: the gate
  long x_row = 0, B_row = 0, C_row = 0, dt_row = 0, z_row = 0;
  // Parameters in the element type.
  const void* A_log = nullptr;    // [h]: A = -exp(A_log)
  const void* dt_bias = nullptr;  // null or [h]
  const void* D = nullptr;        // null or [h]
  const void* norm_weight = nullptr;  // [p] shared by every head, or [h * p]
  bool norm_weight_shared = false;
  bool norm_before_gate = true;   // out = rmsnorm(y) * w * silu(z); otherwise rmsnorm(y * silu(z)) * w
  float eps = 1e-5f;
  float* state = nullptr;  // [b, h, p, n] float32, advanced in place
  bool allow_clusters = true;  // false: one block per head even where clusters run (the sm_80 path, for tests)
  void* out = nullptr;     // [b, h * p]
};

// Head dims and state sizes up to kMambaStepMax.
constexpr int kMambaStepMax = 256;
bool mamba_step_supports(int p, int n);
void mamba_step(const MambaStep& s, cudaStream_t stream);

}  // namespace carve::kernels
