/*
 * The Mamba-2 numerics the mixers call: SSD scan, causal conv, gated RMSNorm and their decode steps. Each runs
 * carve's CUDA kernels (kernels/, through autograd functions in model/cuda/) for CUDA tensors of float32, float16
 * or bfloat16, and the LibTorch reference (model/ssd.h, causal_conv.h, gated_norm.h) otherwise: on CPU, for
 * float64, in a build without CUDA, or when the kernel mode is `reference` (for comparisons and bisecting).
 */
#pragma once

#include <torch/torch.h>

#include <string>

#include "model/causal_conv.h"
#include "model/ssd.h"

namespace carve::model {

enum class KernelMode { fused, reference };

// Process-wide; starts from the environment variable CARVE_KERNELS (fused | reference), default fused.
KernelMode kernel_mode();
void set_kernel_mode(KernelMode mode);
KernelMode parse_kernel_mode(const std::string& text, const std::string& what);
const char* kernel_mode_name(KernelMode mode);

// True when this build has the CUDA kernels.
bool fused_kernels_built();
// True when a call with this tensor would take the kernels.
bool uses_fused_kernels(const torch::Tensor& x);

// Tests: fill every kernel output and workspace with NaN before the kernels run, so a value they fail to write
// shows up instead of passing by luck.
void set_poison_kernel_outputs(bool poison);
bool poison_kernel_outputs();

SsdOutputs ssd_scan(const SsdInputs& in, bool want_final_state);
// Which forward ssd_scan of these inputs takes without autograd (training: with it, keeping what the backward reads):
// the reference (no kernels), the chunk-parallel kernels, or one sweep per head on mma.sync or on wgmma
// (kernels/ssd_scan.h): for tests and benchmarks that must know which forward they measured.
enum class SsdForwardPath { reference, chunk_parallel, sweep, sweep_wgmma };
SsdForwardPath ssd_scan_forward_path(const SsdInputs& in, bool training = false);
// Which backward the kernels run for these inputs (kernels/ssd_scan.h): the reference (no kernels), the chunk-level
// kernels, the state gradient as one reverse sweep per head (version 13), or the state gradient and dx in that sweep
// (version 14): for tests and benchmarks that must know which backward they measured.
enum class SsdBackwardPath { reference, chunk_parallel, state_grad_sweep, state_grad_and_dx_sweep };
SsdBackwardPath ssd_scan_backward_path(const SsdInputs& in);
torch::Tensor ssd_decode_step(const SsdStepInputs& in, torch::Tensor& state);
CausalConvOutputs causal_conv(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                              bool silu, const torch::Tensor& seq_idx = {}, const torch::Tensor& initial_state = {});
torch::Tensor causal_conv_decode_step(const torch::Tensor& x, torch::Tensor& state, const torch::Tensor& weight,
                                      const torch::Tensor& bias, bool silu);
torch::Tensor gated_norm(const torch::Tensor& y, const torch::Tensor& z, const torch::Tensor& weight,
                         int64_t group_size, double eps, bool norm_before_gate);

// The kernel implementations behind the functions above (model/cuda/ in CUDA builds; model/no_cuda/ otherwise,
// where they are never reached). Arguments are already validated.
namespace fused {
bool built();
SsdOutputs ssd_scan(const SsdInputs& in, bool want_final_state);
SsdForwardPath ssd_scan_forward_path(const SsdInputs& in, bool training);
SsdBackwardPath ssd_scan_backward_path(const SsdInputs& in);
torch::Tensor ssd_decode_step(const SsdStepInputs& in, torch::Tensor& state);
CausalConvOutputs causal_conv(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                              bool silu, const torch::Tensor& seq_idx, const torch::Tensor& initial_state);
torch::Tensor causal_conv_decode_step(const torch::Tensor& x, torch::Tensor& state, const torch::Tensor& weight,
                                      const torch::Tensor& bias, bool silu);
torch::Tensor gated_norm(const torch::Tensor& y, const torch::Tensor& z, const torch::Tensor& weight,
                         int64_t group_size, double eps, bool norm_before_gate);
}  // namespace fused

}  // namespace carve::model
