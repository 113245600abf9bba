#include "trainer/device_memory.h"

#ifdef CARVE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace carve::trainer {

int64_t peak_device_bytes(torch::Device device) {
#ifdef CARVE_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    // Entry 0 is StatType::AGGREGATE (all pools); the enum's namespace moved between LibTorch 1.13 and 2.x.
    return stats.allocated_bytes[0].peak;
  }
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

}  // namespace carve::trainer
