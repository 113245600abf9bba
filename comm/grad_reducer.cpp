#include "comm/grad_reducer.h"

#include <chrono>

#include "base/error.h"

namespace carve::comm {

GradReducer::GradReducer(std::vector<torch::Tensor> params, Communicator& comm, int64_t bucket_bytes)
    : params_(std::move(params)), comm_(comm) {
  CARVE_CHECK(bucket_bytes > 0, "gradient bucket size must be positive, not ", bucket_bytes);
  slots_.resize(params_.size());
  filled_.assign(params_.size(), 0);
  // Reverse order; a new bucket when the current one would overflow or the dtype changes.
  int64_t used = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const auto& p = params_[k];
    CARVE_CHECK(p.requires_grad(), "gradient reduction over a parameter that does not require a gradient");
    CARVE_CHECK(p.device() == comm.device(), comm.name(), ": a parameter is on ", p.device().str(),
                ", the communicator works on ", comm.device().str());
    const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    const bool new_bucket = buckets_.empty() || used + bytes > bucket_bytes ||
                            buckets_.back().flat.scalar_type() != p.scalar_type();
    if (new_bucket) {
      buckets_.emplace_back();
      buckets_.back().flat = torch::empty({0}, p.options().requires_grad(false));
      used = 0;
    }
    auto& b = buckets_.back();
    slots_[k] = {static_cast<int64_t>(buckets_.size() - 1), b.flat.numel()};
    b.params.push_back(k);
    b.flat = torch::empty({b.flat.numel() + p.numel()}, b.flat.options());
    used += bytes;
  }
  for (size_t k = 0; k < params_.size(); ++k)
    hooks_.push_back(params_[k].register_hook([this, k](torch::Tensor grad) { on_grad(k, grad); }));
}

GradReducer::~GradReducer() {
  for (size_t k = 0; k < hooks_.size(); ++k) params_[k].remove_hook(hooks_[k]);
}

int64_t GradReducer::bucket_bytes(int64_t b) const {
  const auto& flat = buckets_.at(static_cast<size_t>(b)).flat;
  return flat.numel() * static_cast<int64_t>(flat.element_size());
}

torch::Tensor GradReducer::slot_view(size_t k) {
  const auto& s = slots_[k];
  return buckets_[static_cast<size_t>(s.bucket)].flat.narrow(0, s.offset, params_[k].numel()).view(params_[k].sizes());
}

void GradReducer::arm() {
  armed_ = true;
  next_launch_ = 0;
  std::fill(filled_.begin(), filled_.end(), 0);
  for (auto& b : buckets_) {
    b.ready = 0;
    b.work.reset();
  }
}

void GradReducer::fill(size_t k, const torch::Tensor& grad) {
  torch::NoGradGuard no_grad;
  auto slot = slot_view(k);
  const auto& accumulated = params_[k].grad();
  if (accumulated.defined() && grad.defined()) torch::add_out(slot, accumulated, grad);
  else if (accumulated.defined()) slot.copy_(accumulated);
  else if (grad.defined()) slot.copy_(grad);
  else slot.zero_();
  filled_[k] = 1;
  ++buckets_[static_cast<size_t>(slots_[k].bucket)].ready;
}

void GradReducer::on_grad(size_t k, const torch::Tensor& grad) {
  if (!armed_ || filled_[k]) return;
  fill(k, grad);
  launch_ready();
}

void GradReducer::launch_ready() {
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].ready == buckets_[next_launch_].params.size()) {
    auto& b = buckets_[next_launch_];
    b.work = comm_.all_reduce_async(b.flat, ReduceOp::Sum);
    ++next_launch_;
  }
}

double GradReducer::finish() {
  CARVE_CHECK(armed_, "GradReducer::finish without arm()");
  // Parameters backward did not reach this time keep what earlier micro-batches accumulated (or zero).
  for (size_t k = 0; k < params_.size(); ++k)
    if (!filled_[k]) fill(k, torch::Tensor());
  launch_ready();
  const auto start = std::chrono::steady_clock::now();
  for (auto& b : buckets_) b.work->wait();
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (size_t k = 0; k < params_.size(); ++k) params_[k].mutable_grad() = slot_view(k);
  armed_ = false;
  return waited;
}

void GradReducer::zero_grad() {
  for (auto& p : params_) p.mutable_grad() = torch::Tensor();
}

}  // namespace carve::comm
