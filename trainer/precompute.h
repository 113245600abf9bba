// Precompute the teacher activation cache: run the teacher over a sample file once and store, per shard, the
// residual stream entering each selected layer, the final hidden state and the top-k log-probabilities.
// Under mpirun the ranks take the shards round-robin; a rerun skips finished shards and completes the cache.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace carve::trainer {

struct PrecomputeOptions {
  std::string teacher_dir, weight_prefix, samples_path, cache_dir;
  std::vector<int64_t> layers;  // residual stream entering these layers; num_layers = leaving the last layer
  bool final_hidden = true;
  int64_t top_k = 16;           // 0: no logits stream
  torch::ScalarType storage = torch::kBFloat16;
  torch::ScalarType compute = torch::kFloat32;
  torch::Device device = torch::kCPU;
  int64_t shard_tokens = 1 << 20;
  int64_t batch_tokens = 8192;  // samples are packed into forward passes of at most this many tokens
};

struct PrecomputeReport {
  bool already_complete = false;
  int64_t shards_written = 0, shards_skipped = 0, tokens_written = 0;
  double seconds = 0;
};

// Collective over MPI_COMM_WORLD (MPI must be initialised). Rank 0 writes plan.json first and manifest.json last.
PrecomputeReport precompute_cache(const PrecomputeOptions& options);

}  // namespace carve::trainer
