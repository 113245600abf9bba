#include "model/ssm_state.h"

#include "base/error.h"
#include "model/inference_ops.h"
#include "model/kernel_ops.h"
#include "model/layers.h"
#include "model/tensor_util.h"

namespace carve::model {
namespace {

SsmState* ssm_state_of(const MixerContext& ctx) {
  if (!ctx.state) return nullptr;
  auto* s = dynamic_cast<SsmState*>(ctx.state);
  CARVE_CHECK(s != nullptr, "a Mamba-2 mixer was given another mixer's decoding state");
  CARVE_CHECK(!ctx.seq_idx.defined(), "packed samples (seq_idx) cannot be combined with a decoding state");
  return s;
}

}  // namespace

void SsmState::merge_rows(const std::vector<const MixerState*>& parts, const std::vector<torch::Tensor>& rows,
                          int64_t batch) {
  std::vector<const SsmState*> states;
  for (const auto* part : parts) {
    const auto* s = dynamic_cast<const SsmState*>(part);
    CARVE_CHECK(s && s->conv.defined() && s->ssm.defined(),
                "merging Mamba-2 states: a part is another mixer's state or holds no tokens");
    states.push_back(s);
  }
  auto stacked = [&](torch::Tensor SsmState::*field) {
    const auto& like = states[0]->*field;
    std::vector<int64_t> shape(like.sizes().begin(), like.sizes().end());
    shape[0] = batch;
    auto out = torch::empty(shape, like.options());
    for (size_t i = 0; i < states.size(); ++i) out.index_copy_(0, rows[i].to(out.device()), states[i]->*field);
    return out;
  };
  conv = stacked(&SsmState::conv);
  ssm = stacked(&SsmState::ssm);
}

torch::Tensor conv_with_state(const torch::Tensor& xbc, const torch::Tensor& weight, const torch::Tensor& bias,
                              const MixerContext& ctx) {
  auto* s = ssm_state_of(ctx);
  if (!s) return causal_conv(xbc, weight, bias, /*silu=*/true, ctx.seq_idx).y;
  if (s->conv.defined() && xbc.size(1) == 1) {
    return causal_conv_decode_step(xbc.select(1, 0), s->conv, weight, bias, /*silu=*/true).unsqueeze(1);
  }
  auto out = causal_conv(xbc, weight, bias, /*silu=*/true, {}, s->conv);
  s->conv = out.final_state.detach().contiguous();  // the fused decode step updates it in place
  return out.y;
}

torch::Tensor ssd_with_state(SsdInputs in, const MixerContext& ctx) {
  auto* s = ssm_state_of(ctx);
  in.seq_idx = ctx.seq_idx;
  if (!s) return ssd_scan(in, /*want_final_state=*/false).y;
  if (s->ssm.defined() && in.x.size(1) == 1) {
    SsdStepInputs step;
    step.x = in.x.select(1, 0);
    step.dt = in.dt.select(1, 0);
    step.A = in.A;
    step.B = in.B.select(1, 0);
    step.C = in.C.select(1, 0);
    step.D = in.D;
    step.z = in.z.defined() ? in.z.select(1, 0) : in.z;
    step.dt_bias = in.dt_bias;
    step.dt_softplus = in.dt_softplus;
    return ssd_decode_step(step, s->ssm).unsqueeze(1);
  }
  in.initial_state = s->ssm;
  auto out = ssd_scan(in, /*want_final_state=*/true);
  s->ssm = out.final_state.detach();
  return out.y;
}

torch::Tensor fused_ssm_step(const torch::Tensor& u, FusedSsmStep spec, const MixerContext& ctx) {
  if (!ctx.state || u.size(1) != 1 || !uses_inference_kernels(u)) return {};
  auto* s = ssm_state_of(ctx);
  if (!s->conv.defined() || !s->ssm.defined()) return {};
  const int64_t b = u.size(0), channels = spec.conv_end - spec.conv_begin;
  auto like_u = [&](const torch::Tensor& t) {
    return !t.defined() || (t.scalar_type() == u.scalar_type() && t.device() == u.device() && t.is_contiguous());
  };
  const auto& w = spec.conv_weight;
  const auto norm = input_norm_step(ctx);  // the layer's input norm, in the products' prologue
  const GemvNormStep* norm_ptr = norm ? &*norm : nullptr;
  if (!fused::gemv_applies(u, spec.products, norm_ptr) || !w.defined() || !like_u(w) || w.dim() != 2 ||
      w.size(0) != channels || !like_u(spec.conv_bias) ||
      (spec.conv_bias.defined() && spec.conv_bias.numel() != channels) || !like_u(s->conv) || s->conv.dim() != 3 ||
      s->conv.size(0) != b || s->conv.size(1) != channels || s->conv.size(2) != w.size(1) - 1)
    return {};
  int64_t columns = 0;
  for (const auto& p : spec.products) columns += p.weight.size(0);
  // The step reads its inputs as columns of the products' output: bound and checked before the product runs (it
  // advances the conv state), so a step that does not apply leaves everything untouched.
  auto& step = spec.step;
  const auto out = torch::empty({b, columns}, u.options());
  step.x = out.narrow(1, spec.x_col, step.x_heads * step.head_dim);
  step.B = out.narrow(1, spec.B_col, step.b_heads * step.state_size);
  step.C = out.narrow(1, spec.C_col, step.c_heads * step.state_size);
  step.dt = out.narrow(1, spec.dt_col, step.heads);
  step.z = out.narrow(1, spec.z_col, step.heads * step.head_dim);
  step.state = s->ssm;
  if (!fused::mamba_step_applies(step)) return {};
  GemvConvStep conv{s->conv, spec.conv_weight, spec.conv_bias, spec.conv_begin, spec.conv_end};
  fused::gemv_parts(u.reshape({b, u.size(2)}), spec.products, &conv, out, norm_ptr);
  return fused::mamba_step(step).unsqueeze(1);
}

torch::Tensor decay_rates(const torch::Tensor& A_log) {
  return -torch::exp(A_log.to(accumulate_dtype(A_log)));
}

torch::Tensor repeat_kv_heads(const torch::Tensor& t, int64_t groups) {
  return groups == 1 ? t : t.repeat_interleave(groups, 2);
}

}  // namespace carve::model
