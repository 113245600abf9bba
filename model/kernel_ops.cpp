// Chooses between carve's CUDA kernels and the LibTorch reference for each Mamba-2 operation.
#include "model/kernel_ops.h"

#include <atomic>
#include <cstdlib>

#include "base/error.h"
#include "model/gated_norm.h"

namespace carve::model {
namespace {

KernelMode initial_mode() {
  const char* env = std::getenv("CARVE_KERNELS");
  return env && *env ? parse_kernel_mode(env, "environment variable CARVE_KERNELS") : KernelMode::fused;
}

std::atomic<KernelMode>& mode_slot() {
  static std::atomic<KernelMode> mode{initial_mode()};
  return mode;
}

std::atomic<bool> poison{false};

bool kernel_dtype(torch::ScalarType t) {
  return t == torch::kFloat || t == torch::kHalf || t == torch::kBFloat16;
}

}  // namespace

KernelMode kernel_mode() { return mode_slot().load(); }
void set_kernel_mode(KernelMode mode) { mode_slot().store(mode); }

KernelMode parse_kernel_mode(const std::string& text, const std::string& what) {
  if (text == "fused") return KernelMode::fused;
  if (text == "reference") return KernelMode::reference;
  throw Error(what + ": expected 'fused' (carve's CUDA kernels on CUDA tensors) or 'reference' (LibTorch ops " +
              "everywhere); got '" + text + "'");
}

const char* kernel_mode_name(KernelMode mode) { return mode == KernelMode::fused ? "fused" : "reference"; }

bool fused_kernels_built() { return fused::built(); }

bool uses_fused_kernels(const torch::Tensor& x) {
  return x.defined() && x.is_cuda() && kernel_dtype(x.scalar_type()) && kernel_mode() == KernelMode::fused &&
         fused::built();
}

void set_poison_kernel_outputs(bool p) { poison.store(p); }
bool poison_kernel_outputs() { return poison.load(); }

SsdOutputs ssd_scan(const SsdInputs& in, bool want_final_state) {
  if (!uses_fused_kernels(in.x)) return ssd_chunked(in, want_final_state);
  validate_ssd_inputs(in, "ssd_scan");
  return fused::ssd_scan(in, want_final_state);
}

SsdForwardPath ssd_scan_forward_path(const SsdInputs& in, bool training) {
  if (!uses_fused_kernels(in.x)) return SsdForwardPath::reference;
  validate_ssd_inputs(in, "ssd_scan_forward_path");
  return fused::ssd_scan_forward_path(in, training);
}

SsdBackwardPath ssd_scan_backward_path(const SsdInputs& in) {
  if (!uses_fused_kernels(in.x)) return SsdBackwardPath::reference;
  validate_ssd_inputs(in, "ssd_scan_backward_path");
  return fused::ssd_scan_backward_path(in);
}

torch::Tensor ssd_decode_step(const SsdStepInputs& in, torch::Tensor& state) {
  if (!uses_fused_kernels(in.x) || state.scalar_type() != torch::kFloat) return ssd_step(in, state);
  validate_ssd_step_inputs(in, state, "ssd_decode_step");
  return fused::ssd_decode_step(in, state);
}

CausalConvOutputs causal_conv(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                              bool silu, const torch::Tensor& seq_idx, const torch::Tensor& initial_state) {
  if (!uses_fused_kernels(x)) return causal_conv1d(x, weight, bias, silu, seq_idx, initial_state);
  validate_causal_conv1d(x, weight, bias, seq_idx, initial_state, "causal_conv");
  return fused::causal_conv(x, weight, bias, silu, seq_idx, initial_state);
}

torch::Tensor causal_conv_decode_step(const torch::Tensor& x, torch::Tensor& state, const torch::Tensor& weight,
                                      const torch::Tensor& bias, bool silu) {
  // The kernel shifts the state in its own dtype, which must be x's.
  if (!uses_fused_kernels(x) || state.scalar_type() != x.scalar_type()) {
    return causal_conv1d_step(x, state, weight, bias, silu);
  }
  validate_causal_conv1d_step(x, state, weight, bias, "causal_conv_decode_step");
  return fused::causal_conv_decode_step(x, state, weight, bias, silu);
}

torch::Tensor gated_norm(const torch::Tensor& y, const torch::Tensor& z, const torch::Tensor& weight,
                         int64_t group_size, double eps, bool norm_before_gate) {
  if (!uses_fused_kernels(y)) return gated_rmsnorm(y, z, weight, group_size, eps, norm_before_gate);
  const int64_t gs = validate_gated_rmsnorm(y, z, weight, group_size, eps, "gated_norm");
  return fused::gated_norm(y, z, weight, gs, eps, norm_before_gate);
}

}  // namespace carve::model
