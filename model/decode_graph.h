// The single-token decode step of a CausalLM captured once as a CUDA graph and replayed for every later token.
// At batch 1 a 2.6B model's step is hundreds of small kernels whose launches, not its bytes, set the time; a graph
// launches them all at once. What makes the step capturable: attention reads each row's position from a device
// buffer (model/inference_ops.h), the KV caches are reserved for the whole generation so no buffer moves, and the
// Mamba-2 states are updated in place by their step kernels.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>

#include "model/transformer.h"

namespace carve::model {

class DecodeStepGraph {
 public:
  // Decodes `state` of `model` for a batch of `batch` rows up to `max_positions` positions in all (the state is
  // reserved for them here). The first step runs eagerly (it warms up the libraries on the graph's stream), the
  // second is captured, every later one replayed.
  DecodeStepGraph(CausalLMImpl& model, DecodeState& state, int64_t batch, int64_t max_positions);
  ~DecodeStepGraph();
  DecodeStepGraph(const DecodeStepGraph&) = delete;
  DecodeStepGraph& operator=(const DecodeStepGraph&) = delete;

  // tokens [batch] int64 (any device) -> logits [batch, vocab]: a buffer that the next step overwrites.
  torch::Tensor step(const torch::Tensor& tokens);

  // Why `model` cannot be decoded through a graph in this build and mode, or "" when it can.
  static std::string unavailable_reason(const CausalLMImpl& model);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One token per row through `state`, for callers that take a graph when they can: a DecodeStepGraph when `graphs`
// is set and the model allows it, otherwise one plain forward per token.
class DecodeStepper {
 public:
  DecodeStepper(CausalLMImpl& model, DecodeState& state, int64_t batch, int64_t max_positions, bool graphs);
  // tokens [batch] int64 -> logits [batch, vocab] (with a graph, a buffer that the next step overwrites).
  torch::Tensor step(const torch::Tensor& tokens);
  bool graphed() const { return graph_ != nullptr; }
  // Why there is no graph although one was asked for ("" otherwise).
  const std::string& why_not_graphed() const { return why_not_; }

 private:
  CausalLMImpl& model_;
  DecodeState& state_;
  int64_t batch_;
  std::unique_ptr<DecodeStepGraph> graph_;
  std::string why_not_;
};

}  // namespace carve::model
