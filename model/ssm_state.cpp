#include "model/ssm_state.h"

#include "base/error.h"
#include "model/kernel_ops.h"
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
  s->conv = out.final_state.detach();
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

torch::Tensor decay_rates(const torch::Tensor& A_log) {
  return -torch::exp(A_log.to(accumulate_dtype(A_log)));
}

torch::Tensor repeat_kv_heads(const torch::Tensor& t, int64_t groups) {
  return groups == 1 ? t : t.repeat_interleave(groups, 2);
}

}  // namespace carve::model
