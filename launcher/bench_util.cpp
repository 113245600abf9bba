#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <sstream>

#include "launcher/benches.h"

namespace carve::launcher {

// The best of `repeat` timings, each of 8 back-to-back copies between two synchronizations. The median of
// single copies, each timed on its own, varied by 4.5% between processes on one H100 while the decode steps timed
// in those processes did not (2827-2954 GB/s; docs/gpu-results.md, eleventh session). A floor is the bandwidth the
// device reaches, so the best timing is the one to divide by; batching the copies keeps the synchronizations'
// own time out of it.
double copy_bandwidth(torch::Device device, int warmup, int repeat) {
  const int copies = device.is_cuda() ? 8 : 1;  // (on the CPU there is no synchronization to amortize)
  const int64_t bytes = int64_t{1} << 30;
  auto opts = torch::TensorOptions().dtype(torch::kUInt8).device(device);
  torch::Tensor a = torch::ones({bytes}, opts), b = torch::empty({bytes}, opts);
  for (int i = 0; i < warmup; ++i) b.copy_(a);
  double best = 0.0;
  for (int i = 0; i < std::max(repeat, 1); ++i) {
    synchronize(device);
    const auto start = std::chrono::steady_clock::now();
    for (int c = 0; c < copies; ++c) b.copy_(a);
    synchronize(device);
    const double seconds = seconds_since(start);
    if (best == 0.0 || seconds < best) best = seconds;
  }
  return 2.0 * static_cast<double>(bytes) * copies / best;
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
