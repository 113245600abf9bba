#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "base/error.h"
#include "tests/fuzz/fuzz_targets.h"

namespace carve::fuzz {

std::string scratch_path(const std::string& name) {
  const char* tmp = std::getenv("TMPDIR");
  return std::string(tmp && *tmp ? tmp : "/tmp") + "/carve_fuzz_" + name + "_" + std::to_string(::getpid());
}

void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  CARVE_CHECK(f != nullptr, "cannot create ", path);
  const size_t written = size ? std::fwrite(data, 1, size, f) : 0;
  const bool closed = std::fclose(f) == 0;
  CARVE_CHECK(written == size && closed, "cannot write ", path);
}

}  // namespace carve::fuzz
