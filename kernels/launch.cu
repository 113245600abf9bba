#include "kernels/launch.cuh"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

namespace carve::kernels {
namespace {

constexpr int kMaxDevices = 64;

// An attribute of the current device, looked up once per device and attribute. The table holds value + 1, so that
// 0 means "not yet" and attributes that are 0 (compute capability 9.0's minor version) are kept as well.
template <cudaDeviceAttr Attribute>
int device_attribute() {
  static std::atomic<int> values_plus_one[kMaxDevices];
  int device = 0;
  CARVE_CUDA_CHECK(cudaGetDevice(&device));
  CARVE_KERNEL_REQUIRE(device >= 0 && device < kMaxDevices, "launch: device index beyond the table of devices");
  const int known = values_plus_one[device].load(std::memory_order_relaxed);
  if (known != 0) return known - 1;
  int value = 0;
  CARVE_CUDA_CHECK(cudaDeviceGetAttribute(&value, Attribute, device));
  values_plus_one[device].store(value + 1, std::memory_order_relaxed);
  return value;
}

int capability_major() { return device_attribute<cudaDevAttrComputeCapabilityMajor>(); }

bool dependent_launch_allowed_by_environment() {
  static const bool allowed = [] {
    const char* v = std::getenv("CARVE_DEPENDENT_LAUNCH");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return allowed;
}

// The attribute values set so far, per (device, kernel, attribute).
std::mutex attributes_mutex;
std::map<std::tuple<int, const void*, int>, int>& attributes_set() {
  static std::map<std::tuple<int, const void*, int>, int> set;
  return set;
}

// Sets `attribute` to `value` unless it already holds it (or, with `raise_only`, a larger value).
void set_attribute(const void* kernel, cudaFuncAttribute attribute, int value, bool raise_only) {
  int device = 0;
  CARVE_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(attributes_mutex);
  const auto key = std::make_tuple(device, kernel, static_cast<int>(attribute));
  auto& set = attributes_set();
  const auto it = set.find(key);
  if (it != set.end() && (it->second == value || (raise_only && it->second > value))) return;
  CARVE_CUDA_CHECK(cudaFuncSetAttribute(kernel, attribute, value));
  set[key] = value;
}

}  // namespace

bool dependent_launch_enabled() { return dependent_launch_allowed_by_environment() && capability_major() >= 9; }

bool clusters_supported() { return capability_major() >= 9; }

int device_code_value(const void* symbol) {
  int device = 0;
  CARVE_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, int> known;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(device, symbol);
  const auto it = known.find(key);
  if (it != known.end()) return it->second;
  int value = 0;
  CARVE_CUDA_CHECK(cudaMemcpyFromSymbol(&value, symbol, sizeof value));
  return known[key] = value;
}

bool compute_capability_90() {
  return capability_major() == 9 && device_attribute<cudaDevAttrComputeCapabilityMinor>() == 0;
}

int sm_count() { return device_attribute<cudaDevAttrMultiProcessorCount>(); }

size_t max_shared_per_block() {
  return static_cast<size_t>(device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>());
}

void allow_dynamic_shared(const void* kernel, size_t bytes) {
  if (bytes > 0)
    set_attribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes), /*raise_only=*/true);
}

void prefer_carveout(const void* kernel, int percent) {
  set_attribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, percent, /*raise_only=*/false);
}

int shared_carveout_for(int blocks, size_t bytes_per_block) {
  const long per_sm = device_attribute<cudaDevAttrMaxSharedMemoryPerMultiprocessor>();
  const long reserved = device_attribute<cudaDevAttrReservedSharedMemoryPerBlock>();
  const long needed = blocks * (static_cast<long>(bytes_per_block) + reserved);
  return static_cast<int>(std::min(100L, (100 * needed + per_sm - 1) / per_sm));
}

}  // namespace carve::kernels
