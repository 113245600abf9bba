// Device side of kernels/launch.h and the launch of a kernel with its attributes.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda_check.h"
#include "kernels/launch.h"

namespace carve::kernels {

// Blocks until the kernel before this one in the stream has finished and its writes are visible. Every kernel that
// launch_kernel starts calls it before its first read of data an earlier kernel may write, and before its first
// write. That one kernel finished implies the one before it did too, since that one waited in turn.
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel in the stream launch once every block of this one has called it: its blocks then fill the
// SMs this kernel's blocks leave, and wait there.
__device__ __forceinline__ void let_next_kernel_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// A prefetch of one L2 line: never stale (L2 is where the device's memory is coherent), so it can be issued before
// wait_for_previous_kernel for data the previous kernels may still write.
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// A prefetch of one line into this SM's L1: only for data no earlier kernel may still write (L1 is not coherent
// with other SMs' writes), such as a model's weights while decoding.
__device__ __forceinline__ void prefetch_l1(const void* p) {
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}

struct LaunchShape {
  LaunchShape(dim3 grid_, dim3 block_, size_t shared_ = 0, int cluster_ = 1)
      : grid(grid_), block(block_), shared(shared_), cluster(cluster_) {}
  dim3 grid, block;
  size_t shared;  // dynamic shared memory bytes
  int cluster;    // blocks per cluster along x (> 1: the kernel was compiled for clusters, grid.x a multiple of it)
  // >= 0: the kernel's preferred shared memory carveout (shared_carveout_for), where the driver's own choice for the
  // most blocks per SM would differ from the kernels around it (see decode_attention.cu).
  int carveout = -1;
};

// Whether Kernel's code as it runs on the current device has clusters: the device is 9.0+ and the binary chosen
// for it was compiled for 9.0+ (a build for sm_80 alone runs its PTX, JIT-compiled for 8.0, on an H100). Looked up
// once per kernel, on the first device that asks.
template <auto Kernel>
bool runs_clusters() {
  static const bool compiled = [] {
    cudaFuncAttributes attributes = {};
    CARVE_CUDA_CHECK(cudaFuncGetAttributes(&attributes, Kernel));
    return attributes.binaryVersion >= 90;
  }();
  return compiled && clusters_supported();
}

// kernel<<<shape>>>(args...) on `stream`, as a dependent launch where the device has it. Launch errors throw here
// (cudaLaunchKernelEx returns them), so callers need no CARVE_CUDA_CHECK_LAUNCH after it.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), const LaunchShape& shape, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attributes[2] = {};
  unsigned count = 0;
  if (dependent_launch_enabled()) {
    attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[count].val.programmaticStreamSerializationAllowed = 1;
    ++count;
  }
  if (shape.cluster > 1) {
    attributes[count].id = cudaLaunchAttributeClusterDimension;
    attributes[count].val.clusterDim.x = static_cast<unsigned>(shape.cluster);
    attributes[count].val.clusterDim.y = 1;
    attributes[count].val.clusterDim.z = 1;
    ++count;
  }
  const void* function = reinterpret_cast<const void*>(kernel);
  allow_dynamic_shared(function, shape.shared);
  if (shape.carveout >= 0) prefer_carveout(function, shape.carveout);
  cudaLaunchConfig_t config = {};
  config.gridDim = shape.grid;
  config.blockDim = shape.block;
  config.dynamicSmemBytes = shape.shared;
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = count;
  CARVE_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace carve::kernels
