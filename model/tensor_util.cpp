#include "model/tensor_util.h"

#include <sstream>

#include "base/error.h"

namespace carve::model {

std::string describe_tensor(const torch::Tensor& t) {
  if (!t.defined()) return "an undefined tensor";
  std::ostringstream out;
  out << t.dim() << "-D " << t.sizes() << " " << t.scalar_type() << " on " << t.device();
  return out.str();
}

void expect_tensor(const char* fn, const char* name, const torch::Tensor& t, const std::vector<int64_t>& expected,
                   const char* layout, const torch::Device& device, bool floating) {
  CARVE_CHECK(t.defined() && t.sizes() == torch::IntArrayRef(expected), fn, ": ", name, " must have shape ", layout,
              " = ", torch::IntArrayRef(expected), " to match the other inputs; got ", describe_tensor(t));
  CARVE_CHECK(t.device() == device, fn, ": ", name, " must be on ", device, " like x; got ", describe_tensor(t));
  CARVE_CHECK(!floating || at::isFloatingType(t.scalar_type()), fn, ": ", name,
              " must be a floating-point tensor; got ", describe_tensor(t));
}

torch::ScalarType accumulate_dtype(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

torch::Tensor segment_ids(const torch::Tensor& seq_idx) {
  const int64_t l = seq_idx.size(1);
  auto changed = seq_idx.narrow(1, 1, l - 1) != seq_idx.narrow(1, 0, l - 1);  // [b, l - 1]
  auto first = torch::zeros({seq_idx.size(0), 1}, seq_idx.options().dtype(torch::kLong));
  return torch::cat({first, changed.to(torch::kLong)}, 1).cumsum(1);
}

}  // namespace carve::model
