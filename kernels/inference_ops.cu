#include "kernels/inference_ops.h"

#include <cstdint>

#include "kernels/element.cuh"
#include "kernels/launch.cuh"

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
  let_next_kernel_launch();
  wait_for_previous_kernel();
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
  let_next_kernel_launch();
  wait_for_previous_kernel();
  for (long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    const float g = to_float(gate[i]);
    const float s = to_float(from_float<T>(g / (1.f + expf(-g))));  // LibTorch's form of silu
    out[i] = from_float<T>(s * to_float(up[i]));
  }
}

constexpr int kArgmaxThreads = 1024;
constexpr int kArgmaxInFlight = 8;

// Whether (va, ia) comes before (vb, ib) in torch.argmax's order: NaN first, then larger values, then lower indices.
__device__ __forceinline__ bool ranks_before(float va, long ia, float vb, long ib) {
  const bool na = isnan(va), nb = isnan(vb);
  if (na != nb) return na;
  if (!na && va != vb) return va > vb;
  return ia < ib;
}

__device__ __forceinline__ void consider(float v, long i, float& best, long& best_i) {
  if (ranks_before(v, i, best, best_i)) best = v, best_i = i;
}

template <typename T>
__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(long n, long row_stride, const T* x, long long* out) {
  let_next_kernel_launch();
  wait_for_previous_kernel();
  const T* row = x + static_cast<long>(blockIdx.x) * row_stride;
  float best = -INFINITY;
  long best_i = n;  // ranks after every real index among equal values
  // Elements before the first 16-byte boundary and after the last one one at a time; the rest 16 bytes per load.
  constexpr int kPerChunk = 16 / sizeof(T);
  const long head = min(n, static_cast<long>((16 - reinterpret_cast<std::uintptr_t>(row) % 16) % 16 / sizeof(T)));
  const long chunks = (n - head) / kPerChunk;
  const long tail = head + chunks * kPerChunk;
  for (long i = threadIdx.x; i < head; i += blockDim.x) consider(to_float(row[i]), i, best, best_i);
  for (long i = tail + threadIdx.x; i < n; i += blockDim.x) consider(to_float(row[i]), i, best, best_i);
  // kArgmaxInFlight loads per thread before any is compared: one block has the whole row to stream, and one load
  // per thread at a time read 185 KB in 17 us.
  const uint4* v = reinterpret_cast<const uint4*>(row + head);
  for (long c0 = threadIdx.x; c0 < chunks; c0 += static_cast<long>(blockDim.x) * kArgmaxInFlight) {
    uint4 raw[kArgmaxInFlight];
#pragma unroll
    for (int u = 0; u < kArgmaxInFlight; ++u) {
      const long c = c0 + static_cast<long>(u) * blockDim.x;
      raw[u] = c < chunks ? __ldg(v + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kArgmaxInFlight; ++u) {
      const long c = c0 + static_cast<long>(u) * blockDim.x;
      if (c >= chunks) break;
      const T* e = reinterpret_cast<const T*>(&raw[u]);
#pragma unroll
      for (int j = 0; j < kPerChunk; ++j) consider(to_float(e[j]), head + c * kPerChunk + j, best, best_i);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const long oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    consider(ov, oi, best, best_i);
  }
  __shared__ float warp_best[kArgmaxThreads / 32];
  __shared__ long warp_index[kArgmaxThreads / 32];
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) warp_best[warp] = best, warp_index[warp] = best_i;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) consider(warp_best[w], warp_index[w], best, best_i);
    out[blockIdx.x] = best_i;
  }
}

}  // namespace

void argmax_rows(long rows, long n, long row_stride, ElementType dtype, const void* x, long long* out,
                 cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(rows > 0 && n > 0 && row_stride >= n, "argmax_rows: empty rows or a stride below n");
  const LaunchShape shape(dim3(static_cast<unsigned>(rows)), dim3(kArgmaxThreads));
  dispatch_element(dtype, [&](auto t) {
    using T = decltype(t);
    launch_kernel(argmax_kernel<T>, shape, stream, n, row_stride, static_cast<const T*>(x), out);
  });
}

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
    const LaunchShape shape(dim3(static_cast<unsigned>(rows)), dim3(kNormThreads));
    launch_kernel(rms_norm_kernel<T>, shape, stream, d, static_cast<const T*>(x), static_cast<const T*>(delta),
                  static_cast<const T*>(weight), eps, static_cast<T*>(sum), static_cast<T*>(out));
  });
}

void silu_mul(long n, ElementType dtype, const void* gate, const void* up, void* out, cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(n > 0, "silu_mul: empty input");
  const unsigned blocks = std::min<unsigned>(ceil_div(n, 256), 65535u);
  dispatch_element(dtype, [&](auto t) {
    using T = decltype(t);
    launch_kernel(silu_mul_kernel<T>, LaunchShape(dim3(blocks), dim3(256)), stream, n, static_cast<const T*>(gate),
                  static_cast<const T*>(up), static_cast<T*>(out));
  });
}

}  // namespace carve::kernels
