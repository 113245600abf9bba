#include "model/transformer.h"

#include <algorithm>

#include "base/error.h"
#include "model/attention.h"

namespace carve::model {

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, std::shared_ptr<Mixer> m)
    : parallel_residual(c.parallel_residual) {
  input_norm = register_module("input_norm", Norm(c.norm, c.hidden_size, c.norm_eps));
  if (!parallel_residual) post_norm = register_module("post_norm", Norm(c.norm, c.hidden_size, c.norm_eps));
  set_mixer(std::move(m));
  mlp = register_module("mlp", Mlp(c));
}

void DecoderLayerImpl::set_mixer(std::shared_ptr<Mixer> m) {
  if (mixer) unregister_module("mixer");
  mixer = register_module("mixer", std::move(m));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const MixerContext& ctx) {
  if (parallel_residual) {
    auto h = input_norm(x);
    return x + mixer->forward(h, ctx) + mlp(h);
  }
  // y = x + mixer(input_norm(x)); y + mlp(post_norm(y)). On the inference kernels the norms run in the prologue of
  // the products after them (the mixer's first, the MLP's gate and up) and the adds in the epilogue of the MLP's
  // down product.
  torch::Tensor delta;
  if (input_norm->fuses_into_products(x)) {
    MixerContext fused_ctx = ctx;
    fused_ctx.input_norm = input_norm.get();
    delta = mixer->forward(x, fused_ctx);
  } else {
    delta = mixer->forward(input_norm(x), ctx);
  }
  return mlp->forward_norm_add(x, delta, *post_norm);
}

CausalLMImpl::CausalLMImpl(const ModelConfig& c) : config(c) {
  embed_tokens = register_parameter("embed_tokens", torch::empty({c.vocab_size, c.hidden_size}));
  // A ModuleList names its children "0", "1", ...: parameters read "layers.3.mixer.q_proj.weight".
  auto list = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_layers; ++i) {
    layers.push_back(DecoderLayer(c, std::make_shared<AttentionImpl>(c)));
    list->push_back(layers.back());
  }
  final_norm = register_module("final_norm", Norm(c.norm, c.hidden_size, c.norm_eps));
  if (!c.tie_word_embeddings) lm_head = register_module("lm_head", make_linear(c.hidden_size, c.vocab_size, c.lm_head_bias));
}

torch::Tensor CausalLMImpl::embed(const torch::Tensor& tokens) {
  CARVE_CHECK(tokens.dim() == 2, "token ids must be [batch, length], got ", tokens.sizes());
  return torch::embedding(embed_tokens, tokens.to(torch::kInt64));
}

torch::Tensor CausalLMImpl::logits(const torch::Tensor& final_hidden) {
  if (lm_head) return lm_head(final_hidden);
  return torch::matmul(final_hidden, embed_tokens.t());
}

ForwardResult CausalLMImpl::forward(const torch::Tensor& tokens, const ForwardOptions& options) {
  return forward_embeds(embed(tokens), options);
}

DecodeState CausalLMImpl::new_decode_state() const {
  DecodeState s;
  for (const auto& layer : layers) s.layers.push_back(layer->mixer->new_state());
  return s;
}

void DecodeState::reserve(int64_t positions) {
  for (auto& layer : layers) layer->reserve(positions);
}

void DecodeState::advance(int64_t tokens) {
  for (auto& layer : layers) layer->advance(tokens);
  length += tokens;
}

torch::Tensor DecodeState::next_positions(int64_t batch, int64_t l, torch::Device device) const {
  auto positions = make_positions(batch, l, length, {}, device);
  if (!row_offsets.defined()) return positions;
  CARVE_CHECK(row_offsets.size(0) == batch, "decoding state of ", row_offsets.size(0), " rows continued with ", batch);
  return positions + row_offsets.to(device).unsqueeze(1);  // already there: no copy
}

