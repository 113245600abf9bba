#include "comm/nccl_communicator.h"

#include "base/error.h"

#ifdef CARVE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <list>
#include <mutex>
#include <thread>

#include "comm/mpi_session.h"
#endif

namespace carve::comm {

std::unique_ptr<Communicator> make_device_communicator(MpiCommunicator& host, torch::Device device,
                                                       const std::string& name) {
  if (device.is_cpu()) return host.split(0, host.rank(), name);
  return make_nccl_communicator(host, device, name);
}

#ifndef CARVE_WITH_CUDA

bool nccl_available() { return false; }

std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator&, torch::Device device, const std::string& name) {
  fail(name, ": device ", device.str(), " needs the NCCL backend, and this build of carve has no CUDA (rebuild against "
       "a CUDA LibTorch, see DEVELOPERS.md)");
}

#else

bool nccl_available() { return true; }

namespace {

#define CARVE_CUDA_CHECK(call)                                                                  \
  do {                                                                                          \
    const cudaError_t carve_rc_ = (call);                                                       \
    CARVE_CHECK(carve_rc_ == cudaSuccess, #call, " failed: ", cudaGetErrorString(carve_rc_));   \
  } while (0)

#define CARVE_NCCL_CHECK(call, what)                                                            \
  do {                                                                                          \
    const ncclResult_t carve_rc_ = (call);                                                      \
    CARVE_CHECK(carve_rc_ == ncclSuccess, what, ": ", #call, " failed: ", ncclGetErrorString(carve_rc_)); \
  } while (0)

ncclDataType_t nccl_type(const Communicator& comm, const char* op, torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return ncclFloat32;
    case torch::kFloat64: return ncclFloat64;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kFloat16: return ncclFloat16;
    case torch::kInt32: return ncclInt32;
    case torch::kInt64: return ncclInt64;
    case torch::kUInt8: return ncclUint8;
    case torch::kInt8: return ncclInt8;
    case torch::kBool: return ncclUint8;
    default: break;
  }
  fail(comm.describe(op, torch::Tensor()), ": dtype ", c10::toString(t), " is not supported by the NCCL backend");
}

ncclRedOp_t nccl_op(const Communicator& comm, const char* what, torch::ScalarType t, ReduceOp op) {
  CARVE_CHECK(op != ReduceOp::Average || c10::isFloatingType(t), comm.describe(what, torch::Tensor()),
              ": an average needs a floating-point tensor, not ", c10::toString(t));
  CARVE_CHECK(t != torch::kBool || op == ReduceOp::Max, comm.describe(what, torch::Tensor()),
              ": bool tensors reduce only by max (logical or)");
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Average: return ncclAvg;
    case ReduceOp::Max: return ncclMax;
  }
  return ncclSum;
}

// One operation in flight: the event recorded after it on the communicator's stream.
struct InFlight {
  std::string what;
  cudaEvent_t done = nullptr;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  ~InFlight() {
    if (done) cudaEventDestroy(done);
  }
};

class NcclWork : public Work {
 public:
  NcclWork(std::shared_ptr<InFlight> op, int device, torch::Tensor original, torch::Tensor buffer)
      : op_(std::move(op)), device_(device), original_(std::move(original)), buffer_(std::move(buffer)) {}
  void wait() override {
    if (waited_) return;
    waited_ = true;
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    auto current = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_));
    CARVE_CUDA_CHECK(cudaStreamWaitEvent(current.stream(), op_->done, 0));
    if (!buffer_.is_same(original_)) original_.copy_(buffer_);
  }

 private:
  std::shared_ptr<InFlight> op_;
  int device_;
  torch::Tensor original_, buffer_;
  bool waited_ = false;
};

class NcclCommunicator : public Communicator {
 public:
  // Bootstraps over `host`'s members.
  NcclCommunicator(MpiCommunicator& host, torch::Device device, const std::string& name)
      : host_(host.split_mpi(0, host.rank(), name)), device_(device.has_index() ? device.index() : 0) {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    ncclUniqueId id;
    if (host_->rank() == 0) CARVE_NCCL_CHECK(ncclGetUniqueId(&id), describe("bootstrap", torch::Tensor()));
    auto bytes = torch::from_blob(&id, {static_cast<int64_t>(sizeof(id))}, torch::kUInt8);
    host_->broadcast(bytes, 0);
    CARVE_NCCL_CHECK(ncclCommInitRank(&comm_, host_->size(), id, host_->rank()),
                     describe("ncclCommInitRank", torch::Tensor()));
    start();
  }

  // A sub-communicator of `parent` (ncclCommSplit); every member of the parent calls it.
  NcclCommunicator(NcclCommunicator& parent, int color, int key, const std::string& name)
      : host_(parent.host_->split_mpi(color, key, name)), device_(parent.device_) {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 1;
    CARVE_NCCL_CHECK(ncclCommSplit(parent.comm_, color, key, &comm_, &config),
                     describe("ncclCommSplit", torch::Tensor()));
    start();
  }

