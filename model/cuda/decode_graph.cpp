#include "model/decode_graph.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>

#include "base/error.h"

namespace carve::model {

struct DecodeStepGraph::Impl {
  enum class Phase { Eager, Capture, Replay };
  Impl(CausalLMImpl& m, DecodeState& s, int64_t b, int64_t max)
      : model(m), state(s), batch(b), max_positions(max), stream(at::cuda::getStreamFromPool()) {}

  torch::Tensor forward() {
    ForwardOptions o;
    o.state = &state;
    o.positions = positions;
    return model.forward(tokens, o).logits.select(1, 0);
  }

  CausalLMImpl& model;
  DecodeState& state;
  int64_t batch, max_positions;
  at::cuda::CUDAStream stream;
  torch::Tensor tokens, positions, logits;  // the graph's input and output buffers
  at::cuda::CUDAGraph graph;
  Phase phase = Phase::Eager;
};

DecodeStepGraph::DecodeStepGraph(CausalLMImpl& model, DecodeState& state, int64_t batch, int64_t max_positions) {
  const auto reason = unavailable_reason(model);
  CARVE_CHECK(reason.empty(), "cannot decode through a CUDA graph: ", reason);
  CARVE_CHECK(batch > 0 && max_positions > state.length, "decode graph: batch ", batch, " and ", max_positions,
              " positions for a state already at ", state.length);
  state.reserve(max_positions);
  impl_ = std::make_unique<Impl>(model, state, batch, max_positions);
  auto opts = torch::TensorOptions().dtype(torch::kInt64).device(model.embed_tokens.device());
  impl_->tokens = torch::zeros({batch, 1}, opts);
  impl_->positions = torch::zeros({batch, 1}, opts);
}

DecodeStepGraph::~DecodeStepGraph() = default;

torch::Tensor DecodeStepGraph::step(const torch::Tensor& tokens) {
  auto& m = *impl_;
  CARVE_CHECK(tokens.numel() == m.batch, "decode graph of batch ", m.batch, " was given ", tokens.numel(), " tokens");
  CARVE_CHECK(m.state.length < m.max_positions, "decode graph was built for ", m.max_positions,
              " positions; the state already holds ", m.state.length);
  torch::NoGradGuard no_grad;
  const c10::cuda::CUDAGuard device_guard(m.tokens.device());
  // The graph's stream waits for the caller's stream (the tokens may come from it), and the caller's for the step.
  auto caller = at::cuda::getCurrentCUDAStream();
  at::cuda::CUDAEvent inputs_ready;
  inputs_ready.record(caller);
  inputs_ready.block(m.stream);
  {
    const c10::cuda::CUDAStreamGuard stream_guard(m.stream);
    m.tokens.copy_(tokens.reshape({m.batch, 1}));
    if (m.state.row_offsets.defined()) m.positions.copy_(m.state.next_positions(m.batch, 1, m.positions.device()));
    else m.positions.fill_(m.state.length);
    switch (m.phase) {
      case Impl::Phase::Eager:
        m.logits = m.forward();
        m.phase = Impl::Phase::Capture;
        break;
      case Impl::Phase::Capture:
        // Capturing runs the host code once (the states' bookkeeping advances) and records the kernels; the replay
        // right after executes them.
        m.graph.capture_begin();
        m.logits = m.forward();
        m.graph.capture_end();
        m.graph.replay();
        m.phase = Impl::Phase::Replay;
        break;
      case Impl::Phase::Replay:
        m.graph.replay();
        m.state.advance(1);
        break;
    }
  }
  at::cuda::CUDAEvent step_done;
  step_done.record(m.stream);
  step_done.block(caller);
  return m.logits;
}

}  // namespace carve::model
