/*
 * Tensor-core kernels for the SSD forward's two large products, for 16-bit inputs (version 2; the float32 path
 * keeps the CUDA-core tile product, whose accuracy the float32 tests hold to 1e-4).
 *
 * chunk_state_tc: per (b, chunk, head) and 64 rows of the head dim, S_loc[p, n] = sum_s w_s x[s, p] B[s, n] with
 *   w_s = dt'_s exp(L_end - L_s) on the chunk's last sample; w is computed once per token, x is scaled on its way
 *   into shared memory.
 * chunk_output_tc: per (b, chunk, head) and 64 target tokens l, everything the output needs in one block:
 *   the inter-chunk term exp(L_l) C_l . S_c (a product over n), then for each 64-token source tile s <= l the C.B
 *   block (a product over n, or read from the C.B buffer when heads share a group), weighted in registers by the
 *   causal same-sample mask, exp(L_l - L_s) and dt'_s, and multiplied into x (a product over s) without leaving
 *   registers (see mma.cuh for why the accumulator layout allows that); D, the gate and y_ssm in the epilogue. With
 *   one head per group the C.B block is written to the buffer for the backward as a by-product.
 * Operands are staged through shared memory as 16-bit values, x and B transposed so that every fragment is a pair
 * of neighbouring elements; rows are padded by 8 elements so a warp's fragment loads hit 32 different banks.
 */
#pragma once

#include <cstdint>

#include "kernels/element.cuh"
#include "kernels/mma.cuh"
#include "kernels/ssd_chunk.cuh"

namespace carve::kernels {

constexpr int kTcRows = 64;  // rows of a block's output tile and tokens of a source tile: 4 warps x 16 rows
constexpr int kTcThreads = 128;
constexpr int kTcMaxDim = 128;  // head dim and state size the register tiles hold
constexpr int kTcMaxChunk = 256;

inline bool ssd_tensor_core_shape(const SsdScanShape& s) {
  return s.p <= kTcMaxDim && s.n <= kTcMaxDim && s.q <= kTcMaxChunk;
}

__host__ __device__ inline int round16(int v) { return (v + 15) / 16 * 16; }

// A computed operand (decay-weighted values, float32 states) as the sum of two 16-bit values, hi + lo, each taken
// through the tensor cores: about 16 significant bits instead of 8. y_ssm needs them: the backward's decay gradient
// is a small difference of sums of y_ssm and of the dx product's terms, and 8 bits left it at 5-20% error.
template <typename T>
__device__ __forceinline__ void split(float v, float& hi, float& lo) {
  hi = to_float(from_float<T>(v));
  lo = v - hi;
}
template <typename T>
__device__ __forceinline__ void split_store(float v, T* hi, T* lo) {
  float h, l;
  split<T>(v, h, l);
  *hi = from_float<T>(h);
  *lo = from_float<T>(l);
}

// Copies token rows into a row-major shared tile of `rows` x `width` 16-bit elements (ld per row): row r from
// src(r) (null: a row of zeros), `cols` real columns, zeros up to `width` (a multiple of 16). When every row start
// is 16-byte aligned (`vector`) the copies are cp.async: all of a block's copies are in flight at once instead of one
// load per thread at a time (the output kernel spent most of its time waiting on these loads); element by element
// otherwise. Call staged() before the __syncthreads that publishes the tile.
template <typename T, typename Src>
__device__ __forceinline__ void stage_rows(T* tile, int ld, int rows, int cols, int width, bool vector, Src src) {
  if (vector) {
    const int per_row = width / 8;
    for (int e = threadIdx.x; e < rows * per_row; e += blockDim.x) {
      const int r = e / per_row, c = 8 * (e % per_row);
      const T* row = src(r);
      const bool real = row && c < cols;
      const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(tile + r * ld + c));
      // src-size 0 fills the 16 bytes with zeros without reading; the address must still be valid.
      const void* from = real ? static_cast<const void*>(row + c) : static_cast<const void*>(tile);
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(from), "r"(real ? 16 : 0));
    }
    asm volatile("cp.async.commit_group;\n" ::);
    return;
  }
  const T zero = from_float<T>(0.f);
  for (int e = threadIdx.x; e < rows * width; e += blockDim.x) {
    const int r = e / width, c = e % width;
    const T* row = src(r);
    tile[r * ld + c] = row && c < cols ? row[c] : zero;
  }
}

