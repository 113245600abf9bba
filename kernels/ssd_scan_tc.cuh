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

#include <climits>
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

// A computed operand (decay-weighted values, float32 states) as the sum of kParts 16-bit values, each taken through
// the tensor cores. y_ssm needs them: the backward's decay gradient is a small difference of sums of y_ssm and of
// the dx product's terms, and one bfloat16 (8 significant bits) left it at 5-20% error. Two parts carry 16 bits
// (bfloat16) or 22 (float16), and every gradient passes. Three bfloat16 parts (24 bits) were measured too: outputs
// 3x closer to float64 (5e-6), no gradient that needed it, and 5-20% slower at hovle and phi2 (docs/kernels.md).
template <typename T>
constexpr int kParts = 2;

// v as part[0] + part[1] + ..., each part exactly a 16-bit value (the last one rounded).
template <typename T>
__device__ __forceinline__ void split(float v, float (&part)[kParts<T>]) {
#pragma unroll
  for (int i = 0; i < kParts<T>; ++i) {
    part[i] = to_float(from_float<T>(v));
    v -= part[i];
  }
}

// Walks the rows of a tile `per_row` items wide with the threads of the block, without a division per step: thread
// t takes item t % per_row of rows t / per_row, t / per_row + rows_per_pass, ... (threads past the last whole row of
// a pass stay idle; per_row <= blockDim.x).
struct RowWalk {
  int row, item, rows_per_pass;
  __device__ explicit RowWalk(int per_row) {
    rows_per_pass = blockDim.x / per_row;
    row = threadIdx.x / per_row;
    item = threadIdx.x % per_row;
    if (row >= rows_per_pass) row = INT_MAX;  // idle
  }
};

