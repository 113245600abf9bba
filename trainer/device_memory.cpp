#include "trainer/device_memory.h"

#ifdef CARVE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

#include "base/error.h"
#endif

namespace carve::trainer {

#ifdef CARVE_WITH_CUDA
namespace {
// The caching allocator's allocated-bytes counters over all its pools. Entry 0 is StatType::AGGREGATE; the enum's
// namespace moved between LibTorch 1.13 and 2.x.
auto allocated_stat(torch::Device device) {
  return c10::cuda::CUDACachingAllocator::getDeviceStats(device.index()).allocated_bytes[0];
}
}  // namespace
#endif

int64_t peak_device_bytes(torch::Device device) {
#ifdef CARVE_WITH_CUDA
  if (device.is_cuda()) return allocated_stat(device).peak;
#endif
  (void)device;
  return 0;
}

void reset_peak_device_bytes(torch::Device device) {
#ifdef CARVE_WITH_CUDA
  if (device.is_cuda()) {
    // The allocator refuses a device it has not served yet: one allocation initialises it.
    torch::empty({1}, torch::TensorOptions().device(device));
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
  }
#endif
  (void)device;
}

int64_t allocated_device_bytes(torch::Device device) {
#ifdef CARVE_WITH_CUDA
  if (device.is_cuda()) return allocated_stat(device).current;
#endif
  (void)device;
  return 0;
}

int64_t total_device_bytes(torch::Device device) {
#ifdef CARVE_WITH_CUDA
  if (device.is_cuda()) {
    const c10::cuda::CUDAGuard guard(device);
    size_t free = 0, total = 0;
    const cudaError_t err = cudaMemGetInfo(&free, &total);
    CARVE_CHECK(err == cudaSuccess, "cudaMemGetInfo on ", device.str(), ": ", cudaGetErrorString(err));
    return static_cast<int64_t>(total);
  }
#endif
  (void)device;
  return 0;
}

void release_cached_device_memory(torch::Device device) {
#ifdef CARVE_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
  (void)device;
}

}  // namespace carve::trainer
