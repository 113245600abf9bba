#include "comm/mpi_session.h"

#include <dlfcn.h>

#include <cstdlib>
#include <exception>
#include <algorithm>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "base/crash.h"
#include "base/error.h"
#include "base/log.h"
#include "comm/mpi_communicator.h"

namespace carve::comm {
void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw Error(std::string("MPI ") + what + " failed: " + std::string(text, static_cast<size_t>(length)));
}

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  long parsed = std::strtol(v, &end, 10);
  return (end && *end == '\0' && parsed >= 0) ? static_cast<int>(parsed) : fallback;
}

int env_local_rank() {
  int r = env_int("OMPI_COMM_WORLD_LOCAL_RANK", -1);
  if (r < 0) r = env_int("MPI_LOCALRANKID", -1);
  if (r < 0) r = env_int("SLURM_LOCALID", -1);
  return r;
}

// Found by the session when no launcher variable says it: the rank among the processes sharing this node's memory.
int node_local_rank = 0;
int node_local_size = 1;

// LibTorch's threads and, where LibTorch's BLAS is OpenBLAS (Debian's LibTorch), OpenBLAS's own pool, which
// torch::set_num_threads leaves alone. OpenBLAS otherwise sizes its pool by the CPUs the process may run on, so two
// runs of one command under different CPU bindings (one rank vs two under mpirun, two SLURM jobs) split the same
// product differently and round differently. Looked up at run time: other BLAS builds do not have the symbol.
void set_cpu_threads(int threads) {
  torch::set_num_threads(threads);
  using SetThreads = void (*)(int);
  if (auto set_openblas = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads")))
    set_openblas(threads);
}

}  // namespace

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  check_mpi(MPI_Initialized(&initialized), "MPI_Initialized");
  if (!initialized) {
    int provided = 0;
    check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    owns_ = true;
    install_crash_handler();  // after MPI_Init, which installs OpenMPI's symbol-less handler
  }
  rank_ = world_rank();
  size_ = world_size();
  if (size_ > 1) log::set_rank(rank_);  // every log line of a multi-process job says which rank wrote it
  if (owns_) {
    // Collective, so done here where every rank constructs the session.
    MPI_Comm node;
    check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
              "MPI_Comm_split_type");
    check_mpi(MPI_Comm_rank(node, &node_local_rank), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(node, &node_local_size), "MPI_Comm_size");
    MPI_Comm_free(&node);
  }
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!owns_ || finalized) return;
  if (std::uncaught_exceptions() > 0 && size_ > 1) return;
  MPI_Finalize();
}

bool mpi_active() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

int world_rank() {
  int r = 0;
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &r), "MPI_Comm_rank");
  return r;
}

int world_size() {
  int s = 1;
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &s), "MPI_Comm_size");
  return s;
}

int local_rank() {
  const int r = env_local_rank();
  return r < 0 ? node_local_rank : r;
}

int local_size() { return node_local_size; }

void default_cpu_threads(int requested) {
  if (requested > 0) {
    set_cpu_threads(requested);
    return;
  }
  // LibTorch starts one thread per core in every process; processes sharing a node would oversubscribe it, and a
  // GPU rank's launch thread then competes with the others' spinning workers. Share the cores instead.
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  if (node_local_size > 1 && cores > 0) set_cpu_threads(std::max(1, cores / node_local_size));
}

void barrier() { check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }

std::string broadcast_text(const std::string& text) { return MpiCommunicator().broadcast_text(text); }

void rank0_decides(const std::function<void()>& step) { MpiCommunicator().rank0_decides(step); }

}  // namespace carve::comm
