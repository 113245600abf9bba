#include "trainer/evaluate.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "base/error.h"
#include "data/activation_source.h"
#include "data/sample_batch.h"
#include "data/samples.h"
#include "trainer/logit_losses.h"
#include "trainer/vlm_inputs.h"

namespace carve::trainer {
namespace {

struct Sums {
  double nll = 0, kl = 0, agree = 0;
  int64_t exact = 0;
};

torch::Tensor batch_logits(model::CausalLMImpl& lm, const data::SampleBatch& b, int64_t image_token_id,
                           torch::Device device) {
  model::ForwardOptions fo;
  fo.seq_idx = b.seq_idx.to(device);
  auto embeds = embed_with_images(lm, b.token_ids.to(device), image_token_id, b.image_rows);
  return lm.forward_embeds(embeds, fo).logits[0].to(torch::kFloat32);  // [budget, vocab]
}

}  // namespace

std::vector<ModelScore> evaluate_models(model::CausalLMImpl& teacher, const std::string& teacher_name,
                                        const std::vector<std::pair<std::string, model::CausalLMImpl*>>& models,
                                        const EvalOptions& o) {
  torch::NoGradGuard no_grad;
  data::SampleFile file(o.samples_path);
  CARVE_CHECK(file.vocab_size() <= teacher.config.vocab_size, o.samples_path, ": vocabulary of ", file.vocab_size(),
              " tokens, the teacher has ", teacher.config.vocab_size);
  const int64_t n = o.max_samples > 0 ? std::min(o.max_samples, file.num_samples()) : file.num_samples();
  std::vector<int64_t> offsets(file.offsets().begin(), file.offsets().begin() + n + 1);
  const auto batches = data::epoch_batches(offsets, o.batch_tokens, 0, 0, /*shuffle=*/false);

  std::vector<model::CausalLMImpl*> all = {&teacher};
  for (auto& m : models) all.push_back(m.second);
  for (auto* m : all) m->eval();
  std::vector<Sums> sums(all.size());
  int64_t target_tokens = 0, answered_samples = 0;  // the same for every model
  for (const auto& ids : batches) {
    auto b = data::read_sample_batch(file, ids, o.batch_tokens);
    auto t = data::next_token_targets(b.token_ids, b.seq_idx, b.valid, b.loss_mask);
    auto where = t.weight.nonzero().squeeze(-1);
    if (where.numel() == 0) continue;
    auto targets = t.targets.index_select(0, where).to(o.device);
    auto segment = b.seq_idx[0].to(torch::kInt64).index_select(0, where);  // sample of each target position
    const int64_t segments = static_cast<int64_t>(ids.size());
    auto answered = torch::zeros({segments}, torch::kInt64).index_add_(0, segment, torch::ones_like(segment)) > 0;
    target_tokens += where.numel();
    answered_samples += answered.sum().item<int64_t>();
    torch::Tensor teacher_logits, teacher_top;
    for (size_t i = 0; i < all.size(); ++i) {
      auto logits = batch_logits(*all[i], b, file.image_token_id(), o.device).index_select(0, where.to(o.device));
      auto top = logits.argmax(-1);
      if (i == 0) {
        teacher_logits = logits;
        teacher_top = top;
      }
      auto& s = sums[i];
      s.nll += token_nll(logits, targets).sum().item<double>();
      s.kl += i == 0 ? 0.0 : kl_full(teacher_logits, logits, 1.0).sum().item<double>();
      s.agree += (top == teacher_top).sum().item<double>();
      auto wrong = (top != targets).to(torch::kInt64).cpu();
      auto wrong_per_sample = torch::zeros({segments}, torch::kInt64).index_add_(0, segment, wrong);
      s.exact += (answered & (wrong_per_sample == 0)).sum().item<int64_t>();
    }
  }
  std::vector<ModelScore> out;
  for (size_t i = 0; i < all.size(); ++i) {
    const auto& s = sums[i];
    ModelScore r;
    r.name = i == 0 ? teacher_name : models[i - 1].first;
    r.target_tokens = target_tokens;
    r.answered_samples = answered_samples;
    r.exact_samples = s.exact;
    const double t = static_cast<double>(std::max<int64_t>(1, target_tokens));
    r.nll = s.nll / t;
    r.perplexity = std::exp(r.nll);
    r.kl = s.kl / t;
    r.top1_agreement = s.agree / t;
    r.exact_match = answered_samples > 0 ? static_cast<double>(s.exact) / static_cast<double>(answered_samples) : 0.0;
    r.exact_match_vs_teacher = out.empty() ? 1.0 : (out[0].exact_match > 0 ? r.exact_match / out[0].exact_match : 0.0);
    out.push_back(r);
  }
  return out;
}

nlohmann::json scores_to_json(const std::vector<ModelScore>& scores) {
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& s : scores)
    rows.push_back({{"name", s.name},
                    {"target_tokens", s.target_tokens},
                    {"answered_samples", s.answered_samples},
                    {"exact_samples", s.exact_samples},
                    {"nll", s.nll},
                    {"perplexity", s.perplexity},
                    {"kl_to_teacher", s.kl},
                    {"top1_agreement", s.top1_agreement},
                    {"exact_match", s.exact_match},
                    {"exact_match_vs_teacher", s.exact_match_vs_teacher}});
  return rows;
}

std::string scores_table(const std::vector<ModelScore>& scores) {
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof line, "%-24s %10s %10s %8s %8s %12s\n", "model", "perplexity", "KL", "top-1", "exact",
                "vs teacher");
  out << line;
  for (const auto& s : scores) {
    std::snprintf(line, sizeof line, "%-24s %10.4f %10.4f %7.1f%% %7.1f%% %11.1f%%\n", s.name.c_str(), s.perplexity,
                  s.kl, 100 * s.top1_agreement, 100 * s.exact_match, 100 * s.exact_match_vs_teacher);
    out << line;
  }
  return out.str();
}

}  // namespace carve::trainer
