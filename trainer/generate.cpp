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
  state.reserve(max_positions);  // before the prefill: the caches are allocated once
  model::ForwardOptions fwd;
  fwd.state = &state;
  // Only the last prompt position is continued: its logits, not [b, l, vocab] of the whole prompt.
  fwd.want_logits = false;
  auto prefill = lm.forward_embeds(embed_with_images(lm, prompt.to(device), o.image_token_id, o.image_rows), fwd);
  auto logits = lm.logits(prefill.final_hidden.narrow(1, prompt.size(1) - 1, 1)).select(1, 0);  // [b, vocab]
  model::DecodeStepper stepper(lm, state, prompt.size(0), max_positions, o.cuda_graphs && o.max_new_tokens > 1);
  if (!stepper.why_not_graphed().empty() && device.is_cuda())
    log::info("generate", "decoding without a CUDA graph: ", stepper.why_not_graphed());
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
    logits = stepper.step(next);
  }
  return torch::stack(out, 1);
}

}  // namespace carve::trainer
