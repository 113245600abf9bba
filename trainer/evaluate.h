// Evaluation of teachers and students side by side on the same samples (carve eval, and pretraining's progress).
//
// Scores count target tokens: positions whose next token is labelled by the sample's loss mask (the answer of a
// question-answer sample; every token when the file has no mask).
//   perplexity      exp(mean negative log-likelihood of the target tokens)
//   kl              mean KL(teacher || model) over the target positions (0 for the teacher itself)
//   top1_agreement  fraction of target positions where the model's most likely token is the teacher's
//   exact_match     fraction of samples with a loss mask whose whole answer the model reproduces greedily
// Greedy answers are scored with one teacher-forced forward: greedy decoding from the prompt reproduces an answer
// exactly if and only if the model's most likely token equals the answer's next token at every answer position
// (up to the first mismatch both read the same prefix; at a mismatch greedy decoding diverges). The answer's last
// token is EOS, so a longer generation does not match. tests/ checks this against carve's generate.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/transformer.h"

namespace carve::trainer {

struct EvalOptions {
  std::string samples_path;
  int64_t batch_tokens = 4096;
  int64_t max_samples = 0;  // 0: all
  torch::Device device = torch::kCPU;
};

struct ModelScore {
  std::string name;
  int64_t target_tokens = 0, answered_samples = 0, exact_samples = 0;
  double nll = 0, perplexity = 0, kl = 0, top1_agreement = 0, exact_match = 0;
  double exact_match_vs_teacher = 0;  // exact_match / the teacher's (0 when the teacher answers none)
};

// Scores `models` (name, model) with `teacher` as the reference for KL and agreement; the teacher's own row comes
// first under `teacher_name`. Models are put in eval mode; none is changed.
std::vector<ModelScore> evaluate_models(model::CausalLMImpl& teacher, const std::string& teacher_name,
                                        const std::vector<std::pair<std::string, model::CausalLMImpl*>>& models,
                                        const EvalOptions& options);

nlohmann::json scores_to_json(const std::vector<ModelScore>& scores);
// A printed table, the teacher's row first.
std::string scores_table(const std::vector<ModelScore>& scores);

}  // namespace carve::trainer
