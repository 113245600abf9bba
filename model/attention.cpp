#include "model/attention.h"

#include <cmath>
#include <limits>

#include "base/error.h"
#include "model/layers.h"
#include "model/rope.h"

namespace carve::model {

AttentionImpl::AttentionImpl(const ModelConfig& c)
    : num_heads(c.num_heads),
      num_kv_heads(c.num_kv_heads),
      head_dim(c.head_dim),
      rotary_dim(c.rotary_dim()),
      rope_theta(c.rope_theta) {
  q_proj = register_module("q_proj", make_linear(c.hidden_size, num_heads * head_dim, c.qkv_bias));
  k_proj = register_module("k_proj", make_linear(c.hidden_size, num_kv_heads * head_dim, c.qkv_bias));
  v_proj = register_module("v_proj", make_linear(c.hidden_size, num_kv_heads * head_dim, c.qkv_bias));
  o_proj = register_module("o_proj", make_linear(num_heads * head_dim, c.hidden_size, c.o_bias));
}

torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& seq_idx) {
  const int64_t l = q.size(2), t = k.size(2);
  const int64_t past = t - l;
#if TORCH_VERSION_MAJOR >= 2
  if (!seq_idx.defined() && past == 0) return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
#endif
  // allowed[i][j]: query i (absolute position past + i) may see key j.
  auto opts = torch::TensorOptions().device(q.device());
  auto qi = torch::arange(l, opts.dtype(torch::kInt64)).unsqueeze(1) + past;
  auto kj = torch::arange(t, opts.dtype(torch::kInt64)).unsqueeze(0);
  auto allowed = (kj <= qi).unsqueeze(0).unsqueeze(0);  // [1, 1, l, t]
  if (seq_idx.defined()) {
    CARVE_CHECK(past == 0, "packed sequences (seq_idx) cannot be combined with a KV cache");
    auto same = seq_idx.unsqueeze(2) == seq_idx.unsqueeze(1);  // [b, l, l]
    allowed = allowed & same.unsqueeze(1);
  }
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v, allowed, 0.0, false);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale;
  scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  auto probs = torch::softmax(scores.to(accumulate_dtype(scores)), -1).to(q.scalar_type());
  return torch::matmul(probs, v);
#endif
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& u, const MixerContext& ctx) {
  const int64_t b = u.size(0), l = u.size(1);
  auto q = q_proj(u).view({b, l, num_heads, head_dim}).transpose(1, 2);     // [b, h, l, d]
  auto k = k_proj(u).view({b, l, num_kv_heads, head_dim}).transpose(1, 2);  // [b, hkv, l, d]
  auto v = v_proj(u).view({b, l, num_kv_heads, head_dim}).transpose(1, 2);  // [b, hkv, l, d]
  auto rope = rope_tables(ctx.positions, rotary_dim, rope_theta, q.scalar_type());
  q = apply_rope(q, rope);
  k = apply_rope(k, rope);
  if (ctx.state) {
    auto* cache = dynamic_cast<KvCache*>(ctx.state);
    CARVE_CHECK(cache, "attention layer was given a decoding state of another mixer kind");
    if (cache->k.defined()) {
      k = torch::cat({cache->k, k}, 2);
      v = torch::cat({cache->v, v}, 2);
    }
    cache->k = k;
    cache->v = v;
  }
  const int64_t groups = num_heads / num_kv_heads;
  if (groups > 1) {
    k = k.repeat_interleave(groups, 1);
    v = v.repeat_interleave(groups, 1);
  }
  auto out = causal_attention(q, k, v, ctx.seq_idx).transpose(1, 2).reshape({b, l, num_heads * head_dim});
  if (ctx.pre_output) *ctx.pre_output = out;
  if (ctx.skip_output_projection) return torch::Tensor();
  return o_proj(out);
}

}  // namespace carve::model