// Waits for this thread's cp.async copies (see stage_rows).
__device__ __forceinline__ void staged() { asm volatile("cp.async.wait_all;\n" ::); }

// Shared memory of chunk_output_tc: per-token cum (float64), dt', segment ids, then 16-bit row-major tiles: C rows
// [64, n], B rows of the source tile [64, n], x rows of the source tile [64, p]. Before the source tiles, the B and x
// tiles hold the hi and lo parts of 64 rows of the entering state [64 of p, n] (so x's tile is at least [64, n]).
struct TcOutputLayout {
  int n16, p16, ldn, ldp;
  size_t per_token_bytes, cs, bs, xs, bytes;
};
__host__ __device__ inline TcOutputLayout tc_output_layout(const ScanDims& d) {
  TcOutputLayout L{};
  L.n16 = round16(d.n), L.p16 = round16(d.p), L.ldn = L.n16 + 8, L.ldp = L.p16 + 8;
  L.per_token_bytes = static_cast<size_t>(d.q) * (sizeof(double) + sizeof(float) + sizeof(int));
  L.per_token_bytes = (L.per_token_bytes + 15) / 16 * 16;
  L.cs = 0;
  L.bs = L.cs + static_cast<size_t>(kTcRows) * L.ldn;
  L.xs = L.bs + static_cast<size_t>(kTcRows) * L.ldn;
  L.bytes = L.per_token_bytes + (L.xs + static_cast<size_t>(kTcRows) * (L.ldp > L.ldn ? L.ldp : L.ldn)) * 2;
  return L;
}

// Shared memory of chunk_state_tc: per-token weights, then row-major tiles of the source tile: w x split in two
// 16-bit parts [64, 64 of p] each, B [64, n].
struct TcStateLayout {
  int n16, ldx, ldn;
  size_t per_token_bytes, xw_hi, xw_lo, bs, bytes;
};
__host__ __device__ inline TcStateLayout tc_state_layout(const ScanDims& d) {
  TcStateLayout L{};
  L.n16 = round16(d.n), L.ldx = kTcRows + 8, L.ldn = L.n16 + 8;
  L.per_token_bytes = (static_cast<size_t>(d.q) * sizeof(float) + 15) / 16 * 16;
  L.xw_hi = 0;
  L.xw_lo = static_cast<size_t>(kTcRows) * L.ldx;
  L.bs = L.xw_lo + static_cast<size_t>(kTcRows) * L.ldx;
  L.bytes = L.per_token_bytes + (L.bs + static_cast<size_t>(kTcRows) * L.ldn) * 2;
  return L;
}

template <typename T>
struct ChunkStateTc {
  Chunk cx;
  const T* x;
  const T* B;
  const float* dtp;
  const double* cum;
  float* states;  // [b, c, h, p, n]
  bool vector;    // 16-byte row copies (p and n multiples of 8, aligned bases)
};

