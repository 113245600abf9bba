#include "model/rope.h"

namespace carve::model {
namespace {
torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}
}  // namespace

RopeTables rope_tables(const torch::Tensor& positions, int64_t rotary_dim, double theta, torch::ScalarType dtype) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(positions.device());
  auto exponent = torch::arange(0, rotary_dim, 2, opts.dtype(torch::kInt64)).to(torch::kFloat32) /
                  static_cast<double>(rotary_dim);
  auto inv_freq = 1.0 / torch::pow(torch::scalar_tensor(theta, opts), exponent);       // [rotary_dim / 2]
  auto freqs = positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq;                // [b, l, rotary_dim / 2]
  auto emb = torch::cat({freqs, freqs}, -1).unsqueeze(1);                            // [b, 1, l, rotary_dim]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& t) {
  const int64_t rotary_dim = t.cos.size(-1);
  if (rotary_dim == x.size(-1)) return x * t.cos + rotate_half(x) * t.sin;
  auto rot = x.narrow(-1, 0, rotary_dim);
  auto pass = x.narrow(-1, rotary_dim, x.size(-1) - rotary_dim);
  return torch::cat({rot * t.cos + rotate_half(rot) * t.sin, pass}, -1);
}

}  // namespace carve::model
