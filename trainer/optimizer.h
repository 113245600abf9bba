// AdamW with decoupled weight decay, and the learning-rate schedules of the recipes.
//
// carve keeps its own AdamW (rather than torch::optim's) so that its state is a plain set of named tensors that a
// checkpoint stores and restores exactly, the same on LibTorch 1.13 and 2.x. Weight decay applies to parameters of
// two or more dimensions only (matrices and the conv kernel), not to biases, norm weights, A_log, dt_bias or D: what
// MaTVLM states and what Hugging Face's Trainer (mmMamba's code) does for biases and norms.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace carve::trainer {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, AdamWOptions options);
  // One update with learning rate `lr` from each parameter's .grad (parameters without one are skipped).
  void step(double lr);
  int64_t steps() const { return steps_; }
  const std::vector<std::pair<std::string, torch::Tensor>>& params() const { return params_; }

  // "exp_avg.<name>", "exp_avg_sq.<name>" and "step" (int64 scalar).
  std::vector<std::pair<std::string, torch::Tensor>> state() const;
  // Restores what state() returned; `lookup(name)` gives the stored tensor or throws naming what is missing.
  template <typename Lookup>
  void load_state(Lookup&& lookup) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
      exp_avg_[i].copy_(lookup("exp_avg." + params_[i].first));
      exp_avg_sq_[i].copy_(lookup("exp_avg_sq." + params_[i].first));
    }
    steps_ = lookup("step").template item<int64_t>();
  }

 private:
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;
  AdamWOptions o_;
  int64_t steps_ = 0;
};

// Global gradient norm over `grads` (float32 scalar on their device); the sum of squares is what data-parallel and
// layer-parallel ranks combine.
torch::Tensor grad_square_sum(const std::vector<torch::Tensor>& params);
// Scales every gradient by min(1, max_norm / (norm + 1e-6)) without a host synchronisation.
void clip_by_norm(const std::vector<torch::Tensor>& params, const torch::Tensor& norm, double max_norm);

// Learning rate at optimizer step `step` (0-based) of `total`:
//   constant  linear warmup, then the peak
//   cosine    linear warmup, then half a cosine from the peak to min_ratio x peak
//   wsd       warmup-stable-decay (mmMamba, MaTVLM): linear warmup, the peak, then a linear decay over the last
//             `decay` fraction of the steps to min_ratio x peak
enum class Schedule { Constant, Cosine, Wsd };
Schedule parse_schedule(const std::string& text, const std::string& source = "schedule");
std::string schedule_name(Schedule s);

struct LrSchedule {
  Schedule kind = Schedule::Wsd;
  double peak = 1e-3;
  double warmup = 0.1;  // fraction of the total steps
  double decay = 0.1;   // fraction (wsd)
  double min_ratio = 0.0;
  double at(int64_t step, int64_t total) const;
};

}  // namespace carve::trainer
