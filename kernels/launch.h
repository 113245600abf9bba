/*
 * How the decode kernels are launched. A batch-1 decode step is a chain of a few hundred kernels of a few
 * microseconds each, and the gap between two of them (the next grid's launch, its first loads' latency, the tail
 * of the one before) costs about as much as a small product's bytes.
 *
 * Programmatic dependent launch (compute capability 9.0+) lets a kernel start while the one before it in the
 * stream is still running: every decode kernel lets the next one launch as soon as all its blocks are running,
 * issues the loads that depend on nothing earlier (weights) and then waits for the previous kernel to finish
 * before it reads anything that kernel may write. Kernels launched without it behave as usual, and the wait is
 * then a no-op. CUDA graphs keep the programmatic edges when they capture these launches.
 */
#pragma once

#include <cstddef>

namespace carve::kernels {

// Whether the current device overlaps dependent launches: compute capability 9.0 or newer, unless the environment
// sets CARVE_DEPENDENT_LAUNCH=0 (for comparisons).
bool dependent_launch_enabled();

// Whether the current device runs thread block clusters (compute capability 9.0 or newer).
bool clusters_supported();

// The value of an int __device__ variable in the code the current device runs (read once per device and variable,
// with a synchronous copy: not while a stream is being captured). This is how a kernel file tells the host which
// arch-specific features the loaded code was built with (wgmma.cuh's CARVE_WGMMA): the build cannot say (LibTorch's
// CMake replaces CMAKE_CUDA_ARCHITECTURES with its own -gencode flags), nor can the runtime's binary version of a
// kernel (90 for sm_90 and sm_90a alike, and for PTX compiled for the device on the fly).
int device_code_value(const void* symbol);

// Whether the current device has compute capability 9.0 exactly (the one that runs sm_90a code).
bool compute_capability_90();

// The current device's SMs (looked up once per device).
int sm_count();

// The most dynamic shared memory one block of the current device can opt in to (227 KB on compute capability 9.0,
// 163 KB on 8.0, 99 KB on 8.6 and 8.9): a kernel whose layout needs more must not be launched there.
size_t max_shared_per_block();

// The shared memory carveout (percent of the unified L1 / shared memory) that fits `blocks` blocks of
// `bytes_per_block` on an SM of the current device, for LaunchShape::carveout.
int shared_carveout_for(int blocks, size_t bytes_per_block);

// Function attributes of a kernel on the current device, set through the driver only when they change (a decode
// step launches the same kernels hundreds of times, and these calls are host work on every launch otherwise):
// allow_dynamic_shared raises the kernel's dynamic shared memory limit to at least `bytes` (needed past 48 KB with
// the static part); prefer_carveout sets its preferred carveout in percent.
void allow_dynamic_shared(const void* kernel, size_t bytes);
void prefer_carveout(const void* kernel, int percent);

}  // namespace carve::kernels
