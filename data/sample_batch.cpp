#include "data/sample_batch.h"

#include "base/error.h"

namespace carve::data {

SampleBatch read_sample_batch(const SampleFile& file, const std::vector<int64_t>& samples, int64_t budget) {
  SampleBatch b;
  b.sample_ids = samples;
  b.token_ids = torch::zeros({1, budget}, torch::kInt64);
  b.seq_idx = torch::empty({1, budget}, torch::kInt32);
  b.valid = torch::zeros({budget}, torch::kBool);
  b.loss_mask = torch::zeros({budget}, torch::kUInt8);
  std::vector<torch::Tensor> images;
  int64_t at = 0;
  for (size_t k = 0; k < samples.size(); ++k) {
    const int64_t s = samples[k];
    CARVE_CHECK(s >= 0 && s < file.num_samples(), file.path(), ": no sample ", s);
    const int64_t len = file.length(s);
    CARVE_CHECK(at + len <= budget, file.path(), ": sample ", s, " (", len, " tokens) does not fit the batch of ",
                budget, " tokens (raise --batch-tokens)");
    const int64_t begin = file.offsets()[static_cast<size_t>(s)];
    b.token_ids[0].narrow(0, at, len).copy_(file.tokens(begin, begin + len));
    b.loss_mask.narrow(0, at, len).copy_(file.loss_mask(begin, begin + len));
    b.seq_idx[0].narrow(0, at, len).fill_(static_cast<int>(k));
    b.valid.narrow(0, at, len).fill_(true);
    if (file.has_images()) images.push_back(file.image_rows(s, s + 1));
    at += len;
  }
  b.seq_idx[0].narrow(0, at, budget - at).fill_(static_cast<int>(samples.size()));
  b.tokens = at;
  if (!images.empty()) b.image_rows = torch::cat(images, 0);
  return b;
}

NextTokenTargets next_token_targets(const torch::Tensor& token_ids, const torch::Tensor& seq_idx,
                                    const torch::Tensor& valid, const torch::Tensor& loss_mask) {
  const auto ids = token_ids.reshape({-1});
  const auto seg = seq_idx.reshape({-1});
  const int64_t n = ids.size(0);
  NextTokenTargets out;
  out.targets = torch::zeros_like(ids);
  out.weight = torch::zeros({n}, torch::TensorOptions().dtype(torch::kFloat32).device(ids.device()));
  if (n < 2) return out;
  out.targets.narrow(0, 0, n - 1).copy_(ids.narrow(0, 1, n - 1));
  auto same = seg.narrow(0, 0, n - 1) == seg.narrow(0, 1, n - 1);
  auto labelled = valid.reshape({-1}).narrow(0, 1, n - 1) & (loss_mask.reshape({-1}).narrow(0, 1, n - 1) != 0);
  out.weight.narrow(0, 0, n - 1).copy_((same & labelled).to(torch::kFloat32));
  return out;
}

}  // namespace carve::data
