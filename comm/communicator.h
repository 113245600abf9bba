// The communicator seam: collectives over tensors among a fixed set of processes. Two backends implement it,
// MPI for CPU tensors (comm/mpi_communicator) and NCCL for CUDA tensors (comm/nccl_communicator); trainers see only
// this interface, so the same code runs distributed on CPUs (tests, CI) and on GPUs.
//
// Semantics: every operation is collective over the communicator's members (send/recv over the pair) and must be
// issued in the same order on every member. Blocking calls return when the result may be used by the caller: on a
// CPU when it is in memory, on a GPU when work queued afterwards on the current stream is ordered after it (the host
// does not wait). An operation that does not complete within the communicator's timeout, or that the backend reports
// failed, ends the whole job with a message naming the operation and the ranks (a hung collective never returns).
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace carve::comm {

enum class ReduceOp { Sum, Average, Max };
std::string reduce_op_name(ReduceOp op);

// An operation in flight.
class Work {
 public:
  virtual ~Work() = default;
  // CPU: blocks until complete (watched by the timeout). CUDA: orders the current stream after it.
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The members' ranks in MPI_COMM_WORLD, in communicator order (for messages).
  virtual const std::vector<int>& world_ranks() const = 0;
  // What the communicator is for ("world", "data-parallel group 1"), for messages.
  virtual const std::string& name() const = 0;
  virtual std::string backend() const = 0;  // "mpi" | "nccl"
  virtual torch::Device device() const = 0;

  // In place on every member. Average divides by size() (floating-point tensors only).
  virtual std::unique_ptr<Work> all_reduce_async(torch::Tensor tensor, ReduceOp op) = 0;
  void all_reduce(torch::Tensor tensor, ReduceOp op) { all_reduce_async(std::move(tensor), op)->wait(); }
  // root's tensor into every member's (same shape and dtype everywhere).
  virtual void broadcast(torch::Tensor tensor, int root) = 0;
  // out (size() * in.numel() elements, contiguous) receives every member's `in`, in rank order.
  virtual void all_gather(const torch::Tensor& in, torch::Tensor out) = 0;
  // in (size() * out.numel() elements) is reduced element-wise; member r receives chunk r into `out`.
  virtual void reduce_scatter(const torch::Tensor& in, torch::Tensor out, ReduceOp op) = 0;
  // Point to point: the receiver's tensor must have the sender's element count and dtype.
  virtual void send(const torch::Tensor& tensor, int peer) = 0;
  virtual void recv(torch::Tensor tensor, int peer) = 0;
  virtual void barrier() = 0;

  // A sub-communicator of the members that pass the same `color`, ordered by `key` (then rank). Collective.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) = 0;

  // "all_reduce(sum) of 1024 x float32 on data-parallel group 1 (world ranks 0,2)": for messages.
  std::string describe(const std::string& op, const torch::Tensor& tensor) const;
};

// Checks shared by the backends; errors name the operation and the communicator.
void check_tensor(const Communicator& comm, const char* op, const torch::Tensor& tensor);

// How long an operation may take before the job is ended: CARVE_COMM_TIMEOUT seconds when set, else `fallback`.
std::chrono::milliseconds comm_timeout(std::chrono::milliseconds fallback = std::chrono::minutes(10));

}  // namespace carve::comm
