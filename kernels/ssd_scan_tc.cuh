/*
 * Tensor-core building blocks of the SSD scan for 16-bit inputs (the float32 path keeps the CUDA-core tile product,
 * whose accuracy the float32 tests hold to 1e-4), and two of its kernels; ssd_pair_tc.cuh has the other four.
 *
 * chunk_state_tc: per (b, chunk, head) and 64 rows of the head dim, S[p, n] = sum_s w_s left[s, p] right[s, n]:
 *   the local state (x, B, w_s = dt'_s exp(L_end - L_s) on the chunk's last sample) or, in the backward, the
 *   gradient of the entering state (dy, C, w_l = exp(L_l) on the sample running when the chunk began); w is
 *   computed once per token, the left operand is scaled on its way into shared memory.
 * chunk_cb_tc: C_l . B_s per group, for the output kernel when heads share a group.
 * Operands are staged through shared memory as 16-bit values, x and B transposed so that every fragment is a pair
 * of neighbouring elements; rows are padded by 8 elements so a warp's fragment loads hit 32 different banks.
 */
#pragma once

#include <climits>
#include <cstdint>

#include "kernels/cp_async.cuh"
#include "kernels/element.cuh"
#include "kernels/launch.h"
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
// 3x closer to float64 (5e-6), no gradient that needed it, and 5-20% slower at hovle and phi2; in the backward's dx
// product, 1.5x slower and no gradient closer (docs/kernels.md).
// A forward without a backward (no y_ssm kept) rounds them once (kInferenceParts), as Triton does: its output,
// itself rounded to 16 bits, was within 4e-4 of float64 that way.
constexpr int kParts = 2;
constexpr int kInferenceParts = 1;

// acc[j] += a[0] B + ... + a[N - 1] B for every 8-column block j of a k-major [16 of k, n16] operand tile (the same
// B fragment for each of the A operand's first N parts).
template <typename T, int N>
__device__ __forceinline__ void mma_kmajor_row(float (&acc)[kTcMaxDim / 8][4], const uint32_t (*a)[4], const T* tile,
                                               int ld, int k0, int n16) {
  using TC = TensorCore<T>;
#pragma unroll
  for (int j = 0; j < kTcMaxDim / 8; ++j) {
    if (8 * j >= n16) break;
    uint32_t b0, b1;
    load_b_fragment_kmajor(b0, b1, tile, ld, k0, 8 * j);
#pragma unroll
    for (int k = 0; k < N; ++k) TC::mma(acc[j], a[k], b0, b1);
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
      const void* from = real ? static_cast<const void*>(row + c) : static_cast<const void*>(tile);
      copy_async<16>(tile + r * ld + c, from, real);
    }
    commit_copies();
    return;
  }
  const T zero = from_float<T>(0.f);
  for (int e = threadIdx.x; e < rows * width; e += blockDim.x) {
    const int r = e / width, c = e % width;
    const T* row = src(r);
    tile[r * ld + c] = row && c < cols ? row[c] : zero;
  }
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
  StateProduct kind;
  const T* left;     // x or dy [b, l, h, p]
  const T* left_lo;  // null, or dy_lo (added to dy)
  const T* right;    // B or C [b, l, g, n]
  const float* dtp;
  const double* cum;
  float* states;  // [b, c, h, p, n]
  bool vector;    // 16-byte row copies (p and n multiples of 8, aligned bases)
  int parts = kParts;  // or kInferenceParts when only the forward's output and final state need the states
};

template <typename T, int P>
__global__ void __launch_bounds__(kTcThreads, 4) chunk_state_tc_kernel(ChunkStateTc<T> a) {
  using TC = TensorCore<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  Chunk cx = a.cx;
  const int p_tiles = (cx.d.p + kTcRows - 1) / kTcRows;
  cx.select(blockIdx.x / p_tiles, cx.d.h);
  const ScanDims& d = cx.d;
  const TcStateLayout lay = tc_state_layout(d, P);
  float* w_s = reinterpret_cast<float*>(smem);
  T* tiles = reinterpret_cast<T*>(smem + lay.per_token_bytes);
  T* xw = tiles + lay.xw;
  T* bs = tiles + lay.bs;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gid = lane / 4, tig = lane % 4;
  const int p0 = blockIdx.x % p_tiles * kTcRows, gi = cx.hi / d.r;
  const int p_cols = min(kTcRows, d.p - p0);

  const double L_end = a.cum[cx.scan(cx.hi, d.q - 1)];
  for (int i = tid; i < d.q; i += kTcThreads) w_s[i] = state_weight(a.kind, cx, a.dtp, a.cum, L_end, i);

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
      return token_row(r) ? a.right + cx.token(s0 + r, d.g, gi, d.n) : nullptr;
    });
    // w_s x_s, split into parts, 8 elements at a time (unrolled: the loads of all iterations are in flight at once).
