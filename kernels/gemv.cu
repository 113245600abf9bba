#include "kernels/gemv.h"

#include "kernels/element.cuh"

namespace carve::kernels {
namespace {

constexpr int kWarps = 4;        // per block
constexpr int kRowsPerWarp = 2;  // weight rows a warp reduces together (x is loaded once for both)
constexpr int kUnroll = 4;       // 16-byte chunks per lane per weight row in flight

template <typename T, int B>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(Gemv g) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const long row0 = (static_cast<long>(blockIdx.x) * kWarps + warp) * kRowsPerWarp;
  if (row0 >= g.n) return;
  const int chunks = g.k / 8;
  const uint4* w = reinterpret_cast<const uint4*>(static_cast<const T*>(g.w));
  const uint4* x = reinterpret_cast<const uint4*>(static_cast<const T*>(g.x));
  const long x_row = g.x_row / 8;
  float acc[kRowsPerWarp][B];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int b = 0; b < B; ++b) acc[r][b] = 0.f;
  const bool second = row0 + 1 < g.n;
  for (int c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
    uint4 raw[kUnroll][kRowsPerWarp];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * 32;
      const bool in = c < chunks;
      raw[u][0] = in ? __ldg(w + row0 * chunks + c) : make_uint4(0, 0, 0, 0);
      raw[u][1] = in && second ? __ldg(w + (row0 + 1) * chunks + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * 32;
      if (c >= chunks) break;
      float w0[8], w1[8];
      unpack8<T>(raw[u][0], w0);
      unpack8<T>(raw[u][1], w1);
#pragma unroll
      for (int b = 0; b < B; ++b) {
        if (b >= g.rows) break;
        float xv[8];
        unpack8<T>(__ldg(x + b * x_row + c), xv);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          acc[0][b] = fmaf(w0[i], xv[i], acc[0][b]);
          acc[1][b] = fmaf(w1[i], xv[i], acc[1][b]);
        }
      }
    }
  }
  const T* bias = static_cast<const T*>(g.bias);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const float v = warp_sum(acc[r][b]);
      const long row = row0 + r;
      if (lane == 0 && b < g.rows && row < g.n)
        static_cast<T*>(g.y)[static_cast<long>(b) * g.n + row] = from_float<T>(v + (bias ? to_float(bias[row]) : 0.f));
    }
  }
}

template <typename T>
void launch(const Gemv& g, cudaStream_t stream) {
  const unsigned blocks = ceil_div(g.n, kWarps * kRowsPerWarp);
  if (g.rows <= 1) gemv_kernel<T, 1><<<blocks, kWarps * 32, 0, stream>>>(g);
  else if (g.rows <= 2) gemv_kernel<T, 2><<<blocks, kWarps * 32, 0, stream>>>(g);
  else if (g.rows <= 4) gemv_kernel<T, 4><<<blocks, kWarps * 32, 0, stream>>>(g);
  else gemv_kernel<T, 8><<<blocks, kWarps * 32, 0, stream>>>(g);
}

}  // namespace

bool gemv_supports(int rows, int k, ElementType dtype) {
  return rows >= 1 && rows <= kGemvMaxRows && k > 0 && k % 8 == 0 && dtype != ElementType::f32;
}

void gemv(const Gemv& g, cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(gemv_supports(g.rows, g.k, g.dtype) && g.n > 0 && g.x_row % 8 == 0,
                       "gemv: unsupported rows, k, stride or element type");
  if (g.dtype == ElementType::bf16) launch<__nv_bfloat16>(g, stream);
  else launch<__half>(g, stream);
  CARVE_CUDA_CHECK_LAUNCH();
}

}  // namespace carve::kernels
