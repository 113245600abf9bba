// The sequence mixer of a decoder layer: attention in a teacher, a Mamba-2 mixer in a student.
// Every mixer maps the normed layer input to the layer's mixer output and can run step by step with a state.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace carve::model {

class NormImpl;

// Per-layer decoding state (a KV cache for attention, conv and SSM states for Mamba-2).
struct MixerState {
  virtual ~MixerState() = default;
  // The state will hold `positions` tokens in all: a state whose buffers grow with the sequence (a KV cache)
  // allocates them once now, so they never move later (a captured decode graph holds their addresses).
  virtual void reserve(int64_t positions) {}
  // A replayed decode graph has updated the device memory for `tokens` more tokens: bring the host-side bookkeeping
  // along.
  virtual void advance(int64_t tokens) {}
  // Makes this (fresh) state the union of `parts`, states of the same kind from prefills of disjoint rows: the rows of
  // parts[i] become rows `rows[i]` ([n_i] int64, CPU) of a state of `batch` rows. Parts may have consumed different
  // numbers of tokens (prompts of different lengths); each row keeps its own.
  virtual void merge_rows(const std::vector<const MixerState*>& parts, const std::vector<torch::Tensor>& rows,
                          int64_t batch) = 0;
};

struct MixerContext {
  torch::Tensor positions;  // [b, l] int64: absolute positions (RoPE)
  torch::Tensor seq_idx;    // [b, l] int32 or undefined: packed-sample index; tokens of different samples never mix
  MixerState* state = nullptr;          // null: a stateless full-sequence forward
  torch::Tensor* pre_output = nullptr;  // if set, receives the output before the output projection [b, l, h*p]
  // Layer-wise distillation needs only *pre_output: the mixer then returns an undefined tensor instead of paying
  // for the output projection.
  bool skip_output_projection = false;
  // Set by a decoder layer on the inference kernels: u is the layer input before this RMSNorm, which the mixer's
  // first product applies in its prologue (model/layers.h normed_input is the mixer's way when it cannot).
  NormImpl* input_norm = nullptr;
};

class Mixer : public torch::nn::Module {
 public:
  // u [b, l, d] (the normed layer input, or the input before ctx.input_norm) -> [b, l, d]. With ctx.state set, l
  // new tokens continue that state.
  virtual torch::Tensor forward(const torch::Tensor& u, const MixerContext& ctx) = 0;
  virtual std::unique_ptr<MixerState> new_state() const = 0;
  // "attention", "seeded" (mmMamba), "mamba2" (MaTVLM).
  virtual std::string kind() const = 0;
};

}  // namespace carve::model
