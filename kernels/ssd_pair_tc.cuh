/*
 * The SSD scan's four products that pair a chunk's tokens with each other, one tensor-core kernel for all of them
 * (16-bit inputs). For 64 rows of one chunk and head (tokens `row`), with P, Q, V token-row operands and S' a
 * float32 [width, inner] matrix per chunk and head:
 *
 *   out[row, :] = e_row P_row . S'^T  +  sum over sources src on one side of the diagonal of
 *                 (P_row . Q_src) W(row, src) V_src
 *
 *   kind    rows  P   Q   V   S'                      sources     W                       e_row
 *   Output  l     C   B   x   state [p, n]            src <= row  exp(L_l - L_s) dt'_s    exp(L_l)
 *   Dx      s     B   C   dy  its gradient [p, n]     src >= row  exp(L_l - L_s)          exp(L_end - L_s)
 *   DC      l     dy  x   B   state^T                 src <= row  exp(L_l - L_s) dt'_s    exp(L_l)
 *   DB      s     x   dy  C   gradient^T              src >= row  exp(L_l - L_s)          exp(L_end - L_s)
 *
 * (l targets, s sources; W is zero across sample boundaries, e_row zero unless the row's sample ran when the chunk
 * began (l) or runs at its end (s).) Output then adds D x and the gate and keeps y_ssm; Dx is the gradient U of
 * dt'_s x_s, so dx = dt'_s U + D dy_s and the row sum x_s . U goes to the dt gradient, and its V is dy + dy_lo (two
 * 16-bit parts, SsdScanBackward::dy); DB is multiplied by dt'_s.
 * DC and DB make the (dy . x) block themselves with one head per group. With heads sharing a group (`group_heads`)
 * a block covers the group: the intra-chunk term reads dCB, the (dy . x) block summed over the group's heads with
 * their weights (chunk_dcb_tc), and the inter-chunk term sums over the heads, each head's P rows scaled by its own
 * e_row (times dt'_s for DB, which then skips the epilogue's dt') in registers on their way into the tensor cores.
 *
 * A block computes the inter-chunk term first: S' is split into 16-bit parts (kParts, or kInferenceParts for an Output
 * without y_ssm and, by default, for DC and DB: ChunkPairTc::parts) once per element by the whole block, 64 output
 * columns at a time, into the Q, V and extra tiles (free until the source tiles), each thread loading 8 x 4 elements
 * before it splits any. (When each warp split its own fragments from global memory, this product was 60% of the output
 * kernel's time; ncu, hovle.) Then, for each 64-token source tile, the (P . Q) block for the warp's 16 rows (or, for
 * Output with heads sharing a group, read from the C.B buffer), weighted in registers, split into parts and multiplied
 * into V without leaving registers (mma.cuh says why the accumulator layout allows that). The diagonal tile comes last,
 * so that V's rows of the block's own tokens (x for Output, dy for Dx) are in shared memory for the epilogue.
 */
#pragma once

#include "kernels/ssd_scan_tc.cuh"

