// A build without CUDA has no kernels: model/kernel_ops.cpp and model/inference_ops.cpp never call these
// (fused::built() is false).
#include "base/error.h"
#include "model/inference_ops.h"
#include "model/kernel_ops.h"

namespace carve::model::fused {
namespace {
[[noreturn]] void absent() { throw Error("carve was built without CUDA: its CUDA kernels are not available"); }
}  // namespace

bool built() { return false; }
SsdOutputs ssd_scan(const SsdInputs&, bool) { absent(); }
SsdForwardPath ssd_scan_forward_path(const SsdInputs&, bool) { absent(); }
SsdBackwardPath ssd_scan_backward_path(const SsdInputs&) { absent(); }
torch::Tensor ssd_decode_step(const SsdStepInputs&, torch::Tensor&) { absent(); }
CausalConvOutputs causal_conv(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, bool,
                              const torch::Tensor&, const torch::Tensor&) {
  absent();
}
torch::Tensor causal_conv_decode_step(const torch::Tensor&, torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                      bool) {
  absent();
}
torch::Tensor gated_norm(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, int64_t, double, bool) {
  absent();
}

torch::Tensor decode_attention(const DecodeAttentionInputs&) { absent(); }
bool decode_attention_supports(int64_t, int64_t, int64_t) { return false; }
bool gemv_applies(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) { return false; }
bool gemv_applies(const torch::Tensor&, const std::vector<GemvWeight>&, const GemvNormStep*) { return false; }
torch::Tensor gemv(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) { absent(); }
bool gemv_norm_fits(const torch::Tensor&) { return false; }
torch::Tensor gemv_parts(const torch::Tensor&, const std::vector<GemvWeight>&, const GemvConvStep*,
                         const torch::Tensor&, const GemvNormStep*) {
  absent();
}
torch::Tensor gemv_swiglu(const torch::Tensor&, const GemvWeight&, const GemvWeight&, const GemvNormStep*) {
  absent();
}
torch::Tensor gemv_qkv_rope(const torch::Tensor&, const std::vector<GemvWeight>&, const DecodeAttentionInputs&,
                            const GemvNormStep*) {
  absent();
}
torch::Tensor gemv_residual(const torch::Tensor&, const GemvWeight&, const torch::Tensor&) { absent(); }
torch::Tensor rms_norm(const torch::Tensor&, const torch::Tensor&, double) { absent(); }
torch::Tensor silu_mul(const torch::Tensor&, const torch::Tensor&) { absent(); }
std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                                     double) {
  absent();
}
torch::Tensor argmax(const torch::Tensor&) { absent(); }
bool mamba_step_applies(const MambaStepInputs&) { return false; }
torch::Tensor mamba_step(const MambaStepInputs&) { absent(); }

}  // namespace carve::model::fused
