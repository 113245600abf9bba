/*
 * LibTorch glue for carve's CUDA kernels: converts and lays out the tensors, allocates outputs and workspaces
 * through LibTorch's caching allocator, launches on the current stream, and wires forward and backward into
 * autograd. Parameters (A, D, dt_bias, conv and norm weights) are handed to the kernels in float32; the conversion
 * happens outside the autograd functions so autograd returns their gradients in the parameters' own dtype.
 */
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/torch.h>

#include <algorithm>
#include <limits>

#include "base/error.h"
#include "kernels/causal_conv.h"
#include "kernels/gated_norm.h"
#include "kernels/ssd_scan.h"
#include "model/gated_norm.h"
#include "model/kernel_ops.h"
#include "model/cuda/glue.h"
#include "model/tensor_util.h"

namespace carve::model::fused {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool any_requires_grad(std::initializer_list<Tensor> ts) {
  if (!torch::GradMode::is_enabled()) return false;
  for (const auto& t : ts)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

// ------------------------------------------------------------------------------------------------------------
// SSD scan.

struct ScanTensors {
  Tensor x, dt, A, B, C, D, z, dt_bias, init, seg;
  bool softplus = false;
  int64_t q = 0;
};

// The forward's arguments over the tensors (and the workspace views kept for the backward).
kernels::SsdScanForward forward_args(const ScanTensors& t) {
  kernels::SsdScanForward f;
  f.shape = {static_cast<int>(t.x.size(0)), static_cast<int>(t.x.size(1)), static_cast<int>(t.x.size(2)),
             static_cast<int>(t.x.size(3)), static_cast<int>(t.B.size(2)), static_cast<int>(t.B.size(3)),
             static_cast<int>(t.q)};
  f.dtype = element_of(t.x);
  f.x = t.x.data_ptr(), f.dt = t.dt.data_ptr(), f.A = t.A.data_ptr<float>();
  f.B = t.B.data_ptr(), f.C = t.C.data_ptr();
  f.D = ptr_or_null<float>(t.D), f.D_per_channel = given(t.D) && t.D.dim() == 2;
  f.z = ptr_or_null(t.z), f.dt_bias = ptr_or_null<float>(t.dt_bias), f.dt_softplus = t.softplus;
  f.initial_state = ptr_or_null<float>(t.init), f.seg = ptr_or_null<int>(t.seg);
  return f;
}

// The scan's inputs in the layouts and types the kernels take.
ScanTensors scan_tensors(const SsdInputs& in) {
  const auto type = in.x.scalar_type();
  const int64_t l = in.x.size(1);
  ScanTensors t;
  t.x = in.x.contiguous(), t.dt = as(in.dt, type, t.x), t.B = as(in.B, type, t.x), t.C = as(in.C, type, t.x);
  t.z = as(in.z, type, t.x), t.A = as(in.A, torch::kFloat, t.x), t.D = as(in.D, torch::kFloat, t.x);
  t.dt_bias = as(in.dt_bias, torch::kFloat, t.x), t.init = as(in.initial_state, torch::kFloat, t.x);
  t.seg = in.seq_idx.defined() ? segment_ids(in.seq_idx).to(torch::kInt).contiguous()
                               : torch::empty({0}, t.x.options().dtype(torch::kInt));
  t.softplus = in.dt_softplus;
  t.q = std::min<int64_t>(std::min<int64_t>(in.chunk_size, l), 1024);
  return t;
}

struct ScanWorkspace {
  Tensor dtp, cum, states, cb, final_state;
};

ScanWorkspace scan_workspace(const kernels::SsdScanForward& f, const torch::TensorOptions& f32) {
  const auto& s = f.shape;
  const int64_t c = s.chunks();
  ScanWorkspace w;
  w.dtp = fresh({s.b, s.h, c, s.q}, f32);
  w.cum = fresh({s.b, s.h, c, s.q}, f32.dtype(torch::kDouble));
  w.states = fresh({s.b, c, s.h, s.p, s.n}, f32);
  if (kernels::ssd_scan_uses_cb(s, f.dtype)) w.cb = fresh({s.b, c, s.g, s.q, s.q}, f32);
  w.final_state = fresh({s.b, s.h, s.p, s.n}, f32);
  return w;
}

void bind(kernels::SsdScanForward& f, const ScanWorkspace& w) {
  f.dtp = w.dtp.data_ptr<float>(), f.cum = w.cum.data_ptr<double>(), f.states = w.states.data_ptr<float>();
  f.cb = mut_or_null<float>(w.cb), f.final_state = w.final_state.data_ptr<float>();
}

class SsdScanFunction : public torch::autograd::Function<SsdScanFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor D,
                               Tensor z, Tensor dt_bias, Tensor init, Tensor seg, bool softplus, int64_t q) {
    ScanTensors t{x, dt, A, B, C, D, z, dt_bias, init, seg, softplus, q};
    auto f = forward_args(t);
    const auto f32 = x.options().dtype(torch::kFloat);
    ScanWorkspace w = scan_workspace(f, f32);
    bind(f, w);
    Tensor out = fresh(x.sizes(), x.options()), y_ssm = fresh(x.sizes(), f32);
    f.out = out.data_ptr(), f.y_ssm = y_ssm.data_ptr<float>();
    // Only the forward reads the spans' local states (the sweep in spans); the backward reads the chunk states.
    Tensor span_states;
    if (const size_t floats = kernels::ssd_scan_forward_span_floats(f)) {
      span_states = fresh({static_cast<int64_t>(floats)}, f32);
      f.span_states = span_states.data_ptr<float>();
    }
    kernels::ssd_scan_forward(f, stream());
    ctx->save_for_backward({x, dt, A, B, C, D, z, dt_bias, init, seg, y_ssm, w.dtp, w.cum, w.states, w.cb,
                            w.final_state});
    ctx->saved_data["softplus"] = softplus;
    ctx->saved_data["q"] = q;
    // The caller may advance the returned final state in place (decoding); the saved one must stay as it is.
    return {out, w.final_state.clone()};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    ScanTensors t{s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9],
                  ctx->saved_data["softplus"].toBool(), ctx->saved_data["q"].toInt()};
    auto f = forward_args(t);
    f.y_ssm = s[10].data_ptr<float>();
    f.dtp = s[11].data_ptr<float>(), f.cum = s[12].data_ptr<double>(), f.states = s[13].data_ptr<float>();
    f.cb = mut_or_null<float>(s[14]), f.final_state = s[15].data_ptr<float>();
    const Tensor& x = t.x;
    const auto f32 = x.options().dtype(torch::kFloat);
    Tensor dout = grads[0].defined() ? grads[0].to(x.scalar_type()).contiguous() : torch::zeros_like(x);
    Tensor dfinal = grads[1].defined() ? grads[1].to(torch::kFloat).contiguous() : Tensor();

