// The communicator seam on every backend this build and machine have (MPI on the CPU; NCCL when CUDA is present),
// the gradient reducer and the process grid. Run in one process by ctest (a world of one) and under
// `mpirun -np 4` (the test mpi.comm), where the collectives are exercised for real.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <thread>

#include "comm/grad_reducer.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_session.h"
#include "comm/nccl_communicator.h"
#include "comm/process_grid.h"
#include "test_util.h"

namespace carve {
namespace {

comm::MpiCommunicator& host_world() { return test::world_communicator(); }

// The devices to test: the CPU (MPI) and, with NCCL and a GPU, this rank's GPU.
std::vector<torch::Device> devices() {
  std::vector<torch::Device> out{torch::kCPU};
  // One GPU per rank (NCCL refuses two ranks of a communicator on one GPU): the CUDA run needs as many GPUs.
  if (comm::nccl_available() && torch::cuda::is_available() &&
      host_world().size() <= static_cast<int>(torch::cuda::device_count()))
    out.emplace_back(torch::kCUDA, static_cast<c10::DeviceIndex>(comm::local_rank() % torch::cuda::device_count()));
  return out;
}

const std::vector<torch::ScalarType> kDtypes = {torch::kFloat32, torch::kFloat64, torch::kBFloat16, torch::kFloat16,
                                                torch::kInt32,   torch::kInt64,   torch::kUInt8};
const std::vector<int64_t> kSizes = {1, 7, 1023, 4097};

// Rank r's value at element i: small non-zero numbers whose sums and averages are exact in every dtype used.
torch::Tensor values(int64_t n, int rank, torch::ScalarType dtype) {
  auto i = torch::arange(n, torch::kInt64);
  auto v = (i * 7 + rank * 3).remainder(11).to(torch::kFloat64);
  v = c10::isFloatingType(dtype) ? v - 5.5 : v + 1;  // floats: -5.5..4.5 in halves; integers: 1..11
  return v.to(dtype);
}

torch::Tensor expected_sum(int64_t n, int size, torch::ScalarType dtype) {
  auto s = torch::zeros({n}, torch::kFloat64);
  for (int r = 0; r < size; ++r) s += values(n, r, dtype).to(torch::kFloat64);
  return s;
}

TEST(Comm, AllReduceEveryDtypeAndRaggedSize) {
  auto& world = host_world();
  for (auto device : devices()) {
    auto comm = comm::make_device_communicator(world, device, "all_reduce test");
    const int size = comm->size(), rank = comm->rank();
    for (auto dtype : kDtypes)
      for (auto n : kSizes) {
        SCOPED_TRACE(device.str() + " " + c10::toString(dtype) + " n=" + std::to_string(n));
        auto t = values(n, rank, dtype).to(device);
        comm->all_reduce(t, comm::ReduceOp::Sum);
        EXPECT_TRUE(torch::equal(t.cpu().to(torch::kFloat64), expected_sum(n, size, dtype)));
        auto m = values(n, rank, dtype).to(device);
        comm->all_reduce(m, comm::ReduceOp::Max);
        auto want_max = values(n, 0, dtype).to(torch::kFloat64);
        for (int r = 1; r < size; ++r) want_max = torch::maximum(want_max, values(n, r, dtype).to(torch::kFloat64));
        EXPECT_TRUE(torch::equal(m.cpu().to(torch::kFloat64), want_max));
        if (c10::isFloatingType(dtype) && dtype != torch::kBFloat16 && dtype != torch::kFloat16) {
          auto a = values(n, rank, dtype).to(device);
          comm->all_reduce(a, comm::ReduceOp::Average);
          EXPECT_TRUE(torch::allclose(a.cpu().to(torch::kFloat64), expected_sum(n, size, dtype) / size));
        }
      }
    // Asynchronous, on a non-contiguous view: the result lands in the view's elements.
    auto base = values(64, rank, torch::kFloat32).to(device).view({8, 8});
    auto view = base.t();
    auto work = comm->all_reduce_async(view, comm::ReduceOp::Sum);
    work->wait();
    EXPECT_TRUE(torch::equal(base.cpu().to(torch::kFloat64).view({64}), expected_sum(64, size, torch::kFloat32)));
  }
}

TEST(Comm, BroadcastGatherScatterSendRecv) {
  auto& world = host_world();
  for (auto device : devices()) {
    SCOPED_TRACE(device.str());
    auto comm = comm::make_device_communicator(world, device, "collectives test");
    const int size = comm->size(), rank = comm->rank();
    for (auto dtype : kDtypes) {
      SCOPED_TRACE(c10::toString(dtype));
      const int64_t n = 13;
      auto b = values(n, rank, dtype).to(device);
      comm->broadcast(b, size - 1);
      EXPECT_TRUE(torch::equal(b.cpu(), values(n, size - 1, dtype)));

      auto gathered = torch::empty({size * n}, torch::TensorOptions().dtype(dtype).device(device));
      comm->all_gather(values(n, rank, dtype).to(device), gathered);
      for (int r = 0; r < size; ++r) EXPECT_TRUE(torch::equal(gathered.cpu().narrow(0, r * n, n), values(n, r, dtype)));

      auto in = values(size * n, rank, dtype).to(device);
      auto out = torch::empty({n}, in.options());
      comm->reduce_scatter(in, out, comm::ReduceOp::Sum);
      EXPECT_TRUE(torch::equal(out.cpu().to(torch::kFloat64), expected_sum(size * n, size, dtype).narrow(0, rank * n, n)));
    }
    if (size > 1) {
      // A ring: even ranks send first, odd ranks receive first, so neither blocks the other.
      const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
      auto mine = values(4097, rank, torch::kFloat32).to(device);
      auto got = torch::zeros_like(mine);
      if (rank % 2 == 0) {
        comm->send(mine, next);
        comm->recv(got, prev);
      } else {
        comm->recv(got, prev);
        comm->send(mine, next);
      }
      EXPECT_TRUE(torch::equal(got.cpu(), values(4097, prev, torch::kFloat32)));
    }
    comm->barrier();
  }
}

TEST(Comm, SubGroups) {
  auto& world = host_world();
  for (auto device : devices()) {
    SCOPED_TRACE(device.str());
    auto comm = comm::make_device_communicator(world, device, "split test");
    const int parity = comm->rank() % 2;
    auto half = comm->split(parity, comm->rank(), "parity " + std::to_string(parity));
    std::vector<int> want;
    for (int r = parity; r < comm->size(); r += 2) want.push_back(r);
    EXPECT_EQ(half->world_ranks(), want);
    EXPECT_EQ(half->size(), static_cast<int>(want.size()));
    auto t = torch::full({3}, static_cast<double>(comm->rank() + 1), torch::TensorOptions().dtype(torch::kFloat64).device(device));
    half->all_reduce(t, comm::ReduceOp::Sum);
    double sum = 0;
    for (int r : want) sum += r + 1;
    EXPECT_TRUE(torch::equal(t.cpu(), torch::full({3}, sum, torch::kFloat64)));
    // A split of a split, reversed by key.
    auto single = half->split(half->rank(), -half->rank(), "single");
    EXPECT_EQ(single->size(), 1);
    EXPECT_EQ(single->world_ranks(), std::vector<int>{comm->rank()});
  }
}

TEST(Comm, ErrorsNameTheOperation) {
  auto& world = host_world();
  auto ints = torch::ones({5}, torch::kInt64);
  auto message = test::error_of([&] { world.all_reduce(ints, comm::ReduceOp::Average); });
  EXPECT_NE(message.find("all_reduce"), std::string::npos) << message;
  EXPECT_NE(message.find("average needs a floating-point tensor"), std::string::npos) << message;
  auto out = torch::empty({3}, torch::kFloat32);
  message = test::error_of([&] { world.all_gather(torch::ones({5}), out); });
  EXPECT_NE(message.find("the output needs"), std::string::npos) << message;
  if (!comm::nccl_available()) {
    message = test::error_of([&] { comm::make_device_communicator(world, torch::Device(torch::kCUDA, 0), "x"); });
    EXPECT_NE(message.find("needs the NCCL backend"), std::string::npos) << message;
  }
}

// Sums of gradients over the members, through buckets small enough that every parameter lands in several of
// them, with two micro-batches (the first accumulates without reduction) and a parameter the last one skips.
TEST(GradReducer, SumsAccumulatedGradientsAcrossMembers) {
  auto& world = host_world();
  for (auto device : devices()) {
    SCOPED_TRACE(device.str());
    auto comm = comm::make_device_communicator(world, device, "reducer test");
    torch::manual_seed(3);  // the same parameters on every rank
    std::vector<torch::Tensor> params;
    for (auto shape : std::vector<std::vector<int64_t>>{{5, 3}, {7}, {2, 2, 3}, {11}, {1}})
      params.push_back(torch::randn(shape, torch::TensorOptions().device(device)).requires_grad_(true));
    comm::GradReducer reducer(params, *comm, /*bucket_bytes=*/48);
    EXPECT_GE(reducer.num_buckets(), 3);
    for (int step = 0; step < 2; ++step) {
      reducer.zero_grad();
      std::vector<torch::Tensor> want(params.size());
      for (int micro = 0; micro < 2; ++micro) {
        if (micro == 1) reducer.arm();
        torch::Tensor loss = torch::zeros({}, torch::TensorOptions().device(device));
        for (size_t k = 0; k < params.size(); ++k) {
          if (micro == 1 && k == 3) continue;  // not reached by the last backward
          // d loss / d p = x(rank, micro, k) + 2 p: depends on the rank and the parameter.
          auto x = torch::full(params[k].sizes(), static_cast<double>((comm->rank() + 1) * (micro + 2) + k),
                               torch::TensorOptions().device(device));
          loss = loss + (params[k] * x).sum() + params[k].pow(2).sum();
          torch::Tensor total = x * 0;
          for (int r = 0; r < comm->size(); ++r)
            total = total + static_cast<double>((r + 1) * (micro + 2) + k) + 2 * params[k].detach();
          want[k] = want[k].defined() ? want[k] + total : total;
        }
        loss.backward();
      }
      reducer.finish();
      for (size_t k = 0; k < params.size(); ++k)
        EXPECT_TRUE(torch::allclose(params[k].grad().cpu(), want[k].cpu(), 1e-5, 1e-5)) << "parameter " << k;
      torch::NoGradGuard no_grad;
      for (auto& p : params) p.sub_(p.grad() * 0.01);  // a step changes the parameters, as training would
    }
  }
}

TEST(ProcessGrid, BalancesLayersAndRefusesBadShapes) {
  const std::vector<int64_t> layers = {1, 2, 3, 5, 6, 7};
  auto g = comm::ProcessGrid::make(4, 3, 2, layers, std::vector<double>(6, 1.0));
  EXPECT_EQ(g.replicas, 2);
  EXPECT_EQ(g.group, 1);
  EXPECT_EQ(g.replica, 1);
  EXPECT_EQ(g.group_layers[0], (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(g.my_layers(), (std::vector<int64_t>{5, 6, 7}));
  // Unequal costs: the expensive last layer gets a group of its own.
  EXPECT_EQ(comm::balanced_partition({1, 1, 1, 1, 10}, 2), (std::vector<size_t>{0, 4}));
  EXPECT_EQ(comm::balanced_partition({2, 2, 1, 1, 1, 1}, 2), (std::vector<size_t>{0, 2}));
  EXPECT_EQ(comm::balanced_partition({1, 1, 1}, 3), (std::vector<size_t>{0, 1, 2}));
  auto message = test::error_of([&] { comm::ProcessGrid::make(3, 0, 2, layers, std::vector<double>(6, 1.0)); });
  EXPECT_NE(message.find("world of 3 processes does not fit 2 layer groups"), std::string::npos) << message;
  message = test::error_of([&] { comm::ProcessGrid::make(8, 0, 8, layers, std::vector<double>(6, 1.0)); });
  EXPECT_NE(message.find("--layer-groups 8 is more than the 6 layers"), std::string::npos) << message;
}

// Run by the test mpi.peer_fault (tests/comm_fault_test.cmake) under mpirun with CARVE_TEST_PEER_FAULT set: the last
// rank dies (SIGKILL) or stalls while the others enter an all-reduce; they must end the job, not hang.
TEST(CommFault, SurvivorsEndTheJob) {
  const char* fault = std::getenv("CARVE_TEST_PEER_FAULT");
  if (!fault) GTEST_SKIP() << "only under tests/comm_fault_test.cmake";
  auto& world = host_world();
  ASSERT_GE(world.size(), 2);
  const char* backend = std::getenv("CARVE_TEST_BACKEND");
  const bool nccl = backend && std::string(backend) == "nccl";
  auto device = nccl ? devices().back() : torch::Device(torch::kCPU);
  ASSERT_EQ(device.is_cuda(), nccl) << "CARVE_TEST_BACKEND=nccl needs a GPU and a CUDA build";
  auto comm = comm::make_device_communicator(world, device, "fault test");
  auto t = torch::ones({1024}, torch::TensorOptions().device(device));
  comm->all_reduce(t, comm::ReduceOp::Sum);  // everyone is up
  if (comm->rank() == comm->size() - 1) {
    if (std::string(fault) == "die") std::raise(SIGKILL);
    std::this_thread::sleep_for(std::chrono::seconds(120));  // stalled: the others' timeout ends the job first
    std::_Exit(0);
  }
  for (int i = 0; i < 3; ++i) {
    comm->all_reduce(t, comm::ReduceOp::Sum);
    if (nccl) torch::cuda::synchronize();
  }
  ADD_FAILURE() << "the all_reduce with a dead or stalled peer returned";
}

}  // namespace
}  // namespace carve
