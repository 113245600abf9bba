// Peak device memory as the caching allocator sees it (what a benchmark reports); 0 on the CPU.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace carve::trainer {

// Bytes allocated at the peak since the last reset, on a CUDA device; 0 for the CPU or a build without CUDA.
int64_t peak_device_bytes(torch::Device device);
void reset_peak_device_bytes(torch::Device device);
// Bytes the caching allocator has handed out now, and the device's total memory; 0 for the CPU.
int64_t allocated_device_bytes(torch::Device device);
int64_t total_device_bytes(torch::Device device);
// Returns the allocator's cached, unused blocks to the device (between measurements).
void release_cached_device_memory(torch::Device device);

}  // namespace carve::trainer
