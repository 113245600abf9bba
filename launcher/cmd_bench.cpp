// carve bench: benchmarks printed as a table and, with --json, written as JSON. Speed targets live here, never in
// tests. One file each: bench_kernels.cpp, bench_cache.cpp, bench_distill.cpp (stage 3: bench_e2e.cpp),
// bench_decode.cpp; bench_util.cpp has what they share.
#include "launcher/benches.h"
#include "launcher/subcommands.h"

namespace carve::launcher {

int bench_main(const std::vector<std::string>& args) {
  return run_action(
      "bench",
      {{"kernels", "SSD scan, conv, gated norm: CUDA kernels beside the LibTorch reference and Triton", bench_kernels},
       {"cache", "precompute, streaming vs plain reads, a consumer's wait", bench_cache},
       {"distill", "stage-1 tokens/s per GPU for 1 and all processes, scaling, waits", bench_distill},
       {"decode", "generation: latency, memory and throughput against context for teacher and students",
        bench_decode}},
      args);
}

}  // namespace carve::launcher
