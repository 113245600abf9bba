/*
 * Causal depthwise conv1d (+ SiLU) over [b, l, c] in CUDA: forward, backward and the decode step, with the
 * semantics of model/causal_conv.h (the reference): y[t, ch] = bias + sum_j w[ch, j] x[t - (k - 1) + j, ch], taps
 * never cross a packed-sample boundary, the state is the last k - 1 inputs, oldest first.
 */
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/element.h"

namespace carve::kernels {

struct CausalConvForward {
  int b = 0, l = 0, c = 0, k = 0;
  ElementType dtype = ElementType::bf16;
  const void* x = nullptr;              // [b, l, c]
  const float* weight = nullptr;        // [c, k]
  const float* bias = nullptr;          // null or [c]
  bool silu = false;
  const int* seg = nullptr;             // null or [b, l] segment ids
  const void* initial_state = nullptr;  // null or [b, c, k - 1]
  void* y = nullptr;                    // [b, l, c]
  void* final_state = nullptr;          // null or [b, c, k - 1]
};
void causal_conv_forward(const CausalConvForward& f, cudaStream_t stream);

struct CausalConvBackward {
  const CausalConvForward* fwd = nullptr;
  const void* dy = nullptr;              // [b, l, c]
  const void* dfinal_state = nullptr;    // null or [b, c, k - 1]
  void* dx = nullptr;                    // [b, l, c]
  float* dweight = nullptr;              // [c, k], zeroed here
  float* dbias = nullptr;                // [c] when bias is given, zeroed here
  void* dinitial_state = nullptr;        // null or [b, c, k - 1]
  float* dpre = nullptr;                 // workspace [b, l, c] where causal_conv_backward_uses_dpre, else null
};
void causal_conv_backward(const CausalConvBackward& b, cudaStream_t stream);
// Whether the backward needs the dpre workspace: the element-by-element path (channels not a multiple of 4, rows not
// aligned to 4 elements, or more than 4 taps) keeps the gradient before SiLU there; the runs path in registers.
bool causal_conv_backward_uses_dpre(const CausalConvForward& f, const void* dy, const void* dx);

// One decode step: x, y [b, c]; state [b, c, k - 1] (x's dtype) shifted in place.
void causal_conv_step(int b, int c, int k, ElementType dtype, const void* x, void* state, const float* weight,
                      const float* bias, bool silu, void* y, cudaStream_t stream);

}  // namespace carve::kernels
