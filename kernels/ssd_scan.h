/*
 * The Mamba-2 SSD chunked scan, forward and backward, in CUDA (carve's own kernels; model/ssd.h is the LibTorch
 * reference they are tested against and has the semantics). Host functions enqueue kernels on `stream` and never
 * synchronize. The caller owns every buffer: inputs, outputs and the float32 workspaces sized below.
 *
 * Layouts (contiguous, row-major): x, z, out [b, l, h, p]; dt [b, l, h]; B, C [b, l, g, n] in `dtype`; A, D,
 * dt_bias float32; seg [b, l] int32 segment ids (0 at each row start, +1 at each new packed sample) or null;
 * states float32 [b, h, p, n]. c = ceil(l / q) chunks of q tokens (q = the chunk length actually used, <= l).
 */
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/element.h"

namespace carve::kernels {

struct SsdScanShape {
  int b = 0, l = 0, h = 0, p = 0, g = 0, n = 0;
  int q = 0;  // chunk length; 1 <= q <= 1024
  int chunks() const { return (l + q - 1) / q; }
};

// Workspace sizes in float32 elements.
struct SsdScanWorkspace {
  size_t per_token;  // dtp (float32), cum (float64): [b, h, c, q] each
  size_t states;     // [b, c, h, p, n]
  size_t cb;         // [b, c, g, q, q]
};
SsdScanWorkspace ssd_scan_workspace(const SsdScanShape& s);

struct SsdScanForward {
  SsdScanShape shape;
  ElementType dtype = ElementType::bf16;
  const void* x = nullptr;
  const void* dt = nullptr;
  const float* A = nullptr;  // [h]
  const void* B = nullptr;
  const void* C = nullptr;
  const float* D = nullptr;  // null, [h] or [h, p]
  bool D_per_channel = false;
  const void* z = nullptr;           // null or [b, l, h, p]
  const float* dt_bias = nullptr;    // null or [h]
  bool dt_softplus = false;
  const float* initial_state = nullptr;  // null or [b, h, p, n]
  const int* seg = nullptr;
  // Outputs.
  void* out = nullptr;          // [b, l, h, p] in dtype
  // Null, or [b, l, h, p] float32: the scan's output before D and the gate, kept for the backward (the decay
  // gradient is a small sum of large terms of it, so it stays in float32).
  float* y_ssm = nullptr;
  float* final_state = nullptr; // [b, h, p, n]
  // Workspace, all kept for the backward: dt after bias/softplus, its decay cumsum per chunk (float64: decays are
  // exp(L_l - L_s) of nearby tokens, a small difference of two large sums), the state entering each chunk,
  // C_l . B_s per chunk and group. Without y_ssm (no backward follows) the states and C.B may be left unwritten or
  // hold other layouts (kernels/ssd_scan_fused.h).
  float* dtp = nullptr;
  double* cum = nullptr;
  float* states = nullptr;
  float* cb = nullptr;  // null where ssd_scan_uses_cb is false
  // Training's forward on the sweep in spans (kernels/ssd_scan_fused.h): the spans' local states, where the chunk
  // states cannot hold them; ssd_fused_forward_span_floats floats, null where that is 0.
  float* span_states = nullptr;
};
void ssd_scan_forward(const SsdScanForward& f, cudaStream_t stream);
// Which kernels ssd_scan_forward runs this forward on: the chunk-parallel ones, or one sweep per head that keeps the
// state on chip (kernels/ssd_scan_fused.h), on mma.sync or (without y_ssm) on Hopper's wgmma.
enum class SsdForwardKernels { chunk_parallel, sweep, sweep_wgmma };
SsdForwardKernels ssd_scan_forward_kernels(const SsdScanForward& f);
// The float32 elements of f.span_states this forward needs (0 for most: training's forward on the sweep in spans).
size_t ssd_scan_forward_span_floats(const SsdScanForward& f);

struct SsdScanBackward {
  const SsdScanForward* fwd = nullptr;  // the forward's inputs and workspace (y_ssm must have been kept)
  const void* dout = nullptr;           // [b, l, h, p] in dtype
  const float* dfinal_state = nullptr;  // null or [b, h, p, n]
  // Gradients (float32 ones are accumulated into after being zeroed here).
  void* dx = nullptr;
  void* ddt = nullptr;
  void* dB = nullptr;
  void* dC = nullptr;
  void* dz = nullptr;             // when z is given
  float* dA = nullptr;            // [h]
  float* dD = nullptr;            // like D, when D is given
  float* ddt_bias = nullptr;      // [h], when dt_bias is given
  float* dinitial_state = nullptr;  // [b, h, p, n], when the initial state is given
  // Workspace (float32, but for dy).
  // The gradient at the output before the gate, [b, l, h, p] in dtype: dy, and for 16-bit types dy_lo, what rounding
  // it to dtype left (dy + dy_lo carries 16 bits in bfloat16). The tensor-core products take dy as 16-bit operands;
  // the decay gradient (a small difference of large sums) needs the rest: rounding dy once moved dA by 1.1e-2 on a
  // small case, as rounding the incoming gradient does (tests/kernels_test.cpp), so the products behind it (dx, the
  // entering-state gradient) also take dy_lo. dC and dB take dy alone. In float16, dy is bounded by float16's range
  // (like the incoming gradient): a |dy| past 65504 overflows, and below about 6e-5 dy_lo underflows to 0.
  void* dy = nullptr;
  void* dy_lo = nullptr;  // 16-bit types only
  float* dyy = nullptr;       // per_token: dy . (y - D x) per token and head
  float* ddt_u = nullptr;     // per_token: dt gradient through dt * x
  float* end_term = nullptr;  // [b, h, c]
  float* dstates = nullptr;   // states: gradient of each chunk's own state
  float* dcb = nullptr;       // cb; may be null where ssd_scan_backward_uses_dcb is false
  // The state gradient's reverse sweep in spans (kernels/ssd_scan_fused.h): the spans' local gradients;
  // ssd_scan_backward_span_floats floats, null where that is 0.
  float* span_grads = nullptr;
};
void ssd_scan_backward(const SsdScanBackward& b, cudaStream_t stream);
// The float32 elements of b.span_grads a backward of this forward may need (0 for most).
size_t ssd_scan_backward_span_floats(const SsdScanForward& f);
// Which of this backward's products run as one reverse sweep per head (kernels/ssd_scan_fused.h): none (the chunk-
// level product and the state pass, the pair kernel's dx), the state gradient (version 13), or the state gradient and
// dx (version 14).
enum class SsdBackwardSweeps { none, state_grad, state_grad_and_dx };
SsdBackwardSweeps ssd_scan_backward_sweeps(const SsdScanBackward& b);
// Whether the forward and backward of this shape and type use the cb workspace (f.cb may be null where not: the tensor-
// core kernels with one head per group make each C.B block in registers, 134 MB at HoVLE's sizes never touched).
bool ssd_scan_uses_cb(const SsdScanShape& s, ElementType dtype);
// Whether the backward of this shape and type needs the dcb workspace (not when the tensor-core kernels make each
// (dy . x) block in registers, one head per group: the buffer would be 134 MB at HoVLE's sizes, never touched).
bool ssd_scan_backward_uses_dcb(const SsdScanShape& s, ElementType dtype);

// One decode step: state [b, h, p, n] float32 advanced in place; x, z, y [b, h, p]; dt [b, h]; B, C [b, g, n].
struct SsdStep {
  int b = 0, h = 0, p = 0, g = 0, n = 0;
  ElementType dtype = ElementType::bf16;
  const void* x = nullptr;
  const void* dt = nullptr;
  const float* A = nullptr;
  const void* B = nullptr;
  const void* C = nullptr;
  const float* D = nullptr;
  bool D_per_channel = false;
  const void* z = nullptr;
  const float* dt_bias = nullptr;
  bool dt_softplus = false;
  float* state = nullptr;
  void* y = nullptr;
};
void ssd_step(const SsdStep& s, cudaStream_t stream);

}  // namespace carve::kernels