namespace carve::kernels {

enum class PairKind { Output, Dx, DC, DB };

template <PairKind K>
struct PairTraits {
  static constexpr bool kAnticausal = K == PairKind::Dx || K == PairKind::DB;   // sources at or after the row
  static constexpr bool kSourceDt = K == PairKind::Output || K == PairKind::DC;  // W includes dt'_src
  static constexpr bool kInterKMajor = K == PairKind::DC || K == PairKind::DB;   // S' is the [p, n] matrix transposed
  // V is dy + dy_lo (SsdScanBackward::dy says why): the rest's rows take the extra tile, a third product per step
  // (W's high part times them), and the epilogue's x rows go to the Q tile once the last (P . Q) block is made.
  static constexpr bool kVRest = K == PairKind::Dx;
};

// One operand's token rows: row t of the block's chunk and head `hi` is base + token(t, heads, hi / per_head, width).
template <typename T>
struct TokenRows {
  const T* base;
  int heads, per_head, width;
};

// Where a block gets its (P . Q) blocks: computed in the block, or read from the buffer a separate product filled
// (heads sharing a group would otherwise each recompute it): C.B for Output and Dx, dCB for DC and DB.
enum class CbSource { Compute, Load };

template <typename T>
struct ChunkPairTc {
  Chunk cx;
  TokenRows<T> P, Q, V;  // P and Q have the inner width, V the output's width
  const T* v_lo;         // Dx: dy_lo, rows laid out like V's
  const T* extra;        // with `pairs`, rows laid out like V's that the epilogue reads from shared memory: z
                         // (Output, or null without a gate), x (Dx)
  const float* inter;    // S' as a [b, c, h, p, n] buffer
  const float* dtp;
  const double* cum;
  const float* cb;       // with CbSource::Load: C_l . B_s [b, c, g, q, q] (Output, Dx) or dCB (DC, DB)
  CbSource cb_source;
  bool group_heads;      // DC, DB: blocks per group, summing over its heads (above)
  const T* x;            // Output: for D x; Dx: for x . U
  const T* z;            // Output
  const float* D;        // Output, Dx
  bool D_per_channel;
  T* out;                // out, dx, dC or dB
  float* y_ssm;          // Output
  float* ddt_u;          // Dx: x_s . U_s per token
  bool vector;           // 16-byte row copies (widths multiples of 8, aligned bases)
  bool pairs;            // the epilogue takes two columns at a time, V's rows and extra from shared memory
  // DC and DB: the parts of their computed operands. They feed no other gradient, so kInferenceParts serves them
  // (the decay gradient reads y_ssm and dx's terms; kParts says why those take two).
  int parts = kParts;
};

// A float64 exponent held as two floats, hi + lo. The weights W(row, src) = exp(L_l - L_s) (dt'_s) are computed as
// exp2(row + src), row and src such pairs in base 2 (the table above says which token carries which sign and dt'),
// so that the per-element work is three float adds and an exp2. A float64 difference of the cumsums, its conversion
// to float32 (16 a clock per SM on compute capability 9.0, against 128 float32 adds) and the multiply by dt' cost
// more in the loop that makes the weights (dx and dB 6% faster this way; docs/kernels.md, version 7). The sum of
// the two his is exact where they nearly cancel, so a weight keeps float32's relative precision in the exponent's
// difference, as the float64 difference converted once did.
struct LogPair {
  float hi, lo;
};
__device__ __forceinline__ LogPair log_pair(double v) {
  const float hi = static_cast<float>(v);
  return {hi, isfinite(hi) ? static_cast<float>(v - static_cast<double>(hi)) : 0.f};  // (dt' = 0: -inf, weight 0)
}
__device__ __forceinline__ float exp2_pair(LogPair a, LogPair b) { return exp2f((a.hi + b.hi) + (a.lo + b.lo)); }
constexpr double kLog2e = 1.4426950408889634;

// Shared memory: per-token source exponents (float pairs, LogPair), dt', segment ids, the head's D per channel, then
// 16-bit tiles: P rows of the block [64, inner], Q rows of the source tile [64, inner], V rows of the source tile
// [64, width], extra rows [64, width]. Before the source tiles, the Q, V and extra tiles hold the parts of 64
// columns of S': [64, inner] (n-major, ld ldk) or [inner, 64] (k-major, ld ld_inter), so each tile is as large as
// the largest of these.
struct TcPairLayout {
  int k16, n16, ldk, ldv, ld_inter;
  size_t per_token_bytes, ps, qs, vs, es, bytes;
};
__host__ __device__ inline TcPairLayout tc_pair_layout(const ScanDims& d, int inner, int width, bool inter_kmajor) {
  TcPairLayout L{};
  L.k16 = round16(inner), L.n16 = round16(width), L.ldk = L.k16 + 8, L.ldv = L.n16 + 8;
  L.ld_inter = inter_kmajor ? kTcRows + 8 : L.ldk;
  L.per_token_bytes = static_cast<size_t>(d.q) * (sizeof(LogPair) + sizeof(float) + sizeof(int)) +
                      static_cast<size_t>(kTcMaxDim) * sizeof(float);
  L.per_token_bytes = (L.per_token_bytes + 15) / 16 * 16;
  size_t tile = static_cast<size_t>(kTcRows) * (L.ldk > L.ldv ? L.ldk : L.ldv);
  if (inter_kmajor && static_cast<size_t>(L.k16) * L.ld_inter > tile) tile = static_cast<size_t>(L.k16) * L.ld_inter;
  L.ps = 0;
  L.qs = L.ps + static_cast<size_t>(kTcRows) * L.ldk;
  L.vs = L.qs + tile;
  L.es = L.vs + tile;
  L.bytes = L.per_token_bytes + (L.es + tile) * 2;
  return L;
}

// Where a thread's accumulators are: rows r0 and r0 + 8 (tokens of the chunk, live if real), columns
// 8 j + 2 tig + {0, 1}; tile rows of r0 in the block's tiles start at m0.
struct PairRows {
  int r0, m0;
  bool live0, live1;
};

// Output's epilogue (width = p a multiple of 8, so every column pair a thread holds up to p is real and its offset
// even): y_ssm as float2, out as two packed 16-bit values, x and z rows from shared memory, D per channel from D_s.
template <typename T, bool kGate>
__device__ __forceinline__ void output_pairs(const float (&acc)[kTcMaxDim / 8][4], const PairRows& pr,
                                             const Chunk& cx, int ld, const T* xs, const T* zs, const float* D_s,
                                             float* y_ssm, T* out) {
  using TC = TensorCore<T>;
  const int tig = threadIdx.x % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (!(half ? pr.live1 : pr.live0)) continue;
    const int r = pr.r0 + 8 * half;
    const long row = cx.token(r, cx.d.h, cx.hi, cx.d.p);
    const T* xr = xs + (r - pr.m0) * ld;
    const T* zr = zs + (r - pr.m0) * ld;
#pragma unroll
    for (int j = 0; j < kTcMaxDim / 8; ++j) {
      if (8 * j >= cx.d.p) break;
      const int pc = 8 * j + 2 * tig;
      float y0 = acc[j][2 * half], y1 = acc[j][2 * half + 1];
      if (y_ssm) *reinterpret_cast<float2*>(y_ssm + row + pc) = make_float2(y0, y1);
      y0 += D_s[pc] * to_float(xr[pc]), y1 += D_s[pc + 1] * to_float(xr[pc + 1]);
      if (kGate) y0 *= silu_fast(to_float(zr[pc])), y1 *= silu_fast(to_float(zr[pc + 1]));
      *reinterpret_cast<uint32_t*>(out + row + pc) = TC::pack(y0, y1);
    }
  }
}