template <typename T>
__global__ void __launch_bounds__(kTcThreads, 4) chunk_state_tc_kernel(ChunkStateTc<T> a) {
  using TC = TensorCore<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  Chunk cx = a.cx;
  cx.select(blockIdx.x, cx.d.h);
  const ScanDims& d = cx.d;
  const TcStateLayout lay = tc_state_layout(d);
  float* w_s = reinterpret_cast<float*>(smem);
  T* tiles = reinterpret_cast<T*>(smem + lay.per_token_bytes);
  T* xw_hi = tiles + lay.xw_hi;
  T* xw_lo = tiles + lay.xw_lo;
  T* bs = tiles + lay.bs;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gid = lane / 4, tig = lane % 4;
  const int p0 = blockIdx.y * kTcRows, gi = cx.hi / d.r;
  const int p_cols = min(kTcRows, d.p - p0);

  const double L_end = a.cum[cx.scan(cx.hi, d.q - 1)];
  for (int i = tid; i < d.q; i += kTcThreads) {
    const long si = cx.scan(cx.hi, i);
    w_s[i] = cx.valid(i) && cx.seg_of(i) == cx.seg_end ? a.dtp[si] * expf(static_cast<float>(L_end - a.cum[si])) : 0.f;
  }

  float acc[kTcMaxDim / 8][4];
#pragma unroll
  for (int j = 0; j < kTcMaxDim / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;

  for (int s0 = 0; s0 < d.q; s0 += kTcRows) {
    __syncthreads();  // w_s written; the previous tile's readers are done
    auto token_row = [&](int r) -> bool { return s0 + r < d.q && cx.valid(s0 + r); };
    // B's copies fly while x is scaled and split below.
    stage_rows(bs, lay.ldn, kTcRows, d.n, lay.n16, a.vector, [&](int r) -> const T* {
      return token_row(r) ? a.B + cx.token(s0 + r, d.g, gi, d.n) : nullptr;
    });
    // w_s x_s, split into hi + lo, 8 elements at a time (unrolled: the loads of all iterations are in flight at once).
#pragma unroll
    for (int e = tid; e < kTcRows * (kTcRows / 8); e += kTcThreads) {
      const int r = e / (kTcRows / 8), c = 8 * (e % (kTcRows / 8));
      T in[8], hi[8], lo[8];
      const T* row = token_row(r) ? a.x + cx.token(s0 + r, d.h, cx.hi, d.p) + p0 : nullptr;
      const float w = row ? w_s[s0 + r] : 0.f;
      if (row && a.vector && c + 8 <= p_cols) {
        *reinterpret_cast<uint4*>(in) = *reinterpret_cast<const uint4*>(row + c);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) in[i] = from_float<T>(row && c + i < p_cols ? to_float(row[c + i]) : 0.f);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float v = w * to_float(in[i]);
        float h, l;
        split<T>(v, h, l);
        hi[i] = from_float<T>(h), lo[i] = from_float<T>(l);
      }
      *reinterpret_cast<uint4*>(xw_hi + r * lay.ldx + c) = *reinterpret_cast<const uint4*>(hi);
      *reinterpret_cast<uint4*>(xw_lo + r * lay.ldx + c) = *reinterpret_cast<const uint4*>(lo);
    }
    staged();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTcRows / 16; ++kk) {
      uint32_t a_hi[4], a_lo[4];
      load_a_fragment_kmajor(a_hi, xw_hi, lay.ldx, 16 * warp, 16 * kk);
      load_a_fragment_kmajor(a_lo, xw_lo, lay.ldx, 16 * warp, 16 * kk);
#pragma unroll
      for (int j = 0; j < kTcMaxDim / 8; ++j) {
        if (8 * j >= lay.n16) break;
        uint32_t b0, b1;
        load_b_fragment_kmajor(b0, b1, bs, lay.ldn, 16 * kk, 8 * j);
        TC::mma(acc[j], a_hi, b0, b1);
        TC::mma(acc[j], a_lo, b0, b1);
      }
    }
  }

  float* S = a.states + cx.state(cx.hi);
  const int row0 = p0 + 16 * warp + gid;
#pragma unroll
  for (int j = 0; j < kTcMaxDim / 8; ++j) {
    if (8 * j >= lay.n16) break;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = row0 + (e < 2 ? 0 : 8), col = 8 * j + 2 * tig + (e & 1);
      if (row < d.p && col < d.n) S[(long)row * d.n + col] = acc[j][e];
    }
  }
}

// C_l . B_s of one 64 x 64 tile: this warp's 16 rows of the C rows in `cs` against the 64 B rows in `bs` (both
// row-major, n16 columns, ld per row), accumulated in float32 from the exact 16-bit inputs.
template <typename T>
__device__ __forceinline__ void cb_tile(float sc[kTcRows / 8][4], const T* cs, const T* bs, int ld, int n16) {
  using TC = TensorCore<T>;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int j = 0; j < kTcRows / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) sc[j][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kTcMaxDim / 16; ++kk) {
    if (16 * kk >= n16) break;
    uint32_t af[4];
    load_a_fragment(af, cs, ld, 16 * warp, 16 * kk);
#pragma unroll
    for (int j = 0; j < kTcRows / 8; ++j) {
      uint32_t b0, b1;
      load_b_fragment(b0, b1, bs, ld, 16 * kk, 8 * j);
      TC::mma(sc[j], af, b0, b1);
    }
  }
}

