// Error checks for the kernels. kernels/ is a leaf (no carve or LibTorch headers), so it reports CUDA failures
// itself: the failing expression, the CUDA error string, file and line, thrown as std::runtime_error.
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace carve::kernels {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error '") + cudaGetErrorString(err) + "' in " + expr + " at " + file +
                           ":" + std::to_string(line));
}

[[noreturn]] inline void throw_kernel_error(const std::string& what, const char* file, int line) {
  throw std::runtime_error(what + " (" + file + ":" + std::to_string(line) + ")");
}

}  // namespace carve::kernels

#define CARVE_CUDA_CHECK(expr)                                                          \
  do {                                                                                  \
    cudaError_t carve_cuda_err_ = (expr);                                               \
    if (carve_cuda_err_ != cudaSuccess)                                                 \
      ::carve::kernels::throw_cuda_error(carve_cuda_err_, #expr, __FILE__, __LINE__);   \
  } while (0)

// After a launch: configuration errors show up here, not at the next synchronizing call.
#define CARVE_CUDA_CHECK_LAUNCH() CARVE_CUDA_CHECK(cudaGetLastError())

#define CARVE_KERNEL_REQUIRE(cond, what)                                       \
  do {                                                                         \
    if (!(cond)) ::carve::kernels::throw_kernel_error((what), __FILE__, __LINE__); \
  } while (0)
