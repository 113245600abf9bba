// ActivationSource: streams batches from the activation cache for training.
//
// Each batch packs whole samples into a fixed token budget (the rest is padding, its own segment in seq_idx and
// invalid in `valid`). Per epoch the samples are permuted deterministically from (seed, epoch), packed in that
// order, and batch b goes to data-parallel rank b % world at step b / world, so the ranks together see every token
// exactly once per epoch; a rank with no batch left at the last step of an epoch gets an empty one (tokens == 0).
// A background thread (the process's only HDF5 user while the source runs) keeps `prefetch` batches ready.
// Batch tensors come from a recycled pool: once every tensor and view of a batch is dropped, its memory is reused.
// A consumer that copies a batch to the GPU asynchronously keeps the batch alive until that copy has completed.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "data/cache_layout.h"
#include "data/samples.h"

namespace carve::data {

struct SourcePosition {
  int64_t epoch = 0;
  int64_t step = 0;  // within the epoch
  bool operator==(const SourcePosition& o) const { return epoch == o.epoch && step == o.step; }
};
nlohmann::json position_to_json(const SourcePosition& p);
SourcePosition position_from_json(const nlohmann::json& j, const std::string& where);

struct ActivationSourceOptions {
  std::string cache_dir;          // empty: samples_path alone (token ids, loss masks, images; no streams)
  std::vector<int64_t> layers;    // hidden-state streams to deliver, in this order
  bool final_hidden = false;
  bool logits = false;
  std::string samples_path;       // optional: deliver token ids and the loss mask (hash checked against the cache)
  int64_t batch_tokens = 8192;
  int rank = 0, world = 1;
  uint64_t seed = 0;
  bool shuffle = true;
  SourcePosition start;
  int prefetch = 2;
  bool pin_memory = false;        // page-locked batches for asynchronous copies to a GPU
};

struct ActivationBatch {
  SourcePosition position;
  int64_t tokens = 0;                   // real tokens; the rest of the budget is padding
  std::vector<int64_t> sample_ids;
  torch::Tensor seq_idx;                // [1, budget] int32
  torch::Tensor valid;                  // [budget] bool
  std::vector<torch::Tensor> hidden;    // per options.layers, [budget, hidden] in the cache dtype
  torch::Tensor final_hidden;           // [budget, hidden] when requested
  torch::Tensor topk_logprobs;          // [budget, k] float32 when requested
  torch::Tensor topk_indices;           // [budget, k] int32
  torch::Tensor token_ids;              // [budget] int64 with samples_path (0 in padding)
  torch::Tensor loss_mask;              // [budget] uint8 with samples_path (0 in padding)
  torch::Tensor image_rows;             // [rows, hidden] with samples_path holding images, in sample order
};

struct SourceStats {
  int64_t batches = 0;
  int64_t bytes_read = 0;
  double read_seconds = 0;   // the reader thread's time in HDF5 reads
  double wait_seconds = 0;   // the consumer's time blocked in next()
  double read_mb_per_s() const { return read_seconds > 0 ? bytes_read / read_seconds / 1e6 : 0.0; }
};

class ActivationSource {
 public:
  explicit ActivationSource(ActivationSourceOptions options);
  ~ActivationSource();
  ActivationSource(const ActivationSource&) = delete;
  ActivationSource& operator=(const ActivationSource&) = delete;

  ActivationBatch next();
  // The position of the batch the next call to next() returns (save it to resume there).
  SourcePosition position() const;
  // Steps of one epoch for this rank's world (packing follows the epoch's order, so epochs can differ by a step).
  int64_t steps_in_epoch(int64_t epoch) const;
  const CachePlan& plan() const;
  // The sample file given as samples_path, or null. Its attributes (vocabulary, image token) are for the caller;
  // its reads belong to the source's reader thread.
  const SampleFile* samples() const;
  SourceStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The samples of each batch of one epoch, in order (what ActivationSource packs); exposed for tests and tools.
std::vector<std::vector<int64_t>> epoch_batches(const std::vector<int64_t>& sample_offsets, int64_t batch_tokens,
                                                uint64_t seed, int64_t epoch, bool shuffle);

}  // namespace carve::data
