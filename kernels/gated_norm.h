/*
 * Gated grouped RMSNorm in CUDA, forward and backward, both orders (model/gated_norm.h is the reference):
 *   norm_before_gate: out = rmsnorm(y) * w * silu(z);   otherwise: out = rmsnorm(y * silu(z)) * w
 * over groups of `group` consecutive channels of rows of d channels.
 */
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/element.h"

namespace carve::kernels {

struct GatedNormForward {
  long rows = 0;
  int d = 0, group = 0;
  ElementType dtype = ElementType::bf16;
  const void* y = nullptr;       // [rows, d]
  const void* z = nullptr;       // null or [rows, d]
  const float* weight = nullptr; // [d], or [group] shared by every group
  bool weight_shared = false;
  float eps = 1e-5f;
  bool norm_before_gate = true;
  void* out = nullptr;           // [rows, d]
  float* rstd = nullptr;         // [rows, d / group], kept for the backward
};
void gated_norm_forward(const GatedNormForward& f, cudaStream_t stream);

struct GatedNormBackward {
  const GatedNormForward* fwd = nullptr;
  const void* dout = nullptr;  // [rows, d]
  void* dy = nullptr;
  void* dz = nullptr;          // when z is given
  float* dweight = nullptr;    // like weight, zeroed here
};
void gated_norm_backward(const GatedNormBackward& b, cudaStream_t stream);

// Largest weight length the backward reduces in shared memory.
constexpr int kGatedNormMaxWeight = 12288;

}  // namespace carve::kernels
