#include "model/tensor_checks.h"

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

}  // namespace carve::model
