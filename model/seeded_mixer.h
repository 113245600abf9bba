// mmMamba's seeded Mamba-2 mixer: the attention layer's q, k, v, o projections kept, softmax replaced by an SSD
// scan with x = v, B = k, C = q (METHOD.md, "Student mixer, mmMamba variant").
//   q, k, v = Wq u, Wk u, Wv u           (H, Hkv, Hkv heads of head_dim P; no RoPE, no 1/sqrt(d))
//   [v, k, q] = silu(causal_conv_2([v, k, q]))    conv before GQA repetition; then k, v repeated to H heads
//   dt = W_gamma u                        (d -> H, no bias), softplus(dt + dt_bias), A = -exp(A_log), no D
//   y = SSD(x = v, B = k, C = q)           heads = groups = H, state size P
//   out = Wo (rmsnorm_per_head(y) * norm_weight * silu(W_G u))
#pragma once

#include "model/layers.h"
#include "model/mixer.h"
#include "model/ssm_state.h"

namespace carve::model {

class SeededMixerImpl : public Mixer {
 public:
  explicit SeededMixerImpl(const SsmMixerConfig& config);
  torch::Tensor forward(const torch::Tensor& u, const MixerContext& ctx) override;
  // A single token continuing a state through the fused inference kernels (model/ssm_state.h, fused_ssm_step), or
  // an undefined tensor when they do not apply.
  torch::Tensor fused_step(const torch::Tensor& u, const MixerContext& ctx);
  // y (before the output projection) -> the mixer's output, honouring ctx.pre_output and skip_output_projection.
  torch::Tensor output(const torch::Tensor& y, const MixerContext& ctx);
  std::unique_ptr<MixerState> new_state() const override { return std::make_unique<SsmState>(); }
  std::string kind() const override { return "seeded"; }

  SsmMixerConfig config;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  torch::Tensor conv_weight;  // [(H + 2 Hkv) P, kernel] over channels [v, k, q]
  torch::Tensor conv_bias;    // [(H + 2 Hkv) P]
  Linear dt_proj{nullptr};    // W_gamma: d -> H
  torch::Tensor dt_bias;                 // [H]
  torch::Tensor A_log;                   // [H]
  Linear gate_proj{nullptr};  // W_G: d -> H P
  torch::Tensor norm_weight;             // [P], shared by every head
};

}  // namespace carve::model
