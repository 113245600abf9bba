#include "model/mamba2_mixer.h"

#include "base/error.h"
#include "model/kernel_ops.h"
#include "model/layers.h"

namespace carve::model {

Mamba2MixerImpl::Mamba2MixerImpl(const SsmMixerConfig& c) : config(c) {
  CARVE_CHECK(c.num_heads % c.num_kv_heads == 0, "mamba2 mixer: ", c.num_heads, " heads are not a multiple of ",
              c.num_kv_heads, " KV heads");
  const int64_t h = c.num_heads;
  int64_t rows = 0;
  for (auto s : in_proj_sizes()) rows += s;
  in_proj = register_module("in_proj", make_linear(c.hidden_size, rows, false));
  conv_weight = register_parameter("conv_weight", torch::zeros({2 * d_xb() + d_inner(), c.conv_kernel}));
  conv_bias = register_parameter("conv_bias", torch::zeros({2 * d_xb() + d_inner()}));
  dt_bias = register_parameter("dt_bias", torch::zeros({h}));
  A_log = register_parameter("A_log", torch::zeros({h}));
  D = register_parameter("D", torch::ones({h}));
  norm_weight = register_parameter("norm_weight", torch::ones({d_inner()}));
  out_proj = register_module("out_proj", make_linear(d_inner(), c.hidden_size, false));
}

torch::Tensor Mamba2MixerImpl::fused_step(const torch::Tensor& u, const MixerContext& ctx) {
  const int64_t h = config.num_heads, kv = config.num_kv_heads, p = config.head_dim;
  FusedSsmStep f;
  f.products = {{in_proj->weight, in_proj->bias}};
  f.z_col = 0, f.x_col = d_inner(), f.B_col = f.x_col + d_xb(), f.C_col = f.B_col + d_xb();
  f.dt_col = f.C_col + d_inner();
  f.conv_begin = f.x_col, f.conv_end = f.dt_col;
  f.conv_weight = conv_weight, f.conv_bias = conv_bias;
  auto& s = f.step;
  s.heads = h, s.head_dim = p, s.state_size = p, s.x_heads = kv, s.b_heads = kv, s.c_heads = h;
  s.A_log = A_log, s.dt_bias = dt_bias, s.D = D, s.norm_weight = norm_weight;
  s.norm_before_gate = false, s.eps = config.norm_eps;
  return fused_ssm_step(u, f, ctx);
}

torch::Tensor Mamba2MixerImpl::forward(const torch::Tensor& x, const MixerContext& ctx) {
  const int64_t b = x.size(0), l = x.size(1), h = config.num_heads, kv = config.num_kv_heads, p = config.head_dim;
  if (auto y = fused_step(x, ctx); y.defined()) return output(y, ctx);
  const auto u = normed_input(x, ctx);
  auto proj = in_proj(u).split_with_sizes(in_proj_sizes(), -1);
  auto xbc = conv_with_state(torch::cat({proj[1], proj[2], proj[3]}, -1), conv_weight, conv_bias, ctx);
  auto parts = xbc.split_with_sizes({d_xb(), d_xb(), d_inner()}, -1);
  SsdInputs in;
  in.x = repeat_kv_heads(parts[0].reshape({b, l, kv, p}), h / kv);
  in.B = repeat_kv_heads(parts[1].reshape({b, l, kv, p}), h / kv);
  in.C = parts[2].reshape({b, l, h, p});
  in.dt = proj[4];
  in.dt_bias = dt_bias;
  in.dt_softplus = true;
  in.A = decay_rates(A_log);
  in.D = D;
  in.chunk_size = config.chunk_size;
  auto y = ssd_with_state(in, ctx).reshape({b, l, d_inner()});
  return output(gated_norm(y, proj[0], norm_weight, p, config.norm_eps, /*norm_before_gate=*/false), ctx);
}

torch::Tensor Mamba2MixerImpl::output(const torch::Tensor& y, const MixerContext& ctx) {
  if (ctx.pre_output) *ctx.pre_output = y;
  if (ctx.skip_output_projection) return torch::Tensor();
  return out_proj(y);
}

}  // namespace carve::model
