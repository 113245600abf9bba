#include "model/inference_ops.h"

#include "model/kernel_ops.h"

namespace carve::model {

bool uses_inference_kernels(const torch::Tensor& x) {
  return !torch::GradMode::is_enabled() && uses_fused_kernels(x);
}

}  // namespace carve::model
