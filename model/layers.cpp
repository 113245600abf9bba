#include "model/layers.h"

#include "model/inference_ops.h"

namespace carve::model {

Linear make_linear(int64_t in, int64_t out, bool bias) {
  return Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  if (uses_inference_kernels(x) && fused::gemv_applies(x, weight, bias)) return fused::gemv(x, weight, bias);
  return torch::nn::LinearImpl::forward(x);
}

NormImpl::NormImpl(NormKind k, int64_t dim, double e) : kind(k), eps(e) {
  weight = register_parameter("weight", torch::ones({dim}));
  if (kind == NormKind::LayerNorm) bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor NormImpl::forward(const torch::Tensor& x) {
  // Inference on CUDA: one kernel instead of six, the same rounding.
  if (kind == NormKind::RMSNorm && weight.scalar_type() == x.scalar_type() && uses_inference_kernels(x))
    return fused::rms_norm(x, weight, eps);
  const auto acc = accumulate_dtype(x);
  auto xf = x.to(acc);
  if (kind == NormKind::LayerNorm) {
    auto y = torch::layer_norm(xf, {xf.size(-1)}, weight.to(acc), bias.to(acc), eps);
    return y.to(x.scalar_type());
  }
  auto y = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  // Hugging Face casts back to the input dtype before the weight multiply.
  return weight * y.to(x.scalar_type());
}

std::pair<torch::Tensor, torch::Tensor> NormImpl::forward_add(const torch::Tensor& x, const torch::Tensor& delta) {
  if (kind == NormKind::RMSNorm && weight.scalar_type() == x.scalar_type() && delta.scalar_type() == x.scalar_type() &&
      delta.sizes() == x.sizes() && uses_inference_kernels(x))
    return fused::add_rms_norm(x, delta, weight, eps);
  auto sum = x + delta;
  return {sum, forward(sum)};
}

bool NormImpl::fuses_into_products(const torch::Tensor& x) const {
  // Rows that do not fit the prologue keep the norm as its own launch: the products after it then still fuse.
  return kind == NormKind::RMSNorm && weight.scalar_type() == x.scalar_type() && uses_inference_kernels(x) &&
         fused::gemv_norm_fits(x);
}

GemvNormStep NormImpl::product_step(const torch::Tensor& delta, torch::Tensor* sum) const {
  GemvNormStep step;
  step.weight = weight, step.eps = eps, step.delta = delta, step.sum = sum;
  return step;
}

torch::Tensor normed_input(const torch::Tensor& u, const MixerContext& ctx) {
  return ctx.input_norm ? ctx.input_norm->forward(u) : u;
}

std::optional<GemvNormStep> input_norm_step(const MixerContext& ctx) {
  if (!ctx.input_norm) return std::nullopt;
  return ctx.input_norm->product_step();
}

MlpImpl::MlpImpl(const ModelConfig& c) : kind(c.mlp) {
  if (kind == MlpKind::GatedSilu) {
    gate_proj = register_module("gate_proj", make_linear(c.hidden_size, c.intermediate_size, c.mlp_bias));
    up_proj = register_module("up_proj", make_linear(c.hidden_size, c.intermediate_size, c.mlp_bias));
    down_proj = register_module("down_proj", make_linear(c.intermediate_size, c.hidden_size, c.mlp_bias));
  } else {
    fc1 = register_module("fc1", make_linear(c.hidden_size, c.intermediate_size, c.mlp_bias));
    fc2 = register_module("fc2", make_linear(c.intermediate_size, c.hidden_size, c.mlp_bias));
  }
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  if (kind == MlpKind::GatedSilu) {
    if (uses_inference_kernels(x)) return down_proj(fused::silu_mul(gate_proj(x), up_proj(x)));
    return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
  }
  return fc2(torch::gelu(fc1(x), "tanh"));
}

torch::Tensor MlpImpl::forward_add(const torch::Tensor& x, const torch::Tensor& residual) {
  if (kind == MlpKind::GatedSilu && uses_inference_kernels(x)) {
    const GemvWeight gate{gate_proj->weight, gate_proj->bias}, up{up_proj->weight, up_proj->bias};
    const GemvWeight down{down_proj->weight, down_proj->bias};
    if (fused::gemv_applies(x, {gate, up}) && residual.scalar_type() == x.scalar_type()) {
      auto h = fused::gemv_swiglu(x, gate, up);
      if (fused::gemv_applies(h, {down})) return fused::gemv_residual(h, down, residual);
      return residual + down_proj(h);
    }
  }
  return residual + forward(x);
}

torch::Tensor MlpImpl::forward_norm_add(const torch::Tensor& x, const torch::Tensor& delta, NormImpl& norm) {
  if (kind == MlpKind::GatedSilu && norm.fuses_into_products(x) && delta.scalar_type() == x.scalar_type()) {
    const GemvWeight gate{gate_proj->weight, gate_proj->bias}, up{up_proj->weight, up_proj->bias};
    const GemvWeight down{down_proj->weight, down_proj->bias};
    torch::Tensor y;  // x + delta, written by the gate/up launch
    const GemvNormStep step = norm.product_step(delta, &y);
    if (fused::gemv_applies(x, {gate, up}, &step)) {
      auto h = fused::gemv_swiglu(x, gate, up, &step);
      if (fused::gemv_applies(h, {down})) return fused::gemv_residual(h, down, y);
      return y + down_proj(h);
    }
  }
  auto [y, normed] = norm.forward_add(x, delta);
  return forward_add(normed, y);
}

}  // namespace carve::model
