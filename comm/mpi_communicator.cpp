#include "comm/mpi_communicator.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <cstdio>
#include <mutex>
#include <thread>

#include "base/error.h"
#include "base/log.h"
#include "comm/mpi_session.h"

namespace carve::comm {
namespace {

// Element-wise reductions for the 2-byte float types, computed in float32 and rounded back.
template <typename T, ReduceOp Op>
void reduce_half(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = static_cast<float>(a[i]), y = static_cast<float>(b[i]);
    b[i] = static_cast<T>(Op == ReduceOp::Max ? std::max(x, y) : x + y);
  }
}

struct HalfOps {
  MPI_Op bf16_sum, bf16_max, f16_sum, f16_max;
};

const HalfOps& half_ops() {
  static HalfOps ops;
  static std::once_flag once;
  std::call_once(once, [] {
    check_mpi(MPI_Op_create(&reduce_half<c10::BFloat16, ReduceOp::Sum>, 1, &ops.bf16_sum), "MPI_Op_create");
    check_mpi(MPI_Op_create(&reduce_half<c10::BFloat16, ReduceOp::Max>, 1, &ops.bf16_max), "MPI_Op_create");
    check_mpi(MPI_Op_create(&reduce_half<c10::Half, ReduceOp::Sum>, 1, &ops.f16_sum), "MPI_Op_create");
    check_mpi(MPI_Op_create(&reduce_half<c10::Half, ReduceOp::Max>, 1, &ops.f16_max), "MPI_Op_create");
  });
  return ops;
}

MPI_Datatype mpi_type(const Communicator& comm, const char* op, torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return MPI_FLOAT;
    case torch::kFloat64: return MPI_DOUBLE;
    case torch::kBFloat16:
    case torch::kFloat16: return MPI_UINT16_T;  // reduced by half_ops()
    case torch::kInt32: return MPI_INT32_T;
    case torch::kInt64: return MPI_INT64_T;
    case torch::kUInt8: return MPI_UINT8_T;
    case torch::kInt8: return MPI_INT8_T;
    case torch::kBool: return MPI_C_BOOL;
    default: break;
  }
  fail(comm.describe(op, torch::Tensor()), ": dtype ", c10::toString(t), " is not supported by the MPI backend");
}

MPI_Op mpi_op(const Communicator& comm, const char* what, torch::ScalarType t, ReduceOp op) {
  const bool max = op == ReduceOp::Max;
  if (t == torch::kBFloat16) return max ? half_ops().bf16_max : half_ops().bf16_sum;
  if (t == torch::kFloat16) return max ? half_ops().f16_max : half_ops().f16_sum;
  CARVE_CHECK(op != ReduceOp::Average || c10::isFloatingType(t), comm.describe(what, torch::Tensor()),
              ": an average needs a floating-point tensor, not ", c10::toString(t));
  CARVE_CHECK(t != torch::kBool || op == ReduceOp::Max, comm.describe(what, torch::Tensor()),
              ": bool tensors reduce only by max (logical or)");
  if (t == torch::kBool) return MPI_LOR;
  return max ? MPI_MAX : MPI_SUM;
}

int count_of(const Communicator& comm, const char* op, const torch::Tensor& t) {
  CARVE_CHECK(t.numel() <= std::numeric_limits<int>::max(), comm.describe(op, t),
              ": more elements than one MPI call carries (2^31 - 1); split the tensor");
  return static_cast<int>(t.numel());
}

// A contiguous buffer for `t`: t itself or a copy that finish() writes back.
struct Staged {
  torch::Tensor original, buffer;
  explicit Staged(torch::Tensor t) : original(std::move(t)) {
    buffer = original.is_contiguous() ? original : original.contiguous();
  }
  void finish() {
    if (!buffer.is_same(original)) original.copy_(buffer);
  }
};

class MpiWork : public Work {
 public:
  MpiWork(const MpiCommunicator& comm, std::string what, Staged staged, bool average)
      : comm_(comm), what_(std::move(what)), staged_(std::move(staged)), average_(average) {}
  ~MpiWork() override {
    // A request must not outlive its buffer: waiting is the only safe end for an unfinished one.
    if (request != MPI_REQUEST_NULL) comm_.wait_request(&request, what_);
  }
  void wait() override {
    if (request != MPI_REQUEST_NULL) comm_.wait_request(&request, what_);
    if (done_) return;
    done_ = true;
    if (average_) staged_.buffer.div_(comm_.size());
    staged_.finish();
  }
  MPI_Request request = MPI_REQUEST_NULL;
  torch::Tensor buffer() const { return staged_.buffer; }

