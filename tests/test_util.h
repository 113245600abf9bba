// Helpers shared by the tests: fixture paths, scratch directories, relative error.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>

#include "base/error.h"
#include "comm/mpi_communicator.h"
#include "data/samples.h"

namespace carve::test {

std::string fixture(const std::string& relative);  // tests/fixtures/<relative>
// A fresh empty directory under the build tree, unique per test.
std::string scratch_dir(const std::string& name);
// max |a - b| / max |b| (b is the reference), computed in float64.
double relative_error(const torch::Tensor& a, const torch::Tensor& b);
// ||a - b|| / ||b|| (Frobenius; b is the reference), computed in float64 on the CPU.
double relative_norm_error(const torch::Tensor& a, const torch::Tensor& b);

// MPI_COMM_WORLD as a communicator (MPI initialised on first use), shared by the tests of one process.
comm::MpiCommunicator& world_communicator();

// Under mpirun: rank 0's fresh scratch directory, the same path on every rank (collective over the world).
std::string shared_scratch_dir(const std::string& name);

// `n` samples of 3-42 random tokens (vocabulary 96) with a loss mask on their second half; with `images`, every
// third sample has image tokens (id 95) with random feature rows of width `hidden`.
data::SampleSet random_samples(int n, uint64_t seed, bool images, int64_t hidden = 64);

// Initialises MPI once for this test process (a singleton world of one), for code that is collective over it.
void ensure_mpi();

// The tensors of a safetensors file whose names start with `prefix`, by name.
std::map<std::string, torch::Tensor> safetensors_map(const std::string& path, const std::string& prefix = "");

// The message of the carve::Error that f throws, or "" when it throws none.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace carve::test