#pragma unroll
    for (int e = tid; e < kTcRows * (kTcRows / 8); e += kTcThreads) {
      const int r = e / (kTcRows / 8), c = 8 * (e % (kTcRows / 8));
      T in[8], lo[8];
      const long at = token_row(r) ? cx.token(s0 + r, d.h, cx.hi, d.p) + p0 : -1;
      const float w = at >= 0 ? w_s[s0 + r] : 0.f;
      // 8 values of `from` at row offset c, zeros past the row's end.
      auto load8 = [&](const T* from, T (&v)[8]) {
        if (at >= 0 && a.vector && c + 8 <= p_cols) {
          *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(from + at + c);
        } else {
#pragma unroll
          for (int i = 0; i < 8; ++i)
            v[i] = from_float<T>(at >= 0 && c + i < p_cols ? to_float(from[at + c + i]) : 0.f);
        }
      };
      load8(a.left, in);
      if (a.left_lo) load8(a.left_lo, lo);
      const auto value = [&](int i) { return w * (to_float(in[i]) + (a.left_lo ? to_float(lo[i]) : 0.f)); };
      uint32_t part[4][P];  // elements 2 i and 2 i + 1, in P packed parts
#pragma unroll
      for (int i = 0; i < 4; ++i) split_pack<TC>(value(2 * i), value(2 * i + 1), part[i]);
#pragma unroll
      for (int k = 0; k < P; ++k)
        *reinterpret_cast<uint4*>(xw + k * lay.xw_part + r * lay.ldx + c) =
            make_uint4(part[0][k], part[1][k], part[2][k], part[3][k]);
    }
    staged();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTcRows / 16; ++kk) {
      uint32_t af[P][4];
#pragma unroll
      for (int k = 0; k < P; ++k) load_a_fragment_kmajor(af[k], xw + k * lay.xw_part, lay.ldx, 16 * warp, 16 * kk);
      mma_kmajor_row<T, P>(acc, af, bs, lay.ldn, 16 * kk, lay.n16);
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

// dCB[l, s] = sum over the group's heads j of (dy_j,l . x_j,s) exp(L_j,l - L_j,s) dt'_j,s on the causal, same-sample
// part, for dC and dB when heads share a group (they read it like the forward's C.B; ssd_pair_tc.cuh). One block per
// chunk, group and 64 x 64 tile on or below the diagonal, blocks of one chunk neighbours in the grid (they share rows
// in L2). Each head's (dy . x) block is made on tensor cores from the exact 16-bit rows and weighted in float32
// registers; the next head's rows and per-token values are copied while this head's are multiplied. dy alone, without
// dy_lo: as in the pair kernel's dC and dB with one head per group.
template <typename T>
struct ChunkDcbTc {
  Chunk cx;
  const T* dy;
  const T* x;
  const float* dtp;
  const double* cum;
  float* dcb;  // [b, c, g, q, q]
  bool vector;
};

// Shared memory of chunk_dcb_tc: the segment ids of the tile's rows and columns, then two stages, each: cum of the
// rows and of the columns (float64), dt' of the columns, dy rows [64, p16] and x rows [64, p16] (ld = p16 + 8).
struct TcDcbLayout {
  int p16, ld;
  size_t seg_bytes, stage_bytes, cum_rows, cum_cols, dtp_cols, dys, xs, bytes;  // the last five: offsets in a stage
};
__host__ __device__ inline TcDcbLayout tc_dcb_layout(const ScanDims& d) {
  TcDcbLayout L{};
  L.p16 = round16(d.p), L.ld = L.p16 + 8;
  L.seg_bytes = 2 * kTcRows * sizeof(int);
  L.cum_rows = 0;
  L.cum_cols = kTcRows * sizeof(double);
  L.dtp_cols = 2 * kTcRows * sizeof(double);
  L.dys = L.dtp_cols + kTcRows * sizeof(float);
  L.xs = L.dys + static_cast<size_t>(kTcRows) * L.ld * 2;
  L.stage_bytes = L.xs + static_cast<size_t>(kTcRows) * L.ld * 2;
  L.bytes = L.seg_bytes + 2 * L.stage_bytes;
  return L;
}

// Tiles on or below the diagonal of a chunk with `tiles` 64-token tiles, numbered row by row.
__host__ __device__ inline int lower_tiles(int tiles) { return tiles * (tiles + 1) / 2; }

template <typename T>
__global__ void __launch_bounds__(kTcThreads) chunk_dcb_tc_kernel(ChunkDcbTc<T> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  Chunk cx = a.cx;
  const ScanDims& d = cx.d;
  const int tiles = (d.q + kTcRows - 1) / kTcRows, per_chunk = lower_tiles(tiles);
  cx.select(blockIdx.x / per_chunk, d.g);
  int mt = 0, t = blockIdx.x % per_chunk;
  while (t > mt) t -= ++mt;  // row mt holds tiles 0..mt
  const int m0 = kTcRows * mt, s0 = kTcRows * t;
  const bool diagonal = m0 == s0;
  const TcDcbLayout lay = tc_dcb_layout(d);
  int* seg_l = reinterpret_cast<int*>(smem);
  int* seg_c = seg_l + kTcRows;
  unsigned char* stages = smem + lay.seg_bytes;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gid = lane / 4, tig = lane % 4;
  auto in_chunk = [&](int i) { return i < d.q && cx.valid(i); };
  for (int i = tid; i < kTcRows; i += kTcThreads) {  // tokens outside the chunk: ids no sample has, never equal
    seg_l[i] = in_chunk(m0 + i) ? cx.seg_of(m0 + i) : INT_MIN;
    seg_c[i] = in_chunk(s0 + i) ? cx.seg_of(s0 + i) : INT_MAX;
  }

  // Head j's rows and per-token values into stage `buf`: with `vector`, one cp.async group for each operand's rows
  // (stage_rows commits those; otherwise it copies them itself), then one for the per-token values.
  auto stage = [&](int j, int buf) {
    unsigned char* st = stages + buf * lay.stage_bytes;
    const int head = cx.hi * d.r + j;
    stage_rows(reinterpret_cast<T*>(st + lay.dys), lay.ld, kTcRows, d.p, lay.p16, a.vector, [&](int r) -> const T* {
      return in_chunk(m0 + r) ? a.dy + cx.token(m0 + r, d.h, head, d.p) : nullptr;
    });
    stage_rows(reinterpret_cast<T*>(st + lay.xs), lay.ld, kTcRows, d.p, lay.p16, a.vector, [&](int r) -> const T* {
      return in_chunk(s0 + r) ? a.x + cx.token(s0 + r, d.h, head, d.p) : nullptr;
    });
    for (int i = tid; i < 3 * kTcRows; i += kTcThreads) {
      const int which = i / kTcRows, k = i % kTcRows, tok = (which == 0 ? m0 : s0) + k;
      const bool real = tok < d.q;
      const long si = cx.scan(head, real ? tok : 0);
      if (which < 2) {
        copy_async<8>(st + (which == 0 ? lay.cum_rows : lay.cum_cols) + k * sizeof(double), a.cum + si, real);
      } else {
        copy_async<4>(st + lay.dtp_cols + k * sizeof(float), a.dtp + si, real);
      }
    }
    commit_copies();
  };

  float acc[kTcRows / 8][4];
#pragma unroll
  for (int j = 0; j < kTcRows / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;
  const int r0 = 16 * warp + gid;  // this thread's rows r0 and r0 + 8 of the tile

  stage(0, 0);
  // Which of this thread's 32 (row, column) pairs count, bit 4 jb + e, the same for every head. (Tested per pair and
  // head, with a branch each, the test's instructions were most of the kernel's issue slots; ncu, mamba2-2.7b.)
  __syncthreads();  // seg_l and seg_c written
  uint32_t keep = 0;
#pragma unroll
  for (int jb = 0; jb < kTcRows / 8; ++jb)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = r0 + (e < 2 ? 0 : 8), c = 8 * jb + 2 * tig + (e & 1);
      if ((!diagonal || c <= r) && seg_l[r] == seg_c[c]) keep |= 1u << (4 * jb + e);
    }
  for (int j = 0; j < d.r; ++j) {
    const int buf = j & 1;
    if (j + 1 < d.r) {
      stage(j + 1, buf ^ 1);
      // This head's groups are done; the next head's may still fly.
      if (a.vector) {
        staged_but<3>();
      } else {
        staged_but<1>();
      }
    } else {
      staged();
    }
    __syncthreads();
    const unsigned char* st = stages + buf * lay.stage_bytes;
    const double* cum_l = reinterpret_cast<const double*>(st + lay.cum_rows);
    const double* cum_c = reinterpret_cast<const double*>(st + lay.cum_cols);
    const float* dtp_c = reinterpret_cast<const float*>(st + lay.dtp_cols);
    float sc[kTcRows / 8][4];
    cb_tile<T>(sc, reinterpret_cast<const T*>(st + lay.dys), reinterpret_cast<const T*>(st + lay.xs), lay.ld,
               lay.p16);
    // Weights without branches: a pair outside `keep` may compute an infinite weight, which the select drops.
    const double cl[2] = {cum_l[r0], cum_l[r0 + 8]};
#pragma unroll
    for (int jb = 0; jb < kTcRows / 8; ++jb) {
      const int c = 8 * jb + 2 * tig;  // even: the column pair is one 16-byte and one 8-byte shared load
      const double2 cc = *reinterpret_cast<const double2*>(cum_c + c);
      const float2 dc = *reinterpret_cast<const float2*>(dtp_c + c);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float w = expf(static_cast<float>(cl[e / 2] - (e & 1 ? cc.y : cc.x))) * (e & 1 ? dc.y : dc.x);
        acc[jb][e] += keep >> (4 * jb + e) & 1u ? sc[jb][e] * w : 0.f;
      }
    }
    __syncthreads();  // this stage's readers are done before head j + 2 is copied into it
  }
  store_cb_tile(acc, a.dcb + cx.cb(cx.hi), d.q, m0 + r0, s0);
}

