// The teacher activation cache on disk: its plan (what a precompute run will write), its manifest (what was
// written, with checksums) and the names of its files. docs/formats.md specifies the layout:
//
//   CACHE/plan.json                      the plan, written first; a rerun must agree with it
//   CACHE/manifest.json                  written last, when every shard is complete: the cache is usable
//   CACHE/layer_NNN/shard_MMMMM.h5       the residual stream entering layer NNN (NNN = num_layers: leaving the last)
//   CACHE/final/shard_MMMMM.h5           the final hidden state (after the final norm)
//   CACHE/logits/shard_MMMMM.h5          the teacher's top-k log-probabilities and token indices
//   CACHE/progress/shard_MMMMM.json      one record per finished shard (its files, sizes, checksums)
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace carve::data {

inline constexpr const char* kCacheFormat = "carve-activation-cache";
inline constexpr int64_t kCacheVersion = 1;
inline constexpr const char* kShardFormat = "carve-cache-shard";

// A run of consecutive samples stored together; one file per stream.
struct ShardSpan {
  int64_t index = 0;
  int64_t first_sample = 0;
  int64_t num_samples = 0;
  int64_t first_token = 0;  // in the samples file's token stream
  int64_t tokens = 0;
};

struct ShardFile {
  std::string path;  // relative to the cache folder
  int64_t bytes = 0;
  std::string xxh64;
};

struct CachePlan {
  std::string teacher_hash, teacher_model_type, teacher_path;
  int64_t num_layers = 0, hidden_size = 0, vocab_size = 0;
  std::string samples_hash, samples_path;
  int64_t num_samples = 0, num_tokens = 0;
  std::string dtype;         // "bfloat16" | "float16": hidden states
  std::vector<int64_t> layers;  // stored layer inputs, ascending; num_layers = the last layer's output
  bool final_hidden = false;
  int64_t top_k = 0;
  int64_t shard_tokens = 0;
  std::vector<ShardSpan> shards;

  // The stream names this plan writes: "layer_003", "final", "logits".
  std::vector<std::string> streams() const;
};

struct CacheManifest {
  CachePlan plan;
  std::vector<std::vector<ShardFile>> files;  // per shard, one per stream in plan.streams() order
};

// Splits samples into shards of consecutive samples of at most `shard_tokens` tokens (a longer sample gets a shard
// of its own).
std::vector<ShardSpan> plan_shards(const std::vector<int64_t>& sample_offsets, int64_t shard_tokens);

std::string stream_name_of_layer(int64_t layer);
std::string shard_path(const std::string& stream, int64_t shard);       // "layer_003/shard_00012.h5"
std::string progress_path(int64_t shard);                               // "progress/shard_00012.json"

nlohmann::json plan_to_json(const CachePlan& plan);
CachePlan plan_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json manifest_to_json(const CacheManifest& manifest);
CacheManifest manifest_from_json(const nlohmann::json& j, const std::string& where);
std::vector<ShardFile> shard_files_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json shard_files_to_json(const std::vector<ShardFile>& files);

// "" when equal, else the first difference in words ("top_k: the cache has 8, this run asks for 16").
std::string plan_difference(const CachePlan& cache, const CachePlan& wanted);

// Reads CACHE/manifest.json; a missing manifest means an unfinished precompute and says so.
CacheManifest read_manifest(const std::string& cache_dir);

// Identity hashes (xxh64, hex): of config.json, the weight prefix and every weight file; of a samples file.
std::string teacher_hash(const std::string& teacher_dir, const std::string& weight_prefix);
std::string samples_hash(const std::string& samples_path);

}  // namespace carve::data
