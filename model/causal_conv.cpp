/*
 * Causal depthwise conv1d in LibTorch ops. One shifted multiply-add per tap (k is 2 to 4 in practice) rather than
 * at::conv1d: it makes the seq_idx masking a per-tap multiply and keeps the CPU and CUDA paths identical.
 */
#include "model/causal_conv.h"

#include "base/error.h"
#include "model/tensor_util.h"

#include <sstream>
#include <string>
#include <vector>

namespace carve::model {
namespace {

using torch::Tensor;

// Checks x's rank and weight, returns k. `x_layout` names x's expected layout in the message.
int64_t check_x_and_weight(const char* fn, const Tensor& x, int64_t rank, const char* x_layout,
                           const Tensor& weight, const Tensor& bias) {
  CARVE_CHECK(x.defined() && x.dim() == rank && at::isFloatingType(x.scalar_type()), fn, ": x must be a ", rank,
              "-D floating-point tensor ", x_layout, "; got ", describe_tensor(x));
  const int64_t c = x.size(rank - 1);
  CARVE_CHECK(weight.defined() && weight.dim() == 2 && weight.size(1) >= 1, fn,
              ": weight must be a 2-D tensor [c, k] with k >= 1; got ", describe_tensor(weight));
  expect_tensor(fn, "weight", weight, {c, weight.size(1)}, "[c, k] (c from x)", x.device());
  if (bias.defined()) expect_tensor(fn, "bias", bias, {c}, "[c]", x.device());
  return weight.size(1);
}

Tensor apply_bias_and_silu(Tensor y, const Tensor& bias, bool silu) {  // y [..., c]
  if (bias.defined()) y = y + bias.to(y.scalar_type());
  return silu ? torch::silu(y) : y;
}

}  // namespace

int64_t validate_causal_conv1d(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                               const torch::Tensor& seq_idx, const torch::Tensor& initial_state, const char* fn) {
  const int64_t k = check_x_and_weight(fn, x, 3, "[b, l, c]", weight, bias);
  const int64_t b = x.size(0), l = x.size(1), c = x.size(2);
  CARVE_CHECK(l > 0, fn, ": x must hold at least one token (l > 0); got ", describe_tensor(x));
  if (initial_state.defined()) expect_tensor(fn, "initial_state", initial_state, {b, c, k - 1}, "[b, c, k - 1]",
                                             x.device());
  if (seq_idx.defined()) {
    CARVE_CHECK(seq_idx.sizes() == torch::IntArrayRef({b, l}) && seq_idx.device() == x.device() &&
                    c10::isIntegralType(seq_idx.scalar_type(), /*includeBool=*/false),
                fn, ": seq_idx must be an integer tensor [b, l] = [", b, ", ", l, "] on ", x.device(), "; got ",
                describe_tensor(seq_idx));
  }
  return k;
}

CausalConvOutputs causal_conv1d(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                bool silu, const torch::Tensor& seq_idx, const torch::Tensor& initial_state) {
  const int64_t k = validate_causal_conv1d(x, weight, bias, seq_idx, initial_state, "causal_conv1d");
  const int64_t b = x.size(0), l = x.size(1), c = x.size(2);
  const torch::ScalarType ct = accumulate_dtype(x);
  Tensor history = initial_state.defined() ? initial_state.to(ct).transpose(1, 2)  // [b, k - 1, c]
                                           : torch::zeros({b, k - 1, c}, x.options().dtype(ct));
  Tensor xp = torch::cat({history, x.to(ct)}, 1);  // [b, l + k - 1, c]
  Tensor w = weight.to(ct);                        // [c, k]
  Tensor seg, seg_p;                               // [b, l], [b, l + k - 1]
  if (seq_idx.defined()) {
    seg = segment_ids(seq_idx);
    // The initial state's inputs belong to the row's first sample, segment 0.
    seg_p = torch::cat({torch::zeros({b, k - 1}, seg.options()), seg}, 1);
  }
  Tensor y = torch::zeros({b, l, c}, xp.options());
  for (int64_t j = 0; j < k; ++j) {
    Tensor term = xp.narrow(1, j, l) * w.select(1, j);  // [b, l, c]
    if (seg.defined()) term = term * (seg_p.narrow(1, j, l) == seg).unsqueeze(-1).to(ct);
    y = y + term;
  }
  CausalConvOutputs out;
  out.y = apply_bias_and_silu(y, bias, silu).to(x.scalar_type());
  Tensor last = xp.narrow(1, l, k - 1);  // [b, k - 1, c]
  if (seg.defined()) {
    // Decoding continues the row's last sample only, so inputs of earlier samples must not stay in the state.
    Tensor same = seg_p.narrow(1, l, k - 1) == seg.narrow(1, l - 1, 1);  // [b, k - 1]
    last = last * same.unsqueeze(-1).to(ct);
  }
  out.final_state = last.transpose(1, 2).contiguous().to(x.scalar_type());
  return out;
}

int64_t validate_causal_conv1d_step(const torch::Tensor& x, const torch::Tensor& state, const torch::Tensor& weight,
                                    const torch::Tensor& bias, const char* fn) {
  const int64_t k = check_x_and_weight(fn, x, 2, "[b, c]", weight, bias);
  expect_tensor(fn, "state", state, {x.size(0), x.size(1), k - 1}, "[b, c, k - 1]", x.device());
  return k;
}

torch::Tensor causal_conv1d_step(const torch::Tensor& x, torch::Tensor& state, const torch::Tensor& weight,
                                 const torch::Tensor& bias, bool silu) {
  const int64_t k = validate_causal_conv1d_step(x, state, weight, bias, "causal_conv1d_step");
  const torch::ScalarType ct = accumulate_dtype(x);
  Tensor window = torch::cat({state.to(ct), x.to(ct).unsqueeze(-1)}, -1);  // [b, c, k]
  Tensor y = (window * weight.to(ct)).sum(-1);                            // [b, c]
  {
    torch::NoGradGuard no_grad;
    state.copy_(window.narrow(-1, 1, k - 1));
  }
  return apply_bias_and_silu(y, bias, silu).to(x.scalar_type());
}

}  // namespace carve::model
