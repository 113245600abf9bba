// Checking an activation cache: every file against the manifest, and the cache against a run's inputs.
#pragma once

#include <cstdint>
#include <string>

#include "data/cache_layout.h"

namespace carve::data {

struct VerifyOptions {
  bool checksums = true;  // read every byte (else sizes and HDF5 shapes only)
  // When set, the cache must have been made from this teacher (with this weight prefix) and these samples.
  std::string teacher_dir, weight_prefix, samples_path;
};
struct VerifyReport {
  int64_t shards = 0, files = 0, bytes = 0;
};
// Checks the manifest, every file's size and checksum, and each shard's HDF5 datasets against the plan.
// Throws naming the file (and dataset) at the first problem.
VerifyReport verify_cache(const std::string& cache_dir, const VerifyOptions& options = {});
// Refuses a cache made from another teacher or other samples than the run's.
void check_cache_inputs(const CacheManifest& manifest, const std::string& cache_dir, const std::string& teacher_dir,
                        const std::string& weight_prefix, const std::string& samples_path);

}  // namespace carve::data