    const auto& sh = f.shape;
    const int64_t c = sh.chunks();
    Tensor dx = fresh(x.sizes(), x.options()), ddt = fresh(t.dt.sizes(), t.dt.options());
    Tensor dB = fresh(t.B.sizes(), t.B.options()), dC = fresh(t.C.sizes(), t.C.options());
    Tensor dz = given(t.z) ? fresh(t.z.sizes(), t.z.options()) : Tensor();
    Tensor dA = fresh({sh.h}, f32);
    Tensor dD = given(t.D) ? fresh(t.D.sizes(), f32) : Tensor();
    Tensor ddt_bias = given(t.dt_bias) ? fresh({sh.h}, f32) : Tensor();
    Tensor dinit = given(t.init) ? fresh(t.init.sizes(), f32) : Tensor();
    Tensor dy_lo = f.dtype != kernels::ElementType::f32 ? fresh(x.sizes(), x.options()) : Tensor();
    Tensor dy = fresh(x.sizes(), x.options());
    Tensor dyy = fresh({sh.b, sh.h, c, sh.q}, f32), ddt_u = fresh({sh.b, sh.h, c, sh.q}, f32);
    Tensor end_term = fresh({sh.b, sh.h, c}, f32), dstates = fresh({sh.b, c, sh.h, sh.p, sh.n}, f32);
    Tensor dcb = kernels::ssd_scan_backward_uses_dcb(sh, f.dtype) ? fresh({sh.b, c, sh.g, sh.q, sh.q}, f32) : Tensor();

