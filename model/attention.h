// Causal grouped-query attention with RoPE: the teacher's mixer, and the one a hybrid student keeps.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "model/config.h"
#include "model/layers.h"
#include "model/mixer.h"

namespace carve::model {

// An attention layer's decoding state: key and value buffers with room for capacity() positions, the first `length`
// filled. Appending beyond the capacity doubles it (one copy of what is cached); reserve() with the final length up
// front allocates once, which a captured decode graph needs.
//
// A token's key and value sit at the slot of its position. In a ragged cache (rows merged from prompts of different
// lengths) a row may have consumed fewer than `length` positions: it writes its next tokens at its own positions and
// attends only to slots up to them, so whatever its slots beyond hold is never read. `length` is the longest row's.
struct KvCache : MixerState {
  torch::Tensor k;  // [b, kv_heads, capacity, head_dim], after RoPE
  torch::Tensor v;  // [b, kv_heads, capacity, head_dim]
  int64_t length = 0;
  int64_t reserved = 0;
  bool ragged = false;  // rows hold different numbers of positions (their own are in the forward's positions)

  void reserve(int64_t positions) override;
  void advance(int64_t tokens) override { length += tokens; }
  void merge_rows(const std::vector<const MixerState*>& parts, const std::vector<torch::Tensor>& rows,
                  int64_t batch) override;
  // Room for `extra` more positions of [b, kv_heads, *, head_dim] keys with `options`.
  void make_room(int64_t b, int64_t kv_heads, int64_t head_dim, const torch::TensorOptions& options, int64_t extra);
  int64_t capacity() const { return k.defined() ? k.size(2) : 0; }
  torch::Tensor keys() const { return k.narrow(2, 0, length); }
  torch::Tensor values() const { return v.narrow(2, 0, length); }
};

class AttentionImpl : public Mixer {
 public:
  explicit AttentionImpl(const ModelConfig& config);
  torch::Tensor forward(const torch::Tensor& u, const MixerContext& ctx) override;
  std::unique_ptr<MixerState> new_state() const override { return std::make_unique<KvCache>(); }
  std::string kind() const override { return "attention"; }
  // One new token per row through the CUDA decode kernels, which read the position from ctx.positions in device
  // memory: the qkv product with RoPE and the cache write in its epilogue, then the split attention and its merge
  // (where the product kernel does not apply, the attention's own RoPE launch comes first).
  torch::Tensor decode_step(const torch::Tensor& u, KvCache& cache, const MixerContext& ctx);

  int64_t num_heads, num_kv_heads, head_dim, rotary_dim;
  double rope_theta;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
};

// softmax(q k^T / sqrt(d) + mask) v with a causal mask offset by the cached length and, when seq_idx is given,
// no attention across packed samples. q [b, h, l, d]; k, v [b, h, t, d] with t >= l. Returns [b, h, l, d].
torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& seq_idx /* [b, l] or undefined */);

// One query per row attending to every key (or those `allowed` [b, 1, 1, t] marks), with grouped KV heads read in
// place (no repeat): q [b, heads, 1, d], k and v [b, kv_heads, t, d] -> [b, heads, 1, d].
torch::Tensor single_query_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     const torch::Tensor& allowed = {});

}  // namespace carve::model
