// The position-wise pieces of a decoder layer: the norms and the MLPs of the supported families.
#pragma once

#include <torch/torch.h>

#include "model/tensor_util.h"

#include "model/config.h"

namespace carve::model {

// RMSNorm (weight) or LayerNorm (weight, bias); computed in float32 and returned in the input's dtype, as
// Hugging Face does.
class NormImpl : public torch::nn::Module {
 public:
  NormImpl(NormKind kind, int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // [..., dim]
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
  MlpKind kind;
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};  // GatedSilu
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};                                // GeluTanh
};
TORCH_MODULE(Mlp);

torch::nn::Linear make_linear(int64_t in, int64_t out, bool bias);

}  // namespace carve::model
