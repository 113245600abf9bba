#include "data/cache_verify.h"

#include "base/error.h"
#include "base/fs.h"
#include "base/xxhash64.h"
#include "data/cache_shard.h"

namespace carve::data {

VerifyReport verify_cache(const std::string& cache_dir, const VerifyOptions& options) {
  auto manifest = read_manifest(cache_dir);
  VerifyReport report;
  const auto streams = manifest.plan.streams();
  for (size_t i = 0; i < manifest.plan.shards.size(); ++i) {
    for (size_t s = 0; s < streams.size(); ++s) {
      const auto& f = manifest.files[i][s];
      const auto path = fs::join(cache_dir, f.path);
      CARVE_CHECK(fs::exists(path), path, ": missing (listed in ", fs::join(cache_dir, "manifest.json"), ")");
      const auto size = fs::file_size(path);
      CARVE_CHECK(size == f.bytes, path, ": ", size, " bytes, the manifest says ", f.bytes,
                  " (truncated or replaced)");
      if (options.checksums) {
        const auto sum = hex64(xxh64_file(path));
        CARVE_CHECK(sum == f.xxh64, path, ": checksum xxh64 ", sum, " differs from the manifest's ", f.xxh64,
                    " (the file is corrupted)");
      }
      CacheShardReader reader(path, manifest.plan, manifest.plan.shards[i], streams[s]);
      report.files += 1;
      report.bytes += size;
    }
    report.shards += 1;
  }
  check_cache_inputs(manifest, cache_dir, options.teacher_dir, options.weight_prefix, options.samples_path);
  return report;
}

void check_cache_inputs(const CacheManifest& manifest, const std::string& cache_dir, const std::string& teacher_dir,
                        const std::string& weight_prefix, const std::string& samples_path) {
  if (!teacher_dir.empty()) {
    const auto hash = teacher_hash(teacher_dir, weight_prefix);
    CARVE_CHECK(hash == manifest.plan.teacher_hash, cache_dir, ": made from another teacher (",
                manifest.plan.teacher_path, ", hash ", manifest.plan.teacher_hash, ") than --teacher ", teacher_dir,
                " (hash ", hash, "); precompute a cache for this teacher");
  }
  if (!samples_path.empty()) {
    const auto hash = samples_hash(samples_path);
    CARVE_CHECK(hash == manifest.plan.samples_hash, cache_dir, ": made from other samples (",
                manifest.plan.samples_path, ", hash ", manifest.plan.samples_hash, ") than --samples ", samples_path,
                " (hash ", hash, ")");
  }
}

}  // namespace carve::data