  ~NcclCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    if (stream_) cudaStreamSynchronize(stream_);
    if (comm_) ncclCommDestroy(comm_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  const std::vector<int>& world_ranks() const override { return host_->world_ranks(); }
  const std::string& name() const override { return host_->name(); }
  std::string backend() const override { return "nccl"; }
  torch::Device device() const override { return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(device_)); }

  std::unique_ptr<Work> all_reduce_async(torch::Tensor tensor, ReduceOp op) override {
    check_tensor(*this, "all_reduce", tensor);
    const auto what = describe("all_reduce(" + reduce_op_name(op) + ")", tensor);
    const auto type = nccl_type(*this, "all_reduce", tensor.scalar_type());
    const auto rop = nccl_op(*this, "all_reduce", tensor.scalar_type(), op);
    auto buffer = tensor.is_contiguous() ? tensor : tensor.contiguous();
    auto flight = enqueue(what, {buffer}, [&](cudaStream_t s) {
      return ncclAllReduce(buffer.data_ptr(), buffer.data_ptr(), static_cast<size_t>(buffer.numel()), type, rop,
                           comm_, s);
    });
    return std::make_unique<NcclWork>(flight, device_, tensor, buffer);
  }

  void broadcast(torch::Tensor tensor, int root) override {
    check_tensor(*this, "broadcast", tensor);
    const auto what = describe("broadcast from " + std::to_string(root), tensor);
    CARVE_CHECK(root >= 0 && root < size(), what, ": root ", root, " is not a member");
    const auto type = nccl_type(*this, "broadcast", tensor.scalar_type());
    auto buffer = tensor.is_contiguous() ? tensor : tensor.contiguous();
    auto flight = enqueue(what, {buffer}, [&](cudaStream_t s) {
      return ncclBroadcast(buffer.data_ptr(), buffer.data_ptr(), static_cast<size_t>(buffer.numel()), type, root,
                           comm_, s);
    });
    NcclWork(flight, device_, tensor, buffer).wait();
  }

  void all_gather(const torch::Tensor& in, torch::Tensor out) override {
    check_tensor(*this, "all_gather", in);
    check_tensor(*this, "all_gather", out);
    const auto what = describe("all_gather", in);
    CARVE_CHECK(out.numel() == in.numel() * size() && out.scalar_type() == in.scalar_type(), what,
                ": the output needs ", in.numel() * size(), " x ", c10::toString(in.scalar_type()), ", it has ",
                out.numel(), " x ", c10::toString(out.scalar_type()));
    auto src = in.contiguous();
    auto buffer = out.is_contiguous() ? out : out.contiguous();
    const auto type = nccl_type(*this, "all_gather", in.scalar_type());
    auto flight = enqueue(what, {src, buffer}, [&](cudaStream_t s) {
      return ncclAllGather(src.data_ptr(), buffer.data_ptr(), static_cast<size_t>(src.numel()), type, comm_, s);
    });
    NcclWork(flight, device_, out, buffer).wait();
  }

  void reduce_scatter(const torch::Tensor& in, torch::Tensor out, ReduceOp op) override {
    check_tensor(*this, "reduce_scatter", in);
    check_tensor(*this, "reduce_scatter", out);
    const auto what = describe("reduce_scatter(" + reduce_op_name(op) + ")", in);
    CARVE_CHECK(in.numel() == out.numel() * size() && out.scalar_type() == in.scalar_type(), what,
                ": the input needs size() x the output's ", out.numel(), " elements of the same dtype, it has ",
                in.numel(), " x ", c10::toString(in.scalar_type()));
    auto src = in.contiguous();
    auto buffer = out.is_contiguous() ? out : out.contiguous();
    const auto type = nccl_type(*this, "reduce_scatter", in.scalar_type());
    const auto rop = nccl_op(*this, "reduce_scatter", in.scalar_type(), op);
    auto flight = enqueue(what, {src, buffer}, [&](cudaStream_t s) {
      return ncclReduceScatter(src.data_ptr(), buffer.data_ptr(), static_cast<size_t>(buffer.numel()), type, rop,
                               comm_, s);
    });
    NcclWork(flight, device_, out, buffer).wait();
  }

  void send(const torch::Tensor& tensor, int peer) override {
    check_tensor(*this, "send", tensor);
    const auto what = describe("send to " + std::to_string(peer), tensor);
    CARVE_CHECK(peer >= 0 && peer < size() && peer != rank(), what, ": peer ", peer, " is not another member");
    auto src = tensor.contiguous();
    const auto type = nccl_type(*this, "send", src.scalar_type());
    auto flight = enqueue(what, {src}, [&](cudaStream_t s) {
      return ncclSend(src.data_ptr(), static_cast<size_t>(src.numel()), type, peer, comm_, s);
    });
    NcclWork(flight, device_, src, src).wait();
  }

