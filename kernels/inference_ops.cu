#include "kernels/inference_ops.h"

#include "kernels/element.cuh"

namespace carve::kernels {
namespace {

constexpr int kNormThreads = 256;

// One block per row. Each thread keeps its channels in registers between the sum and the scaling (up to
// kNormThreads * kNormKept channels; longer rows are read twice).
constexpr int kNormKept = 16;

template <typename T>
__global__ void __launch_bounds__(kNormThreads) rms_norm_kernel(int d, const T* x, const T* weight, float eps,
                                                                T* out) {
  const T* in = x + static_cast<long>(blockIdx.x) * d;
  T* o = out + static_cast<long>(blockIdx.x) * d;
  float kept[kNormKept];
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < kNormKept; ++j) {
    const int i = threadIdx.x + j * kNormThreads;
    kept[j] = i < d ? to_float(in[i]) : 0.f;
    sum = fmaf(kept[j], kept[j], sum);
  }
  for (int i = threadIdx.x + kNormKept * kNormThreads; i < d; i += kNormThreads) {
    const float v = to_float(in[i]);
    sum = fmaf(v, v, sum);
  }
  __shared__ float partial[kNormThreads / 32];
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kNormThreads / 32; ++w) total += partial[w];
  const float rstd = rsqrtf(total / static_cast<float>(d) + eps);
#pragma unroll
  for (int j = 0; j < kNormKept; ++j) {
    const int i = threadIdx.x + j * kNormThreads;
    if (i < d) o[i] = from_float<T>(to_float(weight[i]) * to_float(from_float<T>(kept[j] * rstd)));
  }
  for (int i = threadIdx.x + kNormKept * kNormThreads; i < d; i += kNormThreads) {
    const float normed = to_float(from_float<T>(to_float(in[i]) * rstd));
    o[i] = from_float<T>(to_float(weight[i]) * normed);
  }
}

template <typename T>
__global__ void silu_mul_kernel(long n, const T* gate, const T* up, T* out) {
  for (long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    const float g = to_float(gate[i]);
    const float s = to_float(from_float<T>(g / (1.f + expf(-g))));  // LibTorch's form of silu
    out[i] = from_float<T>(s * to_float(up[i]));
  }
}

}  // namespace

void rms_norm(long rows, int d, ElementType dtype, const void* x, const void* weight, float eps, void* out,
              cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(rows > 0 && d > 0, "rms_norm: empty input");
  dispatch_element(dtype, [&](auto t) {
    using T = decltype(t);
    rms_norm_kernel<T><<<static_cast<unsigned>(rows), kNormThreads, 0, stream>>>(
        d, static_cast<const T*>(x), static_cast<const T*>(weight), eps, static_cast<T*>(out));
  });
  CARVE_CUDA_CHECK_LAUNCH();
}

void silu_mul(long n, ElementType dtype, const void* gate, const void* up, void* out, cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(n > 0, "silu_mul: empty input");
  const unsigned blocks = std::min<unsigned>(ceil_div(n, 256), 65535u);
  dispatch_element(dtype, [&](auto t) {
    using T = decltype(t);
    silu_mul_kernel<T><<<blocks, 256, 0, stream>>>(n, static_cast<const T*>(gate), static_cast<const T*>(up),
                                                   static_cast<T*>(out));
  });
  CARVE_CUDA_CHECK_LAUNCH();
}

}  // namespace carve::kernels
