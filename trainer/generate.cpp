#include "trainer/generate.h"

#include "trainer/vlm_inputs.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <map>
#include <numeric>

#include "base/error.h"
#include "base/log.h"
#include "model/decode_graph.h"

namespace carve::trainer {

namespace {

// Each prompt's image rows: those of its image tokens, in order (image rows are consumed row-major).
std::vector<torch::Tensor> image_rows_per_prompt(const std::vector<torch::Tensor>& prompts, const GenerateOptions& o) {
  std::vector<torch::Tensor> per_prompt(prompts.size());
  if (!o.image_rows.defined() || o.image_token_id < 0) return per_prompt;
  std::vector<int64_t> counts;
  for (const auto& prompt : prompts) counts.push_back((prompt == o.image_token_id).sum().item<int64_t>());
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  CARVE_CHECK(total == o.image_rows.size(0), "the prompts have ", total, " image tokens but ", o.image_rows.size(0),
              " image rows");
  for (size_t i = 0, next = 0; i < prompts.size(); next += counts[i], ++i)
    per_prompt[i] = o.image_rows.narrow(0, static_cast<int64_t>(next), counts[i]);
  return per_prompt;
}

}  // namespace

Prefilled prefill(model::CausalLMImpl& lm, const std::vector<torch::Tensor>& prompts, int64_t reserve_positions,
                  const GenerateOptions& o) {
  CARVE_CHECK(!prompts.empty(), "generate needs at least one prompt");
  for (size_t i = 0; i < prompts.size(); ++i)
    CARVE_CHECK(prompts[i].dim() == 1 && prompts[i].size(0) > 0, "prompt ", i, " must be [length > 0], got ",
                prompts[i].sizes());
  torch::NoGradGuard no_grad;
  const auto device = lm.embed_tokens.device();
  const int64_t batch = static_cast<int64_t>(prompts.size());
  const auto images = image_rows_per_prompt(prompts, o);
  // Rows of one length share a batched prefill.
  std::map<int64_t, std::vector<int64_t>> by_length;
  for (int64_t i = 0; i < batch; ++i) by_length[prompts[i].size(0)].push_back(i);

  std::vector<model::DecodeState> parts;
  std::vector<std::vector<int64_t>> part_rows;
  Prefilled out;
  for (const auto& [length, rows] : by_length) {
    std::vector<torch::Tensor> tokens, rows_images;
    for (int64_t r : rows) {
      tokens.push_back(prompts[r]);
      if (images[r].defined()) rows_images.push_back(images[r]);
    }
    auto state = lm.new_decode_state();
    // One length: this is the whole batch, reserved for the generation. Several: each part holds its prompt only;
    // the merged state is reserved below.
    state.reserve(by_length.size() == 1 ? reserve_positions : length);
    model::ForwardOptions fwd;
    fwd.state = &state;
    // Only the last prompt position is continued: its logits, not [b, l, vocab] of the whole prompt.
    fwd.want_logits = false;
    const auto embeds = embed_with_images(lm, torch::stack(tokens).to(device), o.image_token_id,
                                          rows_images.empty() ? torch::Tensor() : torch::cat(rows_images));
    auto hidden = lm.forward_embeds(embeds, fwd).final_hidden;
    auto logits = lm.logits(hidden.narrow(1, length - 1, 1)).select(1, 0);  // [rows, vocab]
    if (by_length.size() == 1) return {std::move(state), logits};
    if (!out.logits.defined()) out.logits = torch::empty({batch, logits.size(1)}, logits.options());
    out.logits.index_copy_(0, torch::tensor(rows, torch::kInt64).to(device), logits);
    parts.push_back(std::move(state));
    part_rows.push_back(rows);
  }
  out.state = lm.new_decode_state();
  out.state.reserve(reserve_positions);
  std::vector<const model::DecodeState*> views;
  for (const auto& part : parts) views.push_back(&part);
  out.state.merge_rows(views, part_rows, batch, device);
  return out;
}

torch::Tensor generate(model::CausalLMImpl& lm, const torch::Tensor& prompt, const GenerateOptions& o) {
  CARVE_CHECK(prompt.dim() == 2 && prompt.size(1) > 0, "prompt must be [batch, length > 0], got ", prompt.sizes());
  return generate(lm, prompt.unbind(0), o);
}

torch::Tensor generate(model::CausalLMImpl& lm, const std::vector<torch::Tensor>& prompts, const GenerateOptions& o) {
  torch::NoGradGuard no_grad;
  const auto device = lm.embed_tokens.device();
  const int64_t batch = static_cast<int64_t>(prompts.size());
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(o.seed);
  int64_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size(0));
  const int64_t max_positions = longest + o.max_new_tokens;
  auto [state, logits] = prefill(lm, prompts, max_positions, o);
  model::DecodeStepper stepper(lm, state, batch, max_positions, o.cuda_graphs && o.max_new_tokens > 1);
  if (!stepper.why_not_graphed().empty() && device.is_cuda())
    log::info("generate", "decoding without a CUDA graph: ", stepper.why_not_graphed());
  std::vector<torch::Tensor> out;
  auto finished = torch::zeros({batch}, torch::TensorOptions().dtype(torch::kBool));
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