// Writes a cb_tile result to the [q, q] block `cb`: this thread's rows r0 and r0 + 8, columns from s0, two
// neighbouring columns at once when q is even (c is even, so c + 1 < q).
__device__ __forceinline__ void store_cb_tile(const float sc[kTcRows / 8][4], float* cb, int q, int r0, int s0) {
  const int tig = threadIdx.x % 4;
#pragma unroll
  for (int j = 0; j < kTcRows / 8; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = r0 + 8 * half, c = s0 + 8 * j + 2 * tig;
      if (r >= q || c >= q) continue;
      float* to = cb + (long)r * q + c;
      if (q % 2 == 0) {
        *reinterpret_cast<float2*>(to) = make_float2(sc[j][2 * half], sc[j][2 * half + 1]);
      } else {
        to[0] = sc[j][2 * half];
        if (c + 1 < q) to[1] = sc[j][2 * half + 1];
      }
    }
}

// C_l . B_s per group for heads that share it (one block per chunk, group and 64 x 64 tile on or below the
// diagonal); the output kernel then reads it instead of recomputing it once per head.
template <typename T>
struct ChunkCbTc {
  Chunk cx;
  const T* B;
  const T* C;
  float* cb;  // [b, c, g, q, q]
  bool vector;
};

template <typename T>
__global__ void __launch_bounds__(kTcThreads) chunk_cb_tc_kernel(ChunkCbTc<T> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  Chunk cx = a.cx;
  cx.select(blockIdx.x, cx.d.g);
  const ScanDims& d = cx.d;
  const int tiles = (d.q + kTcRows - 1) / kTcRows;
  const int m0 = kTcRows * (blockIdx.y / tiles), s0 = kTcRows * (blockIdx.y % tiles);
  if (s0 > m0) return;  // above the diagonal: never read
  const int n16 = round16(d.n), ld = n16 + 8;
  T* cs = reinterpret_cast<T*>(smem);
  T* bs = cs + kTcRows * ld;
  auto row_of = [&](const T* base, int t) -> const T* {
    return t < d.q && cx.valid(t) ? base + cx.token(t, d.g, cx.hi, d.n) : nullptr;
  };
  stage_rows(cs, ld, kTcRows, d.n, n16, a.vector, [&](int r) { return row_of(a.C, m0 + r); });
  stage_rows(bs, ld, kTcRows, d.n, n16, a.vector, [&](int r) { return row_of(a.B, s0 + r); });
  staged();
  __syncthreads();
  float sc[kTcRows / 8][4];
  cb_tile<T>(sc, cs, bs, ld, n16);
  store_cb_tile(sc, a.cb + cx.cb(cx.hi), d.q, m0 + 16 * (threadIdx.x / 32) + (threadIdx.x % 32) / 4, s0);
}

// store_output for channels pc and pc + 1 of element offset o (even) at once: 8-byte and 4-byte accesses instead
// of 4- and 2-byte ones, and one test of each optional input per pair. x is given (the caller has it in shared
// memory).
template <typename T>
__device__ __forceinline__ void store_output_pair(long o, int head, int pc, int p, float y0, float y1, float x0,
                                                  float x1, const T* z, const float* D, bool D_per_channel,
                                                  float* y_ssm, T* out) {
  using TC = TensorCore<T>;
  if (y_ssm) *reinterpret_cast<float2*>(y_ssm + o) = make_float2(y0, y1);
  if (D) {
    const float2 dv = D_per_channel ? *reinterpret_cast<const float2*>(D + head * p + pc) : make_float2(D[head], D[head]);
    y0 += dv.x * x0, y1 += dv.y * x1;
  }
  if (z) {
    const uint32_t zz = *reinterpret_cast<const uint32_t*>(z + o);
    const T* zv = reinterpret_cast<const T*>(&zz);
    y0 *= siluf(to_float(zv[0])), y1 *= siluf(to_float(zv[1]));
  }
  *reinterpret_cast<uint32_t*>(out + o) = TC::pack(y0, y1);
}

// Where the output kernel gets C_l . B_s: computed in the block (and stored for the backward), or read from the
// buffer a separate product filled (heads sharing a group would otherwise each recompute it).
enum class CbSource { ComputeAndStore, Load };

