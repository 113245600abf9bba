/*
 * Gated grouped RMSNorm in LibTorch ops (differentiable by autograd, any device).
 */
#include "model/gated_norm.h"

#include "base/error.h"
#include "model/tensor_util.h"

#include <sstream>
#include <string>
#include <vector>

namespace carve::model {

int64_t validate_gated_rmsnorm(const torch::Tensor& y, const torch::Tensor& z, const torch::Tensor& weight,
                               int64_t group_size, double eps, const char* fn) {
  CARVE_CHECK(y.defined() && y.dim() >= 1 && at::isFloatingType(y.scalar_type()), fn,
              ": y must be a floating-point tensor [..., d]; got ", describe_tensor(y));
  const int64_t d = y.size(-1);
  const int64_t gs = group_size == 0 ? d : group_size;
  CARVE_CHECK(gs > 0 && d % gs == 0, fn, ": group_size must divide the channel count d = ", d, " of y (0 means d); ",
              "got ", group_size);
  if (z.defined()) {
    CARVE_CHECK(z.sizes() == y.sizes() && z.device() == y.device() && at::isFloatingType(z.scalar_type()), fn,
                ": z must be a floating-point tensor shaped like y ", describe_tensor(y), "; got ", describe_tensor(z));
  }
  CARVE_CHECK(weight.defined() && weight.dim() == 1 && (weight.size(0) == d || weight.size(0) == gs) &&
                  weight.device() == y.device() && at::isFloatingType(weight.scalar_type()),
              fn, ": weight must be a floating-point tensor [d] = [", d, "] or [group_size] = [", gs, "] on ",
              y.device(), "; got ", describe_tensor(weight));
  CARVE_CHECK(eps > 0, fn, ": eps must be positive; got ", eps);
  return gs;
}

torch::Tensor gated_rmsnorm(const torch::Tensor& y, const torch::Tensor& z, const torch::Tensor& weight,
                            int64_t group_size, double eps, bool norm_before_gate) {
  const int64_t gs = validate_gated_rmsnorm(y, z, weight, group_size, eps, "gated_rmsnorm");
  const torch::ScalarType ct = accumulate_dtype(y);
  const int64_t d = y.size(-1);
  std::vector<int64_t> grouped = y.sizes().vec();  // [..., d / gs, gs]
  grouped.back() = d / gs;
  grouped.push_back(gs);

  torch::Tensor v = y.to(ct).reshape(grouped);                             // [..., d / gs, gs]
  torch::Tensor gate = z.defined() ? torch::silu(z.to(ct)).reshape(grouped) : torch::Tensor();
  if (gate.defined() && !norm_before_gate) v = v * gate;
  torch::Tensor rstd = (v.pow(2).mean(-1, /*keepdim=*/true) + eps).rsqrt();  // [..., d / gs, 1]
  // A [d] weight reshapes to one row per group; a [gs] weight broadcasts over the groups as is.
  torch::Tensor w = weight.size(0) == d ? weight.to(ct).reshape({d / gs, gs}) : weight.to(ct);
  torch::Tensor out = v * rstd * w;
  if (gate.defined() && norm_before_gate) out = out * gate;
  return out.reshape(y.sizes()).to(y.scalar_type());
}

}  // namespace carve::model
