#include "comm/communicator.h"

#include <cstdlib>
#include <sstream>

#include "base/error.h"
#include "base/text.h"

namespace carve::comm {

std::string reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Average: return "average";
    case ReduceOp::Max: return "max";
  }
  return "?";
}

std::string Communicator::describe(const std::string& op, const torch::Tensor& tensor) const {
  std::ostringstream out;
  out << op;
  if (tensor.defined()) out << " of " << tensor.numel() << " x " << c10::toString(tensor.scalar_type());
  out << " on " << name() << " (" << backend() << ", world ranks " << join_integers(world_ranks()) << ")";
  return out.str();
}

void check_tensor(const Communicator& comm, const char* op, const torch::Tensor& tensor) {
  CARVE_CHECK(tensor.defined(), comm.describe(op, tensor), ": the tensor is undefined");
  CARVE_CHECK(tensor.device() == comm.device(), comm.describe(op, tensor), ": the tensor is on ",
              tensor.device().str(), ", this communicator works on ", comm.device().str());
}

std::chrono::milliseconds comm_timeout(std::chrono::milliseconds fallback) {
  const char* v = std::getenv("CARVE_COMM_TIMEOUT");
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const double seconds = std::strtod(v, &end);
  CARVE_CHECK(end && *end == '\0' && seconds > 0, "CARVE_COMM_TIMEOUT='", v, "': expected a positive number of seconds");
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

}  // namespace carve::comm
