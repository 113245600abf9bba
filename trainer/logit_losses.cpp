#include "trainer/logit_losses.h"

#include <limits>

#include "base/error.h"

namespace carve::trainer {

torch::Tensor kl_full(const torch::Tensor& teacher_logits, const torch::Tensor& student_logits, double temperature) {
  CARVE_CHECK(temperature > 0, "the distillation temperature must be positive, not ", temperature);
  CARVE_CHECK(teacher_logits.sizes() == student_logits.sizes(), "teacher logits ", teacher_logits.sizes(),
              " and student logits ", student_logits.sizes(), " differ in shape");
  const auto t = torch::log_softmax(teacher_logits.to(torch::kFloat32) / temperature, -1);
  const auto s = torch::log_softmax(student_logits.to(torch::kFloat32) / temperature, -1);
  return (t.exp() * (t - s)).sum(-1) * (temperature * temperature);
}

torch::Tensor kl_topk(const torch::Tensor& topk_logprobs, const torch::Tensor& topk_indices,
                      const torch::Tensor& student_logits) {
  CARVE_CHECK(topk_logprobs.dim() == 2 && topk_logprobs.sizes() == topk_indices.sizes() &&
                  student_logits.dim() == 2 && student_logits.size(0) == topk_logprobs.size(0),
              "top-k log-probabilities ", topk_logprobs.sizes(), ", indices ", topk_indices.sizes(),
              " and student logits ", student_logits.sizes(), " do not match");
  const auto z = student_logits.to(torch::kFloat32);
  const auto idx = topk_indices.to(torch::kInt64);
  const auto lse = torch::logsumexp(z, -1, /*keepdim=*/true);
  const auto log_q = z.gather(-1, idx) - lse;  // [n, k]
  const auto log_p = topk_logprobs.to(torch::kFloat32);
  const auto p = log_p.exp();
  const auto head = (p * (log_p - log_q)).sum(-1);
  if (idx.size(-1) >= z.size(-1)) return head;  // the whole vocabulary: no tail
  // The student's tail: the log-sum-exp of the logits outside the k tokens, computed without subtracting
  // probabilities (which would cancel catastrophically when the k tokens hold nearly all the mass).
  const auto tail_logits = z.scatter(-1, idx, -std::numeric_limits<float>::infinity());
  const auto log_q_tail = (torch::logsumexp(tail_logits, -1, true) - lse).squeeze(-1);
  // Tail mass from the stored top-k, clamped: float rounding can push the sum of k probabilities past 1.
  const auto m = (1.0 - p.sum(-1)).clamp_min(0.0);
  const auto tail = torch::where(m > 1e-12, m * (m.clamp_min(1e-12).log() - log_q_tail), torch::zeros_like(m));
  return head + tail;
}

torch::Tensor token_nll(const torch::Tensor& logits, const torch::Tensor& targets) {
  const auto lp = torch::log_softmax(logits.to(torch::kFloat32), -1);
  return -lp.gather(-1, targets.to(torch::kInt64).unsqueeze(-1)).squeeze(-1);
}

}  // namespace carve::trainer
