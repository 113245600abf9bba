#include "model/seeded_mixer.h"

#include "base/error.h"
#include "model/kernel_ops.h"
#include "model/layers.h"

namespace carve::model {

SeededMixerImpl::SeededMixerImpl(const SsmMixerConfig& c) : config(c) {
  CARVE_CHECK(c.num_heads % c.num_kv_heads == 0, "seeded mixer: ", c.num_heads, " heads are not a multiple of ",
              c.num_kv_heads, " KV heads");
  const int64_t h = c.num_heads, kv = c.num_kv_heads, p = c.head_dim;
  q_proj = register_module("q_proj", make_linear(c.hidden_size, h * p, c.qkv_bias));
  k_proj = register_module("k_proj", make_linear(c.hidden_size, kv * p, c.qkv_bias));
  v_proj = register_module("v_proj", make_linear(c.hidden_size, kv * p, c.qkv_bias));
  o_proj = register_module("o_proj", make_linear(h * p, c.hidden_size, c.o_bias));
  conv_weight = register_parameter("conv_weight", torch::zeros({(h + 2 * kv) * p, c.conv_kernel}));
  conv_bias = register_parameter("conv_bias", torch::zeros({(h + 2 * kv) * p}));
  dt_proj = register_module("dt_proj", make_linear(c.hidden_size, h, false));
  dt_bias = register_parameter("dt_bias", torch::zeros({h}));
  A_log = register_parameter("A_log", torch::zeros({h}));
  gate_proj = register_module("gate_proj", make_linear(c.hidden_size, h * p, false));
  norm_weight = register_parameter("norm_weight", torch::ones({p}));
}

torch::Tensor SeededMixerImpl::fused_step(const torch::Tensor& u, const MixerContext& ctx) {
  const int64_t h = config.num_heads, kv = config.num_kv_heads, p = config.head_dim;
  FusedSsmStep f;
  f.products = {{v_proj->weight, v_proj->bias}, {k_proj->weight, k_proj->bias}, {q_proj->weight, q_proj->bias},
                {dt_proj->weight, dt_proj->bias}, {gate_proj->weight, gate_proj->bias}};
  f.x_col = 0, f.B_col = kv * p, f.C_col = 2 * kv * p, f.dt_col = (2 * kv + h) * p, f.z_col = f.dt_col + h;
  f.conv_begin = 0, f.conv_end = (2 * kv + h) * p;
  f.conv_weight = conv_weight, f.conv_bias = conv_bias;
  auto& s = f.step;
  s.heads = h, s.head_dim = p, s.state_size = p, s.x_heads = kv, s.b_heads = kv, s.c_heads = h;
  s.A_log = A_log, s.dt_bias = dt_bias, s.norm_weight = norm_weight;
  s.norm_before_gate = true, s.eps = config.norm_eps;
  return fused_ssm_step(u, f, ctx);
}

torch::Tensor SeededMixerImpl::forward(const torch::Tensor& x, const MixerContext& ctx) {
  const int64_t b = x.size(0), l = x.size(1), h = config.num_heads, kv = config.num_kv_heads, p = config.head_dim;
  if (auto y = fused_step(x, ctx); y.defined()) return output(y, ctx);
  const auto u = normed_input(x, ctx);
  auto vkq = conv_with_state(torch::cat({v_proj(u), k_proj(u), q_proj(u)}, -1), conv_weight, conv_bias, ctx);
  auto parts = vkq.split_with_sizes({kv * p, kv * p, h * p}, -1);
  SsdInputs in;
  in.x = repeat_kv_heads(parts[0].reshape({b, l, kv, p}), h / kv);
  in.B = repeat_kv_heads(parts[1].reshape({b, l, kv, p}), h / kv);
  in.C = parts[2].reshape({b, l, h, p});
  in.dt = dt_proj(u);
  in.dt_bias = dt_bias;
  in.dt_softplus = true;
  in.A = decay_rates(A_log);
  in.chunk_size = config.chunk_size;
  auto y = ssd_with_state(in, ctx).reshape({b, l, h * p});
  return output(gated_norm(y, gate_proj(u), norm_weight, p, config.norm_eps, /*norm_before_gate=*/true), ctx);
}

torch::Tensor SeededMixerImpl::output(const torch::Tensor& y, const MixerContext& ctx) {
  if (ctx.pre_output) *ctx.pre_output = y;
  if (ctx.skip_output_projection) return torch::Tensor();
  return o_proj(y);
}

}  // namespace carve::model
