// Peak device memory as the caching allocator sees it (what a benchmark reports); 0 on the CPU.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace carve::trainer {

// Bytes allocated at the peak since the last reset, on a CUDA device; 0 for the CPU or a build without CUDA.
int64_t peak_device_bytes(torch::Device device);
void reset_peak_device_bytes(torch::Device device);

}  // namespace carve::trainer
