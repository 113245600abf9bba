// The decoding state of a Mamba-2 mixer and the two stateful steps every such mixer runs: the causal conv over its
// [x, B, C] channels and the SSD scan. Both mixers (seeded and mamba2) go through these, so prefill, continued
// prefill and single-token decoding behave the same in each.
#pragma once

#include <torch/torch.h>

#include "model/inference_ops.h"
#include "model/mixer.h"
#include "model/ssd.h"

namespace carve::model {

struct SsmState : MixerState {
  torch::Tensor conv;  // [b, channels, kernel - 1], the last inputs of the conv (undefined before the first call)
  torch::Tensor ssm;   // [b, heads, head_dim, state_size], float32
  // Rows are independent and carry no position: merging stacks them.
  void merge_rows(const std::vector<const MixerState*>& parts, const std::vector<torch::Tensor>& rows,
                  int64_t batch) override;
};

// Sizes of a Mamba-2 mixer carved out of an attention layer: heads, KV heads and head dim come from the teacher.
struct SsmMixerConfig {
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // also the SSM state size: B and C come from k and q
  int64_t conv_kernel = 0;
  int64_t chunk_size = 0;
  double norm_eps = 1e-5;
  bool qkv_bias = false;  // the seeded mixer keeps the teacher's q/k/v/o biases; the mamba2 block drops them
  bool o_bias = false;
};

// Causal depthwise conv + SiLU over xbc [b, l, c]. With ctx.state (an SsmState) it continues from and updates the
// state's conv part; a single token uses the step form.
torch::Tensor conv_with_state(const torch::Tensor& xbc, const torch::Tensor& weight, const torch::Tensor& bias,
                              const MixerContext& ctx);

// The SSD scan of `in` (x [b, l, h, p], ...). With ctx.state it continues from and updates the state's SSM part
// (single tokens take the recurrent step); ctx.seq_idx marks packed samples.
torch::Tensor ssd_with_state(SsdInputs in, const MixerContext& ctx);

// A Mamba-2 mixer's single-token step as the fused inference kernels run it: one launch for the input products
// (side by side, the [x, B, C] columns through the conv step) and one for the SSD step and gated norm after them.
struct FusedSsmStep {
  std::vector<GemvWeight> products;         // all read the normed layer input (normed in their prologue
                                            // when ctx.input_norm is set)
  int64_t x_col = 0, B_col = 0, C_col = 0;  // first column of each in the products' output
  int64_t dt_col = 0, z_col = 0;
  int64_t conv_begin = 0, conv_end = 0;  // the [x, B, C] columns, the conv's channels in order
  torch::Tensor conv_weight, conv_bias;  // [channels, kernel], [channels]
  MambaStepInputs step;                  // sizes and parameters; the views and the state are filled in
};
// u [b, 1, d] (before ctx.input_norm when that is set) -> the mixer's output before its output projection
// [b, 1, heads * head_dim], or an undefined tensor when the fused kernels do not apply (not a single token
// continuing a state, not inference on CUDA, another dtype): the caller then runs its reference path. Nothing is
// touched in that case.
torch::Tensor fused_ssm_step(const torch::Tensor& u, FusedSsmStep spec, const MixerContext& ctx);

// A = -exp(A_log) in float32 (float64 stays float64): decay rates are never computed in bf16.
torch::Tensor decay_rates(const torch::Tensor& A_log);

// Repeats KV heads to query heads along dim 2 of [b, l, kv_heads, p] (head i reads KV head i / groups).
torch::Tensor repeat_kv_heads(const torch::Tensor& t, int64_t groups);

}  // namespace carve::model
