// The MPI backend of the communicator seam, for CPU tensors. Collectives are issued non-blocking and waited for by
// polling, so a peer that has died or stalled ends the job after the timeout with a message instead of a hang.
// bfloat16 and float16 travel as 2-byte elements reduced by carve's own MPI operations (MPI has no such types).
#pragma once

#include <mpi.h>

#include <functional>

#include "comm/communicator.h"

namespace carve::comm {

class MpiCommunicator : public Communicator {
 public:
  // A duplicate of `base` (MPI_COMM_WORLD by default), so carve's traffic never matches anyone else's.
  explicit MpiCommunicator(MPI_Comm base = MPI_COMM_WORLD, std::string name = "world",
                           std::chrono::milliseconds timeout = comm_timeout());
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::vector<int>& world_ranks() const override { return world_ranks_; }
  const std::string& name() const override { return name_; }
  std::string backend() const override { return "mpi"; }
  torch::Device device() const override { return torch::kCPU; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  MPI_Comm handle() const { return comm_; }

  std::unique_ptr<Work> all_reduce_async(torch::Tensor tensor, ReduceOp op) override;
  void broadcast(torch::Tensor tensor, int root) override;
  void all_gather(const torch::Tensor& in, torch::Tensor out) override;
  void reduce_scatter(const torch::Tensor& in, torch::Tensor out, ReduceOp op) override;
  void send(const torch::Tensor& tensor, int peer) override;
  void recv(torch::Tensor tensor, int peer) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override;
  // The same, typed: the NCCL backend keeps an MPI twin of each of its communicators.
  std::unique_ptr<MpiCommunicator> split_mpi(int color, int key, const std::string& name);

  // Host-side helpers for small exchanges that need no tensor (step agreement, token counts).
  double all_reduce_value(double value, ReduceOp op);
  int64_t all_reduce_value(int64_t value, ReduceOp op);

  // Root's text on every member (the others' argument is ignored).
  std::string broadcast_text(const std::string& text, int root = 0);
  // Runs `step` on member 0 and, if it throws, makes every member throw the same message; `step` must make no
  // collective call. Used where one process decides for all (validating inputs), so the others stop instead of
  // waiting.
  void rank0_decides(const std::function<void()>& step);

  // Waits for `request` by polling; past the timeout, prints what `what` describes and aborts the job.
  void wait_request(MPI_Request* request, const std::string& what) const;

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::vector<int> world_ranks_;
  std::string name_;
  std::chrono::milliseconds timeout_;
};

}  // namespace carve::comm