    kernels::SsdScanBackward b;
    b.fwd = &f, b.dout = dout.data_ptr(), b.dfinal_state = ptr_or_null<float>(dfinal);
    b.dx = dx.data_ptr(), b.ddt = ddt.data_ptr(), b.dB = dB.data_ptr(), b.dC = dC.data_ptr(), b.dz = mut_or_null(dz);
    b.dA = dA.data_ptr<float>(), b.dD = mut_or_null<float>(dD), b.ddt_bias = mut_or_null<float>(ddt_bias);
    b.dinitial_state = mut_or_null<float>(dinit);
    b.dy = dy.data_ptr(), b.dy_lo = mut_or_null(dy_lo);
    b.dyy = dyy.data_ptr<float>(), b.ddt_u = ddt_u.data_ptr<float>();
    b.end_term = end_term.data_ptr<float>(), b.dstates = dstates.data_ptr<float>(), b.dcb = mut_or_null<float>(dcb);
    Tensor span_grads;
    if (const size_t floats = kernels::ssd_scan_backward_span_floats(f)) {
      span_grads = fresh({static_cast<int64_t>(floats)}, f32);
      b.span_grads = span_grads.data_ptr<float>();
    }
    kernels::ssd_scan_backward(b, stream());
    return {dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit, Tensor(), Tensor(), Tensor()};
  }
};

// ------------------------------------------------------------------------------------------------------------
// Causal conv.

kernels::CausalConvForward conv_args(const Tensor& x, const Tensor& w, const Tensor& bias, bool silu,
                                     const Tensor& seg, const Tensor& init) {
  kernels::CausalConvForward f;
  f.b = static_cast<int>(x.size(0)), f.l = static_cast<int>(x.size(1)), f.c = static_cast<int>(x.size(2));
  f.k = static_cast<int>(w.size(1));
  f.dtype = element_of(x);
  f.x = x.data_ptr(), f.weight = w.data_ptr<float>(), f.bias = ptr_or_null<float>(bias), f.silu = silu;
  f.seg = ptr_or_null<int>(seg), f.initial_state = ptr_or_null(init);
  return f;
}

class CausalConvFunction : public torch::autograd::Function<CausalConvFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, Tensor x, Tensor w, Tensor bias, Tensor init, Tensor seg,
                               bool silu) {
    auto f = conv_args(x, w, bias, silu, seg, init);
    Tensor y = fresh(x.sizes(), x.options());
    Tensor final_state = fresh({x.size(0), x.size(2), w.size(1) - 1}, x.options());
    f.y = y.data_ptr(), f.final_state = final_state.numel() ? final_state.data_ptr() : nullptr;
    kernels::causal_conv_forward(f, stream());
    ctx->save_for_backward({x, w, bias, init, seg});
    ctx->saved_data["silu"] = silu;
    return {y, final_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const Tensor &x = s[0], &w = s[1], &bias = s[2], &init = s[3], &seg = s[4];
    auto f = conv_args(x, w, bias, ctx->saved_data["silu"].toBool(), seg, init);
    Tensor dy = grads[0].defined() ? grads[0].to(x.scalar_type()).contiguous() : torch::zeros_like(x);
    Tensor dfinal = grads[1].defined() && grads[1].numel() ? grads[1].to(x.scalar_type()).contiguous() : Tensor();
    const auto f32 = x.options().dtype(torch::kFloat);
    Tensor dx = fresh(x.sizes(), x.options()), dw = fresh(w.sizes(), f32);
    Tensor dbias = given(bias) ? fresh(bias.sizes(), f32) : Tensor();
    Tensor dinit = given(init) ? fresh(init.sizes(), init.options()) : Tensor();
    Tensor dpre = kernels::causal_conv_backward_uses_dpre(f, dy.data_ptr(), dx.data_ptr()) ? fresh(x.sizes(), f32)
                                                                                            : Tensor();
    kernels::CausalConvBackward b;
    b.fwd = &f, b.dy = dy.data_ptr(), b.dfinal_state = ptr_or_null(dfinal), b.dx = dx.data_ptr();
    b.dweight = dw.data_ptr<float>(), b.dbias = mut_or_null<float>(dbias), b.dinitial_state = mut_or_null(dinit);
    b.dpre = mut_or_null<float>(dpre);
    kernels::causal_conv_backward(b, stream());
    return {dx, dw, dbias, dinit, Tensor(), Tensor()};
  }
};

// ------------------------------------------------------------------------------------------------------------
// Gated RMSNorm.

kernels::GatedNormForward norm_args(const Tensor& y, const Tensor& z, const Tensor& w, int64_t group, double eps,
                                    bool before) {
  kernels::GatedNormForward f;
  f.d = static_cast<int>(y.size(-1));
  f.rows = y.numel() / f.d;
  f.group = static_cast<int>(group);
  f.dtype = element_of(y);
  f.y = y.data_ptr(), f.z = ptr_or_null(z), f.weight = w.data_ptr<float>();
  f.weight_shared = w.size(0) != y.size(-1);
  f.eps = static_cast<float>(eps), f.norm_before_gate = before;
  return f;
}

