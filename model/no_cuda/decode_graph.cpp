// A build without CUDA cannot capture graphs: DecodeStepGraph::unavailable_reason says so and nothing constructs one.
#include "model/decode_graph.h"

#include "base/error.h"

namespace carve::model {

struct DecodeStepGraph::Impl {};

DecodeStepGraph::DecodeStepGraph(CausalLMImpl&, DecodeState&, int64_t, int64_t) {
  throw Error("cannot decode through a CUDA graph: this build of carve has no CUDA kernels");
}
DecodeStepGraph::~DecodeStepGraph() = default;
torch::Tensor DecodeStepGraph::step(const torch::Tensor&) { throw Error("carve was built without CUDA"); }

}  // namespace carve::model
