// Inference-only ops with CUDA kernels behind them (kernels/decode_attention, kernels/inference_ops): one decode
// step of attention over a KV cache, RMSNorm and the SwiGLU product. They have no backward, so the model takes them
// only where no gradient is recorded; everywhere else, and on the CPU, it runs its LibTorch reference code.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace carve::model {

// True when `x` would take the inference kernels: a CUDA tensor of float32/float16/bfloat16 in a CUDA build, the
// kernel mode `fused`, and gradient recording off.
bool uses_inference_kernels(const torch::Tensor& x);

struct DecodeAttentionInputs {
  torch::Tensor q, k, v;           // the new token: [b, heads * head_dim], [b, kv_heads * head_dim] (before RoPE)
  torch::Tensor k_cache, v_cache;  // [b, kv_heads, capacity, head_dim]; k and v are written at each row's position
  torch::Tensor positions;         // [b] int64 on the device: the new token's position (= positions cached before it)
  int64_t heads = 0, kv_heads = 0, head_dim = 0, rotary_dim = 0;
  double rope_theta = 10000.0;
};

namespace fused {
// RoPE on q and k, k and v into the cache, then softmax(q k^T / sqrt(d)) v over positions 0..position: [b, heads *
// head_dim]. The caller guarantees position < capacity.
torch::Tensor decode_attention(const DecodeAttentionInputs& in);
bool decode_attention_supports(int64_t heads, int64_t kv_heads, int64_t head_dim);
// x W^T + bias for x [..., k] of at most 8 rows in all, bf16/fp16 (a decode step's products: bandwidth-bound);
// gemv_applies says whether the kernel takes these operands.
bool gemv_applies(const torch::Tensor& x, const torch::Tensor& weight);
torch::Tensor gemv(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);
// model/layers.cpp's RMSNorm and silu(gate) * up, same rounding.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
torch::Tensor silu_mul(const torch::Tensor& gate, const torch::Tensor& up);
}  // namespace fused

}  // namespace carve::model
