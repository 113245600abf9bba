// LibTorch glue for the inference kernels (model/inference_ops.h): checks, workspaces, launches on the current
// stream. Nothing here synchronizes or depends on host-side lengths, so a decode step can be captured in a graph.
#include "model/inference_ops.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "base/error.h"
#include "kernels/decode_attention.h"
#include "kernels/gemv.h"
#include "kernels/inference_ops.h"
#include "model/cuda/glue.h"

namespace carve::model::fused {

bool decode_attention_supports(int64_t heads, int64_t kv_heads, int64_t head_dim) {
  return kernels::decode_attention_supports(static_cast<int>(heads), static_cast<int>(kv_heads),
                                            static_cast<int>(head_dim));
}

torch::Tensor decode_attention(const DecodeAttentionInputs& in) {
  const c10::cuda::CUDAGuard guard(in.q.device());
  const int64_t b = in.q.size(0), d = in.head_dim;
  CARVE_CHECK(decode_attention_supports(in.heads, in.kv_heads, d), "decode_attention: ", in.heads, " heads over ",
              in.kv_heads, " KV heads of dim ", d, " are not supported by the kernel");
  CARVE_CHECK(in.q.dim() == 2 && in.q.size(1) == in.heads * d && in.q.stride(1) == 1, "decode_attention: q must be [",
              b, ", ", in.heads * d, "] with unit channel stride; got ", describe_tensor(in.q));
  for (const auto* t : {&in.k, &in.v})
    CARVE_CHECK(t->dim() == 2 && t->size(0) == b && t->size(1) == in.kv_heads * d && t->stride(1) == 1 &&
                    t->scalar_type() == in.q.scalar_type(),
                "decode_attention: k and v must be [", b, ", ", in.kv_heads * d, "] like q; got ", describe_tensor(*t));
  for (const auto* t : {&in.k_cache, &in.v_cache})
    CARVE_CHECK(t->dim() == 4 && t->size(0) == b && t->size(1) == in.kv_heads && t->size(3) == d &&
                    t->is_contiguous() && t->scalar_type() == in.q.scalar_type(),
                "decode_attention: the caches must be contiguous [", b, ", ", in.kv_heads, ", capacity, ", d,
                "] like q; got ", describe_tensor(*t));
  CARVE_CHECK(in.positions.dim() == 1 && in.positions.size(0) == b && in.positions.scalar_type() == torch::kInt64 &&
                  in.positions.is_contiguous() && in.positions.device() == in.q.device(),
              "decode_attention: positions must be [", b, "] int64 on ", in.q.device().str(), "; got ",
              describe_tensor(in.positions));
  kernels::DecodeAttention a;
  a.b = static_cast<int>(b), a.heads = static_cast<int>(in.heads), a.kv_heads = static_cast<int>(in.kv_heads);
  a.head_dim = static_cast<int>(d), a.rotary_dim = static_cast<int>(in.rotary_dim);
  a.capacity = in.k_cache.size(2);
  a.rope_theta = static_cast<float>(in.rope_theta);
  a.dtype = element_of(in.q);
  a.q = in.q.data_ptr(), a.k = in.k.data_ptr(), a.v = in.v.data_ptr();
  a.q_row = in.q.stride(0), a.k_row = in.k.stride(0), a.v_row = in.v.stride(0);
  a.positions = in.positions.data_ptr<int64_t>();
  a.k_cache = in.k_cache.data_ptr(), a.v_cache = in.v_cache.data_ptr();
  a.splits = kernels::decode_attention_splits(a.b, a.kv_heads, a.capacity,
                                              at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  torch::Tensor q_rotated = fresh({b, in.heads, d}, in.q.options());
  torch::Tensor partial = fresh({static_cast<int64_t>(kernels::decode_attention_partial_floats(a))},
                                in.q.options().dtype(torch::kFloat));
  torch::Tensor out = fresh({b, in.heads * d}, in.q.options());
  a.q_rotated = q_rotated.data_ptr(), a.partial = partial.data_ptr<float>(), a.out = out.data_ptr();
  kernels::decode_attention(a, stream());
  return out;
}

bool gemv_applies(const torch::Tensor& x, const torch::Tensor& weight) {
  if (x.dim() < 1 || weight.dim() != 2 || x.size(-1) != weight.size(1) || x.scalar_type() != weight.scalar_type())
    return false;
  const int64_t rows = x.numel() / std::max<int64_t>(1, x.size(-1));
  return rows <= kernels::kGemvMaxRows &&
         kernels::gemv_supports(static_cast<int>(rows), static_cast<int>(x.size(-1)), element_of(x)) &&
         weight.is_contiguous() && weight.size(0) <= std::numeric_limits<int>::max();
}

torch::Tensor gemv(const torch::Tensor& x_in, const torch::Tensor& weight, const torch::Tensor& bias) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  CARVE_CHECK(gemv_applies(x_in, weight), "gemv: unsupported operands ", describe_tensor(x_in), " and ",
              describe_tensor(weight));
  const int64_t k = x_in.size(-1), n = weight.size(0), rows = x_in.numel() / k;
  torch::Tensor x = x_in.reshape({rows, k});
  if (x.stride(1) != 1 || x.stride(0) % 8 != 0 || reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0)
    x = x.contiguous();
  torch::Tensor b = bias.defined() ? bias.to(x.scalar_type()).contiguous() : bias;
  std::vector<int64_t> shape(x_in.sizes().begin(), x_in.sizes().end());
  shape.back() = n;
  torch::Tensor y = fresh(shape, x.options());
  kernels::Gemv g;
  g.rows = static_cast<int>(rows), g.n = static_cast<int>(n), g.k = static_cast<int>(k), g.dtype = element_of(x);
  g.x = x.data_ptr(), g.x_row = x.stride(0), g.w = weight.data_ptr(), g.bias = b.defined() ? b.data_ptr() : nullptr;
  g.y = y.data_ptr();
  kernels::gemv(g, stream());
  return y;
}

torch::Tensor rms_norm(const torch::Tensor& x_in, const torch::Tensor& weight, double eps) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t d = x_in.size(-1);
  CARVE_CHECK(weight.dim() == 1 && weight.size(0) == d, "rms_norm: weight must be [", d, "]; got ",
              describe_tensor(weight));
  torch::Tensor x = x_in.contiguous(), w = weight.to(x.scalar_type()).contiguous();
  torch::Tensor out = fresh(x.sizes(), x.options());
  kernels::rms_norm(x.numel() / d, static_cast<int>(d), element_of(x), x.data_ptr(), w.data_ptr(),
                    static_cast<float>(eps), out.data_ptr(), stream());
  return out;
}

torch::Tensor silu_mul(const torch::Tensor& gate_in, const torch::Tensor& up_in) {
  const c10::cuda::CUDAGuard guard(gate_in.device());
  CARVE_CHECK(gate_in.sizes() == up_in.sizes() && gate_in.scalar_type() == up_in.scalar_type(),
              "silu_mul: gate and up must match; got ", describe_tensor(gate_in), " and ", describe_tensor(up_in));
  torch::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  torch::Tensor out = fresh(gate.sizes(), gate.options());
  kernels::silu_mul(gate.numel(), element_of(gate), gate.data_ptr(), up.data_ptr(), out.data_ptr(), stream());
  return out;
}

}  // namespace carve::model::fused