// Copies token rows into a row-major shared tile of `rows` x `width` 16-bit elements (ld per row): row r from
// src(r) (null: a row of zeros), `cols` real columns, zeros up to `width` (a multiple of 16). When every row start
// is 16-byte aligned (`vector`) the copies are cp.async: all of a block's copies are in flight at once instead of one
// load per thread at a time (the output kernel spent most of its time waiting on these loads); element by element
// otherwise. Call staged() before the __syncthreads that publishes the tile.
template <typename T, typename Src>
__device__ __forceinline__ void stage_rows(T* tile, int ld, int rows, int cols, int width, bool vector, Src src) {
  if (vector) {
    const RowWalk walk(width / 8);
    const int c = 8 * walk.item;
    for (int r = walk.row; r < rows; r += walk.rows_per_pass) {
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

// Shared memory of chunk_output_tc: per-token cum (float64), dt', segment ids, the head's D per channel, then
// 16-bit row-major tiles: C rows [64, n], B rows of the source tile [64, n], x rows of the source tile [64, p], z
// rows of the output tile [64, p]. Before the source tiles, the B, x and z tiles hold the parts of 64 rows of the
// entering state [64 of p, n] (so the x and z tiles are at least [64, n]).
struct TcOutputLayout {
  int n16, p16, ldn, ldp;
  size_t per_token_bytes, cs, bs, xs, zs, bytes;
};
__host__ __device__ inline TcOutputLayout tc_output_layout(const ScanDims& d) {
  TcOutputLayout L{};
  L.n16 = round16(d.n), L.p16 = round16(d.p), L.ldn = L.n16 + 8, L.ldp = L.p16 + 8;
  L.per_token_bytes = static_cast<size_t>(d.q) * (sizeof(double) + sizeof(float) + sizeof(int)) +
                      static_cast<size_t>(kTcMaxDim) * sizeof(float);
  L.per_token_bytes = (L.per_token_bytes + 15) / 16 * 16;
  const size_t wide = static_cast<size_t>(kTcRows) * (L.ldp > L.ldn ? L.ldp : L.ldn);
  L.cs = 0;
  L.bs = L.cs + static_cast<size_t>(kTcRows) * L.ldn;
  L.xs = L.bs + static_cast<size_t>(kTcRows) * L.ldn;
  L.zs = L.xs + wide;
  L.bytes = L.per_token_bytes + (L.zs + wide) * 2;
  return L;
}

// Shared memory of chunk_state_tc: per-token weights, then row-major tiles of the source tile: w x split in `parts`
// 16-bit parts [64, 64 of p] each (xw, part i at xw + i * xw_part), B [64, n].
struct TcStateLayout {
  int n16, ldx, ldn;
  size_t per_token_bytes, xw, xw_part, bs, bytes;
};
__host__ __device__ inline TcStateLayout tc_state_layout(const ScanDims& d, int parts) {
  TcStateLayout L{};
  L.n16 = round16(d.n), L.ldx = kTcRows + 8, L.ldn = L.n16 + 8;
  L.per_token_bytes = (static_cast<size_t>(d.q) * sizeof(float) + 15) / 16 * 16;
  L.xw = 0;
  L.xw_part = static_cast<size_t>(kTcRows) * L.ldx;
  L.bs = L.xw + parts * L.xw_part;
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
  constexpr int P = kParts<T>;
  const TcStateLayout lay = tc_state_layout(d, P);
  float* w_s = reinterpret_cast<float*>(smem);
  T* tiles = reinterpret_cast<T*>(smem + lay.per_token_bytes);
  T* xw = tiles + lay.xw;
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
    // w_s x_s, split into parts, 8 elements at a time (unrolled: the loads of all iterations are in flight at once).
#pragma unroll
    for (int e = tid; e < kTcRows * (kTcRows / 8); e += kTcThreads) {
      const int r = e / (kTcRows / 8), c = 8 * (e % (kTcRows / 8));
      T in[8];
      const T* row = token_row(r) ? a.x + cx.token(s0 + r, d.h, cx.hi, d.p) + p0 : nullptr;
      const float w = row ? w_s[s0 + r] : 0.f;
      if (row && a.vector && c + 8 <= p_cols) {
        *reinterpret_cast<uint4*>(in) = *reinterpret_cast<const uint4*>(row + c);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) in[i] = from_float<T>(row && c + i < p_cols ? to_float(row[c + i]) : 0.f);
      }
      float part[8][P];
#pragma unroll
      for (int i = 0; i < 8; ++i) split<T>(w * to_float(in[i]), part[i]);
#pragma unroll
      for (int k = 0; k < P; ++k)
        *reinterpret_cast<uint4*>(xw + k * lay.xw_part + r * lay.ldx + c) =
            make_uint4(TC::pack(part[0][k], part[1][k]), TC::pack(part[2][k], part[3][k]),
                       TC::pack(part[4][k], part[5][k]), TC::pack(part[6][k], part[7][k]));
    }
    staged();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTcRows / 16; ++kk) {
      uint32_t af[P][4];
#pragma unroll
      for (int k = 0; k < P; ++k) load_a_fragment_kmajor(af[k], xw + k * lay.xw_part, lay.ldx, 16 * warp, 16 * kk);
#pragma unroll
      for (int j = 0; j < kTcMaxDim / 8; ++j) {
        if (8 * j >= lay.n16) break;
        uint32_t b0, b1;
        load_b_fragment_kmajor(b0, b1, bs, lay.ldn, 16 * kk, 8 * j);
#pragma unroll
        for (int k = 0; k < P; ++k) TC::mma(acc[j], af[k], b0, b1);
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

// The output kernel's epilogue for a p that is a multiple of 8 (so every channel pair a thread holds is real, and
// its element offset is even): y_ssm as float2, out as two packed 16-bit values, x and z rows from shared memory
// (tile rows from m0, ld lay.ldp), D per channel from D_s.
template <typename T, bool kGate>
__device__ __forceinline__ void output_pairs(const float (&acc)[kTcMaxDim / 8][4], int r0, bool live0, bool live1,
                                             int m0, const Chunk& cx, const TcOutputLayout& lay, const T* xs,
                                             const T* zs, const float* D_s, float* y_ssm, T* out) {
  using TC = TensorCore<T>;
  const int tig = threadIdx.x % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (!(half ? live1 : live0)) continue;
    const int r = r0 + 8 * half;
    const long row = cx.token(r, cx.d.h, cx.hi, cx.d.p);
    const T* xr = xs + (r - m0) * lay.ldp;
    const T* zr = zs + (r - m0) * lay.ldp;
#pragma unroll
    for (int j = 0; j < kTcMaxDim / 8; ++j) {
      if (8 * j >= lay.p16) break;
      const int pc = 8 * j + 2 * tig;
      float y0 = acc[j][2 * half], y1 = acc[j][2 * half + 1];
      if (y_ssm) *reinterpret_cast<float2*>(y_ssm + row + pc) = make_float2(y0, y1);
      y0 += D_s[pc] * to_float(xr[pc]), y1 += D_s[pc + 1] * to_float(xr[pc + 1]);
      if (kGate) y0 *= silu_fast(to_float(zr[pc])), y1 *= silu_fast(to_float(zr[pc + 1]));
      *reinterpret_cast<uint32_t*>(out + row + pc) = TC::pack(y0, y1);
    }
  }
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
  bool pairs;   // the epilogue stores two channels at once (vector, and out, z, y_ssm aligned for it)
};

template <typename T>
__global__ void __launch_bounds__(kTcThreads, 3) chunk_output_tc_kernel(ChunkOutputTc<T> a) {
  using TC = TensorCore<T>;
  constexpr int P = kParts<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  Chunk cx = a.cx;
  cx.select(blockIdx.x, cx.d.h);
  const ScanDims& d = cx.d;
  const TcOutputLayout lay = tc_output_layout(d);
  double* cum_s = reinterpret_cast<double*>(smem);
  float* dtp_s = reinterpret_cast<float*>(cum_s + d.q);
  int* seg_s = reinterpret_cast<int*>(dtp_s + d.q);
  float* D_s = reinterpret_cast<float*>(seg_s + d.q);
  T* tiles = reinterpret_cast<T*>(smem + lay.per_token_bytes);
  T* cs = tiles + lay.cs;
  T* bs = tiles + lay.bs;
  T* xs = tiles + lay.xs;
  T* zs = tiles + lay.zs;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gid = lane / 4, tig = lane % 4;
  const int m0 = blockIdx.y * kTcRows, gi = cx.hi / d.r;

  auto token_row = [&](int t) -> bool { return t < d.q && cx.valid(t); };
  stage_rows(cs, lay.ldn, kTcRows, d.n, lay.n16, a.vector, [&](int r) -> const T* {
    return token_row(m0 + r) ? a.C + cx.token(m0 + r, d.g, gi, d.n) : nullptr;
  });
  for (int i = tid; i < d.q; i += kTcThreads) {
    const long si = cx.scan(cx.hi, i);
    cum_s[i] = a.cum[si];
    dtp_s[i] = a.dtp[si];
    seg_s[i] = cx.seg_of(i);
  }
  for (int i = tid; i < d.p; i += kTcThreads) D_s[i] = a.D ? a.D[a.D_per_channel ? cx.hi * d.p + i : cx.hi] : 0.f;

  // This thread's two output rows (tokens of the chunk) and whether they are real tokens.
  const int r0 = m0 + 16 * warp + gid, r1 = r0 + 8;

  float acc[kTcMaxDim / 8][4];
#pragma unroll
  for (int j = 0; j < kTcMaxDim / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;

  // Inter-chunk term, C_l . S^T, then scaled per row by exp(L_l) (rows of the sample running when the chunk began).
  // The float32 state is split into parts once per element by the whole block, 64 rows of p at a time, into the B,
  // x and z tiles (free until the source tiles): every warp needs all of it, and when each warp split its own
  // fragments from global memory this product was 60% of the kernel's time (ncu, hovle). Each thread loads 8 x 4
  // elements before it splits any, so that 8 loads are in flight instead of one.
  const float* S = a.states + cx.state(cx.hi);
  static_assert(P <= 3, "the state's parts live in the B, x and z tiles");
  T* const st[3] = {bs, xs, zs};
#pragma unroll
  for (int half = 0; half < kTcMaxDim / kTcRows; ++half) {
    const int pr0 = half * kTcRows;
    if (pr0 >= lay.p16) break;
    __syncthreads();  // the previous half's readers are done (and, the first time, the per-token values written)
    auto put = [&](int r, int c, const float (&v)[4]) {  // 4 elements of row r from column c, as parts
      float part[4][P];
#pragma unroll
      for (int i = 0; i < 4; ++i) split<T>(v[i], part[i]);
#pragma unroll
      for (int k = 0; k < P; ++k)
        *reinterpret_cast<uint2*>(st[k] + r * lay.ldn + c) =
            make_uint2(TC::pack(part[0][k], part[1][k]), TC::pack(part[2][k], part[3][k]));
    };
    if (a.vector) {
      constexpr int kBatch = 8;
      const RowWalk walk(lay.n16 / 4);
      const int c = 4 * walk.item;
      for (int r = walk.row; r < kTcRows; r += kBatch * walk.rows_per_pass) {
        float4 v[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          const int rr = r + u * walk.rows_per_pass, pr = pr0 + rr;
          v[u] = rr < kTcRows && pr < d.p && c < d.n ? *reinterpret_cast<const float4*>(S + (long)pr * d.n + c)
                                                     : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          const int rr = r + u * walk.rows_per_pass;
          if (rr < kTcRows) put(rr, c, {v[u].x, v[u].y, v[u].z, v[u].w});
        }
      }
    } else {
      for (int e = tid; e < kTcRows * lay.n16 / 4; e += kTcThreads) {
        const int r = e / (lay.n16 / 4), c = 4 * (e % (lay.n16 / 4)), pr = pr0 + r;
        float v[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) v[i] = pr < d.p && c + i < d.n ? S[(long)pr * d.n + c + i] : 0.f;
        put(r, c, v);
      }
    }
    staged();  // C's rows (the first time)
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
#pragma unroll
        for (int k = 0; k < P; ++k) {
          uint32_t b0, b1;
          load_b_fragment(b0, b1, st[k], lay.ldn, 16 * kk, 8 * jj);
          TC::mma(acc[j], af, b0, b1);
        }
      }
    }
  }
  const bool live0 = token_row(r0), live1 = token_row(r1);
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
    __syncthreads();  // the previous tile's (or the state's) readers are done
    stage_rows(xs, lay.ldp, kTcRows, d.p, lay.p16, a.vector, [&](int r) -> const T* {
      return token_row(s0 + r) ? a.x + cx.token(s0 + r, d.h, cx.hi, d.p) : nullptr;
    });
    if (a.cb_source == CbSource::ComputeAndStore) {
      stage_rows(bs, lay.ldn, kTcRows, d.n, lay.n16, a.vector, [&](int r) -> const T* {
        return token_row(s0 + r) ? a.B + cx.token(s0 + r, d.g, gi, d.n) : nullptr;
      });
    }
    if (s0 == m0 && a.z && a.pairs) {  // the last tile: the gate's rows for the epilogue fly meanwhile
      stage_rows(zs, lay.ldp, kTcRows, d.p, lay.p16, true, [&](int r) -> const T* {
        return token_row(m0 + r) ? a.z + cx.token(m0 + r, d.h, cx.hi, d.p) : nullptr;
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

    // For each 16 sources: the weights (C_l . B_s) exp(L_l - L_s) dt'_s on the causal same-sample part, split into
    // parts and packed as the A operand of the product with x (made per 16 sources so that only one k step's
    // parts are live).
#pragma unroll
    for (int kk = 0; kk < kTcRows / 16; ++kk) {
      if (s0 == m0 && kk > warp) break;  // above the diagonal: all zero
      uint32_t w[P][4];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int j = 2 * kk + jj;
        float part[4][P];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e < 2 ? r0 : r1, c = s0 + 8 * j + 2 * tig + (e & 1);
          const bool keep = (e < 2 ? live0 : live1) && c <= r && seg_s[r] == seg_s[c];
          split<T>(keep ? sc[j][e] * expf(static_cast<float>(cum_s[r] - cum_s[c])) * dtp_s[c] : 0.f, part[e]);
        }
#pragma unroll
        for (int k = 0; k < P; ++k) {
          w[k][2 * jj] = TC::pack(part[0][k], part[1][k]);
          w[k][2 * jj + 1] = TC::pack(part[2][k], part[3][k]);
        }
      }
#pragma unroll
      for (int j = 0; j < kTcMaxDim / 8; ++j) {
        if (8 * j >= lay.p16) break;
        uint32_t b0, b1;
        load_b_fragment_kmajor(b0, b1, xs, lay.ldp, 16 * kk, 8 * j);
#pragma unroll
        for (int k = 0; k < P; ++k) TC::mma(acc[j], w[k], b0, b1);
      }
    }
  }

  // Epilogue: y before D kept for the backward, then D x and the gate. With `pairs`, two neighbouring channels at
  // once, x from the last source tile (s0 = m0: the output rows) and z from their tile in shared memory, the
  // optional inputs tested once outside the loop. Element by element from global memory, each thread waiting on
  // one load at a time and testing every pointer per element, it was a third of the kernel's time.
  if (a.pairs) {
    if (a.z) {
      output_pairs<T, true>(acc, r0, live0, live1, m0, cx, lay, xs, zs, D_s, a.y_ssm, a.out);
    } else {
      output_pairs<T, false>(acc, r0, live0, live1, m0, cx, lay, xs, zs, D_s, a.y_ssm, a.out);
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < kTcMaxDim / 8; ++j) {
    if (8 * j >= lay.p16) break;
    const int pc = 8 * j + 2 * tig;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = half ? r1 : r0;
      if (!(half ? live1 : live0) || pc >= d.p) continue;
      const long o = cx.token(r, d.h, cx.hi, d.p) + pc;
      store_output(o, cx.hi, pc, d.p, acc[j][2 * half], a.x, a.z, a.D, a.D_per_channel, a.y_ssm, a.out);
      if (pc + 1 < d.p)
        store_output(o + 1, cx.hi, pc + 1, d.p, acc[j][2 * half + 1], a.x, a.z, a.D, a.D_per_channel, a.y_ssm, a.out);
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
  launch_with_smem(chunk_state_tc_kernel<T>, grid, tc_state_layout(d, kParts<T>).bytes, stream, a);
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
