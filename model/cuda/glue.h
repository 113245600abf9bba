// Helpers every LibTorch wrapper of carve's CUDA kernels uses (model/cuda/*.cpp): element types, the current stream,
// output allocation (NaN-poisoned when the tests ask), and optional inputs.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <torch/torch.h>

#include <limits>

#include "base/error.h"
#include "kernels/element.h"
#include "model/kernel_ops.h"
#include "model/tensor_util.h"

namespace carve::model::fused {

inline kernels::ElementType element_of(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat: return kernels::ElementType::f32;
    case torch::kHalf: return kernels::ElementType::f16;
    case torch::kBFloat16: return kernels::ElementType::bf16;
    default: throw Error("carve's CUDA kernels take float32, float16 or bfloat16; got " + describe_tensor(t));
  }
}

inline cudaStream_t stream() { return at::cuda::getCurrentCUDAStream().stream(); }

// Outputs and workspaces: NaN-filled first when the tests ask for it.
inline torch::Tensor fresh(at::IntArrayRef shape, const torch::TensorOptions& options) {
  torch::Tensor t = torch::empty(shape, options);
  if (poison_kernel_outputs()) t.fill_(std::numeric_limits<float>::quiet_NaN());
  return t;
}

// Custom autograd functions do not take undefined tensors (LibTorch 2.x), so an absent optional input travels as an
// empty tensor: `given` tells them apart.
inline bool given(const torch::Tensor& t) { return t.defined() && t.numel() > 0; }

template <typename T = void>
inline const T* ptr_or_null(const torch::Tensor& t) {
  return given(t) ? static_cast<const T*>(t.data_ptr()) : nullptr;
}
template <typename T = void>
inline T* mut_or_null(const torch::Tensor& t) {
  return given(t) ? static_cast<T*>(t.data_ptr()) : nullptr;
}

// Optional input `t` converted to `type` and made contiguous, or an empty placeholder on `like`'s device.
inline torch::Tensor as(const torch::Tensor& t, torch::ScalarType type, const torch::Tensor& like) {
  return t.defined() ? t.to(type).contiguous() : torch::empty({0}, like.options().dtype(type));
}

}  // namespace carve::model::fused
