#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <sstream>
#include <vector>

#include "launcher/benches.h"

namespace carve::launcher {

double copy_bandwidth(torch::Device device, int warmup, int repeat) {
  const int64_t bytes = int64_t{1} << 30;
  auto opts = torch::TensorOptions().dtype(torch::kUInt8).device(device);
  torch::Tensor a = torch::ones({bytes}, opts), b = torch::empty({bytes}, opts);
  for (int i = 0; i < warmup; ++i) b.copy_(a);
  std::vector<double> seconds;
  for (int i = 0; i < std::max(repeat, 1); ++i) {
    synchronize(device);
    const auto start = std::chrono::steady_clock::now();
    b.copy_(a);
    synchronize(device);
    seconds.push_back(seconds_since(start));
  }
  std::sort(seconds.begin(), seconds.end());
  return 2.0 * static_cast<double>(bytes) / seconds[seconds.size() / 2];
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void synchronize(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

std::string fmt(double v, int precision) {
  if (std::isnan(v)) return "-";
  std::ostringstream o;
  o << std::fixed << std::setprecision(precision) << v;
  return o.str();
}

}  // namespace carve::launcher
