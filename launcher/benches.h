// The benchmarks behind `carve bench <name>`, one file each.
#pragma once

#include <string>
#include <vector>

namespace carve::launcher {

int bench_ssd(const std::vector<std::string>& args);
int bench_cache(const std::vector<std::string>& args);
int bench_distill(const std::vector<std::string>& args);

}  // namespace carve::launcher
