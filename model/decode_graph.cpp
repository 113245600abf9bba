#include "model/decode_graph.h"

#include "model/attention.h"
#include "model/inference_ops.h"
#include "model/kernel_ops.h"

namespace carve::model {

std::string DecodeStepGraph::unavailable_reason(const CausalLMImpl& model) {
  const auto& embed = model.embed_tokens;
  if (!fused_kernels_built()) return "this build of carve has no CUDA kernels";
  if (!embed.is_cuda()) return "the model is not on a CUDA device";
  if (kernel_mode() != KernelMode::fused) return "the kernel mode is 'reference'";
  if (!uses_fused_kernels(embed)) return "the model's dtype has no CUDA kernels";
  for (const auto& layer : model.layers) {
    if (auto* attention = dynamic_cast<const AttentionImpl*>(layer->mixer.get())) {
      if (!fused::decode_attention_supports(attention->num_heads, attention->num_kv_heads, attention->head_dim))
        return "the decode attention kernel does not support " + std::to_string(attention->num_heads) +
               " heads over " + std::to_string(attention->num_kv_heads) + " KV heads of dim " +
               std::to_string(attention->head_dim);
    }
  }
  return "";
}

DecodeStepper::DecodeStepper(CausalLMImpl& model, DecodeState& state, int64_t batch, int64_t max_positions,
                             bool graphs)
    : model_(model), state_(state), batch_(batch) {
  state.reserve(max_positions);
  if (!graphs) return;
  why_not_ = DecodeStepGraph::unavailable_reason(model);
  if (why_not_.empty()) graph_ = std::make_unique<DecodeStepGraph>(model, state, batch, max_positions);
}

torch::Tensor DecodeStepper::step(const torch::Tensor& tokens) {
  if (graph_) return graph_->step(tokens);
  torch::NoGradGuard no_grad;
  ForwardOptions o;
  o.state = &state_;
  return model_.forward(tokens.reshape({batch_, 1}).to(model_.embed_tokens.device()), o).logits.select(1, 0);
}

}  // namespace carve::model
