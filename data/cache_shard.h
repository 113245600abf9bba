// One shard file of one stream of the activation cache: written under a temporary name and renamed when complete,
// read back with every dataset's shape checked against the cache plan.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/cache_layout.h"
#include "data/hdf5_file.h"

namespace carve::data {

class CacheShardWriter {
 public:
  // `local_offsets` [num_samples + 1] are the shard's sample boundaries, starting at 0.
  CacheShardWriter(const std::string& cache_dir, const CachePlan& plan, const ShardSpan& span,
                   const std::string& stream, const std::vector<int64_t>& local_offsets);
  ~CacheShardWriter();  // an unfinished shard's temporary file is removed
  // Rows [row, row + n) of a hidden-state stream: [n, hidden] in the plan's dtype, CPU.
  void write_hidden(int64_t row, const torch::Tensor& rows);
  // Rows of the logits stream: log-probabilities [n, k] float32 and indices [n, k] int32, CPU.
  void write_logits(int64_t row, const torch::Tensor& logprobs, const torch::Tensor& indices);
  // Closes the file and renames it into place; returns its size and checksum.
  ShardFile finish();

 private:
  std::string cache_dir_, relative_, final_path_, tmp_path_;
  std::optional<File> file_;
  std::vector<Dataset> datasets_;
  bool finished_ = false;
};

class CacheShardReader {
 public:
  CacheShardReader(const std::string& path, const CachePlan& plan, const ShardSpan& span, const std::string& stream);
  ~CacheShardReader();
  CacheShardReader(const CacheShardReader&) = delete;
  CacheShardReader& operator=(const CacheShardReader&) = delete;
  const std::string& path() const { return path_; }
  const std::vector<int64_t>& offsets() const { return offsets_; }
  // Hidden rows [row, row + n) as raw 16-bit values into `out` ([n, hidden]).
  void read_hidden(int64_t row, int64_t count, void* out) const;
  void read_logits(int64_t row, int64_t count, float* logprobs, int32_t* indices) const;

 private:
  std::string path_;
  std::optional<File> file_;
  std::vector<Dataset> datasets_;
  std::vector<int64_t> offsets_;
  // Rows of the contiguous little-endian datasets that carve writes are read with pread at these byte offsets
  // (HDF5's per-call overhead halves the streaming rate otherwise); -1 falls back to HDF5.
  int fd_ = -1;
  std::vector<int64_t> raw_offset_;
  std::vector<int64_t> row_bytes_;
  void read_rows(size_t dataset, int64_t row, int64_t count, Elem type, void* out) const;
};

}  // namespace carve::data