class GatedNormFunction : public torch::autograd::Function<GatedNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, Tensor y, Tensor z, Tensor w, int64_t group, double eps,
                               bool before) {
    auto f = norm_args(y, z, w, group, eps, before);
    Tensor out = fresh(y.sizes(), y.options());
    Tensor rstd = fresh({f.rows, f.d / f.group}, y.options().dtype(torch::kFloat));
    f.out = out.data_ptr(), f.rstd = rstd.data_ptr<float>();
    kernels::gated_norm_forward(f, stream());
    ctx->save_for_backward({y, z, w, rstd});
    ctx->saved_data["group"] = group;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["before"] = before;
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const Tensor &y = s[0], &z = s[1], &w = s[2], &rstd = s[3];
    auto f = norm_args(y, z, w, ctx->saved_data["group"].toInt(), ctx->saved_data["eps"].toDouble(),
                       ctx->saved_data["before"].toBool());
    f.rstd = rstd.data_ptr<float>();
    Tensor dout = grads[0].to(y.scalar_type()).contiguous();
    Tensor dy = fresh(y.sizes(), y.options()), dz = given(z) ? fresh(z.sizes(), z.options()) : Tensor();
    Tensor dw = fresh(w.sizes(), w.options());
    kernels::GatedNormBackward b;
    b.fwd = &f, b.dout = dout.data_ptr(), b.dy = dy.data_ptr(), b.dz = mut_or_null(dz);
    b.dweight = dw.data_ptr<float>();
    kernels::gated_norm_backward(b, stream());
    return {dy, dz, dw, Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

bool built() { return true; }

// Stands for the buffers a scan would allocate, when only which kernels it takes is asked: fresh allocations are
// aligned like this, and the kernels' choices read only their alignment.
namespace {
alignas(16) float fresh_buffer[4];
}  // namespace

SsdForwardPath ssd_scan_forward_path(const SsdInputs& in, bool training) {
  const c10::cuda::CUDAGuard guard(in.x.device());
  kernels::SsdScanForward f = forward_args(scan_tensors(in));
  f.out = fresh_buffer, f.final_state = fresh_buffer;
  if (training) f.y_ssm = fresh_buffer, f.states = fresh_buffer;
  switch (kernels::ssd_scan_forward_kernels(f)) {
    case kernels::SsdForwardKernels::sweep: return SsdForwardPath::sweep;
    case kernels::SsdForwardKernels::sweep_wgmma: return SsdForwardPath::sweep_wgmma;
    case kernels::SsdForwardKernels::chunk_parallel: break;
  }
  return SsdForwardPath::chunk_parallel;
}

SsdBackwardPath ssd_scan_backward_path(const SsdInputs& in) {
  const c10::cuda::CUDAGuard guard(in.x.device());
  kernels::SsdScanForward f = forward_args(scan_tensors(in));
  f.out = fresh_buffer, f.final_state = fresh_buffer, f.y_ssm = fresh_buffer, f.states = fresh_buffer;
  kernels::SsdScanBackward b;
  b.fwd = &f, b.dy = fresh_buffer, b.dy_lo = fresh_buffer, b.dstates = fresh_buffer, b.dx = fresh_buffer;
  if (kernels::ssd_scan_backward_span_floats(f)) b.span_grads = fresh_buffer;
  switch (kernels::ssd_scan_backward_sweeps(b)) {
    case kernels::SsdBackwardSweeps::state_grad: return SsdBackwardPath::state_grad_sweep;
    case kernels::SsdBackwardSweeps::state_grad_and_dx: return SsdBackwardPath::state_grad_and_dx_sweep;
    case kernels::SsdBackwardSweeps::none: break;
  }
  return SsdBackwardPath::chunk_parallel;
}

SsdOutputs ssd_scan(const SsdInputs& in, bool want_final_state) {
  const c10::cuda::CUDAGuard guard(in.x.device());
  ScanTensors t = scan_tensors(in);
  const Tensor &x = t.x, &dt = t.dt, &B = t.B, &C = t.C, &z = t.z, &A = t.A, &D = t.D;
  const Tensor &dt_bias = t.dt_bias, &init = t.init, &seg = t.seg;
  const int64_t q = t.q;
  SsdOutputs out;
  if (any_requires_grad({x, dt, A, B, C, D, z, dt_bias, init})) {
    auto r = SsdScanFunction::apply(x, dt, A, B, C, D, z, dt_bias, init, seg, in.dt_softplus, q);
    out.y = r[0];
    if (want_final_state) out.final_state = r[1];
    return out;
  }
  // Inference: no autograd node, no y_ssm kept.
  torch::NoGradGuard no_grad;
  auto f = forward_args(t);
  ScanWorkspace w = scan_workspace(f, x.options().dtype(torch::kFloat));
  bind(f, w);
  out.y = fresh(x.sizes(), x.options());
  f.out = out.y.data_ptr();
  kernels::ssd_scan_forward(f, stream());
  if (want_final_state) out.final_state = w.final_state;
  return out;
}

torch::Tensor ssd_decode_step(const SsdStepInputs& in, torch::Tensor& state) {
  const c10::cuda::CUDAGuard guard(in.x.device());
  torch::NoGradGuard no_grad;
  const auto type = in.x.scalar_type();
  CARVE_CHECK(state.is_contiguous(), "ssd_decode_step: the state must be contiguous; got ", describe_tensor(state));
  Tensor x = in.x.contiguous(), dt = as(in.dt, type, x), B = as(in.B, type, x), C = as(in.C, type, x);
  Tensor z = as(in.z, type, x), A = as(in.A, torch::kFloat, x), D = as(in.D, torch::kFloat, x);
  Tensor dt_bias = as(in.dt_bias, torch::kFloat, x);
  Tensor y = fresh(x.sizes(), x.options());
  kernels::SsdStep s;
  s.b = static_cast<int>(x.size(0)), s.h = static_cast<int>(x.size(1)), s.p = static_cast<int>(x.size(2));
  s.g = static_cast<int>(B.size(1)), s.n = static_cast<int>(B.size(2));
  s.dtype = element_of(x);
  s.x = x.data_ptr(), s.dt = dt.data_ptr(), s.A = A.data_ptr<float>(), s.B = B.data_ptr(), s.C = C.data_ptr();
  s.D = ptr_or_null<float>(D), s.D_per_channel = given(D) && D.dim() == 2, s.z = ptr_or_null(z);
  s.dt_bias = ptr_or_null<float>(dt_bias), s.dt_softplus = in.dt_softplus;
  s.state = state.data_ptr<float>(), s.y = y.data_ptr();
  kernels::ssd_step(s, stream());
  return y;
}

CausalConvOutputs causal_conv(const torch::Tensor& x_in, const torch::Tensor& weight, const torch::Tensor& bias,
                              bool silu, const torch::Tensor& seq_idx, const torch::Tensor& initial_state) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  Tensor x = x_in.contiguous(), w = as(weight, torch::kFloat, x), b = as(bias, torch::kFloat, x);
  Tensor init = as(initial_state, x.scalar_type(), x);
  Tensor seg = seq_idx.defined() ? segment_ids(seq_idx).to(torch::kInt).contiguous()
                                 : torch::empty({0}, x.options().dtype(torch::kInt));
  auto r = CausalConvFunction::apply(x, w, b, init, seg, silu);
  return {r[0], r[1]};
}

torch::Tensor causal_conv_decode_step(const torch::Tensor& x_in, torch::Tensor& state, const torch::Tensor& weight,
                                      const torch::Tensor& bias, bool silu) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  torch::NoGradGuard no_grad;
  CARVE_CHECK(state.is_contiguous(), "causal_conv_decode_step: the state must be contiguous; got ",
              describe_tensor(state));
  Tensor x = x_in.contiguous(), w = as(weight, torch::kFloat, x), b = as(bias, torch::kFloat, x);
  Tensor y = fresh(x.sizes(), x.options());
  kernels::causal_conv_step(static_cast<int>(x.size(0)), static_cast<int>(x.size(1)), static_cast<int>(w.size(1)),
                            element_of(x), x.data_ptr(), state.data_ptr(), w.data_ptr<float>(),
                            ptr_or_null<float>(b), silu, y.data_ptr(), stream());
  return y;
}

torch::Tensor gated_norm(const torch::Tensor& y_in, const torch::Tensor& z_in, const torch::Tensor& weight,
                         int64_t group_size, double eps, bool norm_before_gate) {
  const c10::cuda::CUDAGuard guard(y_in.device());
  const int64_t weight_len = weight.size(0);
  if (weight_len > kernels::kGatedNormMaxWeight) {
    return gated_rmsnorm(y_in, z_in, weight, group_size, eps, norm_before_gate);
  }
  Tensor y = y_in.contiguous(), z = as(z_in, y.scalar_type(), y), w = as(weight, torch::kFloat, y);
  return GatedNormFunction::apply(y, z, w, group_size, eps, norm_before_gate)[0];
}

}  // namespace carve::model::fused