template <typename T>
__device__ __forceinline__ void output_epilogue(const float (&acc)[kTcMaxDim / 8][4], const PairRows& pr,
                                                const Chunk& cx, const ChunkPairTc<T>& a, const TcPairLayout& lay,
                                                const T* vs, const T* es, const float* D_s) {
  if (a.pairs) {
    // Element by element from global memory, each thread waiting on one load at a time and testing every pointer
    // per element, this epilogue was a third of the kernel's time.
    if (a.z) {
      output_pairs<T, true>(acc, pr, cx, lay.ldv, vs, es, D_s, a.y_ssm, a.out);
    } else {
      output_pairs<T, false>(acc, pr, cx, lay.ldv, vs, es, D_s, a.y_ssm, a.out);
    }
    return;
  }
  const int tig = threadIdx.x % 4, p = cx.d.p;
#pragma unroll
  for (int j = 0; j < kTcMaxDim / 8; ++j) {
    const int pc = 8 * j + 2 * tig;
    if (pc >= p) break;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      if (!(half ? pr.live1 : pr.live0)) continue;
      const long o = cx.token(pr.r0 + 8 * half, cx.d.h, cx.hi, p) + pc;
      store_output(o, cx.hi, pc, p, acc[j][2 * half], a.x, a.z, a.D, a.D_per_channel, a.y_ssm, a.out);
      if (pc + 1 < p)
        store_output(o + 1, cx.hi, pc + 1, p, acc[j][2 * half + 1], a.x, a.z, a.D, a.D_per_channel, a.y_ssm, a.out);
    }
  }
}

// Dx's epilogue: dx = dt'_s U + D dy_s, and x_s . U summed over the row (the block holds all of it: the 4 lanes of
// a row add theirs, one of them stores). With `pairs`, dy's rows are in the V and extra tiles, x's in the Q tile.
template <typename T>
__device__ __forceinline__ void dx_epilogue(const float (&acc)[kTcMaxDim / 8][4], const PairRows& pr,
                                            const Chunk& cx, const ChunkPairTc<T>& a, const TcPairLayout& lay,
                                            const T* qs, const T* vs, const T* es, const float* dtp_s,
                                            const float* D_s) {
  using TC = TensorCore<T>;
  const int tig = threadIdx.x % 4, p = cx.d.p;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const bool live = half ? pr.live1 : pr.live0;
    const int r = pr.r0 + 8 * half;
    float xu = 0.f;
    if (live) {
      const long row = cx.token(r, cx.d.h, cx.hi, p);
      const float w = dtp_s[r];
      const T* dyr = vs + (r - pr.m0) * lay.ldv;
      const T* dyr_lo = es + (r - pr.m0) * lay.ldv;
      const T* xr = qs + (r - pr.m0) * lay.ldv;
#pragma unroll
      for (int j = 0; j < kTcMaxDim / 8; ++j) {
        const int pc = 8 * j + 2 * tig;
        if (pc >= p) break;
        const float u0 = acc[j][2 * half], u1 = acc[j][2 * half + 1];
        if (a.pairs) {
          const float dy0 = to_float(dyr[pc]) + to_float(dyr_lo[pc]);
          const float dy1 = to_float(dyr[pc + 1]) + to_float(dyr_lo[pc + 1]);
          *reinterpret_cast<uint32_t*>(a.out + row + pc) = TC::pack(w * u0 + D_s[pc] * dy0, w * u1 + D_s[pc + 1] * dy1);
          xu += to_float(xr[pc]) * u0 + to_float(xr[pc + 1]) * u1;
        } else {
          a.out[row + pc] = from_float<T>(w * u0 + D_s[pc] * with_rest(a.V.base, a.v_lo, row + pc));
          xu += to_float(a.x[row + pc]) * u0;
          if (pc + 1 < p) {
            a.out[row + pc + 1] = from_float<T>(w * u1 + D_s[pc + 1] * with_rest(a.V.base, a.v_lo, row + pc + 1));
            xu += to_float(a.x[row + pc + 1]) * u1;
          }
        }
      }
    }
    xu += __shfl_xor_sync(0xffffffffu, xu, 1);
    xu += __shfl_xor_sync(0xffffffffu, xu, 2);
    if (live && tig == 0) a.ddt_u[cx.scan(cx.hi, r)] = xu;
  }
}

