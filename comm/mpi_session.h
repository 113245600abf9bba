// The MPI process: initialisation, rank and size, and the few host-side exchanges that need no tensor backend
// (barriers, broadcasting a status or a small text from rank 0). Run without mpirun, OpenMPI starts a singleton
// world of one process, so every subcommand works the same launched either way.
#pragma once

#include <mpi.h>

#include <functional>
#include <string>

namespace carve::comm {

class MpiSession {
 public:
  // Initialises MPI (once per process) with thread support for a background I/O thread that makes no MPI call.
  MpiSession(int* argc = nullptr, char*** argv = nullptr);
  // Finalizes MPI, except while an exception unwinds in a world of several processes: then main() aborts the
  // whole job (MPI_Abort) after printing the error, so no rank waits forever in a collective.
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

 private:
  int rank_ = 0;
  int size_ = 1;
  bool owns_ = false;
};

// Throws carve::Error naming `what` and MPI's explanation when rc is not MPI_SUCCESS.
void check_mpi(int rc, const char* what);

// Whether MPI is initialised and not yet finalized (main() uses it to abort a failing job).
bool mpi_active();
// Rank and size of MPI_COMM_WORLD (MPI must be initialised).
int world_rank();
int world_size();
// This process's index among the processes of its node: from OpenMPI, MPICH or SLURM variables, else from the
// processes that share this node's memory (found when the session starts).
int local_rank();
// The number of this job's processes on this node (found when the session starts).
int local_size();
// Sets LibTorch's CPU threads: `requested` when positive, else the node's cores shared among its processes.
void default_cpu_threads(int requested);

void barrier();
// Rank 0's text on every rank (the others' argument is ignored).
std::string broadcast_text(const std::string& text);

// Runs `step` on rank 0 and, if it throws, makes every rank throw the same message; `step` must be collective-free.
// Used where rank 0 decides for all (validating a cache plan) so that the others stop instead of waiting.
void rank0_decides(const std::function<void()>& step);


}  // namespace carve::comm
