/*
 * y = x W^T (+ bias) for a few rows of x: the matrix products of a decode step at small batch, where every weight
 * byte is read once per step and the product is bound by memory bandwidth. cuBLAS's kernels for one row read the
 * weights at 0.5-2 TB/s on an H100 (ncu, docs/performance.md); these keep 16-byte loads of two weight rows per warp
 * and several chunks per lane in flight. float32 accumulation; bf16 or fp16 only.
 */
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/element.h"

namespace carve::kernels {

constexpr int kGemvMaxRows = 8;

struct Gemv {
  int rows = 0;  // rows of x, 1..kGemvMaxRows
  int n = 0;     // output features (rows of W)
  int k = 0;     // input features, a multiple of 8
  ElementType dtype = ElementType::bf16;
  const void* x = nullptr;  // [rows, k], row stride x_row (elements, a multiple of 8)
  long x_row = 0;
  const void* w = nullptr;     // [n, k] contiguous
  const void* bias = nullptr;  // null or [n]
  void* y = nullptr;           // [rows, n] contiguous
};

bool gemv_supports(int rows, int k, ElementType dtype);
void gemv(const Gemv& g, cudaStream_t stream);

}  // namespace carve::kernels