// DC's and DB's epilogue: the rows as they are (DC) or, with one head per group, times dt'_s (DB).
template <typename T, PairKind K, bool kGroup>
__device__ __forceinline__ void projection_epilogue(const float (&acc)[kTcMaxDim / 8][4], const PairRows& pr,
                                                    const Chunk& cx, const ChunkPairTc<T>& a,
                                                    const float* dtp_s) {
  using TC = TensorCore<T>;
  const int tig = threadIdx.x % 4, n = cx.d.n;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (!(half ? pr.live1 : pr.live0)) continue;
    const int r = pr.r0 + 8 * half;
    const long row = cx.token(r, cx.d.g, cx.hi, n);
    const float w = K == PairKind::DB && !kGroup ? dtp_s[r] : 1.f;  // (a group's dt' is in its product)
#pragma unroll
    for (int j = 0; j < kTcMaxDim / 8; ++j) {
      const int c = 8 * j + 2 * tig;
      if (c >= n) break;
      const float v0 = w * acc[j][2 * half], v1 = w * acc[j][2 * half + 1];
      if (a.pairs) {
        *reinterpret_cast<uint32_t*>(a.out + row + c) = TC::pack(v0, v1);
      } else {
        a.out[row + c] = from_float<T>(v0);
        if (c + 1 < n) a.out[row + c + 1] = from_float<T>(v1);
      }
    }
  }
}

// DC's and DB's inter-chunk term with heads sharing a group: acc += sum over the group's heads j of
// e_j,row P_j,row . S'_j^T, 64 output columns at a time (stage_inter puts S'_j's into the parts' tiles `st`). e depends
// on the head, so each head's A fragments are scaled in registers and split into P parts; the parts' products are
// A's part i times S''s part k for i + k < P (with two parts: 3 products per fragment; with one: 1).
//
// With 16-byte rows, the first batch of the next (head, 64 columns) step's S' is loaded into registers before this
// step's products, so its latency hides behind them (load_kmajor, put_kmajor: the kernel's batches of k-major rows).
template <typename T, PairKind K, int P, int kBatch, typename TokenRow, typename StageInter, typename LoadKmajor,
          typename PutKmajor>
__device__ __forceinline__ void inter_over_heads(float (&acc)[kTcMaxDim / 8][4], const ChunkPairTc<T>& a,
                                                 const Chunk& cx, const TcPairLayout& lay, T* ps, T* const (&st)[3],
                                                 TokenRow token_row, StageInter stage_inter, LoadKmajor load_kmajor,
                                                 PutKmajor put_kmajor, int batch_rows, const int* seg_s, int m0) {
  using TC = TensorCore<T>;
  constexpr int kHalves = kTcMaxDim / kTcRows;
  const ScanDims& d = cx.d;
  const int warp = threadIdx.x / 32, r0 = m0 + 16 * warp + (threadIdx.x % 32) / 4;
  float4 next[kBatch];
  if (a.vector) load_kmajor(a.inter + cx.state(cx.hi * d.r), 0, 0, next);
  for (int j = 0; j < d.r; ++j) {
    const int head = cx.hi * d.r + j;
    float e[2];  // rows r0 and r0 + 8
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = r0 + 8 * half;
      e[half] = 0.f;
      if (!token_row(r)) continue;
      const long si = cx.scan(head, r);
      if (K == PairKind::DB) {
        if (seg_s[r] == cx.seg_end)
          e[half] = expf(static_cast<float>(a.cum[cx.scan(head, d.q - 1)] - a.cum[si])) * a.dtp[si];
      } else if (seg_s[r] == cx.seg_prev) {
        e[half] = expf(static_cast<float>(a.cum[si]));
      }
    }
#pragma unroll
    for (int half = 0; half < kHalves; ++half) {
      const int c0 = half * kTcRows;  // output columns [c0, c0 + 64)
      if (c0 >= lay.n16) break;
      __syncthreads();  // the last readers of ps and of the parts' tiles are done
      if (half == 0) {
        stage_rows(ps, lay.ldk, kTcRows, a.P.width, lay.k16, a.vector, [&](int r) -> const T* {
          return token_row(m0 + r) ? a.P.base + cx.token(m0 + r, a.P.heads, head, a.P.width) : nullptr;
        });
      }
      if (a.vector) {
        put_kmajor(0, next);
        for (int k0 = batch_rows; k0 < lay.k16; k0 += batch_rows) {  // head dims past the first batch, at once
          load_kmajor(a.inter + cx.state(head), c0, k0, next);
          put_kmajor(k0, next);
        }
      } else {
        stage_inter(a.inter + cx.state(head), c0);
      }
      staged();
      __syncthreads();
      if (a.vector) {  // the next step's first batch flies during this step's products
        const bool last_half = half + 1 == kHalves || (half + 1) * kTcRows >= lay.n16;
        const int next_head = last_half ? head + 1 : head;
        if (!last_half || j + 1 < d.r) {
          load_kmajor(a.inter + cx.state(next_head), last_half ? 0 : c0 + kTcRows, 0, next);
        }
      }
#pragma unroll
      for (int kk = 0; kk < kTcMaxDim / 16; ++kk) {
        if (16 * kk >= lay.k16) break;
        uint32_t af[4], scaled[P][4];
        load_a_fragment(af, ps, lay.ldk, 16 * warp, 16 * kk);
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // registers 0 and 2 hold row r0, 1 and 3 row r0 + 8 (mma.cuh)
          const float2 v = TC::unpack(af[i]);
          const float w = i & 1 ? e[1] : e[0];
          uint32_t parts[P];  // the register's two elements, as P packed parts
          split_pack<TC>(v.x * w, v.y * w, parts);
#pragma unroll
          for (int k = 0; k < P; ++k) scaled[k][i] = parts[k];
        }
#pragma unroll
        for (int jj = 0; jj < kTcRows / 8; ++jj) {
          const int jc = half * (kTcRows / 8) + jj;
          if (8 * jc >= lay.n16) break;
#pragma unroll
          for (int k = 0; k < P; ++k) {  // A's part i times S''s part k where i + k < P
            uint32_t b0, b1;
            load_b_fragment_kmajor(b0, b1, st[k], lay.ld_inter, 16 * kk, 8 * jj);
#pragma unroll
            for (int i = 0; i + k < P; ++i) TC::mma(acc[jc], scaled[i], b0, b1);
          }
        }
      }
    }
  }
}

