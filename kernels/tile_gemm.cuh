/*
 * One generic tiled matrix product for the SSD scan's chunk-level products: out[m, n] = sum_k a(m, k) * b(k, n) per
 * batch entry (a chunk of one head or group). The operands are not plain matrices: each problem computes them on
 * load (decay factors, masks, the step sizes, two sources concatenated along k), which is the fusion: the scaled
 * operands never go to device memory. The epilogue (`store`) fuses the rest (skip term, gate, dtype conversion).
 *
 * Version 1: float32 FMA on CUDA cores, 64 x 64 output tiles, k steps of 16, 256 threads each owning 4 x 4 outputs
 * strided by 16 so that shared-memory reads are conflict-free. Operands go through shared memory in float32, two
 * buffers of it: each thread computes its share of the next k step's operands (global loads, decay factors) into
 * registers before it multiplies the current one, so those loads are in flight during the multiply instead of
 * before it.
 *
 * A problem P provides:
 *   int M, N, K;                                   sizes of one batch entry
 *   static constexpr bool kAKFast, kBNFast;        which index runs along memory (k for a, n for b), for coalescing
 *   static constexpr bool kSegmented;              k is split into segments of segment_length(); each segment's
 *                                                  partial product is scaled by segment_scale(s, m, n) (a per-head
 *                                                  factor that cannot be folded into either operand)
 *   static constexpr bool kRowReduce;              store() returns a value summed per row and passed to row_reduce()
 *   void select(int batch);                        per-block setup
 *   bool skip_k_tile(int m0, int n0, int k0);      whole 64 x 16 / 16 x 64 operand tiles known to be zero
 *   float a(int m, int k), b(int k, n);            operands (0 outside the problem)
 *   float store(int m, int n, float acc);          epilogue
 */
#pragma once

#include <climits>

#include "kernels/element.cuh"

namespace carve::kernels {

constexpr int kTile = 64;
constexpr int kTileK = 16;
constexpr int kGemmThreads = 256;

template <typename P>
__global__ void __launch_bounds__(kGemmThreads) tile_gemm_kernel(P p) {
  p.select(blockIdx.x);
  const int m0 = blockIdx.y * kTile, n0 = blockIdx.z * kTile;
  __shared__ float a_tile[2][kTileK][kTile + 4];
  __shared__ float b_tile[2][kTileK][kTile + 4];
  const int tid = threadIdx.x, tm = tid / 16, tn = tid % 16;
  float acc[4][4], part[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = part[i][j] = 0.f;

  int seg_len = INT_MAX;
  if constexpr (P::kSegmented) seg_len = p.segment_length();
  const int seg_count = P::kSegmented ? p.K / seg_len : 1;
  int segment = 0, next_boundary = seg_len;
  auto flush = [&](int s) {
    if constexpr (P::kSegmented) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int m = m0 + tm + 16 * i, n = n0 + tn + 16 * j;
          if (m < p.M && n < p.N) acc[i][j] += part[i][j] * p.segment_scale(s, m, n);
          part[i][j] = 0.f;
        }
    }
  };

  // This thread's 4 elements of each operand tile: (kk, mm) of a and (kk, nn) of b for element i.
  auto a_at = [&](int i, int& kk, int& mm) {
    const int e = tid + kGemmThreads * i;
    if (P::kAKFast) kk = e % kTileK, mm = e / kTileK;
    else mm = e % kTile, kk = e / kTile;
  };
  auto b_at = [&](int i, int& kk, int& nn) {
    const int e = tid + kGemmThreads * i;
    if (P::kBNFast) nn = e % kTile, kk = e / kTile;
    else kk = e % kTileK, nn = e / kTileK;
  };
  float ra[4], rb[4];
  auto load = [&](int k0) {  // the operands of k step k0 into registers
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      int kk, mm, nn;
      a_at(i, kk, mm);
      const int m = m0 + mm, k = k0 + kk;
      ra[i] = (m < p.M && k < p.K) ? p.a(m, k) : 0.f;
      b_at(i, kk, nn);
      const int n = n0 + nn, k2 = k0 + kk;
      rb[i] = (n < p.N && k2 < p.K) ? p.b(k2, n) : 0.f;
    }
  };
  auto put = [&](int buf) {  // ... and from registers into shared buffer buf
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      int kk, mm, nn;
      a_at(i, kk, mm);
      a_tile[buf][kk][mm] = ra[i];
      b_at(i, kk, nn);
      b_tile[buf][kk][nn] = rb[i];
    }
  };
  auto next_k = [&](int k0) {  // the first k step from k0 on that is not known to be zero
    while (k0 < p.K && p.skip_k_tile(m0, n0, k0)) k0 += kTileK;
    return k0;
  };

  int k0 = next_k(0), buf = 0;
  if (k0 < p.K) {
    load(k0);
    put(0);
  }
  __syncthreads();
  while (k0 < p.K) {
    const int k_next = next_k(k0 + kTileK);
    if (k_next < p.K) load(k_next);  // in flight while this step multiplies
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      if (P::kSegmented && k0 + kk == next_boundary) {  // a new head's k range starts here
        if (segment < seg_count) flush(segment);
        ++segment;
        next_boundary += seg_len;
      }
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = a_tile[buf][kk][tm + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = b_tile[buf][kk][tn + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) part[i][j] = fmaf(av[i], bv[j], part[i][j]);
    }
    // The other buffer's last readers passed the barrier at the end of the previous step.
    if (k_next < p.K) put(buf ^ 1);
    __syncthreads();
    buf ^= 1;
    k0 = k_next;
  }
  if (P::kSegmented) {
    if (segment < seg_count) flush(segment);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = part[i][j];
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = m0 + tm + 16 * i;
    if (m >= p.M) continue;
    float row = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = n0 + tn + 16 * j;
      if (n < p.N) row += p.store(m, n, acc[i][j]);
    }
    if constexpr (P::kRowReduce) p.row_reduce(m, row);
  }
}

// Launches P over `batches` batch entries.
template <typename P>
void launch_tile_gemm(const P& p, long batches, cudaStream_t stream) {
  if (batches == 0 || p.M == 0 || p.N == 0) return;
  CARVE_KERNEL_REQUIRE(batches < (1L << 31), "tile_gemm: too many batch entries");
  CARVE_KERNEL_REQUIRE(ceil_div(p.M, kTile) < 65536 && ceil_div(p.N, kTile) < 65536, "tile_gemm: matrix too large");
  dim3 grid(static_cast<unsigned>(batches), ceil_div(p.M, kTile), ceil_div(p.N, kTile));
  tile_gemm_kernel<P><<<grid, kGemmThreads, 0, stream>>>(p);
  CARVE_CUDA_CHECK_LAUNCH();
}

}  // namespace carve::kernels