  void recv(torch::Tensor tensor, int peer) override {
    check_tensor(*this, "recv", tensor);
    const auto what = describe("recv from " + std::to_string(peer), tensor);
    CARVE_CHECK(peer >= 0 && peer < size() && peer != rank(), what, ": peer ", peer, " is not another member");
    auto buffer = tensor.is_contiguous() ? tensor : tensor.contiguous();
    const auto type = nccl_type(*this, "recv", tensor.scalar_type());
    auto flight = enqueue(what, {buffer}, [&](cudaStream_t s) {
      return ncclRecv(buffer.data_ptr(), static_cast<size_t>(buffer.numel()), type, peer, comm_, s);
    });
    NcclWork(flight, device_, tensor, buffer).wait();
  }

  // Every member's queued device work up to here has completed on the communicator's stream.
  void barrier() override {
    auto token = torch::ones({1}, torch::TensorOptions().dtype(torch::kInt32).device(device()));
    all_reduce(token, ReduceOp::Sum);
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    CARVE_CUDA_CHECK(cudaStreamSynchronize(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_)).stream()));
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    return std::make_unique<NcclCommunicator>(*this, color, key, name);
  }

 private:
  void start() {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    int low = 0, high = 0;
    CARVE_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&low, &high));
    // Communication is latency-bound: give it the highest priority so it is not starved by compute kernels.
    CARVE_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, high));
    timeout_ = host_->timeout();
    watchdog_ = std::thread([this] { watch(); });
  }

  // Orders `launch` (an NCCL call on the communicator's stream) after the caller's current stream and registers it
  // with the watchdog. The tensors' memory is marked as used by the communicator's stream, so the caching allocator
  // does not hand it out again before the collective has finished.
  template <typename Launch>
  std::shared_ptr<InFlight> enqueue(const std::string& what, std::initializer_list<torch::Tensor> tensors,
                                    Launch&& launch) {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    auto current = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_));
    cudaEvent_t ready;
    CARVE_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    CARVE_CUDA_CHECK(cudaEventRecord(ready, current.stream()));
    CARVE_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready, 0));
    CARVE_CUDA_CHECK(cudaEventDestroy(ready));  // released once the wait has been satisfied
    CARVE_NCCL_CHECK(launch(stream_), what);
    auto ours = c10::cuda::getStreamFromExternal(stream_, static_cast<c10::DeviceIndex>(device_));
    for (const auto& t : tensors) c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), ours);
    auto flight = std::make_shared<InFlight>();
    flight->what = what;
    CARVE_CUDA_CHECK(cudaEventCreateWithFlags(&flight->done, cudaEventDisableTiming));
    CARVE_CUDA_CHECK(cudaEventRecord(flight->done, stream_));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_flight_.push_back(flight);
    }
    return flight;
  }

  [[noreturn]] void end_job(const std::string& what, const std::string& why) {
    std::fprintf(stderr, "carve: rank %d: %s %s; aborting the NCCL communicator and ending the job\n", world_rank(),
                 what.c_str(), why.c_str());
    std::fflush(stderr);
    ncclCommAbort(comm_);
    // Not MPI_Abort: this thread may not call MPI. mpirun ends the other ranks when one exits with an error.
    std::_Exit(3);
  }

  void watch() {
    CARVE_CUDA_CHECK(cudaSetDevice(device_));
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
      wake_.wait_for(lock, std::chrono::milliseconds(50));
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        const auto what = in_flight_.empty() ? describe("a collective", torch::Tensor()) : in_flight_.front()->what;
        end_job(what, std::string("failed: ") + ncclGetErrorString(async));
      }
      for (auto it = in_flight_.begin(); it != in_flight_.end();) {
        const cudaError_t state = cudaEventQuery((*it)->done);
        if (state == cudaSuccess) {
          it = in_flight_.erase(it);
          continue;
        }
        if (state != cudaErrorNotReady) end_job((*it)->what, std::string("failed: ") + cudaGetErrorString(state));
        const auto waited = std::chrono::steady_clock::now() - (*it)->started;
        if (waited > timeout_) {
          char why[160];
          std::snprintf(why, sizeof(why),
                        "has not completed after %.1f s: a peer has died, stalled or issued a different operation",
                        std::chrono::duration<double>(waited).count());
          end_job((*it)->what, why);
        }
        ++it;
      }
    }
  }

  std::unique_ptr<MpiCommunicator> host_;
  int device_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::chrono::milliseconds timeout_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::list<std::shared_ptr<InFlight>> in_flight_;
  std::thread watchdog_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator& host, torch::Device device,
                                                     const std::string& name) {
  CARVE_CHECK(device.is_cuda(), name, ": the NCCL backend needs a CUDA device, not ", device.str());
  return std::make_unique<NcclCommunicator>(host, device, name);
}

#endif

}  // namespace carve::comm
