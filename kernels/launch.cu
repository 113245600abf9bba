#include "kernels/launch.cuh"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace carve::kernels {
namespace {

constexpr int kMaxDevices = 64;

// Compute capability major of each device, looked up once (0: not yet).
int capability_major() {
  static std::atomic<int> majors[kMaxDevices];
  int device = 0;
  CARVE_CUDA_CHECK(cudaGetDevice(&device));
  CARVE_KERNEL_REQUIRE(device >= 0 && device < kMaxDevices, "launch: device index beyond the table of devices");
  int major = majors[device].load(std::memory_order_relaxed);
  if (major == 0) {
    CARVE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    majors[device].store(major, std::memory_order_relaxed);
  }
  return major;
}

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

}  // namespace carve::kernels