// kGroup: DC or DB with group_heads (an instance of its own: the r = 1 instances keep their registers). P: the
// parts of computed operands (kParts; an Output without y_ssm kInferenceParts; DC and DB as ChunkPairTc::parts says).
template <typename T, PairKind K, bool kGroup, int P>
__global__ void __launch_bounds__(kTcThreads, 3) chunk_pair_tc_kernel(ChunkPairTc<T> a) {
  using TC = TensorCore<T>;
  using Traits = PairTraits<K>;
  extern __shared__ __align__(16) unsigned char smem[];
  static_assert(!kGroup || K == PairKind::DC || K == PairKind::DB, "only dC and dB sum over a group's heads");
  Chunk cx = a.cx;
  const int row_tiles = (cx.d.q + kTcRows - 1) / kTcRows;
  cx.select(blockIdx.x / row_tiles, kGroup ? cx.d.g : cx.d.h);
  const ScanDims& d = cx.d;
  const int inner = a.P.width, width = a.V.width;
  const TcPairLayout lay = tc_pair_layout(d, inner, width, Traits::kInterKMajor);
  LogPair* src_s = reinterpret_cast<LogPair*>(smem);
  float* dtp_s = reinterpret_cast<float*>(src_s + d.q);
  int* seg_s = reinterpret_cast<int*>(dtp_s + d.q);
  float* D_s = reinterpret_cast<float*>(seg_s + d.q);
  T* tiles = reinterpret_cast<T*>(smem + lay.per_token_bytes);
  T* ps = tiles + lay.ps;
  T* qs = tiles + lay.qs;
  T* vs = tiles + lay.vs;
  T* es = tiles + lay.es;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gid = lane / 4, tig = lane % 4;
  const int m0 = blockIdx.x % row_tiles * kTcRows;

  auto token_row = [&](int t) -> bool { return t < d.q && cx.valid(t); };
  const int first_head = kGroup ? cx.hi * d.r : cx.hi;  // the block's (first) head
  auto rows_of = [&](const TokenRows<T>& o, int t) -> const T* {
    return token_row(t) ? o.base + cx.token(t, o.heads, first_head / o.per_head, o.width) : nullptr;
  };
  auto like_v = [&](const T* base) { return TokenRows<T>{base, a.V.heads, a.V.per_head, a.V.width}; };
  if (!kGroup) stage_rows(ps, lay.ldk, kTcRows, inner, lay.k16, a.vector, [&](int r) { return rows_of(a.P, m0 + r); });
  for (int i = tid; i < d.q; i += kTcThreads) {
    if (!kGroup) {  // a group's blocks read per-head values per head
      const long si = cx.scan(cx.hi, i);
      // Sources: +L_l (anticausal kinds, whose sources are targets), or -L_s + log2 dt'_s (kSourceDt) or -L_s.
      const double l2 = a.cum[si] * kLog2e;
      double v = Traits::kAnticausal ? l2 : -l2;
      if (Traits::kSourceDt) v += static_cast<double>(log2f(a.dtp[si]));
      src_s[i] = log_pair(v);
      dtp_s[i] = a.dtp[si];
    }
    seg_s[i] = cx.seg_of(i);
  }
  if (K == PairKind::Output || K == PairKind::Dx) {
    for (int i = tid; i < d.p; i += kTcThreads) D_s[i] = a.D ? a.D[a.D_per_channel ? cx.hi * d.p + i : cx.hi] : 0.f;
  }

  PairRows pr{m0 + 16 * warp + gid, m0, false, false};
  const int r0 = pr.r0, r1 = r0 + 8;

  float acc[kTcMaxDim / 8][4];
#pragma unroll
  for (int j = 0; j < kTcMaxDim / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;

  // Inter-chunk term: P_row . S'^T, 64 output columns at a time, then scaled per row by e_row.
  static_assert(P <= 3, "S' parts live in the Q, V and extra tiles");
  T* const st[3] = {qs, vs, es};
  // 4 consecutive elements of each part's tile from element `at`, split two at a time: one paired conversion per
  // two elements and part (ncu at hovle: the element-wise conversions were 16% of dC's stall samples).
  auto put = [&](int at, const float (&v)[4]) {
    uint32_t lo[P], hi[P];
    split_pack<TC>(v[0], v[1], lo);
    split_pack<TC>(v[2], v[3], hi);
#pragma unroll
    for (int k = 0; k < P; ++k) *reinterpret_cast<uint2*>(st[k] + at) = make_uint2(lo[k], hi[k]);
  };
  constexpr int kBatch = 8;
  // k-major S' with 16-byte rows, in batches: S'[col, k] = S[k][col], tile row k holds columns c0.. (contiguous in
  // memory, 4 per float4). A batch is this thread's kBatch float4 of rows [k0, k0 + kInterBatchRows).
  const int kInterBatchRows = kBatch * (kTcThreads / (kTcRows / 4));
  auto load_kmajor = [&](const float* S, int c0, int k0, float4 (&v)[kBatch]) {
    const RowWalk walk(kTcRows / 4);
    const int col = c0 + 4 * walk.item;
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int kk = k0 + walk.row + u * walk.rows_per_pass;
      v[u] = kk < inner && col < width ? *reinterpret_cast<const float4*>(S + (long)kk * width + col)
                                       : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  auto put_kmajor = [&](int k0, const float4 (&v)[kBatch]) {
    const RowWalk walk(kTcRows / 4);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int kk = k0 + walk.row + u * walk.rows_per_pass;
      if (kk < lay.k16) put(kk * lay.ld_inter + 4 * walk.item, {v[u].x, v[u].y, v[u].z, v[u].w});
    }
  };
  static_assert(kTcThreads % (kTcRows / 4) == 0, "every thread of the block walks the k-major rows");
  // S' columns [c0, c0 + 64) of the state S into the parts' tiles.
  auto stage_inter = [&](const float* S, int c0) {
    if constexpr (Traits::kInterKMajor) {
      if (a.vector) {
        for (int k0 = 0; k0 < lay.k16; k0 += kInterBatchRows) {
          float4 v[kBatch];
          load_kmajor(S, c0, k0, v);
          put_kmajor(k0, v);
        }
      } else {
        for (int e = tid; e < lay.k16 * (kTcRows / 4); e += kTcThreads) {
          const int k = e / (kTcRows / 4), c = 4 * (e % (kTcRows / 4));
          float v[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) v[i] = k < inner && c0 + c + i < width ? S[(long)k * width + c0 + c + i] : 0.f;
          put(k * lay.ld_inter + c, v);
        }
      }
    } else {
      // S'[col, k] = S[col][k]: tile row col - c0 holds all k (contiguous in memory).
      if (a.vector) {
        const RowWalk walk(lay.k16 / 4);
        const int c = 4 * walk.item;
        for (int r = walk.row; r < kTcRows; r += kBatch * walk.rows_per_pass) {
          float4 v[kBatch];
#pragma unroll
          for (int u = 0; u < kBatch; ++u) {
            const int rr = r + u * walk.rows_per_pass, col = c0 + rr;
            v[u] = rr < kTcRows && col < width && c < inner
                       ? *reinterpret_cast<const float4*>(S + (long)col * inner + c)
                       : make_float4(0.f, 0.f, 0.f, 0.f);
          }
#pragma unroll
          for (int u = 0; u < kBatch; ++u) {
            const int rr = r + u * walk.rows_per_pass;
            if (rr < kTcRows) put(rr * lay.ldk + c, {v[u].x, v[u].y, v[u].z, v[u].w});
          }
        }
      } else {
        for (int e = tid; e < kTcRows * lay.k16 / 4; e += kTcThreads) {
          const int r = e / (lay.k16 / 4), c = 4 * (e % (lay.k16 / 4)), col = c0 + r;
          float v[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) v[i] = col < width && c + i < inner ? S[(long)col * inner + c + i] : 0.f;
          put(r * lay.ldk + c, v);
        }
      }
    }
  };
  if constexpr (kGroup) {
    __syncthreads();  // seg_s written: inter_over_heads reads its rows' segments before its first barrier
    inter_over_heads<T, K, P, kBatch>(acc, a, cx, lay, ps, st, token_row, stage_inter, load_kmajor, put_kmajor,
                                      kInterBatchRows, seg_s, m0);
  }
#pragma unroll
  for (int half = 0; half < kTcMaxDim / kTcRows; ++half) {
    const int c0 = half * kTcRows;  // output columns [c0, c0 + 64)
    if (kGroup || c0 >= lay.n16) break;
    __syncthreads();  // the previous half's readers are done (and, the first time, the per-token values written)
    stage_inter(a.inter + cx.state(cx.hi), c0);
    staged();  // P's rows (the first time)
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTcMaxDim / 16; ++kk) {
      if (16 * kk >= lay.k16) break;
      uint32_t af[4];
      load_a_fragment(af, ps, lay.ldk, 16 * warp, 16 * kk);
#pragma unroll
      for (int jj = 0; jj < kTcRows / 8; ++jj) {
        const int j = half * (kTcRows / 8) + jj;
        if (8 * j >= lay.n16) break;
#pragma unroll
        for (int k = 0; k < P; ++k) {
          uint32_t b0, b1;
          if constexpr (Traits::kInterKMajor) {
            load_b_fragment_kmajor(b0, b1, st[k], lay.ld_inter, 16 * kk, 8 * jj);
          } else {
            load_b_fragment(b0, b1, st[k], lay.ldk, 16 * kk, 8 * jj);
          }
          TC::mma(acc[j], af, b0, b1);
        }
      }
    }
  }
  pr.live0 = token_row(r0), pr.live1 = token_row(r1);
  // The rows' cumsums, read once: the entering term's scale here and the rows' exponents of the weights below.
  const double cum0 = kGroup ? 0.0 : a.cum[cx.scan(cx.hi, min(r0, d.q - 1))];
  const double cum1 = kGroup ? 0.0 : a.cum[cx.scan(cx.hi, min(r1, d.q - 1))];
  if (!kGroup) {  // (a group's heads were scaled each by its own)
    const double L_end = a.cum[cx.scan(cx.hi, d.q - 1)];
    auto entry = [&](int r, double L, bool live) -> float {
      if (!live) return 0.f;
      if (Traits::kAnticausal) return seg_s[r] == cx.seg_end ? expf(static_cast<float>(L_end - L)) : 0.f;
      return seg_s[r] == cx.seg_prev ? expf(static_cast<float>(L)) : 0.f;
    };
    const float e0 = entry(r0, cum0, pr.live0), e1 = entry(r1, cum1, pr.live1);
#pragma unroll
    for (int j = 0; j < kTcMaxDim / 8; ++j) {
      acc[j][0] *= e0, acc[j][1] *= e0;
      acc[j][2] *= e1, acc[j][3] *= e1;
    }
  }

  // Intra-chunk term over the source tiles on the row's side of the diagonal, the diagonal tile last.
  const float* cb = a.cb_source == CbSource::Load ? a.cb + cx.cb(kGroup ? cx.hi : cx.hi / d.r) : nullptr;
  const int last_tile = (d.q - 1) / kTcRows, own_tile = m0 / kTcRows;
  // The rows' per-token values, read once (published by the inter-chunk term's barriers).
  const int seg0 = seg_s[min(r0, d.q - 1)], seg1 = seg_s[min(r1, d.q - 1)];
  // Rows: +L_l, or -L_s for the anticausal kinds.
  auto row_exponent = [](double L) { return log_pair(Traits::kAnticausal ? -L * kLog2e : L * kLog2e); };
  const LogPair row0 = row_exponent(cum0), row1 = row_exponent(cum1);
  const int source_tiles = Traits::kAnticausal ? last_tile - own_tile + 1 : own_tile + 1;
  for (int ti = 0; ti < source_tiles; ++ti) {
    const int s0 = kTcRows * (Traits::kAnticausal ? last_tile - ti : ti);
    const bool diagonal = s0 == m0;
    __syncthreads();  // the previous tile's (or S''s) readers are done
    stage_rows(vs, lay.ldv, kTcRows, width, lay.n16, a.vector, [&](int r) { return rows_of(a.V, s0 + r); });
    if (a.cb_source != CbSource::Load) {
      stage_rows(qs, lay.ldk, kTcRows, inner, lay.k16, a.vector, [&](int r) { return rows_of(a.Q, s0 + r); });
    }
    auto extra_rows = [&](int r) { return rows_of(like_v(a.extra), m0 + r); };
    if constexpr (Traits::kVRest) {
      auto rest_rows = [&](int r) { return rows_of(like_v(a.v_lo), s0 + r); };
      stage_rows(es, lay.ldv, kTcRows, width, lay.n16, a.vector, rest_rows);
    } else if (diagonal && a.extra && a.pairs) {  // the epilogue's rows fly meanwhile
      stage_rows(es, lay.ldv, kTcRows, width, lay.n16, true, extra_rows);
    }
    staged();
    __syncthreads();

    // P_row . Q_src for this warp's 16 rows and the tile's 64 sources.
    float sc[kTcRows / 8][4];
    if (a.cb_source == CbSource::Load) {
#pragma unroll
      for (int j = 0; j < kTcRows / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          // The block holds (l, s) pairs with s <= l; anticausal kinds read it transposed.
          const int r = e < 2 ? r0 : r1, c = s0 + 8 * j + 2 * tig + (e & 1);
          const int l = Traits::kAnticausal ? c : r, s = Traits::kAnticausal ? r : c;
          sc[j][e] = l < d.q && s <= l ? cb[(long)l * d.q + s] : 0.f;
        }
    } else {
      cb_tile<T>(sc, ps, qs, lay.ldk, lay.k16);
    }
    if (Traits::kVRest && diagonal && a.extra && a.pairs) {  // Q's last readers are done: the epilogue's rows
      __syncthreads();
      stage_rows(qs, lay.ldv, kTcRows, width, lay.n16, true, extra_rows);
    }

    // For each 16 sources: the weights W on the row's side of the diagonal within the row's sample, times the
    // block, split into parts and packed as the A operand of the product with V (made per 16 sources so that only
    // one k step's parts are live).
#pragma unroll
    for (int kk = 0; kk < kTcRows / 16; ++kk) {
      if (diagonal && (Traits::kAnticausal ? kk < warp : kk > warp)) continue;  // all zero
      uint32_t w[P][4];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int j = 2 * kk + jj;
        float weight[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e < 2 ? r0 : r1, c = s0 + 8 * j + 2 * tig + (e & 1);
          const bool live = e < 2 ? pr.live0 : pr.live1;
          // (c < q: with chunks under 64 tokens, a tile's last sources are past the per-token values.)
          const int cq = min(c, d.q - 1);  // (r < q where live)
          const bool keep =
              live && c < d.q && (Traits::kAnticausal ? c >= r : c <= r) && (e < 2 ? seg0 : seg1) == seg_s[cq];
          // Without branches: a weight outside `keep` may be infinite, and the select drops it.
          float v = sc[j][e];  // with heads sharing a group, dCB holds the weights
          if (!kGroup) v *= exp2_pair(e < 2 ? row0 : row1, src_s[cq]);
          weight[e] = keep ? v : 0.f;
        }
        uint32_t at_r0[P], at_r1[P];  // rows r0 and r1, two sources each, in P packed parts
        split_pack<TC>(weight[0], weight[1], at_r0);
        split_pack<TC>(weight[2], weight[3], at_r1);
#pragma unroll
        for (int k = 0; k < P; ++k) w[k][2 * jj] = at_r0[k], w[k][2 * jj + 1] = at_r1[k];
      }
      mma_kmajor_row<T, P>(acc, w, vs, lay.ldv, 16 * kk, lay.n16);
      // W's high part times V's rest, a loop of its own: inside the one above, all its fragments were loaded up front
      // (255 registers).
      if constexpr (Traits::kVRest) mma_kmajor_row<T, 1>(acc, w, es, lay.ldv, 16 * kk, lay.n16);
    }
  }

  if (Traits::kVRest && a.extra && a.pairs) {  // the epilogue's rows staged above
    staged();
    __syncthreads();
  }
  if constexpr (K == PairKind::Output) {
    output_epilogue(acc, pr, cx, a, lay, vs, es, D_s);
  } else if constexpr (K == PairKind::Dx) {
    dx_epilogue(acc, pr, cx, a, lay, qs, vs, es, dtp_s, D_s);
  } else {
    projection_epilogue<T, K, kGroup>(acc, pr, cx, a, dtp_s);
  }
}