void DecodeState::merge_rows(const std::vector<const DecodeState*>& parts,
                             const std::vector<std::vector<int64_t>>& rows, int64_t batch,
                             torch::Device device) {
  CARVE_CHECK(!parts.empty() && parts.size() == rows.size(), "merging decoding states: ", parts.size(),
              " states for ", rows.size(), " row sets");
  std::vector<int64_t> consumed(batch, -1);
  std::vector<torch::Tensor> row_index;
  for (size_t i = 0; i < parts.size(); ++i) {
    const auto& part = *parts[i];
    CARVE_CHECK(part.layers.size() == layers.size(), "merging a decoding state of ", part.layers.size(),
                " layers into one of ", layers.size());
    auto offsets = part.row_offsets.defined() ? part.row_offsets.to(torch::kCPU) : torch::Tensor();
    for (size_t r = 0; r < rows[i].size(); ++r) {
      const int64_t row = rows[i][r];
      CARVE_CHECK(row >= 0 && row < batch && consumed[row] < 0, "merging decoding states: row ", row,
                  " is outside 0..", batch - 1, " or given twice");
      consumed[row] = part.length + (offsets.defined() ? offsets[static_cast<int64_t>(r)].item<int64_t>() : 0);
    }
    row_index.push_back(torch::tensor(rows[i], torch::kInt64));
  }
  for (int64_t r = 0; r < batch; ++r) CARVE_CHECK(consumed[r] >= 0, "merging decoding states: row ", r, " is missing");
  for (size_t l = 0; l < layers.size(); ++l) {
    std::vector<const MixerState*> layer_parts;
    for (const auto* part : parts) layer_parts.push_back(part->layers[l].get());
    layers[l]->merge_rows(layer_parts, row_index, batch);
  }
  length = *std::max_element(consumed.begin(), consumed.end());
  auto offsets = torch::tensor(consumed, torch::kInt64) - length;
  row_offsets = offsets.eq(0).all().item<bool>() ? torch::Tensor() : offsets.to(device);
}

torch::Tensor make_positions(int64_t batch, int64_t length, int64_t past, const torch::Tensor& seq_idx,
                             torch::Device device) {
  auto ar = torch::arange(length, torch::TensorOptions().dtype(torch::kInt64).device(device));
  if (!seq_idx.defined()) return (ar + past).unsqueeze(0).expand({batch, length});
  // Position = index minus the index where the token's sample starts.
  auto s = seq_idx.to(torch::kInt64);
  auto starts = torch::ones_like(s, torch::kBool);
  if (length > 1) starts.narrow(1, 1, length - 1).copy_(s.narrow(1, 1, length - 1) != s.narrow(1, 0, length - 1));
  auto start_index = std::get<0>(torch::cummax(torch::where(starts, ar.expand_as(s), torch::zeros_like(s)), 1));
  return ar.expand_as(s) - start_index;
}

ForwardResult CausalLMImpl::forward_embeds(const torch::Tensor& embeds, const ForwardOptions& o) {
  CARVE_CHECK(embeds.dim() == 3 && embeds.size(2) == config.hidden_size, "input embeddings must be [batch, length, ",
              config.hidden_size, "], got ", embeds.sizes());
  const int64_t b = embeds.size(0), l = embeds.size(1);
  if (o.state) CARVE_CHECK(o.state->layers.size() == layers.size(), "decoding state has ", o.state->layers.size(),
                           " layers, the model ", layers.size());
  MixerContext ctx;
  ctx.seq_idx = o.seq_idx;
  if (o.positions.defined()) {
    CARVE_CHECK(o.positions.dim() == 2 && o.positions.size(0) == b && o.positions.size(1) == l &&
                    o.positions.scalar_type() == torch::kInt64 && o.positions.device() == embeds.device(),
                "positions must be [", b, ", ", l, "] int64 on ", embeds.device().str(), ", got ", o.positions.sizes());
    ctx.positions = o.positions;
  } else {
    ctx.positions = o.state && !o.seq_idx.defined()
                        ? o.state->next_positions(b, l, embeds.device())
                        : make_positions(b, l, o.state ? o.state->length : 0, o.seq_idx, embeds.device());
  }
  ForwardResult r;
  auto x = embeds;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (o.want_layer_inputs) r.layer_inputs.push_back(x);
    torch::Tensor pre;
    ctx.pre_output = o.want_pre_outputs ? &pre : nullptr;
    ctx.state = o.state ? o.state->layers[i].get() : nullptr;
    x = layers[i]->forward(x, ctx);
    if (o.want_pre_outputs) r.pre_outputs.push_back(pre);
  }
  if (o.state) o.state->length += l;
  r.residual_out = x;
  r.final_hidden = final_norm(x);
  if (o.want_logits) r.logits = logits(r.final_hidden);
  return r;
}

}  // namespace carve::model
