/*
 * Position-wise ops of inference, forward only, each one kernel where LibTorch spends several (model/layers.cpp is
 * the reference, whose rounding they follow): at batch 1 a decode step is a few hundred small launches, and these
 * are the ones that are not matrix products.
 */
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/element.h"

namespace carve::kernels {

// out = weight * round(x * rsqrt(mean(x^2) + eps)) per row of d channels; x, weight and out in `dtype`, the sum in
// float32.
void rms_norm(long rows, int d, ElementType dtype, const void* x, const void* weight, float eps, void* out,
              cudaStream_t stream);

// sum = round(x + delta), then out = rms_norm(sum) as above: the residual add before a norm in one pass.
void add_rms_norm(long rows, int d, ElementType dtype, const void* x, const void* delta, const void* weight, float eps,
                  void* sum, void* out, cudaStream_t stream);

// out = round(silu(gate)) * up, elementwise over n elements.
void silu_mul(long n, ElementType dtype, const void* gate, const void* up, void* out, cudaStream_t stream);

// out[r] = the index of row r's largest value, the first one among equals, NaN above every number (torch.argmax's
// order), for `rows` rows of n values `row_stride` elements apart: greedy decoding's choice from the logits. One
// block per row (a row of a 92553-token vocabulary is 185 KB in bf16, read with 16-byte loads); LibTorch's argmax
// took 31 us for it on an H100.
void argmax_rows(long rows, long n, long row_stride, ElementType dtype, const void* x, long long* out,
                 cudaStream_t stream);

}  // namespace carve::kernels