template <typename T, PairKind K>
void chunk_pair_tc(const ChunkPairTc<T>& a, cudaStream_t stream) {
  const ScanDims& d = a.cx.d;
  // The row tiles of one chunk and head are neighbours in the grid, so they run together and the second and later
  // reads of their S' and source tiles hit L2.
  const dim3 grid(static_cast<unsigned>((long)d.b * d.c * (a.group_heads ? d.g : d.h) * ceil_div(d.q, kTcRows)));
  const size_t bytes = tc_pair_layout(d, a.P.width, a.V.width, PairTraits<K>::kInterKMajor).bytes;
  if constexpr (K == PairKind::DC || K == PairKind::DB) {
    if (a.parts == kInferenceParts) {
      if (a.group_heads)
        return launch_with_smem(chunk_pair_tc_kernel<T, K, true, kInferenceParts>, grid, bytes, stream, a);
      return launch_with_smem(chunk_pair_tc_kernel<T, K, false, kInferenceParts>, grid, bytes, stream, a);
    }
    if (a.group_heads) return launch_with_smem(chunk_pair_tc_kernel<T, K, true, kParts>, grid, bytes, stream, a);
  }
  if constexpr (K == PairKind::Output) {  // without y_ssm no backward follows (dx keeps kParts)
    if (!a.y_ssm) {
      return launch_with_smem(chunk_pair_tc_kernel<T, K, false, kInferenceParts>, grid, bytes, stream, a);
    }
  }
  launch_with_smem(chunk_pair_tc_kernel<T, K, false, kParts>, grid, bytes, stream, a);
}

}  // namespace carve::kernels
