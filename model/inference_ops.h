// Inference-only ops with CUDA kernels behind them (kernels/decode_attention, gemv, inference_ops, mamba_step): one
// decode step of attention over a KV cache, the small-batch products fused with what follows them, RMSNorm (with the
// residual add before it), the SwiGLU product and a Mamba-2 mixer's step after its conv. They have no backward, so
// the model takes them only where no gradient is recorded; everywhere else, and on the CPU, it runs its LibTorch
// reference code.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <utility>
#include <vector>

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
  // q and k already rotated, k and v already in the cache: they came from fused::gemv_qkv_rope.
  bool rope_done = false;
};

// A Linear's parameters (bias undefined when it has none).
struct GemvWeight {
  torch::Tensor weight, bias;
};

// An RMSNorm a fused product applies to x before it (kernels/gemv.h GemvNorm), as model/layers.cpp's Norm computes
// it: rms_norm(x + delta) when delta is given, else rms_norm(x). With delta, *sum receives x + delta.
struct GemvNormStep {
  torch::Tensor weight;  // [k] like x
  double eps = 1e-6;
  torch::Tensor delta;             // undefined or x's shape
  torch::Tensor* sum = nullptr;    // required with delta
};

// Columns [begin, end) of a fused product through a Mamba-2 mixer's causal conv step + SiLU (model/ssm_state.h):
// `state` [b, end - begin, kernel - 1] is shifted in place.
struct GemvConvStep {
  torch::Tensor state, weight, bias;  // weight [end - begin, kernel], bias [end - begin] or undefined
  int64_t begin = 0, end = 0;
};

// One decode step of a Mamba-2 mixer after its input product and conv (kernels/mamba_step.h): the SSD recurrence,
// D x and the gated RMSNorm over groups of head_dim channels.
struct MambaStepInputs {
  // [b, *] views with unit channel stride (columns of one gemv_parts output, say): x of x_heads heads of head_dim,
  // B of b_heads heads and C of c_heads heads of state_size, dt [b, heads] before dt_bias and softplus, the gate z
  // [b, heads * head_dim].
  torch::Tensor x, B, C, dt, z;
  int64_t heads = 0, head_dim = 0, state_size = 0, x_heads = 0, b_heads = 0, c_heads = 0;
  torch::Tensor A_log, dt_bias, D;  // [heads]; dt_bias and D may be undefined
  torch::Tensor norm_weight;        // [head_dim] or [heads * head_dim]
  bool norm_before_gate = true;
  double eps = 1e-5;
  torch::Tensor state;  // [b, heads, head_dim, state_size] float32, advanced in place
  bool allow_clusters = true;  // false: the kernel's one-block-per-head path (compute capability < 9.0), for tests
};

namespace fused {
// RoPE on q and k, k and v into the cache, then softmax(q k^T / sqrt(d)) v over positions 0..position: [b, heads *
// head_dim]. The caller guarantees position < capacity.
torch::Tensor decode_attention(const DecodeAttentionInputs& in);
bool decode_attention_supports(int64_t heads, int64_t kv_heads, int64_t head_dim);

// x W^T + bias for x [..., k] of at most 8 rows in all, bf16/fp16 (a decode step's products: bandwidth-bound);
// gemv_applies says whether the kernel takes these operands (x's dtype, contiguous aligned weights, and with
// `norm`, a norm whose rows of x fit the kernel's shared memory).
bool gemv_applies(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {});
bool gemv_applies(const torch::Tensor& x, const std::vector<GemvWeight>& parts, const GemvNormStep* norm = nullptr);
torch::Tensor gemv(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);
// Whether x's rows fit a norm in the products' prologue (shared memory bounds rows x k); a caller that hands a norm
// to the products checks this first, as the products without a norm have no such bound.
bool gemv_norm_fits(const torch::Tensor& x);
// Several products of one x in one launch, side by side: [..., sum of the parts' outputs]; with `conv`, its columns
// come out of the conv step instead; with `norm`, the products read the normed x. Written into `out` when it is
// given (contiguous, of that shape).
torch::Tensor gemv_parts(const torch::Tensor& x, const std::vector<GemvWeight>& parts,
                         const GemvConvStep* conv = nullptr, const torch::Tensor& out = {},
                         const GemvNormStep* norm = nullptr);
// round(silu(gate x)) * (up x), as model/layers.cpp's MLP computes it before its down product (of the normed x
// with `norm`).
torch::Tensor gemv_swiglu(const torch::Tensor& x, const GemvWeight& gate, const GemvWeight& up,
                          const GemvNormStep* norm = nullptr);
// Attention's q, k and v products of one decode step with what decode_attention would do to them first (kernels/gemv.h,
// GemvRope): [..., q + k + v columns] with q and k rotated by RoPE at each row's position, k and v also written into
// the caches at that position. `attention` gives the caches, positions, heads and RoPE (its q, k and v are not
// read); decode_attention then takes these columns with rope_done set. With `norm`, the products read the normed x.
torch::Tensor gemv_qkv_rope(const torch::Tensor& x, const std::vector<GemvWeight>& qkv,
                            const DecodeAttentionInputs& attention, const GemvNormStep* norm = nullptr);
// residual + x W^T + bias, each rounded as LibTorch rounds it.
torch::Tensor gemv_residual(const torch::Tensor& x, const GemvWeight& w, const torch::Tensor& residual);

// model/layers.cpp's RMSNorm and silu(gate) * up, same rounding.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
torch::Tensor silu_mul(const torch::Tensor& gate, const torch::Tensor& up);
// {x + delta, rms_norm(x + delta)} in one pass: the residual add before a post-attention norm.
std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& delta,
                                                     const torch::Tensor& weight, double eps);

// logits.argmax(-1) of [b, vocab] logits (greedy decoding), as int64; read in place when rows have unit stride and
// do not overlap, else from a contiguous copy.
torch::Tensor argmax(const torch::Tensor& logits);

bool mamba_step_applies(const MambaStepInputs& in);
torch::Tensor mamba_step(const MambaStepInputs& in);  // [b, heads * head_dim]
}  // namespace fused

}  // namespace carve::model
