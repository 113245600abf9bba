#include "model/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "base/error.h"
#include "model/inference_ops.h"
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

void KvCache::reserve(int64_t positions) {
  reserved = std::max(reserved, positions);
  if (k.defined() && capacity() < reserved) make_room(k.size(0), k.size(1), k.size(3), k.options(), reserved - length);
}

void KvCache::make_room(int64_t b, int64_t kv_heads, int64_t head_dim, const torch::TensorOptions& options,
                        int64_t extra) {
  const int64_t need = length + extra;
  if (k.defined()) {
    CARVE_CHECK(k.size(0) == b && k.size(1) == kv_heads && k.size(3) == head_dim, "KV cache of shape ", k.sizes(),
                " continued with a batch of ", b, " rows, ", kv_heads, " KV heads of dim ", head_dim);
    if (capacity() >= need) return;
  }
  const int64_t capacity = std::max({need, reserved, 2 * this->capacity()});
  auto grown_k = torch::empty({b, kv_heads, capacity, head_dim}, options);
  auto grown_v = torch::empty({b, kv_heads, capacity, head_dim}, options);
  if (length > 0) {
    grown_k.narrow(2, 0, length).copy_(keys());
    grown_v.narrow(2, 0, length).copy_(values());
  }
  k = grown_k;
  v = grown_v;
}

void KvCache::merge_rows(const std::vector<const MixerState*>& parts, const std::vector<torch::Tensor>& rows,
                         int64_t batch) {
  std::vector<const KvCache*> caches;
  int64_t longest = 0, capacity = reserved;
  for (const auto* part : parts) {
    const auto* cache = dynamic_cast<const KvCache*>(part);
    CARVE_CHECK(cache && cache->k.defined(), "merging KV caches: a part is another mixer's state or holds no tokens");
    caches.push_back(cache);
    longest = std::max(longest, cache->length);
    capacity = std::max({capacity, cache->capacity(), cache->reserved});
  }
  const auto& first = caches[0]->k;
  // Zeros, not empty memory: a shorter row's slots beyond its length are masked out of the reference attention but
  // still multiplied (by a zero weight), so they must be finite.
  k = torch::zeros({batch, first.size(1), capacity, first.size(3)}, first.options());
  v = torch::zeros_like(k);
  ragged = false;
  for (size_t i = 0; i < caches.size(); ++i) {
    const auto index = rows[i].to(k.device());
    k.narrow(2, 0, caches[i]->length).index_copy_(0, index, caches[i]->keys());
    v.narrow(2, 0, caches[i]->length).index_copy_(0, index, caches[i]->values());
    ragged = ragged || caches[i]->ragged || caches[i]->length != longest;
  }
  length = longest;
  reserved = capacity;
}

namespace {

// softmax(q k^T / sqrt(d)) v, over the keys `allowed` ([.., l, t] bool, broadcast over batch and heads) lets each
// query see when it is given, else over every key.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& allowed = {}) {
#if TORCH_VERSION_MAJOR >= 2
  // An undefined tensor is not an absent mask to 2.x's optional<Tensor>: it fails SDPA's dtype check.
  if (!allowed.defined()) return at::scaled_dot_product_attention(q, k, v, {}, 0.0, false);
  return at::scaled_dot_product_attention(q, k, v, allowed, 0.0, false);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale;
  if (allowed.defined()) scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  auto probs = torch::softmax(scores.to(accumulate_dtype(scores)), -1).to(q.scalar_type());
  return torch::matmul(probs, v);
#endif
}

}  // namespace

torch::Tensor single_query_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     const torch::Tensor& allowed) {
  const int64_t b = q.size(0), heads = q.size(1), kv_heads = k.size(1), d = q.size(3);
  // Query heads h * groups ... h * groups + groups - 1 share KV head h: as `groups` queries of one KV head.
  auto grouped = q.reshape({b, kv_heads, heads / kv_heads, d});
  return attention(grouped, k, v, allowed).reshape({b, heads, 1, d});
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
  return attention(q, k, v, allowed);
}

