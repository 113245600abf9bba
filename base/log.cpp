#include "base/log.h"

#include <cstdio>
#include <mutex>

namespace carve::log {
namespace {
int g_rank = -1;
std::mutex g_mutex;
}  // namespace

void set_rank(int r) { g_rank = r; }
int rank() { return g_rank; }

void write(const char* tag, const std::string& line) {
  std::lock_guard<std::mutex> lock(g_mutex);
  // One fprintf per line keeps lines from different threads whole; stderr is unbuffered so mpirun interleaves
  // whole lines in order of arrival.
  if (g_rank >= 0)
    std::fprintf(stderr, "[r%d][%s] %s\n", g_rank, tag, line.c_str());
  else
    std::fprintf(stderr, "[%s] %s\n", tag, line.c_str());
}

}  // namespace carve::log
