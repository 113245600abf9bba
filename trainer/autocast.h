// bf16 autocast on CUDA for a scope: matrix products run in bfloat16 while parameters (fp32 master weights) and
// reductions stay float32. A no-op on the CPU and in builds without CUDA.
#pragma once

#include <torch/torch.h>

namespace carve::trainer {

class AutocastGuard {
 public:
  AutocastGuard(torch::Device device, bool enabled);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_ = false;
  bool previous_ = false;
};

}  // namespace carve::trainer
