// Precompute the teacher activation cache: run the teacher over a sample file once and store, per shard, the
// residual stream entering each selected layer, the final hidden state and the top-k log-probabilities.
// Under mpirun the ranks take the shards round-robin; a rerun skips finished shards and completes the cache.
// Independent jobs (a SLURM job array) can split the shards further: job `part` of `parts` takes the shards whose
// index mod parts is part, and whichever job finds every shard finished writes the manifest.
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
  int64_t part = 0, parts = 1;  // this job's share of the shards (0 <= part < parts)
};

struct PrecomputeReport {
  bool already_complete = false;
  bool manifest_written = false;  // false after a part whose siblings still have shards to write
  int64_t shards_written = 0, shards_skipped = 0, tokens_written = 0;
  double seconds = 0;
};

// Collective over MPI_COMM_WORLD (MPI must be initialised). Rank 0 writes plan.json first and manifest.json last.
PrecomputeReport precompute_cache(const PrecomputeOptions& options);

}  // namespace carve::trainer
