// The Mamba-2 block of MaTVLM / MambaInLlama, sized from the teacher's attention (METHOD.md, "MaTVLM variant"):
//   [z, x, B, C, dt] = in_proj u        z: H P, x: Hkv P, B: Hkv P, C: H P, dt: H   (no bias)
//   [x, B, C] = silu(causal_conv_4([x, B, C]))      then x and B repeated from Hkv to H heads
//   y = SSD(x, dt, A = -exp(A_log), B, C, D)        heads = groups = H, state size P, D skip
//   out = out_proj(rmsnorm_per_head(y * silu(z)) * norm_weight)
// Seeding from attention puts Wv in the x rows, Wk in the B rows, Wq in the C rows and Wo in out_proj.
#pragma once

#include "model/layers.h"
#include "model/mixer.h"
#include "model/ssm_state.h"

namespace carve::model {

class Mamba2MixerImpl : public Mixer {
 public:
  explicit Mamba2MixerImpl(const SsmMixerConfig& config);
  torch::Tensor forward(const torch::Tensor& u, const MixerContext& ctx) override;
  // A single token continuing a state through the fused inference kernels (model/ssm_state.h, fused_ssm_step), or
  // an undefined tensor when they do not apply.
  torch::Tensor fused_step(const torch::Tensor& u, const MixerContext& ctx);
  // y (before the output projection) -> the mixer's output, honouring ctx.pre_output and skip_output_projection.
  torch::Tensor output(const torch::Tensor& y, const MixerContext& ctx);
  std::unique_ptr<MixerState> new_state() const override { return std::make_unique<SsmState>(); }
  std::string kind() const override { return "mamba2"; }

  // Row ranges of in_proj: [z, x, B, C, dt].
  int64_t d_inner() const { return config.num_heads * config.head_dim; }
  int64_t d_xb() const { return config.num_kv_heads * config.head_dim; }
  std::vector<int64_t> in_proj_sizes() const { return {d_inner(), d_xb(), d_xb(), d_inner(), config.num_heads}; }

  SsmMixerConfig config;
  Linear in_proj{nullptr};
  torch::Tensor conv_weight;  // [2 d_xb + d_inner, kernel] over channels [x, B, C]
  torch::Tensor conv_bias;
  torch::Tensor dt_bias;      // [H]
  torch::Tensor A_log;        // [H]
  torch::Tensor D;            // [H]
  torch::Tensor norm_weight;  // [d_inner]
  Linear out_proj{nullptr};
};

}  // namespace carve::model
