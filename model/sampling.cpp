#include "model/sampling.h"

#include <limits>

#include "base/error.h"
#include "model/inference_ops.h"

namespace carve::model {

torch::Tensor greedy_tokens(const torch::Tensor& logits) {
  CARVE_CHECK(logits.dim() == 2, "logits must be [batch, vocab]");
  return uses_inference_kernels(logits) ? fused::argmax(logits) : logits.argmax(-1);
}

torch::Tensor choose_next_token(const torch::Tensor& logits, const SamplingOptions& o, torch::Generator& gen) {
  CARVE_CHECK(logits.dim() == 2, "logits must be [batch, vocab]");
  CARVE_CHECK(o.temperature >= 0, "temperature must be >= 0, got ", o.temperature);
  CARVE_CHECK(o.top_p > 0 && o.top_p <= 1, "top-p must be in (0, 1], got ", o.top_p);
  CARVE_CHECK(o.top_k >= 0, "top-k must be >= 0, got ", o.top_k);
  if (o.temperature == 0) return greedy_tokens(logits);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  auto scaled = logits.to(torch::kFloat32) / o.temperature;
  if (o.top_k > 0 && o.top_k < scaled.size(-1)) {
    auto kth = std::get<0>(scaled.topk(o.top_k, -1)).narrow(-1, o.top_k - 1, 1);
    scaled = scaled.masked_fill(scaled < kth, neg_inf);
  }
  if (o.top_p < 1) {
    auto sorted = scaled.sort(-1, /*descending=*/true);
    auto values = std::get<0>(sorted), order = std::get<1>(sorted);
    auto cumulative = values.softmax(-1).cumsum(-1);
    // Drop a token when the tokens ranked above it already reach top_p; the first token always stays.
    auto drop = (cumulative - values.softmax(-1)) >= o.top_p;
    scaled = scaled.scatter(-1, order, values.masked_fill(drop, neg_inf));
  }
  auto probs = scaled.softmax(-1);
  return at::multinomial(probs, 1, /*replacement=*/false, gen).squeeze(-1);
}

}  // namespace carve::model
