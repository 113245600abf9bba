// The NCCL backend of the communicator seam, for CUDA tensors, and the factory that picks a backend by device.
//
// Each NCCL communicator is bootstrapped over an MPI communicator (rank 0's unique id broadcast over MPI) and keeps
// an MPI twin over the same members for host-side exchanges; sub-groups come from ncclCommSplit. Collectives run on
// the communicator's own CUDA stream: it waits on an event recorded on the caller's current stream, and the caller's
// stream waits on an event recorded after the collective, so nothing synchronises the host. A watchdog thread polls
// every operation in flight: an asynchronous NCCL error, a CUDA error, or an operation older than the timeout aborts
// the communicator and ends the process with a message naming the operation and the ranks.
#pragma once

#include <memory>

#include "comm/mpi_communicator.h"

namespace carve::comm {

// Whether this build has the NCCL backend (it comes with a CUDA LibTorch).
bool nccl_available();

// An NCCL communicator over the members of `host`, each on its `device` (CUDA builds only; elsewhere an error).
std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator& host, torch::Device device,
                                                     const std::string& name);

// The backend for `device`: a duplicate of `host` for the CPU, NCCL for CUDA.
std::unique_ptr<Communicator> make_device_communicator(MpiCommunicator& host, torch::Device device,
                                                       const std::string& name);

}  // namespace carve::comm
