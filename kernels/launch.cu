#include "kernels/launch.cuh"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

namespace carve::kernels {
namespace {

constexpr int kMaxDevices = 64;

// An attribute of the current device, looked up once per device and attribute (0: not yet).
template <cudaDeviceAttr Attribute>
int device_attribute() {
  static std::atomic<int> values[kMaxDevices];
  int device = 0;
  CARVE_CUDA_CHECK(cudaGetDevice(&device));
  CARVE_KERNEL_REQUIRE(device >= 0 && device < kMaxDevices, "launch: device index beyond the table of devices");
  int value = values[device].load(std::memory_order_relaxed);
  if (value == 0) {
    CARVE_CUDA_CHECK(cudaDeviceGetAttribute(&value, Attribute, device));
    values[device].store(value, std::memory_order_relaxed);
  }
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

}  // namespace

bool dependent_launch_enabled() { return dependent_launch_allowed_by_environment() && capability_major() >= 9; }

bool clusters_supported() { return capability_major() >= 9; }

int shared_carveout_for(int blocks, size_t bytes_per_block) {
  const long per_sm = device_attribute<cudaDevAttrMaxSharedMemoryPerMultiprocessor>();
  const long reserved = device_attribute<cudaDevAttrReservedSharedMemoryPerBlock>();
  const long needed = blocks * (static_cast<long>(bytes_per_block) + reserved);
  return static_cast<int>(std::min(100L, (100 * needed + per_sm - 1) / per_sm));
}

}  // namespace carve::kernels
