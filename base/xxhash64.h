// XXH64, the 64-bit xxHash of Yann Collet (https://github.com/Cyan4973/xxHash, doc/xxhash_spec.md), used for cache
// and checkpoint checksums: fast enough to hash every shard as it is written and verified. Streaming and one-shot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace carve {

class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(const void* data, size_t size);
  uint64_t digest() const;

 private:
  uint64_t acc_[4];
  uint64_t seed_;
  uint64_t total_ = 0;
  unsigned char buffer_[32];
  size_t buffered_ = 0;
};

uint64_t xxh64(const void* data, size_t size, uint64_t seed = 0);
// The digest of a whole file, read in large blocks; the error names the path.
uint64_t xxh64_file(const std::string& path);
// 16 lowercase hex digits, the form written to manifests.
std::string hex64(uint64_t value);

}  // namespace carve
