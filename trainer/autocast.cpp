#include "trainer/autocast.h"

#include <ATen/autocast_mode.h>

namespace carve::trainer {

AutocastGuard::AutocastGuard(torch::Device device, bool enabled) {
#if defined(CARVE_WITH_CUDA) && TORCH_VERSION_MAJOR >= 2
  if (!enabled || !device.is_cuda()) return;
  active_ = true;
  previous_ = at::autocast::is_autocast_enabled(at::kCUDA);
  at::autocast::set_autocast_enabled(at::kCUDA, true);
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  at::autocast::increment_nesting();
#else
  (void)device;
  (void)enabled;
#endif
}

AutocastGuard::~AutocastGuard() {
#if defined(CARVE_WITH_CUDA) && TORCH_VERSION_MAJOR >= 2
  if (!active_) return;
  // Casts of the weights are cached while autocast is on; drop them when the outermost scope ends.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(at::kCUDA, previous_);
#endif
}

}  // namespace carve::trainer
