// Bucketed gradient reduction for data parallelism, overlapped with backward.
//
// The parameters are laid out, in reverse order (backward produces the last layers' gradients first), in flat
// buckets of at most `bucket_bytes`. When armed, a hook on each parameter copies its gradient (plus what earlier
// micro-batches accumulated) into its bucket slot as backward produces it; a bucket whose slots are all filled is
// summed across the communicator at once (asynchronously, so the reduction overlaps the rest of backward). Buckets
// are launched strictly in index order, so every member issues the same collectives in the same order.
// finish() waits for the reductions and makes each parameter's gradient a view of its reduced slot.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "comm/communicator.h"

namespace carve::comm {

class GradReducer {
 public:
  GradReducer(std::vector<torch::Tensor> params, Communicator& comm, int64_t bucket_bytes);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // The next backward is the last of this step: reduce gradients as they arrive.
  void arm();
  // After that backward: reduces what backward did not reach, waits, and sets every parameter's gradient to the sum
  // over the members. Returns the seconds the host spent waiting for communication.
  double finish();
  // Drops every gradient (before a step's first backward): the next backward starts from nothing.
  void zero_grad();

  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  int64_t bucket_bytes(int64_t b) const;

 private:
  struct Slot {
    int64_t bucket = 0, offset = 0;
  };
  struct Bucket {
    torch::Tensor flat;
    std::vector<size_t> params;
    size_t ready = 0;
    std::unique_ptr<Work> work;
  };
  void on_grad(size_t param, const torch::Tensor& grad);
  void fill(size_t param, const torch::Tensor& grad);
  void launch_ready();
  torch::Tensor slot_view(size_t param);

  std::vector<torch::Tensor> params_;
  Communicator& comm_;
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  std::vector<char> filled_;
  std::vector<unsigned> hooks_;
  size_t next_launch_ = 0;
  bool armed_ = false;
};

}  // namespace carve::comm