 private:
  const MpiCommunicator& comm_;
  std::string what_;
  Staged staged_;
  bool average_;
  bool done_ = false;
};

// Ends the whole job: a collective that cannot complete would otherwise hang every member.
[[noreturn]] void end_job(const std::string& what, std::chrono::steady_clock::duration waited) {
  std::fprintf(stderr,
               "carve: rank %d: %s has not completed after %.1f s: a peer has died, stalled or issued a different "
               "operation; ending the job\n",
               world_rank(), what.c_str(), std::chrono::duration<double>(waited).count());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 3);
  std::_Exit(3);  // MPI_Abort does not return; this keeps [[noreturn]] honest if it ever does
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm base, std::string name, std::chrono::milliseconds timeout)
    : name_(std::move(name)), timeout_(timeout) {
  check_mpi(MPI_Comm_dup(base, &comm_), "MPI_Comm_dup");
  check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  int me = world_rank();
  world_ranks_.resize(static_cast<size_t>(size_));
  check_mpi(MPI_Allgather(&me, 1, MPI_INT, world_ranks_.data(), 1, MPI_INT, comm_), "MPI_Allgather (ranks)");
}

MpiCommunicator::~MpiCommunicator() {
  if (comm_ != MPI_COMM_NULL && mpi_active()) MPI_Comm_free(&comm_);
}

void MpiCommunicator::wait_request(MPI_Request* request, const std::string& what) const {
  const auto start = std::chrono::steady_clock::now();
  for (int polls = 0;; ++polls) {
    int done = 0;
    check_mpi(MPI_Test(request, &done, MPI_STATUS_IGNORE), what.c_str());
    if (done) return;
    // Spin briefly (most operations finish within microseconds), then poll gently.
    if (polls < 2000) continue;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
    const auto waited = std::chrono::steady_clock::now() - start;
    if (waited > timeout_) end_job(what, waited);
  }
}

std::unique_ptr<Work> MpiCommunicator::all_reduce_async(torch::Tensor tensor, ReduceOp op) {
  check_tensor(*this, "all_reduce", tensor);
  const auto what = describe("all_reduce(" + reduce_op_name(op) + ")", tensor);
  const auto type = mpi_type(*this, "all_reduce", tensor.scalar_type());
  const auto mop = mpi_op(*this, "all_reduce", tensor.scalar_type(), op);
  const int count = count_of(*this, "all_reduce", tensor);
  auto work = std::make_unique<MpiWork>(*this, what, Staged(std::move(tensor)), op == ReduceOp::Average);
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, work->buffer().data_ptr(), count, type, mop, comm_, &work->request),
            what.c_str());
  return work;
}

void MpiCommunicator::broadcast(torch::Tensor tensor, int root) {
  check_tensor(*this, "broadcast", tensor);
  CARVE_CHECK(root >= 0 && root < size_, describe("broadcast", tensor), ": root ", root, " is not a member");
  const auto what = describe("broadcast from " + std::to_string(root), tensor);
  MpiWork work(*this, what, Staged(tensor), false);
  check_mpi(MPI_Ibcast(work.buffer().data_ptr(), count_of(*this, "broadcast", tensor),
                       mpi_type(*this, "broadcast", tensor.scalar_type()), root, comm_, &work.request),
            what.c_str());
  work.wait();
}

void MpiCommunicator::all_gather(const torch::Tensor& in, torch::Tensor out) {
  check_tensor(*this, "all_gather", in);
  check_tensor(*this, "all_gather", out);
  const auto what = describe("all_gather", in);
  CARVE_CHECK(out.numel() == in.numel() * size_ && out.scalar_type() == in.scalar_type(), what,
              ": the output needs ", in.numel() * size_, " x ", c10::toString(in.scalar_type()), ", it has ",
              out.numel(), " x ", c10::toString(out.scalar_type()));
  auto src = in.contiguous();
  MpiWork work(*this, what, Staged(out), false);
  const auto type = mpi_type(*this, "all_gather", in.scalar_type());
  const int count = count_of(*this, "all_gather", src);
  check_mpi(MPI_Iallgather(src.data_ptr(), count, type, work.buffer().data_ptr(), count, type, comm_, &work.request),
            what.c_str());
  work.wait();
}

