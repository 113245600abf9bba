// The position-wise pieces of a decoder layer: the norms and the MLPs of the supported families.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <utility>

#include "model/tensor_util.h"

#include "model/config.h"
#include "model/inference_ops.h"
#include "model/mixer.h"

namespace carve::model {

// torch::nn::Linear (same parameters and names) whose forward takes carve's GEMV kernel when it is inference on
// CUDA with at most 8 rows: a decode step's products, which cuBLAS runs well below the memory bandwidth.
class LinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  torch::Tensor forward(const torch::Tensor& x);
};
TORCH_MODULE(Linear);

// RMSNorm (weight) or LayerNorm (weight, bias); computed in float32 and returned in the input's dtype, as
// Hugging Face does.
class NormImpl : public torch::nn::Module {
 public:
  NormImpl(NormKind kind, int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // [..., dim]
  // {x + delta, forward(x + delta)}: the residual add before this norm, in one kernel at inference on CUDA.
  std::pair<torch::Tensor, torch::Tensor> forward_add(const torch::Tensor& x, const torch::Tensor& delta);
  // Whether the fused products can apply this norm to x in their prologue (an RMSNorm, inference on CUDA; the
  // product's own gemv_applies still decides), and the norm as they take it.
  bool fuses_into_products(const torch::Tensor& x) const;
  GemvNormStep product_step(const torch::Tensor& delta = {}, torch::Tensor* sum = nullptr) const;
  NormKind kind;
  double eps;
  torch::Tensor weight;  // [dim]
  torch::Tensor bias;    // [dim], LayerNorm only
};
TORCH_MODULE(Norm);

// GatedSilu: down(silu(gate(x)) * up(x)) (llama, qwen2, internlm2). GeluTanh: fc2(gelu_tanh(fc1(x))) (phi).
class MlpImpl : public torch::nn::Module {
 public:
  explicit MlpImpl(const ModelConfig& config);
  torch::Tensor forward(const torch::Tensor& x);  // [b, l, d] -> [b, l, d]
  // residual + forward(x): at inference on CUDA with few rows, the gate and up products with the SwiGLU in one
  // launch and the down product with the residual add in another.
  torch::Tensor forward_add(const torch::Tensor& x, const torch::Tensor& residual);
  // y + forward(norm(y)) for y = x + delta: the residual add and the post-attention norm of a decoder layer, in the
  // prologue of the gate and up products where the kernels apply.
  torch::Tensor forward_norm_add(const torch::Tensor& x, const torch::Tensor& delta, NormImpl& norm);
  MlpKind kind;
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};  // GatedSilu
  Linear fc1{nullptr}, fc2{nullptr};                                // GeluTanh
};
TORCH_MODULE(Mlp);

Linear make_linear(int64_t in, int64_t out, bool bias);

// A mixer's input: u through ctx.input_norm when the decoder layer left the norm to the mixer, else u.
torch::Tensor normed_input(const torch::Tensor& u, const MixerContext& ctx);
// ctx.input_norm as the fused products take it (null without one).
std::optional<GemvNormStep> input_norm_step(const MixerContext& ctx);

}  // namespace carve::model