template <typename T>
struct ChunkOutputTc {
  Chunk cx;
  const T* x;
  const T* B;
  const T* C;
  const T* z;
  const float* D;
  bool D_per_channel;
  const float* dtp;
  const double* cum;
  const float* states;  // entering states [b, c, h, p, n]
  float* cb;            // [b, c, g, q, q]
  CbSource cb_source;
  T* out;
  float* y_ssm;
  bool vector;  // 16-byte row copies (p and n multiples of 8, aligned bases)
  bool pairs;   // the epilogue stores two channels at once (vector, and out, z, y_ssm, D aligned for it)
};

template <typename T>
__global__ void __launch_bounds__(kTcThreads, 3) chunk_output_tc_kernel(ChunkOutputTc<T> a) {
  using TC = TensorCore<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  Chunk cx = a.cx;
  cx.select(blockIdx.x, cx.d.h);
  const ScanDims& d = cx.d;
  const TcOutputLayout lay = tc_output_layout(d);
  double* cum_s = reinterpret_cast<double*>(smem);
  float* dtp_s = reinterpret_cast<float*>(cum_s + d.q);
  int* seg_s = reinterpret_cast<int*>(dtp_s + d.q);
  T* tiles = reinterpret_cast<T*>(smem + lay.per_token_bytes);
  T* cs = tiles + lay.cs;
  T* bs = tiles + lay.bs;
  T* xs = tiles + lay.xs;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gid = lane / 4, tig = lane % 4;
  const int m0 = blockIdx.y * kTcRows, gi = cx.hi / d.r;

  for (int i = tid; i < d.q; i += kTcThreads) {
    const long si = cx.scan(cx.hi, i);
    cum_s[i] = a.cum[si];
    dtp_s[i] = a.dtp[si];
    seg_s[i] = cx.seg_of(i);
  }
  auto token_row = [&](int t) -> bool { return t < d.q && cx.valid(t); };
  stage_rows(cs, lay.ldn, kTcRows, d.n, lay.n16, a.vector, [&](int r) -> const T* {
    return token_row(m0 + r) ? a.C + cx.token(m0 + r, d.g, gi, d.n) : nullptr;
  });
  staged();
  __syncthreads();

  // This thread's two output rows (tokens of the chunk) and whether they are real tokens.
  const int r0 = m0 + 16 * warp + gid, r1 = r0 + 8;
  const bool live0 = token_row(r0), live1 = token_row(r1);

  float acc[kTcMaxDim / 8][4];
#pragma unroll
  for (int j = 0; j < kTcMaxDim / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;

  // Inter-chunk term, C_l . S^T, then scaled per row by exp(L_l) (rows of the sample running when the chunk began).
  // The float32 state is split into hi + lo once per element by the whole block, 64 rows of p at a time, into the B
  // and x tiles (free until the source tiles): every warp needs all of it, and when each warp split its own
  // fragments from global memory this product was 60% of the kernel's time (ncu, hovle).
  const float* S = a.states + cx.state(cx.hi);
  T* st_hi = bs;
  T* st_lo = xs;
#pragma unroll
  for (int half = 0; half < kTcMaxDim / kTcRows; ++half) {
    const int pr0 = half * kTcRows;
    if (pr0 >= lay.p16) break;
    __syncthreads();  // the previous half's readers are done
    // Rows pr0.. of S into [64, n16] hi and lo tiles, 4 elements per thread at a time (zeros past p and n).
    if (a.vector) {
      const int per_row = lay.n16 / 4;
#pragma unroll 2
      for (int e = tid; e < kTcRows * per_row; e += kTcThreads) {
        const int r = e / per_row, c = 4 * (e % per_row), pr = pr0 + r;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (pr < d.p && c < d.n) v = *reinterpret_cast<const float4*>(S + (long)pr * d.n + c);
        float hi[4], lo[4];
        split<T>(v.x, hi[0], lo[0]), split<T>(v.y, hi[1], lo[1]);
        split<T>(v.z, hi[2], lo[2]), split<T>(v.w, hi[3], lo[3]);
        *reinterpret_cast<uint2*>(st_hi + r * lay.ldn + c) = make_uint2(TC::pack(hi[0], hi[1]), TC::pack(hi[2], hi[3]));
        *reinterpret_cast<uint2*>(st_lo + r * lay.ldn + c) = make_uint2(TC::pack(lo[0], lo[1]), TC::pack(lo[2], lo[3]));
      }
    } else {
      for (int e = tid; e < kTcRows * lay.n16; e += kTcThreads) {
        const int r = e / lay.n16, c = e % lay.n16, pr = pr0 + r;
        split_store(pr < d.p && c < d.n ? S[(long)pr * d.n + c] : 0.f, st_hi + r * lay.ldn + c, st_lo + r * lay.ldn + c);
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTcMaxDim / 16; ++kk) {
      if (16 * kk >= lay.n16) break;
      uint32_t af[4];
      load_a_fragment(af, cs, lay.ldn, 16 * warp, 16 * kk);
#pragma unroll
      for (int jj = 0; jj < kTcRows / 8; ++jj) {
        const int j = half * (kTcRows / 8) + jj;
        if (8 * j >= lay.p16) break;
        uint32_t b0, b1;
        load_b_fragment(b0, b1, st_hi, lay.ldn, 16 * kk, 8 * jj);
        TC::mma(acc[j], af, b0, b1);
        load_b_fragment(b0, b1, st_lo, lay.ldn, 16 * kk, 8 * jj);
        TC::mma(acc[j], af, b0, b1);
      }
    }
  }
  const float in0 = live0 && seg_s[r0] == cx.seg_prev ? expf(static_cast<float>(cum_s[r0])) : 0.f;
  const float in1 = live1 && seg_s[r1] == cx.seg_prev ? expf(static_cast<float>(cum_s[r1])) : 0.f;
#pragma unroll
  for (int j = 0; j < kTcMaxDim / 8; ++j) {
    acc[j][0] *= in0, acc[j][1] *= in0;
    acc[j][2] *= in1, acc[j][3] *= in1;
  }

  // Intra-chunk term over the source tiles up to the diagonal.
  float* cb = a.cb + cx.cb(gi);
  const int s_end = min(m0 + kTcRows, d.q);
  for (int s0 = 0; s0 < s_end; s0 += kTcRows) {
    __syncthreads();  // the previous tile's readers are done
    stage_rows(xs, lay.ldp, kTcRows, d.p, lay.p16, a.vector, [&](int r) -> const T* {
      return token_row(s0 + r) ? a.x + cx.token(s0 + r, d.h, cx.hi, d.p) : nullptr;
    });
    if (a.cb_source == CbSource::ComputeAndStore) {
      stage_rows(bs, lay.ldn, kTcRows, d.n, lay.n16, a.vector, [&](int r) -> const T* {
        return token_row(s0 + r) ? a.B + cx.token(s0 + r, d.g, gi, d.n) : nullptr;
      });
    }
    staged();
    __syncthreads();

    // C_l . B_s for this warp's 16 rows and the tile's 64 sources.
    float sc[kTcRows / 8][4];
    if (a.cb_source == CbSource::Load) {
#pragma unroll
      for (int j = 0; j < kTcRows / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e < 2 ? r0 : r1, c = s0 + 8 * j + 2 * tig + (e & 1);
          sc[j][e] = r < d.q && c <= r ? cb[(long)r * d.q + c] : 0.f;
        }
    } else {
      cb_tile<T>(sc, cs, bs, lay.ldn, lay.n16);
      store_cb_tile(sc, cb, d.q, r0, s0);
    }

    // Weights (C_l . B_s) exp(L_l - L_s) dt'_s on the causal same-sample part, split into hi + lo and packed as the
    // next product's A operand.
    uint32_t w_hi[kTcRows / 16][4], w_lo[kTcRows / 16][4];
#pragma unroll
    for (int j = 0; j < kTcRows / 8; ++j) {
      float hi[4], lo[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e < 2 ? r0 : r1, c = s0 + 8 * j + 2 * tig + (e & 1);
        const bool keep = (e < 2 ? live0 : live1) && c <= r && seg_s[r] == seg_s[c];
        split<T>(keep ? sc[j][e] * expf(static_cast<float>(cum_s[r] - cum_s[c])) * dtp_s[c] : 0.f, hi[e], lo[e]);
      }
      w_hi[j / 2][2 * (j % 2)] = TC::pack(hi[0], hi[1]);
      w_hi[j / 2][2 * (j % 2) + 1] = TC::pack(hi[2], hi[3]);
      w_lo[j / 2][2 * (j % 2)] = TC::pack(lo[0], lo[1]);
      w_lo[j / 2][2 * (j % 2) + 1] = TC::pack(lo[2], lo[3]);
    }
#pragma unroll
    for (int kk = 0; kk < kTcRows / 16; ++kk) {
      if (s0 == m0 && kk > warp) break;  // above the diagonal: all zero
#pragma unroll
      for (int j = 0; j < kTcMaxDim / 8; ++j) {
        if (8 * j >= lay.p16) break;
        uint32_t b0, b1;
        load_b_fragment_kmajor(b0, b1, xs, lay.ldp, 16 * kk, 8 * j);
        TC::mma(acc[j], w_hi[kk], b0, b1);
        TC::mma(acc[j], w_lo[kk], b0, b1);
      }
    }
  }

  // Epilogue: y before D kept for the backward, then D x and the gate, for the two neighbouring channels a thread
  // holds at once (element by element it was a fifth of the kernel's time). x of the output rows is the last source
  // tile's (s0 = m0), still in shared memory.
#pragma unroll
  for (int j = 0; j < kTcMaxDim / 8; ++j) {
    if (8 * j >= lay.p16) break;
    const int pc = 8 * j + 2 * tig;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = half ? r1 : r0;
      if (!(half ? live1 : live0) || pc >= d.p) continue;
      const long o = cx.token(r, d.h, cx.hi, d.p) + pc;
      const float y0 = acc[j][2 * half], y1 = acc[j][2 * half + 1];
      if (a.pairs) {  // p even: pc + 1 < p, and o is even
        const T* xr = xs + (r - m0) * lay.ldp + pc;
        store_output_pair(o, cx.hi, pc, d.p, y0, y1, to_float(xr[0]), to_float(xr[1]), a.z, a.D, a.D_per_channel,
                          a.y_ssm, a.out);
      } else {
        store_output(o, cx.hi, pc, d.p, y0, a.x, a.z, a.D, a.D_per_channel, a.y_ssm, a.out);
        if (pc + 1 < d.p) store_output(o + 1, cx.hi, pc + 1, d.p, y1, a.x, a.z, a.D, a.D_per_channel, a.y_ssm, a.out);
      }
    }
  }
}

// Opts a kernel into `bytes` of dynamic shared memory (above 48 KiB needs it) and launches it.
template <typename Kernel, typename Args>
void launch_with_smem(Kernel kernel, dim3 grid, size_t bytes, cudaStream_t stream, const Args& args) {
  CARVE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  kernel<<<grid, kTcThreads, bytes, stream>>>(args);
  CARVE_CUDA_CHECK_LAUNCH();
}

// Whether token rows of `width` elements at `base` can be copied 16 bytes at a time.
inline bool rows_vectorizable(const void* base, int width) {
  return width % 8 == 0 && reinterpret_cast<uintptr_t>(base) % 16 == 0;
}

template <typename T>
void chunk_state_tc(const ChunkStateTc<T>& a, cudaStream_t stream) {
  const ScanDims& d = a.cx.d;
  const dim3 grid(static_cast<unsigned>((long)d.b * d.c * d.h), ceil_div(d.p, kTcRows));
  launch_with_smem(chunk_state_tc_kernel<T>, grid, tc_state_layout(d).bytes, stream, a);
}

template <typename T>
void chunk_cb_tc(const ChunkCbTc<T>& a, cudaStream_t stream) {
  const ScanDims& d = a.cx.d;
  const unsigned tiles = ceil_div(d.q, kTcRows);
  const dim3 grid(static_cast<unsigned>((long)d.b * d.c * d.g), tiles * tiles);
  const size_t bytes = 2 * static_cast<size_t>(kTcRows) * (round16(d.n) + 8) * 2;
  launch_with_smem(chunk_cb_tc_kernel<T>, grid, bytes, stream, a);
}

template <typename T>
void chunk_output_tc(const ChunkOutputTc<T>& a, cudaStream_t stream) {
  const ScanDims& d = a.cx.d;
  const dim3 grid(static_cast<unsigned>((long)d.b * d.c * d.h), ceil_div(d.q, kTcRows));
  launch_with_smem(chunk_output_tc_kernel<T>, grid, tc_output_layout(d).bytes, stream, a);
}

}  // namespace carve::kernels