// Opts a kernel into `bytes` of dynamic shared memory (above 48 KiB needs it) and launches it.
template <typename Kernel, typename Args>
void launch_with_smem(Kernel kernel, dim3 grid, size_t bytes, cudaStream_t stream, const Args& args) {
  allow_dynamic_shared(reinterpret_cast<const void*>(kernel), bytes);
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
  // The head's row tiles are neighbours in the grid: they share the right operand's rows in L2.
  const dim3 grid(static_cast<unsigned>((long)d.b * d.c * d.h * ceil_div(d.p, kTcRows)));
  if (a.parts == kInferenceParts) {
    launch_with_smem(chunk_state_tc_kernel<T, kInferenceParts>, grid, tc_state_layout(d, kInferenceParts).bytes, stream,
                     a);
  } else {
    launch_with_smem(chunk_state_tc_kernel<T, kParts>, grid, tc_state_layout(d, kParts).bytes, stream, a);
  }
}

template <typename T>
void chunk_dcb_tc(const ChunkDcbTc<T>& a, cudaStream_t stream) {
  const ScanDims& d = a.cx.d;
  const long blocks = (long)d.b * d.c * d.g * lower_tiles(ceil_div(d.q, kTcRows));
  launch_with_smem(chunk_dcb_tc_kernel<T>, dim3(static_cast<unsigned>(blocks)), tc_dcb_layout(d).bytes, stream, a);
}

template <typename T>
void chunk_cb_tc(const ChunkCbTc<T>& a, cudaStream_t stream) {
  const ScanDims& d = a.cx.d;
  const unsigned tiles = ceil_div(d.q, kTcRows);
  const dim3 grid(static_cast<unsigned>((long)d.b * d.c * d.g), tiles * tiles);
  const size_t bytes = 2 * static_cast<size_t>(kTcRows) * (round16(d.n) + 8) * 2;
  launch_with_smem(chunk_cb_tc_kernel<T>, grid, bytes, stream, a);
}

}  // namespace carve::kernels
