// Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p (nucleus).
#pragma once

#include <torch/torch.h>

namespace carve::model {

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy (argmax)
  int64_t top_k = 0;         // 0: no top-k cut
  double top_p = 1.0;        // 1: no nucleus cut
};

// logits.argmax(-1) as int64 [b]: on the inference kernels one launch (kernels/inference_ops.h argmax_rows).
torch::Tensor greedy_tokens(const torch::Tensor& logits);

// logits [b, vocab] -> next token ids [b] int64. `generator` makes sampling reproducible.
torch::Tensor choose_next_token(const torch::Tensor& logits, const SamplingOptions& options,
                                torch::Generator& generator);

}  // namespace carve::model
