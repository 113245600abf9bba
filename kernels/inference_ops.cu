#include "kernels/inference_ops.h"

#include "kernels/element.cuh"

namespace carve::kernels {
namespace {

constexpr int kNormThreads = 256;

// One block per row. Each thread keeps its channels in registers between the sum and the scaling (up to
// kNormThreads * kNormKept channels; longer rows are read twice).
constexpr int kNormKept = 16;

// With delta: the row is round(x + delta), written to sum before it is normalized (the residual add before a
// norm).
template <typename T>
__global__ void __launch_bounds__(kNormThreads) rms_norm_kernel(int d, const T* x, const T* delta, const T* weight,
                                                                float eps, T* sum_out, T* out) {
  const long row = static_cast<long>(blockIdx.x) * d;
  auto input = [&](int i) {
    if (!delta) return to_float(x[row + i]);
    const T v = from_float<T>(to_float(x[row + i]) + to_float(delta[row + i]));
    sum_out[row + i] = v;
    return to_float(v);
  };
  float kept[kNormKept];
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < kNormKept; ++j) {
    const int i = threadIdx.x + j * kNormThreads;
    kept[j] = i < d ? input(i) : 0.f;
    sum = fmaf(kept[j], kept[j], sum);
  }
  for (int i = threadIdx.x + kNormKept * kNormThreads; i < d; i += kNormThreads) {
    const float v = input(i);
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
  T* o = out + row;
#pragma unroll
  for (int j = 0; j < kNormKept; ++j) {
    const int i = threadIdx.x + j * kNormThreads;
    if (i < d) o[i] = from_float<T>(to_float(weight[i]) * to_float(from_float<T>(kept[j] * rstd)));
  }
  // Channels beyond the kept ones are read again (from sum_out when it was written: this thread wrote them).
  const T* again = delta ? sum_out + row : x + row;
  for (int i = threadIdx.x + kNormKept * kNormThreads; i < d; i += kNormThreads) {
    const float normed = to_float(from_float<T>(to_float(again[i]) * rstd));
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
  add_rms_norm(rows, d, dtype, x, nullptr, weight, eps, nullptr, out, stream);
}

void add_rms_norm(long rows, int d, ElementType dtype, const void* x, const void* delta, const void* weight, float eps,
                  void* sum, void* out, cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(rows > 0 && d > 0, "rms_norm: empty input");
  CARVE_KERNEL_REQUIRE(!delta || sum, "add_rms_norm: the sum's output is required with delta");
  dispatch_element(dtype, [&](auto t) {
    using T = decltype(t);
    rms_norm_kernel<T><<<static_cast<unsigned>(rows), kNormThreads, 0, stream>>>(
        d, static_cast<const T*>(x), static_cast<const T*>(delta), static_cast<const T*>(weight), eps,
        static_cast<T*>(sum), static_cast<T*>(out));
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