void MpiCommunicator::reduce_scatter(const torch::Tensor& in, torch::Tensor out, ReduceOp op) {
  check_tensor(*this, "reduce_scatter", in);
  check_tensor(*this, "reduce_scatter", out);
  const auto what = describe("reduce_scatter(" + reduce_op_name(op) + ")", in);
  CARVE_CHECK(in.numel() == out.numel() * size_ && out.scalar_type() == in.scalar_type(), what,
              ": the input needs size() x the output's ", out.numel(), " elements of the same dtype, it has ",
              in.numel(), " x ", c10::toString(in.scalar_type()));
  auto src = in.contiguous();
  MpiWork work(*this, what, Staged(out), op == ReduceOp::Average);
  check_mpi(MPI_Ireduce_scatter_block(src.data_ptr(), work.buffer().data_ptr(), count_of(*this, "reduce_scatter", out),
                                      mpi_type(*this, "reduce_scatter", in.scalar_type()),
                                      mpi_op(*this, "reduce_scatter", in.scalar_type(), op), comm_, &work.request),
            what.c_str());
  work.wait();
}

void MpiCommunicator::send(const torch::Tensor& tensor, int peer) {
  check_tensor(*this, "send", tensor);
  const auto what = describe("send to " + std::to_string(peer), tensor);
  CARVE_CHECK(peer >= 0 && peer < size_ && peer != rank_, what, ": peer ", peer, " is not another member");
  auto src = tensor.contiguous();
  MPI_Request request;
  check_mpi(MPI_Isend(src.data_ptr(), count_of(*this, "send", src), mpi_type(*this, "send", src.scalar_type()), peer,
                      0, comm_, &request),
            what.c_str());
  wait_request(&request, what);
}

void MpiCommunicator::recv(torch::Tensor tensor, int peer) {
  check_tensor(*this, "recv", tensor);
  const auto what = describe("recv from " + std::to_string(peer), tensor);
  CARVE_CHECK(peer >= 0 && peer < size_ && peer != rank_, what, ": peer ", peer, " is not another member");
  // Probe first, so a size mismatch is an error naming both sizes rather than a truncation.
  MPI_Message message;
  MPI_Status status;
  const auto start = std::chrono::steady_clock::now();
  for (int found = 0; !found;) {
    check_mpi(MPI_Improbe(peer, 0, comm_, &found, &message, &status), what.c_str());
    if (found) break;
    std::this_thread::sleep_for(std::chrono::microseconds(20));
    const auto waited = std::chrono::steady_clock::now() - start;
    if (waited > timeout_) end_job(what, waited);
  }
  const auto type = mpi_type(*this, "recv", tensor.scalar_type());
  int count = 0;
  check_mpi(MPI_Get_count(&status, type, &count), what.c_str());
  CARVE_CHECK(count == tensor.numel(), what, ": the peer sent ", count, " elements, the receiving tensor holds ",
              tensor.numel());
  Staged staged(tensor);
  check_mpi(MPI_Mrecv(staged.buffer.data_ptr(), count, type, &message, MPI_STATUS_IGNORE), what.c_str());
  staged.finish();
}

void MpiCommunicator::barrier() {
  MPI_Request request;
  const auto what = describe("barrier", torch::Tensor());
  check_mpi(MPI_Ibarrier(comm_, &request), what.c_str());
  wait_request(&request, what);
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split_mpi(int color, int key, const std::string& name) {
  MPI_Comm sub;
  check_mpi(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split");
  auto out = std::make_unique<MpiCommunicator>(sub, name, timeout_);
  MPI_Comm_free(&sub);
  return out;
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key, const std::string& name) {
  return split_mpi(color, key, name);
}

std::string MpiCommunicator::broadcast_text(const std::string& text, int root) {
  auto size = torch::tensor({static_cast<int64_t>(text.size())}, torch::kInt64);
  broadcast(size, root);
  auto bytes = torch::empty({size.item<int64_t>()}, torch::kUInt8);
  if (rank_ == root && !text.empty()) std::memcpy(bytes.data_ptr(), text.data(), text.size());
  if (bytes.numel() > 0) broadcast(bytes, root);
  return std::string(reinterpret_cast<const char*>(bytes.data_ptr()), static_cast<size_t>(bytes.numel()));
}

void MpiCommunicator::rank0_decides(const std::function<void()>& step) {
  std::string error;
  if (rank_ == 0) {
    try {
      step();
    } catch (const std::exception& e) {
      error = e.what();
      if (error.empty()) error = "rank 0 failed";
    }
  }
  error = broadcast_text(error);
  if (!error.empty()) throw Error(error);
}

double MpiCommunicator::all_reduce_value(double value, ReduceOp op) {
  auto t = torch::tensor({value}, torch::kFloat64);
  all_reduce(t, op);
  return t.item<double>();
}

int64_t MpiCommunicator::all_reduce_value(int64_t value, ReduceOp op) {
  auto t = torch::tensor({value}, torch::kInt64);
  all_reduce(t, op);
  return t.item<int64_t>();
}

}  // namespace carve::comm
