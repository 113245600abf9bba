// The benchmarks behind `carve bench <name>`, one file each.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "model/random_teacher.h"

namespace carve::launcher {

// A sample file of random tokens: samples of `sample_tokens` until `tokens` (fixed seed; shared by the benches).
void write_random_token_samples(const std::string& path, int64_t tokens, int64_t sample_tokens, int64_t vocab);

// The distillation benches' inputs: rank 0 empties `work` and writes a random llama teacher (bfloat16) at `dims` and
// a random-token sample file into it; every rank of `world` returns once they exist.
struct RandomBenchInputs {
  std::string teacher, samples;
};
RandomBenchInputs write_random_bench_inputs(comm::MpiCommunicator& world, const std::string& work,
                                            const model::RandomTeacherDims& dims, int64_t tokens,
                                            int64_t sample_tokens);

// Shared by the benches (bench_util.cpp):
// device-to-device copy bandwidth, bytes read + written per second, the best of `repeat` timings of 8 copies of
// 1 GiB: the bandwidth that the benches' bytes floors divide by;
double copy_bandwidth(torch::Device device, int warmup, int repeat);
// a number with `precision` decimals, "-" for NaN;
std::string fmt(double v, int precision = 2);
// seconds since `start`, and waiting for a CUDA device's work (nothing on the CPU), which timing needs.
double seconds_since(std::chrono::steady_clock::time_point start);
void synchronize(torch::Device device);

int bench_kernels(const std::vector<std::string>& args);
int bench_cache(const std::vector<std::string>& args);
int bench_distill(const std::vector<std::string>& args);
// `bench distill --stage 3` (bench_e2e.cpp); bench_distill hands it over.
int bench_e2e(const std::vector<std::string>& args);
int bench_decode(const std::vector<std::string>& args);

}  // namespace carve::launcher