torch::Tensor AttentionImpl::decode_step(const torch::Tensor& u, KvCache& cache, const MixerContext& ctx) {
  const int64_t b = u.size(0);
  DecodeAttentionInputs in;
  const int64_t q_size = num_heads * head_dim, kv_size = num_kv_heads * head_dim;
  cache.make_room(b, num_kv_heads, head_dim, q_proj->weight.options(), 1);
  in.k_cache = cache.k;
  in.v_cache = cache.v;
  in.positions = ctx.positions.select(1, 0).contiguous();
  in.heads = num_heads, in.kv_heads = num_kv_heads, in.head_dim = head_dim, in.rotary_dim = rotary_dim;
  in.rope_theta = rope_theta;
  const std::vector<GemvWeight> qkv = {
      {q_proj->weight, q_proj->bias}, {k_proj->weight, k_proj->bias}, {v_proj->weight, v_proj->bias}};
  const auto norm = input_norm_step(ctx);
  const GemvNormStep* norm_ptr = norm ? &*norm : nullptr;
  if (fused::gemv_applies(u, qkv, norm_ptr)) {
    // One launch for the layer's input norm, the three products, RoPE and the cache append; the attention reads q
    // as a column range of its output.
    auto proj = fused::gemv_qkv_rope(u, qkv, in, norm_ptr).view({b, q_size + 2 * kv_size});
    in.q = proj.narrow(1, 0, q_size);
    in.k = proj.narrow(1, q_size, kv_size);
    in.v = proj.narrow(1, q_size + kv_size, kv_size);
    in.rope_done = true;
  } else {
    const auto h = normed_input(u, ctx);
    in.q = q_proj(h).view({b, q_size});
    in.k = k_proj(h).view({b, kv_size});
    in.v = v_proj(h).view({b, kv_size});
  }
  auto out = fused::decode_attention(in).view({b, 1, num_heads * head_dim});
  cache.length += 1;
  if (ctx.pre_output) *ctx.pre_output = out;
  if (ctx.skip_output_projection) return torch::Tensor();
  return o_proj(out);
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const MixerContext& ctx) {
  const int64_t b = x.size(0), l = x.size(1);
  KvCache* cache = nullptr;
  if (ctx.state) {
    cache = dynamic_cast<KvCache*>(ctx.state);
    CARVE_CHECK(cache, "attention layer was given a decoding state of another mixer kind");
    if (l == 1 && uses_inference_kernels(x) && fused::decode_attention_supports(num_heads, num_kv_heads, head_dim))
      return decode_step(x, *cache, ctx);
  }
  const auto u = normed_input(x, ctx);
  auto q = q_proj(u).view({b, l, num_heads, head_dim}).transpose(1, 2);     // [b, h, l, d]
  auto k = k_proj(u).view({b, l, num_kv_heads, head_dim}).transpose(1, 2);  // [b, hkv, l, d]
  auto v = v_proj(u).view({b, l, num_kv_heads, head_dim}).transpose(1, 2);  // [b, hkv, l, d]
  auto rope = rope_tables(ctx.positions, rotary_dim, rope_theta, q.scalar_type());
  q = apply_rope(q, rope);
  k = apply_rope(k, rope);
  torch::Tensor allowed;  // ragged caches: [b, 1, l, t], the slots up to each query's own position
  if (cache) {
    CARVE_CHECK(!cache->ragged || !ctx.seq_idx.defined(),
                "packed sequences (seq_idx) cannot continue a KV cache of rows of different lengths");
    cache->make_room(b, num_kv_heads, head_dim, k.options(), l);
    if (cache->ragged) {
      auto slots = ctx.positions.view({b, 1, l, 1}).expand({b, num_kv_heads, l, head_dim});
      cache->k.scatter_(2, slots, k);
      cache->v.scatter_(2, slots, v);
      const int64_t t = cache->length + l;
      allowed = torch::arange(t, ctx.positions.options()).view({1, 1, 1, t}) <= ctx.positions.view({b, 1, l, 1});
    } else {
      cache->k.narrow(2, cache->length, l).copy_(k);
      cache->v.narrow(2, cache->length, l).copy_(v);
    }
    cache->length += l;
    k = cache->keys();
    v = cache->values();
  }
  torch::Tensor out;
  if (l == 1 && !ctx.seq_idx.defined()) {
    // Sees every cached key (a ragged row: up to its position), with no repeated KV heads.
    out = single_query_attention(q, k, v, allowed);
  } else {
    const int64_t groups = num_heads / num_kv_heads;
    if (groups > 1) {
      k = k.repeat_interleave(groups, 1);
      v = v.repeat_interleave(groups, 1);
    }
    out = allowed.defined() ? attention(q, k, v, allowed) : causal_attention(q, k, v, ctx.seq_idx);
  }
  out = out.transpose(1, 2).reshape({b, l, num_heads * head_dim});
  if (ctx.pre_output) *ctx.pre_output = out;
  if (ctx.skip_output_projection) return torch::Tensor();
  return o_proj(out);
}

}  // namespace carve::model
