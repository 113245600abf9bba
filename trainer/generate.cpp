#include "trainer/generate.h"

#include "trainer/vlm_inputs.h"

#include <ATen/CPUGeneratorImpl.h>

#include "base/error.h"
#include "base/log.h"
#include "model/decode_graph.h"

namespace carve::trainer {

torch::Tensor generate(model::CausalLMImpl& lm, const torch::Tensor& prompt, const GenerateOptions& o) {
  CARVE_CHECK(prompt.dim() == 2 && prompt.size(1) > 0, "prompt must be [batch, length > 0], got ", prompt.sizes());
  torch::NoGradGuard no_grad;
  auto device = lm.embed_tokens.device();
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(o.seed);
  auto state = lm.new_decode_state();
  const int64_t max_positions = prompt.size(1) + o.max_new_tokens;
  state.reserve(max_positions);
  model::ForwardOptions fwd;
  fwd.state = &state;
  // Only the last prompt position is continued: its logits, not [b, l, vocab] of the whole prompt.
  fwd.want_logits = false;
  auto prefill = lm.forward_embeds(embed_with_images(lm, prompt.to(device), o.image_token_id, o.image_rows), fwd);
  auto logits = lm.logits(prefill.final_hidden.narrow(1, prompt.size(1) - 1, 1)).select(1, 0);  // [b, vocab]
  std::unique_ptr<model::DecodeStepGraph> graph;
  if (o.cuda_graphs && o.max_new_tokens > 1) {
    const auto reason = model::DecodeStepGraph::unavailable_reason(lm);
    if (reason.empty()) {
      graph = std::make_unique<model::DecodeStepGraph>(lm, state, prompt.size(0), max_positions);
    } else if (device.is_cuda()) {
      log::info("generate", "decoding without a CUDA graph: ", reason);
    }
  }
  std::vector<torch::Tensor> out;
  auto finished = torch::zeros({prompt.size(0)}, torch::TensorOptions().dtype(torch::kBool));
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    // Sampling runs on the CPU so the same seed gives the same tokens on any device.
    auto next = model::choose_next_token(logits.to(torch::kCPU), o.sampling, gen);
    if (o.stop_token >= 0) next = next.masked_fill(finished, o.stop_token);
    out.push_back(next);
    if (o.stop_token >= 0) {
      finished = finished | (next == o.stop_token);
      if (finished.all().item<bool>()) break;
    }
    if (step + 1 == o.max_new_tokens) break;
    logits = graph ? graph->step(next)
                   : lm.logits(lm.forward(next.unsqueeze(1).to(device), fwd).final_hidden).select(1, 0);
  }
  return torch::stack(out, 1);
}

}  // namespace carve::trainer
