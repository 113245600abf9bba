// Batches read straight from a sample file (no activation cache): what evaluation and teacher pretraining use.
// A batch packs whole samples into a fixed token budget like ActivationSource does, with the same padding rules,
// and carries each position's next-token target.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "data/samples.h"

namespace carve::data {

struct SampleBatch {
  std::vector<int64_t> sample_ids;
  int64_t tokens = 0;        // real tokens; the rest of the budget is padding
  torch::Tensor token_ids;   // [1, budget] int64 (0 in padding)
  torch::Tensor seq_idx;     // [1, budget] int32, padding its own segment
  torch::Tensor valid;       // [budget] bool
  torch::Tensor loss_mask;   // [budget] uint8 (0 in padding)
  torch::Tensor image_rows;  // [rows, hidden] in sample order, or undefined
};

// Reads `samples` (in this order) into a batch of `budget` token slots.
SampleBatch read_sample_batch(const SampleFile& file, const std::vector<int64_t>& samples, int64_t budget);

// Next-token targets of a packed batch: targets[t] = token_ids[t + 1] and weight[t] = 1 where position t + 1 is in
// the same sample as t and its loss mask is set (a label the model is trained or scored on), else 0.
struct NextTokenTargets {
  torch::Tensor targets;  // [budget] int64
  torch::Tensor weight;   // [budget] float32, 0 or 1
};
NextTokenTargets next_token_targets(const torch::Tensor& token_ids, const torch::Tensor& seq_idx,
                                    const torch::Tensor& valid, const torch::Tensor& loss_mask);

}  // namespace carve::data
