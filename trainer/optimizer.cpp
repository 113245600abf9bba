#include "trainer/optimizer.h"

#include <cmath>

#include "base/error.h"

namespace carve::trainer {

AdamW::AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, AdamWOptions options)
    : params_(std::move(params)), o_(options) {
  for (const auto& [name, p] : params_) {
    CARVE_CHECK(p.is_floating_point(), "AdamW: parameter ", name, " is not floating point");
    // Moments in float32 whatever the parameter's dtype: bf16 moments lose small updates.
    auto opts = p.options().dtype(torch::kFloat32).requires_grad(false);
    exp_avg_.push_back(torch::zeros(p.sizes(), opts));
    exp_avg_sq_.push_back(torch::zeros(p.sizes(), opts));
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double bias1 = 1.0 - std::pow(o_.beta1, static_cast<double>(steps_));
  const double bias2 = 1.0 - std::pow(o_.beta2, static_cast<double>(steps_));
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    const auto& g = p.grad();
    if (!g.defined()) continue;
    auto grad = g.to(torch::kFloat32);
    if (o_.weight_decay != 0 && p.dim() >= 2) p.mul_(1.0 - lr * o_.weight_decay);
    exp_avg_[i].mul_(o_.beta1).add_(grad, 1.0 - o_.beta1);
    exp_avg_sq_[i].mul_(o_.beta2).addcmul_(grad, grad, 1.0 - o_.beta2);
    auto denom = (exp_avg_sq_[i] / bias2).sqrt_().add_(o_.eps);
    auto update = (exp_avg_[i] / denom).mul_(lr / bias1);
    p.sub_(update.to(p.scalar_type()));
  }
}

std::vector<std::pair<std::string, torch::Tensor>> AdamW::state() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back("exp_avg." + params_[i].first, exp_avg_[i]);
    out.emplace_back("exp_avg_sq." + params_[i].first, exp_avg_sq_[i]);
  }
  out.emplace_back("step", torch::tensor(steps_, torch::kInt64));
  return out;
}

torch::Tensor grad_square_sum(const std::vector<torch::Tensor>& params) {
  torch::Tensor total;
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;
    auto s = p.grad().to(torch::kFloat32).pow(2).sum();
    total = total.defined() ? total + s : s;
  }
  if (!total.defined()) total = torch::zeros({}, torch::kFloat32);
  return total;
}

void clip_by_norm(const std::vector<torch::Tensor>& params, const torch::Tensor& norm, double max_norm) {
  torch::NoGradGuard no_grad;
  auto scale = (max_norm / (norm + 1e-6)).clamp_max(1.0);
  for (const auto& p : params)
    if (p.grad().defined()) p.grad().mul_(scale.to(p.grad().scalar_type()));
}

Schedule parse_schedule(const std::string& text, const std::string& source) {
  if (text == "constant") return Schedule::Constant;
  if (text == "cosine") return Schedule::Cosine;
  if (text == "wsd") return Schedule::Wsd;
  fail(source, ": '", text, "' is not a schedule (expected wsd, cosine or constant)");
}

std::string schedule_name(Schedule s) {
  switch (s) {
    case Schedule::Constant: return "constant";
    case Schedule::Cosine: return "cosine";
    case Schedule::Wsd: return "wsd";
  }
  return "?";
}

double LrSchedule::at(int64_t step, int64_t total) const {
  const double t = static_cast<double>(step), n = static_cast<double>(std::max<int64_t>(total, 1));
  const double warm = std::floor(warmup * n);
  // Warmup reaches the peak at the last warmup step: step 0 already trains (lr = peak / warm).
  if (t < warm) return peak * (t + 1) / warm;
  const double floor = peak * min_ratio;
  switch (kind) {
    case Schedule::Constant: return peak;
    case Schedule::Cosine: {
      const double progress = std::min(1.0, (t - warm) / std::max(1.0, n - warm));
      return floor + (peak - floor) * 0.5 * (1.0 + std::cos(M_PI * progress));
    }
    case Schedule::Wsd: {
      const double decay_steps = std::floor(decay * n);
      const double decay_start = n - decay_steps;
      if (t < decay_start || decay_steps <= 0) return peak;
      const double progress = (t - decay_start + 1) / decay_steps;
      return peak + (floor - peak) * std::min(1.0, progress);
    }
  }
  return peak;
}

}  // namespace carve::trainer
