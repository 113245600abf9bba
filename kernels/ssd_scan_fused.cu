#include "kernels/ssd_scan_fused.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <type_traits>

#include "kernels/cp_async.cuh"
#include "kernels/element.cuh"
#include "kernels/launch.h"
#include "kernels/mma.cuh"
#include "kernels/ssd_chunk.cuh"
#include "kernels/wgmma.cuh"

namespace carve::kernels {
namespace {

constexpr int kSpan = 64;               // tokens per step of a block's sweep
constexpr int kRowBlocks = kSpan / 16;  // 16-row output blocks of a step
constexpr int kOutWarps = 2 * kRowBlocks;  // a row block's outputs in two halves of the channels, one warp each
constexpr int kStages = 3;              // steps whose tokens are staged or in flight
constexpr int kTiles = kRowBlocks * (kRowBlocks + 1) / 2;  // a step's 16 x 16 C.B tiles on or below the diagonal
constexpr int kTileFloats = 16 * 16;
constexpr int kTileVectors = kTileFloats / 4;  // a tile in float4s, as its writers and readers move it

// 64-token steps of a sequence of l tokens (the last may have fewer).
__host__ __device__ constexpr int steps_of(int l) { return (l + kSpan - 1) / kSpan; }

// Where sweep_cb_kernel leaves step j's C.B tiles of (row, group) row_group, in float4s from the workspace's start:
// [b][g][step][tile][8-column half][lane][4] floats, the order the sweep's output warps read them in.
__device__ __forceinline__ long group_tiles_at(int row_group, int steps, int j) {
  return (static_cast<long>(row_group) * steps + j) * kTiles * kTileVectors;
}

// Where element (r, c) of a [rows][kCols] 16-bit tile of shared memory lies, in elements from its start.
// Padded (the mma.sync sweep): row-major, rows padded by 8 elements, so that the fragments' 4-byte reads of 8 rows
// fall in distinct banks, and 16-byte aligned for cp.async and ldmatrix.
// Tiled (the wgmma sweep): 8 x 8 core matrices of 128 contiguous bytes (8 rows of 16 bytes), the kCols / 8 of a
// band of 8 rows side by side, each kCore = 144 bytes after the one before: wgmma's no-swizzle operand layout
// (wgmma.cuh), read K-major along the columns (LBO kCore, SBO a band) or MN-major down the rows (LBO a band, SBO
// kCore). The 16 bytes between core matrices put a row's consecutive 16-byte pieces in distinct bank groups, so
// that the copies' 8-thread phases, which write 128 contiguous bytes of a row as they read them, meet no conflict;
// a core matrix is one ldmatrix row group, and a fragment's 4-byte accesses of 8 rows land in 8 distinct groups.
// (Core matrices 128 bytes apart, copied 8 rows at a time to avoid the conflicts, touch twice the 128-byte lines of
// global memory per copy instruction; the two measured the same: docs/kernels.md, version 10, calls 4 and 5.)
template <int kCols, bool kTiled>
struct TileLayout {
  static_assert(kCols % 8 == 0, "tiles of whole 16-byte row pieces");
  static constexpr int kCore = 72;                    // elements from one core matrix to the next along a band
  static constexpr int kBand = kCols / 8 * kCore;     // elements per band of 8 rows
  __host__ __device__ static constexpr int elements(int rows) {
    return kTiled ? rows / 8 * kBand : rows * (kCols + 8);
  }
  __host__ __device__ static constexpr int at(int r, int c) {
    if constexpr (kTiled) return (r >> 3) * kBand + (c >> 3) * kCore + (r & 7) * 8 + (c & 7);
    else return r * (kCols + 8) + c;
  }
};

// Shared memory of one block: kStages stages of a step's tokens, then the state entering this step and the next one
// (16-bit, [kPs][kN]; for training its two 16-bit parts, each a buffer), then D per channel, the per-token values and
// (the mma.sync sweep) the C.B tiles.
// Training (kTrain: the forward keeps y_ssm and the chunks' entering states for the backward) stages no z rows: the
// second part of the state would not fit beside them at state size 128 (226 KB of 227), and the output warps load
// their few z pairs from global memory at a step's start instead, consumed at its end.
template <typename T, int kN, int kPs, bool kAsync, bool kTrain = false>
struct FusedLayout {
  using BC = TileLayout<kN, kAsync>;   // C and B rows [kSpan][kN], the state [kPs][kN]
  using XZ = TileLayout<kPs, kAsync>;  // x and z rows [kSpan][kPs]
  static_assert(!kAsync || kPs == 64, "the wgmma sweep takes 64-channel slices (two warpgroups of 32 channels)");
  static_assert(!(kAsync && kTrain), "training runs on the mma.sync sweep");
  static constexpr int kStateParts = kTrain ? 2 : 1;
  // A warp's share of the state: 16 channels and half of the kN columns. (With 4 warps, each holding 16 channels and
  // all columns and computing one row block's outputs alone, one warp per scheduler waited out its products'
  // latencies: 6 us a step at HoVLE's sizes.) With wgmma the same shares are two warpgroups' accumulators.
  static constexpr int kWarps = kPs / 8;
  static_assert(kWarps >= kOutWarps, "every warp holds state; the first kOutWarps also make outputs");
  static constexpr int kHalfN = kN / 2, kHalfPs = kPs / 2;
  // One stage: C and B rows, x and (not training) z rows, the cumsum before the step's first token and at each of
  // its tokens (kSpan + 1 doubles, padded to 16 bytes), dt' [kSpan].
  static constexpr size_t kC = 0;
  static constexpr size_t kB = kC + sizeof(T) * BC::elements(kSpan);
  static constexpr size_t kX = kB + sizeof(T) * BC::elements(kSpan);
  static constexpr size_t kZ = kX + sizeof(T) * XZ::elements(kSpan);
  static constexpr size_t kCum = kZ + (kTrain ? 0 : sizeof(T) * XZ::elements(kSpan));
  static constexpr size_t kDt = kCum + sizeof(double) * (kSpan + 2);
  static constexpr size_t kStage = kDt + sizeof(float) * kSpan;
  static constexpr size_t kState = kStages * kStage;
  static constexpr size_t kD = kState + 2 * kStateParts * sizeof(T) * BC::elements(kPs);
  // Per-token values of a step (TokenValues), twice: this step's, and the next one's being made.
  static constexpr size_t kTokens = kD + sizeof(float) * kPs;
  // A step's C.B tiles in float32, twice: this step's, read by the output warps, and the next step's, being made.
  // Tile i (row block r, source block s <= r, i = r (r + 1) / 2 + s) is stored in the accumulators' own order,
  // [8-column half][lane][4], so that writer and reader move a lane's four floats as one 16-byte access. (The wgmma
  // sweep makes C.B in each warpgroup's registers instead.)
  static constexpr size_t kCB = kTokens + 2 * sizeof(float) * 4 * kSpan;
  static constexpr size_t kBytes = kCB + (kAsync ? 0 : 2 * sizeof(float) * kTiles * kTileFloats);
  static_assert(kStage % 16 == 0 && kD % 16 == 0 && kTokens % 16 == 0 && kCB % 16 == 0, "16-byte aligned regions");
};

// The 16 x 16 tile of a step's products of rows [16 r, + 16) of `rows` with rows [16 s, + 16) of `cols` (both
// [kSpan][kN] in shared memory), stored in the accumulators' own order, [8-column half][lane][4]: a lane's four floats
// of each half at tile[32 half + lane], so that writer and reader move them as one 16-byte access.
template <typename TC, int kN, typename T, typename Layout>
__device__ __forceinline__ void make_pair_tile(const T* rows, int r, const T* cols, int s, Layout lay, float4* tile) {
  // Even and odd k steps in separate accumulators: four chains of products in flight instead of two.
  float acc[2][2][4] = {};
#pragma unroll
  for (int kk = 0; kk < kN / 16; ++kk) {
    uint32_t aa[4], bb[2][2];
    ldsm_a(aa, rows, lay, 16 * r, 16 * kk);
    ldsm_b_pair(bb, cols, lay, 16 * kk, 16 * s);
    TC::mma(acc[kk & 1][0], aa, bb[0][0], bb[0][1]);
    TC::mma(acc[kk & 1][1], aa, bb[1][0], bb[1][1]);
  }
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
    tile[32 * nt + lane] = make_float4(acc[0][nt][0] + acc[1][nt][0], acc[0][nt][1] + acc[1][nt][1],
                                       acc[0][nt][2] + acc[1][nt][2], acc[0][nt][3] + acc[1][nt][3]);
}

// Tile i of a step's kTiles on or below the diagonal: block r and block s <= r, i = r (r + 1) / 2 + s.
struct TriangleTile {
  int r, s;
  __device__ explicit TriangleTile(int i) : r((i >= 1) + (i >= 3) + (i >= 6)), s(i - r * (r + 1) / 2) {}
};
static_assert(kRowBlocks == 4, "TriangleTile decodes the 10 tiles of 4 row blocks");

// C.B tile i of a step (row block r, source block s <= r: C_r . B_s) from the step's C and B rows.
template <typename TC, int kN, typename T, typename Layout>
__device__ __forceinline__ void make_cb_tile(const T* Cs, const T* Bs, Layout lay, int i, float4* tile) {
  const TriangleTile t(i);
  make_pair_tile<TC, kN>(Cs, t.r, Bs, t.s, lay, tile);
}

// A warp's `count` (at most kRowBlocks) tiles from `tiles` on into registers, in the accumulators' order (a lane's
// four floats of each 8-column half, as make_pair_tile stores them).
__device__ __forceinline__ void load_tiles(float (&v)[kRowBlocks][2][4], const float4* tiles, int count) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int k = 0; k < kRowBlocks; ++k) {
    if (k >= count) break;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const float4 t = tiles[k * kTileVectors + 32 * nt + lane];
      v[k][nt][0] = t.x, v[k][nt][1] = t.y, v[k][nt][2] = t.z, v[k][nt][3] = t.w;
    }
  }
}

// acc <- e_row (acc + other) for accumulators of rows r0 (elements 0, 1: e0) and r0 + 8 (2, 3: e1): a product made
// in two chains (or two parts), added once and scaled per row.
template <int kCount>
__device__ __forceinline__ void add_scaled(float (&acc)[kCount][4], const float (&other)[kCount][4], float e0,
                                           float e1) {
#pragma unroll
  for (int i = 0; i < kCount; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[i][e] = (e < 2 ? e0 : e1) * (acc[i][e] + other[i][e]);
}

// The state's term of a row block's outputs: rows [16 rb, + 16) of `rows` times the [kPs][kN] state (or its
// gradient) in shared memory, for the kCount 8-channel blocks from ch0, in two chains of products added once in by
// the caller (add_scaled): twice the products in flight (the sweeps wait on their products' latencies, two warps per
// scheduler). kTwoParts: the state's two 16-bit parts, `second_part` elements after the first, a chain each;
// otherwise one part, even and odd k steps a chain each.
template <int kN, bool kTwoParts, typename Layout, typename T, int kCount>
__device__ __forceinline__ void state_term(float (&acc)[kCount][4], float (&other)[kCount][4], const T* rows, int rb,
                                           const T* state, int second_part, int ch0) {
#pragma unroll
  for (int i = 0; i < kCount; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[i][e] = other[i][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kN / 16; ++kk) {
    uint32_t a[4];
    ldsm_a(a, rows, Layout{}, 16 * rb, 16 * kk);
    if constexpr (kTwoParts) {
      mma_across_at<false>(acc, a, state, Layout{}, 16 * kk, ch0);
      mma_across_at<false>(other, a, state + second_part, Layout{}, 16 * kk, ch0);
    } else {
      mma_across_at<false>(kk % 2 ? other : acc, a, state, Layout{}, 16 * kk, ch0);
    }
  }
}

// A state update's A operand for the 16 tokens from k0: the warp's 16 channels from m0 of a [kSpan][kPs] 16-bit tile
// (channels x tokens, read transposed), plus (with `rest`) a second tile's same elements, each token t's column
// scaled by w[t] in float32 and split into kParts 16-bit parts: x times F_t for the forward's state, dy + dy_lo
// times exp(L_t) for the reverse sweep's gradient.
template <typename TC, int kParts, bool kRest, typename Layout, typename T>
__device__ __forceinline__ void scaled_tokens(uint32_t (&a)[kParts][4], const T* tile, const T* rest, int m0, int k0,
                                              const float* w) {
  uint32_t v[4], lo[4];
  ldsm_a_kmajor(v, tile, Layout{}, m0, k0);
  if constexpr (kRest) ldsm_a_kmajor(lo, rest, Layout{}, m0, k0);
  const int t = k0 + 2 * (threadIdx.x % 4);
  const float2 w01 = *reinterpret_cast<const float2*>(w + t);
  const float2 w89 = *reinterpret_cast<const float2*>(w + t + 8);
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // registers 0 and 1 hold tokens t, t + 1; 2 and 3 tokens t + 8, t + 9 (mma.cuh)
    float2 x = TC::unpack(v[i]);
    if constexpr (kRest) {
      const float2 l = TC::unpack(lo[i]);
      x.x += l.x, x.y += l.y;
    }
    const float2 s = i < 2 ? w01 : w89;
    uint32_t part[kParts];
    split_pack<TC>(x.x * s.x, x.y * s.y, part);
#pragma unroll
    for (int k = 0; k < kParts; ++k) a[k][i] = part[k];
  }
}

// A step's per-token values, made once per step from dt_prepare's float64 cumsums (L_t from the step's start, a
// difference of two nearby cumsums taken in float64): L_t and G_t = log dt'_t - L_t in base 2 (L_t log2 e and
// log2 dt'_t - L_t log2 e), so that a source's weight for row r is 2^(L_r + G_s) = exp(L_r - L_s) dt'_s, one ex2;
// F_t = exp(L_last - L_t) dt'_t, a token's weight in the state update; E_t = exp(L_t), the state's decay to row t.
struct TokenValues {
  float* L;
  float* G;
  float* F;
  float* E;
  __device__ TokenValues(float* base) : L(base), G(base + kSpan), F(base + 2 * kSpan), E(base + 3 * kSpan) {}
};

// A thread's pieces of a step's [kSpan][kCols] 16-bit rows: the 16-byte pieces threadIdx.x, + kThreads, ... of the
// rows in order, each with its offset from the step's first row in global memory (rows `row_stride` elements apart)
// and in the shared tile, worked out once per block. A step's copy is then an address add and a compare per piece.
// (ssd_scan_tc.cuh's stage_rows copies rows once per call and works each row out as it goes; the sweep copies the
// same pieces every step, in either tile layout.)
// (ncu at long, fifteenth session: the state-only launch made these offsets anew every step, 64-bit and per piece,
// at 22 instructions a piece. Made once, its instructions fell by 17% and its time by 3%: docs/kernels.md, version
// 11. The copies cost the sweep by their latencies more than by their instructions.)
template <int kCols, typename Layout, int kThreads>
struct StepPieces {
  static constexpr int kPerRow = kCols / 8, kTotal = kSpan * kPerRow;
  static constexpr int kCount = (kTotal + kThreads - 1) / kThreads;
  static constexpr bool kEven = kTotal % kThreads == 0;  // every thread has kCount pieces
  int from[kCount];
  int to[kCount];
  int row[kCount];  // kSpan where the thread has no k-th piece
  __device__ explicit StepPieces(int row_stride) {
#pragma unroll
    for (int k = 0; k < kCount; ++k) {
      const int i = static_cast<int>(threadIdx.x) + k * kThreads;
      const int r = i / kPerRow, c = 8 * (i % kPerRow);
      const bool mine = kEven || i < kTotal;
      from[k] = mine ? r * row_stride + c : 0;
      to[k] = mine ? Layout::at(r, c) : 0;
      row[k] = mine ? r : kSpan;
    }
  }
  // The pieces of the step whose first row is at `step` into `tile`; rows from `rows` on are zeros (past the end).
  template <typename T>
  __device__ void copy(T* tile, const T* step, int rows) const {
#pragma unroll
    for (int k = 0; k < kCount; ++k) {
      if (!kEven && k + 1 == kCount && row[k] == kSpan) break;
      const bool real = row[k] < rows;
      copy_async<16>(tile + to[k], step + (real ? from[k] : 0), real);
    }
  }
};

// The sequence split into spans of whole 64-token steps, each swept by its own blocks, where the (row, head, slice)
// blocks alone are too few for the GPU (docs/kernels.md, version 9). A first launch sweeps every span but the last
// from a zero state without outputs (kOutputs false) and leaves its local final state in the forward's chunk-state
// workspace, at chunk index `span` ([b, c, h, p, n]), and its log-decay in float at chunk index count - 1, element
// `span` of the (row, head)'s p x n block. The second launch (kOutputs true) starts each span from the state
// entering it, which its blocks stitch from those: S <- exp(log-decay_i) S + local_i over the spans before it.
struct SweepSpans {
  int count = 1;
  int steps = 0;  // 64-token steps per span (the last may have fewer)
};

// Which (row, head, slice of kPs channels, span) a sweep's block takes: blockIdx.x runs over slices first, then over
// `span_blocks` spans from `first_span` on, then over rows and heads.
struct SweepBlock {
  int slice, span, hi, bi, gi;
  int p0;  // the block's first channel
  __device__ SweepBlock(const ScanDims& d, int kPs, int span_blocks, int first_span) {
    const int slices = d.p / kPs;
    slice = blockIdx.x % slices, span = blockIdx.x / slices % span_blocks + first_span;
    const int head_row = blockIdx.x / slices / span_blocks;
    hi = head_row % d.h, bi = head_row / d.h, gi = hi / d.r;
    p0 = slice * kPs;
  }
};

// A warp's share of a block's [kPs][kN] float32 state (the forward's, or the backward's gradient of it), as the
// products' accumulators hold it: channels c_row (elements 0, 1) and c_row + 8 (2, 3), columns n0 + 8 nt + 2 tig
// (+ 1) for the kCols / 8 column blocks nt; element e of block nt at(nt, e) of the [kPs][kN] block. Moved to and from
// global memory (8-byte aligned blocks) a pair of columns at a time.
template <int kN, int kCols>
struct WarpState {
  using Values = float[kCols / 8][4];
  int c_row, n0, tig;
  __device__ int at(int nt, int e) const { return (c_row + 8 * (e / 2)) * kN + n0 + 8 * nt + 2 * tig + e % 2; }
  // v from `from`, or zeros where it is null.
  __device__ void load(Values& v, const float* from) const {
#pragma unroll
    for (int nt = 0; nt < kCols / 8; ++nt) {
      const float2 v0 = from ? *reinterpret_cast<const float2*>(from + at(nt, 0)) : make_float2(0.f, 0.f);
      const float2 v1 = from ? *reinterpret_cast<const float2*>(from + at(nt, 2)) : make_float2(0.f, 0.f);
      v[nt][0] = v0.x, v[nt][1] = v0.y, v[nt][2] = v1.x, v[nt][3] = v1.y;
    }
  }
  __device__ void store(const Values& v, float* to) const {
#pragma unroll
    for (int nt = 0; nt < kCols / 8; ++nt) {
      *reinterpret_cast<float2*>(to + at(nt, 0)) = make_float2(v[nt][0], v[nt][1]);
      *reinterpret_cast<float2*>(to + at(nt, 2)) = make_float2(v[nt][2], v[nt][3]);
    }
  }
  // v rounded to 16 bits in kParts parts (split_pack), part k into the [kPs][kN] tile at to + k * part_elements,
  // placed by Layout: where the products read the state (or its gradient) as an operand.
  template <typename TC, int kParts, typename Layout, typename T>
  __device__ void store_parts(const Values& v, T* to, int part_elements) const {
#pragma unroll
    for (int nt = 0; nt < kCols / 8; ++nt) {
      const int col = n0 + 8 * nt + 2 * tig;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int at = Layout::at(c_row + 8 * half, col);
        uint32_t part[kParts];
        split_pack<TC>(v[nt][2 * half], v[nt][2 * half + 1], part);
#pragma unroll
        for (int k = 0; k < kParts; ++k) *reinterpret_cast<uint32_t*>(to + k * part_elements + at) = part[k];
      }
    }
  }
  // v <- decay v + local: a span's local state (or gradient) stitched onto what enters it.
  __device__ void fold(Values& v, float decay, const float* local) const {
#pragma unroll
    for (int nt = 0; nt < kCols / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) v[nt][e] = decay * v[nt][e] + local[at(nt, e)];
  }
};

// Thread i <= kSpan's copy of a step's cumsums (dt_prepare's, `at` the step's first token in its [b, h, c, q]
// workspace) into to[i]: the cumsum before the step's first token, then at each of its tokens. Before a chunk's first
// token (offset 0 in its chunk) the cumsum is 0.
__device__ __forceinline__ void copy_step_cum(double* to, const double* cum, long at, int chunk_offset) {
  const int i = threadIdx.x;
  if (i <= kSpan) {
    const bool real = i > 0 || chunk_offset > 0;
    copy_async<8>(to + i, cum + at - 1 + (real ? i : 1), real);
  }
}

// kTrain: the forward of training (a.y_ssm given). Its computed operands (the state, the weighted C.B values, the
// weighted x rows of the state update) go through the products as two 16-bit parts (ssd_scan_tc.cuh's kParts says
// why the backward's decay gradient needs them), it writes y_ssm and the state entering each chunk (a.states, which
// the backward reads), and the spans' local states go to a.span_states instead.
template <typename T, int kN, int kPs, bool kOutputs, bool kAsync, bool kTrain>
__global__ void __launch_bounds__(FusedLayout<T, kN, kPs, kAsync, kTrain>::kWarps * 32, 1)
    ssd_fused_forward_kernel(SsdScanForward a, ScanDims d, SweepSpans sp, const float* cb_tiles) {
  using Lay = FusedLayout<T, kN, kPs, kAsync, kTrain>;
  constexpr int kParts = Lay::kStateParts;
  using BC = typename Lay::BC;
  using XZ = typename Lay::XZ;
  using TC = TensorCore<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  // The state-only launch has no block for the last span.
  const SweepBlock blk(d, kPs, kOutputs ? sp.count : sp.count - 1, 0);
  const int slice = blk.slice, span = blk.span, hi = blk.hi, bi = blk.bi, gi = blk.gi, p0 = blk.p0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  const int first = span * sp.steps, steps = min(steps_of(d.l), first + sp.steps);  // [first, steps)
  // Where a span's local state and log-decay go (the first launch) and come from (the second): the chunk-state
  // workspace, free without a backward, or (training, where it holds the chunks' entering states) a.span_states.
  float* const span_base = kTrain ? a.span_states : a.states;
  const int span_slots = kTrain ? sp.count : d.c;
  const auto span_state = [&](int i) {
    return span_base + ((static_cast<long>(bi) * span_slots + i) * d.h + hi) * d.p * kN;
  };
  float* const span_log_decay = span_state(sp.count - 1);
  // The copies' sources: the block's rows at token 0 (a step adds its first token's rows), and its (row, head)'s
  // per-token workspace. The offsets within a step are ints: 64 rows of g n or h p elements.
  const int bc_row = d.g * kN, x_row = d.h * d.p;
  const T* const C_rows = static_cast<const T*>(a.C) + (static_cast<long>(bi) * d.l * d.g + gi) * kN;
  const T* const B_rows = static_cast<const T*>(a.B) + (static_cast<long>(bi) * d.l * d.g + gi) * kN;
  const long slice_at = (static_cast<long>(bi) * d.l * d.h + hi) * d.p + p0;  // of x, z and out at token 0
  const T* const x_rows = static_cast<const T*>(a.x) + slice_at;
  const T* const z_rows = a.z ? static_cast<const T*>(a.z) + slice_at : nullptr;
  T* const out_rows = static_cast<T*>(a.out) + slice_at;
  float* const y_ssm_rows = kTrain ? a.y_ssm + slice_at : nullptr;
  const long token_base = (static_cast<long>(bi) * d.h + hi) * d.c * d.q;  // of dt_prepare's [b, h, c, q]
  const StepPieces<kN, BC, Lay::kWarps * 32> bc_pieces(bc_row);
  const StepPieces<kPs, XZ, Lay::kWarps * 32> xz_pieces(x_row);
  // The offset in its chunk of the step being issued (0 where it starts a chunk: the cumsum before its first token is
  // then 0), carried from step to step instead of divided.
  int chunk_offset = first * kSpan % d.q;

  // Step j's stage of shared memory.
  const auto stage = [&](int j) { return smem + (j % kStages) * Lay::kStage; };
  // Step j's tokens into its stage (an empty group past the last step, so that the waits count alike). Called for
  // consecutive steps.
  auto issue = [&](int j) {
    if (j < steps) {
      unsigned char* st = stage(j);
      const int t0 = j * kSpan, rows = d.l - t0;
      if (kOutputs) bc_pieces.copy(reinterpret_cast<T*>(st + Lay::kC), C_rows + static_cast<long>(t0) * bc_row, rows);
      bc_pieces.copy(reinterpret_cast<T*>(st + Lay::kB), B_rows + static_cast<long>(t0) * bc_row, rows);
      xz_pieces.copy(reinterpret_cast<T*>(st + Lay::kX), x_rows + static_cast<long>(t0) * x_row, rows);
      if (kOutputs && !kTrain && z_rows)
        xz_pieces.copy(reinterpret_cast<T*>(st + Lay::kZ), z_rows + static_cast<long>(t0) * x_row, rows);
      // dt_prepare's workspace holds every chunk's q tokens, so that token t0 is at t0 (dt' = 0 and the cumsum
      // constant past the end).
      const long o = token_base + t0;
      const int i = threadIdx.x;
      copy_step_cum(reinterpret_cast<double*>(st + Lay::kCum), a.cum, o, chunk_offset);
      if (i < kSpan) copy_async<4>(reinterpret_cast<float*>(st + Lay::kDt) + i, a.dtp + o + i, true);
      chunk_offset += kSpan;
      if (chunk_offset == d.q) chunk_offset = 0;
    }
    commit_copies();
  };
  // Where heads share a group (the mma.sync sweep with outputs, given cb_tiles), step j's C.B tiles (see make_cb
  // below) are made once per group by sweep_cb_kernel and copied into buffer j % 2 a step ahead, in a group of copies
  // waited for before step j's barrier.
  const float4* const group_tiles = kOutputs && !kAsync && cb_tiles
                                        ? reinterpret_cast<const float4*>(cb_tiles) +
                                              group_tiles_at(bi * d.g + gi, steps_of(d.l), 0)
                                        : nullptr;
  auto copy_cb = [&](int j) {
    constexpr int kPieces = kTiles * kTileVectors;
    float4* to = reinterpret_cast<float4*>(smem + Lay::kCB) + (j & 1) * kPieces;
    const float4* from = group_tiles + static_cast<long>(j) * kPieces;
    for (int i = threadIdx.x; i < kPieces; i += Lay::kWarps * 32) copy_async<16>(to + i, from + i, true);
  };
  if (group_tiles) copy_cb(first);  // with step first's tokens
  for (int j = first; j + 1 < first + kStages; ++j) issue(j);
  float* tokens_s = reinterpret_cast<float*>(smem + Lay::kTokens);
  // Step j's per-token values into buffer j % 2.
  auto make_tokens = [&](int j) {
    const unsigned char* st = stage(j);
    const double* cum_s = reinterpret_cast<const double*>(st + Lay::kCum);
    const float* dt_s = reinterpret_cast<const float*>(st + Lay::kDt);
    const TokenValues tv(tokens_s + (j & 1) * 4 * kSpan);
    // L and G by one kSpan threads, F and E by the next (the state-only launch makes only F and E): the warps that
    // make them are on every step's critical path. G's log and the weights' exp2 are the fast ones: the weights are
    // rounded to 16 bits (the sweep takes 16-bit inputs only).
    const int from = kOutputs ? 0 : kSpan;
    for (int i = threadIdx.x + from; i < 2 * kSpan; i += blockDim.x) {
      const int t = i % kSpan;
      const float Lt = static_cast<float>(cum_s[t + 1] - cum_s[0]);
      const float dt = dt_s[t];
      if (i < kSpan) {
        const float L2 = Lt * 1.44269504f;  // log2 e
        tv.L[t] = L2;
        tv.G[t] = dt > 0.f ? __log2f(dt) - L2 : -INFINITY;
      } else {
        const float L_last = static_cast<float>(cum_s[kSpan] - cum_s[0]);
        tv.F[t] = expf(L_last - Lt) * dt;
        tv.E[t] = expf(Lt);
      }
    }
  };
  // Step j's C.B tiles into buffer j % 2 (the mma.sync sweep), spread over the warps: each tile is made once,
  // instead of by both warps of its row block as their own operand, and the warps with the most outputs to make (the
  // last row blocks) make the fewest tiles (docs/kernels.md, version 9). Tiles go to warps in the order of their
  // slot: the warps without outputs first, then the row blocks' warps from the first row block to the last.
  const int cb_slot = warp >= kOutWarps ? warp - kOutWarps
                                        : Lay::kWarps - kOutWarps + 2 * (warp % kRowBlocks) + warp / kRowBlocks;
  auto make_cb = [&](int j) {
    const unsigned char* st = stage(j);
    const T* Cs = reinterpret_cast<const T*>(st + Lay::kC);
    const T* Bs = reinterpret_cast<const T*>(st + Lay::kB);
    float4* cb_s = reinterpret_cast<float4*>(smem + Lay::kCB) + (j & 1) * kTiles * kTileVectors;
    for (int i = cb_slot; i < kTiles; i += Lay::kWarps)
      make_cb_tile<TC, kN>(Cs, Bs, BC{}, i, cb_s + i * kTileVectors);
  };

  // The warp's state: channels 16 (warp % (kPs / 16)) + gid and + 8 of the slice, half of the columns (WarpState). In
  // the wgmma sweep these are warpgroup warp / 4's accumulators of a 64 x kN / 2 product, in the same places.
  T* state_s = reinterpret_cast<T*>(smem + Lay::kState);
  float* D_s = reinterpret_cast<float*>(smem + Lay::kD);
  const int c_row = 16 * (warp % (kPs / 16)) + gid, n0 = Lay::kHalfN * (warp / (kPs / 16));
  const WarpState<kN, Lay::kHalfN> share{c_row, n0, tig};
  const long bh_at = ((static_cast<long>(bi) * d.h + hi) * d.p + p0) * kN;  // of a [b, h, p, n] state
  float S[Lay::kHalfN / 8][4];
  // The state entering the block's first step: the initial state (or zeros), and, after the first span, carried
  // through the spans before this one. The state-only launch starts each span from zeros.
  share.load(S, kOutputs && a.initial_state ? a.initial_state + bh_at : nullptr);
  if (kOutputs)
    for (int i = 0; i < span; ++i) share.fold(S, expf(span_log_decay[i]), span_state(i) + p0 * kN);
  // The state rounded to 16 bits (training: in two 16-bit parts, the second in the buffer after the first) into
  // [kPs][kN] buffer j % 2, where step j's outputs read it.
  const auto state_buffer = [&](int j) { return state_s + (j & 1) * kParts * BC::elements(kPs); };
  const auto store_state = [&](T* to) { share.template store_parts<TC, kParts, BC>(S, to, BC::elements(kPs)); };
  store_state(state_buffer(first));
  double log_decay = 0.;  // of the span, summed by thread 0 in the state-only launch
  for (int i = threadIdx.x; i < kPs; i += blockDim.x)
    D_s[i] = a.D ? a.D[a.D_per_channel ? hi * d.p + p0 + i : hi] : 0.f;

  // The wgmma sweep's C.B of step j (64 x 64, every source of the step; each warpgroup makes its own, in its
  // registers), issued a step ahead as the mma.sync sweep's make_cb is, so that the products of a step start from it.
  float CB[kRowBlocks * 2][4];
  // Bytes per 8-row band and between core matrices along a band, of the tiled layouts (a k step of 16 is two).
  constexpr uint32_t kBcBand = sizeof(T) * BC::kBand, kXBand = sizeof(T) * XZ::kBand, kCore = sizeof(T) * BC::kCore;
  const auto issue_cb = [&](int j) {
    const unsigned char* st = stage(j);
    const uint64_t dC = wgmma_descriptor(st + Lay::kC, kCore, kBcBand);
    const uint64_t dB = wgmma_descriptor(st + Lay::kB, kCore, kBcBand);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kN / 16; ++kk)
      wgmma_ss<T, 64>(CB, wgmma_advance(dC, 2 * kCore * kk),
                      wgmma_advance(dB, 2 * kCore * kk), kk == 0);
  };

  staged_but<kStages - 2>();  // the first step's tokens
  if (kAsync) async_proxy_fence();
  __syncthreads();
  make_tokens(first);
  if (kOutputs && !kAsync && !group_tiles) make_cb(first);
  if (kOutputs && kAsync) {
    issue_cb(first);
    wgmma_commit();
  }

  for (int j = first; j < steps; ++j) {
    staged_but<0>();  // this thread's copies of steps j and j + 1 (issued a step ago: its latency is long hidden)
    if (kAsync) async_proxy_fence();  // those copies and the state stored last step, before the products read them
    __syncthreads();  // everyone's, and step j's per-token values; every warp is done with step j - 1
    if (group_tiles && j + 1 < steps) copy_cb(j + 1);  // in by step j + 1's barrier
    if (!kAsync) issue(j + kStages - 1);
    if (j + 1 < steps) {
      make_tokens(j + 1);
      if (kOutputs && !kAsync && !group_tiles) make_cb(j + 1);
    }
    const unsigned char* st = stage(j);
    const T* Cs = reinterpret_cast<const T*>(st + Lay::kC);
    const T* Bs = reinterpret_cast<const T*>(st + Lay::kB);
    const T* Xs = reinterpret_cast<const T*>(st + Lay::kX);
    const T* Zs = reinterpret_cast<const T*>(st + Lay::kZ);
    const TokenValues tv(tokens_s + (j & 1) * 4 * kSpan);
    const T* state_in = state_buffer(j);
    T* state_out = state_buffer(j + 1);
    if (kTrain && kOutputs && j * kSpan % d.q == 0) {
      // The state entering chunk j kSpan / q, kept for the backward (the chunk-parallel forward's state pass writes
      // the same).
      share.store(S, a.states + ((static_cast<long>(bi) * d.c + j * kSpan / d.q) * d.h + hi) * d.p * kN + p0 * kN);
    }

    if (!kOutputs && threadIdx.x == 0) {
      const double* cum_s = reinterpret_cast<const double*>(st + Lay::kCum);
      log_decay += cum_s[kSpan] - cum_s[0];
    }
    // Outputs of rows [16 rb, + 16) and channels [ch0, + kPs / 2) (the wgmma sweep: warpgroup warp / 4's 64 rows,
    // warp rb's 16 of them).
    const int rb = warp % kRowBlocks, ch0 = Lay::kHalfPs * (warp / kRowBlocks);
    const int r0 = 16 * rb + gid, r1 = r0 + 8;
    float Y[Lay::kHalfPs / 8][4];
    [[maybe_unused]] float Y1[Lay::kHalfPs / 8][4];  // the wgmma sweep's state term, C.S, added in the epilogue
    // Training: the warp's z pairs of the step (rows r0, r1), loaded from global memory now and used by the epilogue
    // (the z rows are not staged: FusedLayout).
    [[maybe_unused]] uint32_t z_pairs[2][Lay::kHalfPs / 8];
    if (kTrain && kOutputs && z_rows && warp < kOutWarps) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int t = j * kSpan + (half ? r1 : r0);
#pragma unroll
        for (int jp = 0; jp < Lay::kHalfPs / 8; ++jp)
          z_pairs[half][jp] =
              t < d.l ? __ldg(reinterpret_cast<const unsigned int*>(z_rows + static_cast<long>(t) * x_row + ch0 +
                                                                    8 * jp + 2 * tig))
                      : 0u;
      }
    }
    // Weights the warp's C.B accumulators of source block sb (exp(L_r - L_s) dt'_s on and below the diagonal) into
    // the A operand of the product with x, in kParts 16-bit parts.
    // (Read, not rewritten: in the wgmma sweep these are accumulators, and ptxas serializes the products where other
    // instructions write an accumulator between a product's start and its wait.)
    const auto weigh = [&](const float (&cb)[2][4], int sb, uint32_t (&aw)[kParts][4]) {
      const float L0 = tv.L[r0], L1 = tv.L[r1];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const int src = 16 * sb + 8 * nt + 2 * tig;
        const float2 g = *reinterpret_cast<const float2*>(tv.G + src);
        uint32_t row0[kParts], row1[kParts];
        split_pack<TC>(cb[nt][0] * (src <= r0 ? exp2_ftz(L0 + g.x) : 0.f),
                       cb[nt][1] * (src + 1 <= r0 ? exp2_ftz(L0 + g.y) : 0.f), row0);
        split_pack<TC>(cb[nt][2] * (src <= r1 ? exp2_ftz(L1 + g.x) : 0.f),
                       cb[nt][3] * (src + 1 <= r1 ? exp2_ftz(L1 + g.y) : 0.f), row1);
#pragma unroll
        for (int k = 0; k < kParts; ++k) aw[k][2 * nt] = row0[k], aw[k][2 * nt + 1] = row1[k];
      }
    };
    // The state update's A operand for 16 tokens: x's rows of the step (channels x tokens, read transposed), each
    // token's column scaled by F_s before it is rounded back to 16 bits (in kParts parts).
    const auto state_operand = [&](int ks, uint32_t (&ax)[kParts][4]) {
      scaled_tokens<TC, kParts, false, XZ>(ax, Xs, Xs, c_row - gid, 16 * ks, tv.F);
    };
    const float decay = tv.E[kSpan - 1];

    if constexpr (kAsync) {
      // Per warpgroup, with this step's C.B in flight since the last step: C.S (its 32 channels) from shared memory,
      // the state update, and, once C.B is in, the weighted sources' product and the next step's C.B, all in flight
      // while the warps make the next operands (docs/kernels.md, version 10).
      float dS[Lay::kHalfN / 8][4];
      if (kOutputs) {
        const uint64_t dC = wgmma_descriptor(Cs, kCore, kBcBand);
        const uint64_t dSt = wgmma_descriptor(state_in + BC::at(ch0, 0), kCore, kBcBand);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kN / 16; ++kk)
          wgmma_ss<T, Lay::kHalfPs>(Y1, wgmma_advance(dC, 2 * kCore * kk), wgmma_advance(dSt, 2 * kCore * kk),
                                    kk == 0);
        wgmma_commit();
      }
      // The step's contribution to the state in its own accumulators, added to the decayed state once in: the state
      // itself is written every step, so it is no product's accumulator (see weigh).
      uint32_t ax[kSpan / 16][kParts][4];
#pragma unroll
      for (int ks = 0; ks < kSpan / 16; ++ks) state_operand(ks, ax[ks]);
      const uint64_t dBn = wgmma_descriptor(Bs + BC::at(0, n0), kBcBand, kCore);  // tokens x the warpgroup's columns
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kSpan / 16; ++ks)
        wgmma_rs<T, Lay::kHalfN>(dS, ax[ks][0], wgmma_advance(dBn, 2 * kBcBand * ks), ks == 0);
      wgmma_commit();
      // The copies of step j + 2 once the products are in flight (issued right after the barrier, they waited on
      // the memory pipeline: ncu's long scoreboard stalls, docs/kernels.md, version 10).
      issue(j + kStages - 1);
      if (kOutputs) {
        wgmma_wait<2>();  // this step's C.B (the state's term and the state update may still run)
        wgmma_fence_operands(CB);
        uint32_t aw[kRowBlocks][kParts][4];
#pragma unroll
        for (int sb = 0; sb < kRowBlocks; ++sb) {
          if (sb <= rb) weigh(*reinterpret_cast<const float(*)[2][4]>(CB[2 * sb]), sb, aw[sb]);
          else aw[sb][0][0] = aw[sb][0][1] = aw[sb][0][2] = aw[sb][0][3] = 0u;  // sources after the warp's rows
        }
        const uint64_t dX = wgmma_descriptor(Xs + XZ::at(0, ch0), kXBand, kCore);  // sources x the channels
        wgmma_fence();
#pragma unroll
        for (int sb = 0; sb < kRowBlocks; ++sb)
          wgmma_rs<T, Lay::kHalfPs>(Y, aw[sb][0], wgmma_advance(dX, 2 * kXBand * sb), sb == 0);
        wgmma_commit();
        if (j + 1 < steps) issue_cb(j + 1);  // its stage is in (waited for and fenced before this step's barrier)
        wgmma_commit();                      // a group even when empty, so that the waits count alike
        wgmma_wait<1>();                     // all but the next step's C.B
        wgmma_fence_operands(Y);
        wgmma_fence_operands(Y1);
      } else {
        wgmma_wait<0>();
      }
      wgmma_fence_operands(dS);
#pragma unroll
      for (int nt = 0; nt < Lay::kHalfN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) S[nt][e] = decay * S[nt][e] + dS[nt][e];
    } else {
      if (kOutputs && warp < kOutWarps) {
        // The state's term, then the step's sources in 16-token blocks up to the diagonal, each C.B tile (made a
        // step ago, make_cb) weighted in registers and fed to the product with x as the A operand.
        float Y_odd[Lay::kHalfPs / 8][4];
        state_term<kN, kTrain, BC>(Y, Y_odd, Cs, rb, state_in, BC::elements(kPs), ch0);
        float cb[kRowBlocks][2][4];
        load_tiles(cb, reinterpret_cast<const float4*>(smem + Lay::kCB) + (j & 1) * kTiles * kTileVectors +
                           rb * (rb + 1) / 2 * kTileVectors,
                   rb + 1);
        add_scaled(Y, Y_odd, tv.E[r0], tv.E[r1]);
#pragma unroll
        for (int sb = 0; sb < kRowBlocks; ++sb) {
          if (sb > rb) break;
          uint32_t aw[kParts][4];
          weigh(cb[sb], sb, aw);
          mma_across_at<true, kParts>(Y, aw, Xs, XZ{}, 16 * sb, ch0);
        }
      }
      // The state, every warp its share.
#pragma unroll
      for (int nt = 0; nt < Lay::kHalfN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) S[nt][e] *= decay;
#pragma unroll
      for (int ks = 0; ks < kSpan / 16; ++ks) {
        uint32_t ax[kParts][4];
        state_operand(ks, ax);
        mma_across_at<true, kParts>(S, ax, Bs, BC{}, 16 * ks, n0);
      }
    }

    if (kOutputs && warp < kOutWarps) {
      // + D x, * silu(z), rounded once: as the chunk-parallel output kernel's epilogue (training: y_ssm, the sum
      // before D, kept in float32).
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = half ? r1 : r0, t = j * kSpan + r;
        if (t >= d.l) continue;
        T* out = out_rows + static_cast<long>(t) * x_row;
#pragma unroll
        for (int jp = 0; jp < Lay::kHalfPs / 8; ++jp) {
          const int pc = ch0 + 8 * jp + 2 * tig;
          const float2 xv = TC::unpack(pair_at(Xs + XZ::at(r, pc), 0));
          if (kTrain)
            *reinterpret_cast<float2*>(y_ssm_rows + static_cast<long>(t) * x_row + pc) =
                make_float2(Y[jp][2 * half], Y[jp][2 * half + 1]);
          float y0 = Y[jp][2 * half] + D_s[pc] * xv.x, y1 = Y[jp][2 * half + 1] + D_s[pc + 1] * xv.y;
          if (kAsync) {  // the state's term, exp(L_t) C_t . S
            const float e = tv.E[r];
            y0 += e * Y1[jp][2 * half], y1 += e * Y1[jp][2 * half + 1];
          }
          if (z_rows) {
            const float2 zv = TC::unpack(kTrain ? z_pairs[half][jp] : pair_at(Zs + XZ::at(r, pc), 0));
            y0 *= silu_fast(zv.x), y1 *= silu_fast(zv.y);
          }
          *reinterpret_cast<uint32_t*>(out + pc) = TC::pack(y0, y1);
        }
      }
    }
    if (kOutputs) store_state(state_out);  // only the outputs read the state from shared memory
  }
  staged();  // the empty groups

  // The last span's state is the final state; the others' local states go to the workspace for the second launch.
  if (kOutputs && span + 1 < sp.count) return;
  share.store(S, kOutputs ? a.final_state + bh_at : span_state(span) + p0 * kN);
  if (!kOutputs && slice == 0 && threadIdx.x == 0) span_log_decay[span] = static_cast<float>(log_decay);
}

// The C.B tiles of every 64-token step for heads sharing a group, made once per (row, group, step) instead of by
// each head's sweep (at mamba2-2.7b 80 heads share one group; making the tiles in the sweep was 9% of its time:
// docs/kernels.md, after version 10), where group_tiles_at says; rows past the end are zeros.
constexpr int kCbWarps = 8;
template <typename T, int kN>
__global__ void __launch_bounds__(kCbWarps * 32) sweep_cb_kernel(SsdScanForward a, ScanDims d, float* tiles) {
  using Rows = TileLayout<kN, false>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* Cs = reinterpret_cast<T*>(smem);
  T* Bs = Cs + Rows::elements(kSpan);
  const int steps = steps_of(d.l);
  const int j = blockIdx.x % steps, row_group = blockIdx.x / steps;  // row_group = bi g + gi
  const int bi = row_group / d.g, gi = row_group % d.g, t0 = j * kSpan;
  const long first_row = (static_cast<long>(bi) * d.l + t0) * d.g + gi;
  const StepPieces<kN, Rows, kCbWarps * 32> pieces(d.g * kN);
  pieces.copy(Cs, static_cast<const T*>(a.C) + first_row * kN, d.l - t0);
  pieces.copy(Bs, static_cast<const T*>(a.B) + first_row * kN, d.l - t0);
  commit_copies();
  staged();
  __syncthreads();
  float4* step_tiles = reinterpret_cast<float4*>(tiles) + group_tiles_at(row_group, steps, j);
  for (int i = threadIdx.x / 32; i < kTiles; i += kCbWarps)
    make_cb_tile<TensorCore<T>, kN>(Cs, Bs, Rows{}, i, step_tiles + i * kTileVectors);
}

// The backward's state gradient as one reverse sweep per (row, head, slice of channels) (version 13): with G the
// gradient of the state leaving a step, G <- exp(L_last) G + sum_t exp(L_t) dy_t C_t^T over the step's tokens (L from
// the step's start), carried in registers from the sequence's end to its start. It writes what the chunk-level
// entering-state gradient (chunk_state_tc) and the state pass backward wrote together: G at each chunk's end into
// dstates, <G, S> with the state leaving that chunk into end_term, and G at the start into dinitial. dy takes its two
// parts (dy + dy_lo), weighted in float32 and split into two 16-bit parts, as chunk_state_tc takes them.
// A warp holds 16 channels and half of the columns of G, as the forward sweep's warps hold the state.
// In spans (long sequences, few heads), mirrored from the forward's (SweepSpans): a first launch (kOutputs false)
// sweeps every span but the first from a zero gradient, leaving its local gradient in span_grads at slot `span`
// ([b, spans, h, p, n]) and its log-decay in float at slot 0, element `span` of the (row, head)'s p x n block; the
// second starts each span from the gradient stitched from the spans after it and from dfinal.
//
// kDx (version 14, with kOutputs): the same sweep also makes dx. Per step, with G the gradient of the state leaving
// it and U_s the gradient of dt'_s x_s,
//   U_s = exp(L_last - L_s) G B_s + sum_{l >= s in the step} (B_s . C_l) exp(L_l - L_s) (dy_l + dy_lo_l)
//   dx_s = dt'_s U_s + D (dy_s + dy_lo_s), and x_s . U_s added to ddt_u (the dt gradient's term)
// which is the forward sweep's output with time reversed: B for C, C for B, dy for x, G for the state. The chunk-
// parallel dx kernel read the chunk's G from dstates and made each product per 64-row tile; here G is on chip and
// the step's B.C tiles are made once, spread over the warps, as the forward makes its C.B tiles. The products take
// the forward's precision: G and the weighted B.C values in two 16-bit parts, dy's rest times the weights' first.
// G enters the products through one buffer: a second barrier per step keeps its readers and the next step's writers
// apart (two buffers would not fit beside the three stages at state size 128).
template <typename T, int kN, int kPs, bool kDx>
struct GradLayout {
  using BC = TileLayout<kN, false>;   // C and B rows [kSpan][kN], G's parts [kPs][kN]
  using XZ = TileLayout<kPs, false>;  // dy and dy_lo rows [kSpan][kPs]
  static constexpr int kWarps = kPs / 8;
  static_assert(!kDx || kWarps >= kOutWarps, "every warp holds G; the first kOutWarps also make dx");
  // One stage: C rows, (kDx) B rows, dy rows, dy_lo rows, the cumsum before the step's first token and at each of its
  // tokens, (kDx) dt'.
  static constexpr size_t kC = 0;
  static constexpr size_t kB = kC + sizeof(T) * BC::elements(kSpan);
  static constexpr size_t kDy = kB + (kDx ? sizeof(T) * BC::elements(kSpan) : 0);
  static constexpr size_t kDyLo = kDy + sizeof(T) * XZ::elements(kSpan);
  static constexpr size_t kCum = kDyLo + sizeof(T) * XZ::elements(kSpan);
  static constexpr size_t kDt = kCum + sizeof(double) * (kSpan + 2);
  static constexpr size_t kStage = kDt + (kDx ? sizeof(float) * kSpan : 0);
  // Per-token values (GradTokens), twice: this step's, and the next one's being made.
  static constexpr int kTokenArrays = kDx ? 4 : 1;
  static constexpr size_t kTokens = kStages * kStage;
  // kDx: G leaving the step in two 16-bit parts, D per channel, and the step's B.C tiles twice (this step's, the
  // next one's being made), as FusedLayout's C.B tiles.
  static constexpr size_t kG = kTokens + 2 * sizeof(float) * kTokenArrays * kSpan;
  static constexpr size_t kD = kG + (kDx ? 2 * sizeof(T) * BC::elements(kPs) : 0);
  static constexpr size_t kCB = kD + (kDx ? sizeof(float) * kPs : 0);
  static constexpr size_t kBytes = kCB + (kDx ? 2 * sizeof(float) * kTiles * kTileFloats : 0);
  static_assert(kStage % 16 == 0 && kTokens % 16 == 0 && kG % 16 == 0 && kCB % 16 == 0, "16-byte aligned regions");
};

// A step's per-token values in the reverse sweep, L from the step's start: E_t = exp(L_t), G's decay to token t;
// with kDx also L_t log2 e (a B.C value's weight for row s and source l is 2^(L_l - L_s), one ex2), R_t =
// exp(L_last - L_t) (G's term's scale for row t) and dt'_t.
struct GradTokens {
  float* E;
  float* L;
  float* R;
  float* dt;
  __device__ GradTokens(float* base) : E(base), L(base + kSpan), R(base + 2 * kSpan), dt(base + 3 * kSpan) {}
};

template <typename T, int kN, int kPs, bool kOutputs, bool kDx>
__global__ void __launch_bounds__(GradLayout<T, kN, kPs, kDx>::kWarps * 32)
    ssd_state_grad_sweep_kernel(SsdScanForward a, ScanDims d, SweepSpans sp, const T* dy, const T* dy_lo,
                                const float* dfinal, float* dstates, float* dinitial, float* end_term,
                                float* span_grads, T* dx, float* ddt_u) {
  static_assert(kOutputs || !kDx, "dx comes with the launch with outputs");
  using Lay = GradLayout<T, kN, kPs, kDx>;
  using BC = typename Lay::BC;
  using XZ = typename Lay::XZ;
  using TC = TensorCore<T>;
  constexpr int kHalfN = kN / 2, kHalfPs = kPs / 2;  // a warp's share: half of G's columns, half of dx's channels
  extern __shared__ __align__(16) unsigned char smem[];
  // The gradient-only launch has no block for the first span.
  const SweepBlock blk = kOutputs ? SweepBlock(d, kPs, sp.count, 0) : SweepBlock(d, kPs, sp.count - 1, 1);
  const int slice = blk.slice, span = blk.span, hi = blk.hi, bi = blk.bi, gi = blk.gi, p0 = blk.p0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  // The span's steps [first, first + steps), swept from the last.
  const int first = span * sp.steps, steps = min(steps_of(d.l), first + sp.steps) - first;
  const int bc_row = d.g * kN, x_row = d.h * d.p;
  const T* const C_rows = static_cast<const T*>(a.C) + (static_cast<long>(bi) * d.l * d.g + gi) * kN;
  const T* const B_rows = static_cast<const T*>(a.B) + (static_cast<long>(bi) * d.l * d.g + gi) * kN;
  const long slice_at = (static_cast<long>(bi) * d.l * d.h + hi) * d.p + p0;  // of dy, dy_lo, x and dx at token 0
  const long token_base = (static_cast<long>(bi) * d.h + hi) * d.c * d.q;   // of dt_prepare's [b, h, c, q]
  const StepPieces<kN, BC, Lay::kWarps * 32> c_pieces(bc_row);
  const StepPieces<kPs, XZ, Lay::kWarps * 32> dy_pieces(x_row);

  // Iteration i sweeps step steps - 1 - i; its tokens go to stage i % kStages (an empty group past the last).
  const auto stage = [&](int i) { return smem + (i % kStages) * Lay::kStage; };
  auto issue = [&](int i) {
    if (i < steps) {
      unsigned char* st = stage(i);
      const int t0 = (first + steps - 1 - i) * kSpan, rows = d.l - t0;
      c_pieces.copy(reinterpret_cast<T*>(st + Lay::kC), C_rows + static_cast<long>(t0) * bc_row, rows);
      if (kDx) c_pieces.copy(reinterpret_cast<T*>(st + Lay::kB), B_rows + static_cast<long>(t0) * bc_row, rows);
      dy_pieces.copy(reinterpret_cast<T*>(st + Lay::kDy), dy + slice_at + static_cast<long>(t0) * x_row, rows);
      dy_pieces.copy(reinterpret_cast<T*>(st + Lay::kDyLo), dy_lo + slice_at + static_cast<long>(t0) * x_row, rows);
      copy_step_cum(reinterpret_cast<double*>(st + Lay::kCum), a.cum, token_base + t0, t0 % d.q);
      // (dt' = 0 past the end: dt_prepare's workspace holds every chunk's q tokens.)
      if (kDx && threadIdx.x < kSpan)
        copy_async<4>(reinterpret_cast<float*>(st + Lay::kDt) + threadIdx.x, a.dtp + token_base + t0 + threadIdx.x,
                      true);
    }
    commit_copies();
  };
  float* const tokens_s = reinterpret_cast<float*>(smem + Lay::kTokens);
  const auto tokens_of = [&](int i) { return GradTokens(tokens_s + (i & 1) * Lay::kTokenArrays * kSpan); };
  // Iteration i's per-token values into buffer i % 2: E (and L) by one kSpan threads, R and dt' by the next.
  const auto make_tokens = [&](int i) {
    const unsigned char* st = stage(i);
    const double* cum_s = reinterpret_cast<const double*>(st + Lay::kCum);
    const GradTokens tv = tokens_of(i);
    for (int k = threadIdx.x; k < (kDx ? 2 : 1) * kSpan; k += blockDim.x) {
      const int t = k % kSpan;
      const float Lt = static_cast<float>(cum_s[t + 1] - cum_s[0]);
      if (k < kSpan) {
        tv.E[t] = expf(Lt);
        if (kDx) tv.L[t] = Lt * 1.44269504f;  // log2 e
      } else {
        tv.R[t] = expf(static_cast<float>(cum_s[kSpan] - cum_s[0]) - Lt);
        tv.dt[t] = reinterpret_cast<const float*>(st + Lay::kDt)[t];
      }
    }
  };
  // kDx: iteration i's B.C tiles into buffer i % 2, spread over the warps as the forward's make_cb. Tile i holds rows
  // of block 3 - r of B and sources of block 3 - s of C (TriangleTile's r >= s: sources at or after the rows), so that
  // row block rb's tiles are the 4 - rb from (3 - rb) (4 - rb) / 2 on, its sources from the last block back. The warps
  // of the first row blocks, with the most sources, make the fewest tiles.
  const int cb_slot = warp >= kOutWarps ? warp - kOutWarps
                                        : Lay::kWarps - kOutWarps + 2 * (kRowBlocks - 1 - warp % kRowBlocks) +
                                              warp / kRowBlocks;
  auto make_bc = [&](int i) {
    const unsigned char* st = stage(i);
    const T* Cs = reinterpret_cast<const T*>(st + Lay::kC);
    const T* Bs = reinterpret_cast<const T*>(st + Lay::kB);
    float4* cb_s = reinterpret_cast<float4*>(smem + Lay::kCB) + (i & 1) * kTiles * kTileVectors;
    for (int k = cb_slot; k < kTiles; k += Lay::kWarps) {
      const TriangleTile t(k);
      make_pair_tile<TC, kN>(Bs, kRowBlocks - 1 - t.r, Cs, kRowBlocks - 1 - t.s, BC{}, cb_s + k * kTileVectors);
    }
  };

  const int c_row = 16 * (warp % (kPs / 16)) + gid, n0 = kHalfN * (warp / (kPs / 16));
  const WarpState<kN, kHalfN> share{c_row, n0, tig};
  const long bh_at = ((static_cast<long>(bi) * d.h + hi) * d.p + p0) * kN;  // of a [b, h, p, n] state
  const auto chunk_at = [&](int ci) { return ((static_cast<long>(bi) * d.c + ci) * d.h + hi) * d.p * kN + p0 * kN; };
  // Where a span's local gradient and log-decay go (the first launch) and come from (the second).
  const auto span_grad = [&](int k) {
    return span_grads + ((static_cast<long>(bi) * sp.count + k) * d.h + hi) * d.p * kN;
  };
  float G[kHalfN / 8][4];
  share.load(G, kOutputs && dfinal ? dfinal + bh_at : nullptr);
  if (kOutputs)
    for (int k = sp.count - 1; k > span; --k) share.fold(G, expf(span_grad(0)[k]), span_grad(k) + p0 * kN);
  T* const g_s = reinterpret_cast<T*>(smem + Lay::kG);
  float* const D_s = reinterpret_cast<float*>(smem + Lay::kD);
  if constexpr (kDx) {
    share.template store_parts<TC, 2, BC>(G, g_s, BC::elements(kPs));
    for (int c = threadIdx.x; c < kPs; c += blockDim.x)
      D_s[c] = a.D ? a.D[a.D_per_channel ? hi * d.p + p0 + c : hi] : 0.f;
  }
  // Whether step j ends its chunk, and the state leaving the chunk whose end the sweep meets next (the last chunk's:
  // the final state), loaded a chunk ahead of its use.
  const auto ends_chunk = [&](int j) { return j == steps_of(d.l) - 1 || (j + 1) * kSpan % d.q == 0; };
  const auto leaving = [&](int ci) { return ci + 1 < d.c ? a.states + chunk_at(ci + 1) : a.final_state + bh_at; };
  float S[kHalfN / 8][4];
  const int j_last = first + steps - 1, c_last = j_last * kSpan / d.q - (ends_chunk(j_last) ? 0 : 1);
  if (kOutputs && c_last >= 0) share.load(S, leaving(c_last));
  double log_decay = 0.;  // of the span, summed by thread 0 in the gradient-only launch

  for (int i = 0; i + 1 < kStages; ++i) issue(i);
  staged_but<kStages - 2>();  // the first step's tokens
  __syncthreads();
  make_tokens(0);
  if (kDx) make_bc(0);
  for (int i = 0; i < steps; ++i) {
    const int j = first + steps - 1 - i;
    staged_but<0>();  // this thread's copies of iterations i and i + 1
    __syncthreads();  // everyone's, and iteration i's token values (and tiles); every warp is done with iteration i - 1
    issue(i + kStages - 1);
    if (i + 1 < steps) {
      make_tokens(i + 1);
      if (kDx) make_bc(i + 1);
    }
    if (!kOutputs && threadIdx.x == 0) {
      const double* cum_s = reinterpret_cast<const double*>(stage(i) + Lay::kCum);
      log_decay += cum_s[kSpan] - cum_s[0];
    }
    int next_S = -1;  // the chunk whose leaving state to load once this step's products are issued
    if (kOutputs && ends_chunk(j)) {
      // Step j ends chunk ci: G is the gradient of the state leaving it.
      const int ci = j * kSpan / d.q;
      share.store(G, dstates + chunk_at(ci));
      float part = 0.f;
#pragma unroll
      for (int nt = 0; nt < kHalfN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) part += G[nt][e] * S[nt][e];
      part = warp_sum(part);
      if (lane == 0) atomicAdd(end_term + (static_cast<long>(bi) * d.h + hi) * d.c + ci, part);
      next_S = ci - 1;
    }
    const unsigned char* st = stage(i);
    const T* Cs = reinterpret_cast<const T*>(st + Lay::kC);
    const T* DYs = reinterpret_cast<const T*>(st + Lay::kDy);
    const T* LOs = reinterpret_cast<const T*>(st + Lay::kDyLo);
    const GradTokens tv = tokens_of(i);

    // kDx: U for rows [16 rb, + 16) of the step and channels [ch0, + kPs / 2), as the forward's outputs.
    const int rb = warp % kRowBlocks, ch0 = kHalfPs * (warp / kRowBlocks);
    const int r0 = 16 * rb + gid, r1 = r0 + 8;
    [[maybe_unused]] float U[kHalfPs / 8][4];
    [[maybe_unused]] uint32_t x_pairs[2][kHalfPs / 8];  // x of rows r0, r1 for x . U, loaded now, used last
    if (kDx && warp < kOutWarps) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int t = j * kSpan + (half ? r1 : r0);
#pragma unroll
        for (int jp = 0; jp < kHalfPs / 8; ++jp)
          x_pairs[half][jp] = t < d.l ? __ldg(reinterpret_cast<const unsigned int*>(
                                            static_cast<const T*>(a.x) + slice_at + static_cast<long>(t) * x_row +
                                            ch0 + 8 * jp + 2 * tig))
                                      : 0u;
      }
      // G's term (B rows times G's two parts), scaled per row once in.
      float U_lo[kHalfPs / 8][4];
      state_term<kN, true, BC>(U, U_lo, reinterpret_cast<const T*>(st + Lay::kB), rb, g_s, BC::elements(kPs), ch0);
      // The row block's tiles, sources from the last block back to the row block's own.
      const int tri = kRowBlocks - 1 - rb;
      float bc[kRowBlocks][2][4];
      load_tiles(bc, reinterpret_cast<const float4*>(smem + Lay::kCB) + (i & 1) * kTiles * kTileVectors +
                         tri * (tri + 1) / 2 * kTileVectors,
                 tri + 1);
      add_scaled(U, U_lo, tv.R[r0], tv.R[r1]);
      const float L0 = tv.L[r0], L1 = tv.L[r1];
#pragma unroll
      for (int k = 0; k < kRowBlocks; ++k) {
        if (k > tri) break;
        const int sb = kRowBlocks - 1 - k;  // the sources' block
        uint32_t aw[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const int src = 16 * sb + 8 * nt + 2 * tig;
          const float2 l = *reinterpret_cast<const float2*>(tv.L + src);
          uint32_t row0[2], row1[2];
          split_pack<TC>(bc[k][nt][0] * (src >= r0 ? exp2_ftz(l.x - L0) : 0.f),
                         bc[k][nt][1] * (src + 1 >= r0 ? exp2_ftz(l.y - L0) : 0.f), row0);
          split_pack<TC>(bc[k][nt][2] * (src >= r1 ? exp2_ftz(l.x - L1) : 0.f),
                         bc[k][nt][3] * (src + 1 >= r1 ? exp2_ftz(l.y - L1) : 0.f), row1);
#pragma unroll
          for (int p = 0; p < 2; ++p) aw[p][2 * nt] = row0[p], aw[p][2 * nt + 1] = row1[p];
        }
        mma_across_at<true, 2>(U, aw, DYs, XZ{}, 16 * sb, ch0);
        mma_across_at<true>(U, aw[0], LOs, XZ{}, 16 * sb, ch0);  // dy's rest times the weights' first part
      }
    }

    const float decay = tv.E[kSpan - 1];
#pragma unroll
    for (int nt = 0; nt < kHalfN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) G[nt][e] *= decay;
#pragma unroll
    for (int ks = 0; ks < kSpan / 16; ++ks) {
      uint32_t ay[2][4];  // exp(L_t) (dy_t + dy_lo_t), in two 16-bit parts
      scaled_tokens<TC, 2, true, XZ>(ay, DYs, LOs, c_row - gid, 16 * ks, tv.E);
      mma_across_at<true, 2>(G, ay, Cs, BC{}, 16 * ks, n0);
    }

    if (kDx && warp < kOutWarps) {
      // dx = dt' U + D (dy + dy_lo), and x . U over the block's channels into ddt_u (the 4 lanes of a row add theirs;
      // the other half of the channels and the head's other slices add to the same token).
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = half ? r1 : r0, t = j * kSpan + r;
        float xu = 0.f;
        if (t < d.l) {
          T* out = dx + slice_at + static_cast<long>(t) * x_row;
          const float w = tv.dt[r];
#pragma unroll
          for (int jp = 0; jp < kHalfPs / 8; ++jp) {
            const int pc = ch0 + 8 * jp + 2 * tig;
            const float2 yv = TC::unpack(pair_at(DYs + XZ::at(r, pc), 0));
            const float2 lv = TC::unpack(pair_at(LOs + XZ::at(r, pc), 0));
            const float2 xv = TC::unpack(x_pairs[half][jp]);
            const float u0 = U[jp][2 * half], u1 = U[jp][2 * half + 1];
            *reinterpret_cast<uint32_t*>(out + pc) =
                TC::pack(w * u0 + D_s[pc] * (yv.x + lv.x), w * u1 + D_s[pc + 1] * (yv.y + lv.y));
            xu += xv.x * u0 + xv.y * u1;
          }
        }
        xu += __shfl_xor_sync(0xffffffffu, xu, 1);
        xu += __shfl_xor_sync(0xffffffffu, xu, 2);
        if (t < d.l && tig == 0) atomicAdd(ddt_u + token_base + t, xu);
      }
    }
    if (kDx) {
      __syncthreads();  // every reader of G's buffer is done with this step's
      share.template store_parts<TC, 2, BC>(G, g_s, BC::elements(kPs));
    }
    // The next chunk end's state, loaded after the products rather than beside the stores of G (ncu at hovle: the
    // instructions after those stores and loads waited on the memory pipeline, 20% of the stall samples).
    if (next_S >= 0) share.load(S, leaving(next_S));
  }
  staged();  // the empty groups
  if (!kOutputs) {
    share.store(G, span_grad(span) + p0 * kN);
    if (slice == 0 && threadIdx.x == 0) span_grad(0)[span] = static_cast<float>(log_decay);
  } else if (span == 0 && dinitial) {
    share.store(G, dinitial + bh_at);
  }
}

// Channels per block: 64 where the head dim divides into them (two blocks per head at 128), else 80.
int slice_of(int p) { return p % 64 == 0 ? 64 : p == 80 ? 80 : 0; }

// CARVE_SSD_FUSED: 0 never, 1 wherever the rest allows (tests take it at shapes too small for the block count),
// unset: also only with blocks enough.
enum class Setting { never, always, enough_blocks };
Setting setting() {
  const char* v = std::getenv("CARVE_SSD_FUSED");
  if (v == nullptr) return Setting::enough_blocks;
  return std::string(v) == "0" ? Setting::never : Setting::always;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Calls fn(integral_constant kN, integral_constant kPs) for state size n and slice ps (both already checked to be
// ones the sweep has instances for): the one place the runtime sizes become template arguments.
template <typename Fn>
decltype(auto) with_sizes(int n, int ps, Fn&& fn) {
  const auto with_n = [&](auto kPs) -> decltype(auto) {
    switch (n) {
      case 64: return fn(std::integral_constant<int, 64>{}, kPs);
      case 80: return fn(std::integral_constant<int, 80>{}, kPs);
      default: return fn(std::integral_constant<int, 128>{}, kPs);
    }
  };
  return ps == 64 ? with_n(std::integral_constant<int, 64>{}) : with_n(std::integral_constant<int, 80>{});
}

// Whether both sweeps have instances for these sizes: 64 or 80 channels per slice, chunks of whole 64-token steps
// (a step never spans two chunks), state size 64, 80 or 128.
bool sweep_sizes(const SsdScanShape& s) {
  return slice_of(s.p) != 0 && s.q % kSpan == 0 && (s.n == 64 || s.n == 80 || s.n == 128);
}

// The (row, head, slice) blocks of a sweep without spans.
long head_blocks(const SsdScanShape& s) { return static_cast<long>(s.b) * s.h * (s.p / slice_of(s.p)); }

// Spans per (row, head): as many as fill one wave of one block per SM, at most one per chunk (the workspace holds
// a state per chunk) and per step. CARVE_SSD_SPANS=N asks for N (tests, comparisons).
SweepSpans spans_of(const SsdScanShape& s) {
  const int steps = steps_of(s.l);
  long count = std::max(1L, sm_count() / head_blocks(s));
  if (const char* v = std::getenv("CARVE_SSD_SPANS")) {
    char* end = nullptr;
    count = std::strtol(v, &end, 10);
    CARVE_KERNEL_REQUIRE(end != v && *end == '\0' && count >= 1,
                         std::string("CARVE_SSD_SPANS must be a positive integer (spans per row and head); got '") +
                             v + "'");
  }
  count = std::min<long>(count, std::min(s.chunks(), steps));
  SweepSpans sp;
  sp.steps = static_cast<int>((steps + count - 1) / count);
  sp.count = (steps + sp.steps - 1) / sp.steps;  // rounding the span up may leave fewer spans
  return sp;
}

// 1 in this file's code built for sm_90a, where wgmma.cuh's products exist, and 0 elsewhere (where they trap).
__device__ int sweep_code_has_wgmma = CARVE_WGMMA;

// Whether the sweep runs on wgmma (version 10): with CARVE_SSD_WGMMA=1, on compute capability 9.0 running this
// file's sm_90a code, for 64-channel slices. Not by default: it measured 10-30% slower than the mma.sync sweep
// (docs/kernels.md, version 10), and stays for its tests and the work that continues it.
bool wgmma_sweep(int ps) {
  const char* v = std::getenv("CARVE_SSD_WGMMA");
  if (ps != 64 || !(v && std::string(v) == "1") || !compute_capability_90()) return false;
  return device_code_value(&sweep_code_has_wgmma) == 1;
}

struct SweepPlan {
  SweepSpans spans;
  bool wgmma = false;
  bool training = false;  // the forward keeps y_ssm (kTrain)
};

// Whether training's forward (y_ssm kept) may take the sweep: CARVE_SSD_SWEEP_TRAINING=0 keeps it on the
// chunk-parallel kernels (comparisons).
bool sweep_for_training() {
  const char* v = std::getenv("CARVE_SSD_SWEEP_TRAINING");
  return !(v && std::string(v) == "0");
}

// The sweep's plan for this forward, or nothing where the sweep does not take it (ssd_fused_forward_kernels says
// which conditions). Decided once per forward: the check and the launch read the same plan.
std::optional<SweepPlan> plan(const SsdScanForward& f) {
  const SsdScanShape& s = f.shape;
  const int ps = slice_of(s.p);
  const Setting when = setting();
  const bool training = f.y_ssm != nullptr;
  if (f.dtype == ElementType::f32 || f.seg || when == Setting::never || (training && !sweep_for_training()))
    return std::nullopt;
  if (!sweep_sizes(s)) return std::nullopt;
  if (!aligned16(f.x) || !aligned16(f.B) || !aligned16(f.C) || (f.z && !aligned16(f.z)) || !aligned16(f.out) ||
      !aligned16(f.final_state) || (f.initial_state && !aligned16(f.initial_state)) ||
      (training && (!aligned16(f.y_ssm) || !aligned16(f.states))))
    return std::nullopt;
  SweepPlan p;
  p.training = training;
  p.wgmma = !training && wgmma_sweep(ps);
  // State size 128 with 80-channel slices needs 236 KB, past compute capability 9.0's 227 KB; before 9.0 less fits.
  // (The layout is the same for both 16-bit types.)
  const size_t bytes = with_sizes(s.n, ps, [&](auto kN, auto kPs) {
    if constexpr (kPs == 64)
      if (p.wgmma) return FusedLayout<__half, kN, kPs, true>::kBytes;
    return training ? FusedLayout<__half, kN, kPs, false, true>::kBytes : FusedLayout<__half, kN, kPs, false>::kBytes;
  });
  if (bytes > max_shared_per_block()) return std::nullopt;
  p.spans = spans_of(s);
  if (when != Setting::always && head_blocks(s) * p.spans.count * 2 < sm_count()) return std::nullopt;
  return p;
}

// Whether the mma.sync sweep reads C.B tiles made once per group (sweep_cb_kernel) instead of making them per head:
// where heads share a group and the forward has its C.B workspace (which, with no backward to follow, is free).
// CARVE_SSD_SWEEP_CB=0 makes them per head (comparisons).
bool group_cb_tiles(const SsdScanForward& f) {
  const char* v = std::getenv("CARVE_SSD_SWEEP_CB");
  return f.shape.h > f.shape.g && f.cb != nullptr && !f.y_ssm && !(v && std::string(v) == "0");
}

template <typename T, int kN, int kPs, bool kAsync, bool kTrain>
void launch(const SsdScanForward& f, const SweepSpans& sp, cudaStream_t stream) {
  using Lay = FusedLayout<T, kN, kPs, kAsync, kTrain>;
  const ScanDims d = dims_of(f.shape);
  const long blocks = head_blocks(f.shape);
  if (sp.count > 1) {
    constexpr auto states = ssd_fused_forward_kernel<T, kN, kPs, false, kAsync, kTrain>;
    allow_dynamic_shared(reinterpret_cast<const void*>(states), Lay::kBytes);
    states<<<static_cast<unsigned>(blocks * (sp.count - 1)), Lay::kWarps * 32, Lay::kBytes, stream>>>(f, d, sp,
                                                                                                       nullptr);
    CARVE_CUDA_CHECK_LAUNCH();
  }
  const float* cb_tiles = nullptr;
  if (!kAsync && !kTrain && group_cb_tiles(f)) {
    // The workspace holds b c g q^2 floats, at least the b g steps kTiles 256 these take (q is a multiple of 64).
    const long steps = steps_of(f.shape.l);
    const size_t bytes = 2 * sizeof(T) * TileLayout<kN, false>::elements(kSpan);
    sweep_cb_kernel<T, kN><<<static_cast<unsigned>(f.shape.b * f.shape.g * steps), kCbWarps * 32, bytes, stream>>>(
        f, d, f.cb);
    CARVE_CUDA_CHECK_LAUNCH();
    cb_tiles = f.cb;
  }
  constexpr auto outputs = ssd_fused_forward_kernel<T, kN, kPs, true, kAsync, kTrain>;
  allow_dynamic_shared(reinterpret_cast<const void*>(outputs), Lay::kBytes);
  outputs<<<static_cast<unsigned>(blocks * sp.count), Lay::kWarps * 32, Lay::kBytes, stream>>>(f, d, sp, cb_tiles);
  CARVE_CUDA_CHECK_LAUNCH();
}

template <typename T, int kN, int kPs>
void launch(const SsdScanForward& f, const SweepPlan& p, cudaStream_t stream) {
  if constexpr (kPs == 64)
    if (p.wgmma) return launch<T, kN, kPs, true, false>(f, p.spans, stream);
  if (p.training) return launch<T, kN, kPs, false, true>(f, p.spans, stream);
  launch<T, kN, kPs, false, false>(f, p.spans, stream);
}

// The most shared memory a block may opt into on any GPU (compute capability 9.0 and 10.0: 227 KB).
constexpr size_t kLargestSharedPerBlock = 227 * 1024;

// Whether the reverse sweep also makes dx (version 14) where it fits: CARVE_SSD_SWEEP_DX=0 keeps dx on the chunk-
// parallel pair kernel (comparisons).
bool sweep_for_dx() {
  const char* v = std::getenv("CARVE_SSD_SWEEP_DX");
  return !(v && std::string(v) == "0");
}

struct GradPlan {
  SweepSpans spans;
  bool dx = false;  // the launch with outputs also makes dx and x . U (kDx)
};

// The reverse sweep's plan for the backward's state gradient, or nothing where it does not take it (16-bit, which
// the caller checks, with the tensor-core kernels; then the forward sweep's own conditions but y_ssm, and aligned
// gradients). Decided once per backward, as plan() per forward. CARVE_SSD_SWEEP_GRAD=0 keeps the chunk-level product
// and the state pass (comparisons); CARVE_SSD_FUSED applies as to the forward. dx joins it where its block fits in
// shared memory (not at state size 128 with 80-channel slices) and its rows are aligned.
std::optional<GradPlan> state_grad_plan(const SsdScanBackward& b) {
  const SsdScanForward& f = *b.fwd;
  const SsdScanShape& s = f.shape;
  const Setting when = setting();
  const char* v = std::getenv("CARVE_SSD_SWEEP_GRAD");
  if (f.dtype == ElementType::f32 || f.seg || when == Setting::never || (v && std::string(v) == "0"))
    return std::nullopt;
  if (!sweep_sizes(s)) return std::nullopt;
  const auto aligned8 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 8 == 0; };
  if (!aligned16(b.dy) || !aligned16(b.dy_lo) || !aligned16(f.C) || !aligned8(f.states) || !aligned8(f.final_state) ||
      !aligned8(b.dstates) || (b.dfinal_state && !aligned8(b.dfinal_state)) ||
      (b.dinitial_state && !aligned8(b.dinitial_state)))
    return std::nullopt;
  const auto bytes = [&](auto dx) {
    return with_sizes(s.n, slice_of(s.p), [](auto kN, auto kPs) {
      return GradLayout<__half, kN, kPs, decltype(dx)::value>::kBytes;
    });
  };
  if (bytes(std::false_type{}) > max_shared_per_block()) return std::nullopt;
  GradPlan p;
  p.spans = spans_of(s);
  if (p.spans.count > 1 && !b.span_grads) return std::nullopt;
  // Where the (row, head, slice, span) blocks fill less than half the GPU the chunk-level kernels are faster (as for
  // the forward sweep).
  if (when != Setting::always && head_blocks(s) * p.spans.count * 2 < sm_count()) return std::nullopt;
  // (launch_state_grad builds dx's instances only where they fit within kLargestSharedPerBlock.)
  const size_t dx_bytes = bytes(std::true_type{});
  p.dx = sweep_for_dx() && dx_bytes <= max_shared_per_block() && dx_bytes <= kLargestSharedPerBlock &&
         aligned16(f.B) && aligned16(f.x) &&
         reinterpret_cast<uintptr_t>(b.dx) % 4 == 0;
  return p;
}

template <typename T, int kN, int kPs>
void launch_state_grad(const SsdScanBackward& b, const GradPlan& p, cudaStream_t stream) {
  const SsdScanForward& f = *b.fwd;
  const long blocks = head_blocks(f.shape);
  const auto run = [&](auto kernel, size_t bytes, long count) {
    allow_dynamic_shared(reinterpret_cast<const void*>(kernel), bytes);
    kernel<<<static_cast<unsigned>(blocks * count), kPs / 8 * 32, bytes, stream>>>(
        f, dims_of(f.shape), p.spans, static_cast<const T*>(b.dy), static_cast<const T*>(b.dy_lo), b.dfinal_state,
        b.dstates, b.dinitial_state, b.end_term, b.span_grads, static_cast<T*>(b.dx), b.ddt_u);
    CARVE_CUDA_CHECK_LAUNCH();
  };
  const int spans = p.spans.count;
  if (spans > 1)
    run(ssd_state_grad_sweep_kernel<T, kN, kPs, false, false>, GradLayout<T, kN, kPs, false>::kBytes, spans - 1);
  // (State size 128 with 80-channel slices and dx needs 235 KB, past any GPU's 227: that instance is not built.)
  if constexpr (GradLayout<T, kN, kPs, true>::kBytes <= kLargestSharedPerBlock) {
    if (p.dx)
      return run(ssd_state_grad_sweep_kernel<T, kN, kPs, true, true>, GradLayout<T, kN, kPs, true>::kBytes, spans);
  }
  run(ssd_state_grad_sweep_kernel<T, kN, kPs, true, false>, GradLayout<T, kN, kPs, false>::kBytes, spans);
}

SsdBackwardSweeps sweeps_of(const std::optional<GradPlan>& p) {
  if (!p) return SsdBackwardSweeps::none;
  return p->dx ? SsdBackwardSweeps::state_grad_and_dx : SsdBackwardSweeps::state_grad;
}

}  // namespace

size_t ssd_fused_state_grad_span_floats(const SsdScanShape& s) {
  if (!sweep_sizes(s)) return 0;
  const SweepSpans sp = spans_of(s);
  return sp.count > 1 ? static_cast<size_t>(s.b) * sp.count * s.h * s.p * s.n : 0;
}

SsdBackwardSweeps ssd_fused_backward_sweeps(const SsdScanBackward& b) { return sweeps_of(state_grad_plan(b)); }

SsdBackwardSweeps ssd_fused_state_grad(const SsdScanBackward& b, cudaStream_t stream) {
  const std::optional<GradPlan> p = state_grad_plan(b);
  if (!p) return SsdBackwardSweeps::none;
  with_sizes(b.fwd->shape.n, slice_of(b.fwd->shape.p), [&](auto kN, auto kPs) {
    if (b.fwd->dtype == ElementType::bf16) launch_state_grad<__nv_bfloat16, kN, kPs>(b, *p, stream);
    else launch_state_grad<__half, kN, kPs>(b, *p, stream);
  });
  return sweeps_of(p);
}

size_t ssd_fused_forward_span_floats(const SsdScanForward& f) {
  const std::optional<SweepPlan> p = plan(f);
  if (!p || !p->training || p->spans.count == 1) return 0;
  const SsdScanShape& s = f.shape;
  return static_cast<size_t>(s.b) * p->spans.count * s.h * s.p * s.n;
}

SsdForwardKernels ssd_fused_forward_kernels(const SsdScanForward& f) {
  const std::optional<SweepPlan> p = plan(f);
  if (!p) return SsdForwardKernels::chunk_parallel;
  return p->wgmma ? SsdForwardKernels::sweep_wgmma : SsdForwardKernels::sweep;
}

bool ssd_fused_forward(const SsdScanForward& f, cudaStream_t stream) {
  const std::optional<SweepPlan> p = plan(f);
  if (!p) return false;
  CARVE_KERNEL_REQUIRE(!p->training || p->spans.count == 1 || f.span_states,
                       "ssd_scan_forward: training's sweep in spans needs span_states "
                       "(ssd_fused_forward_span_floats floats)");
  with_sizes(f.shape.n, slice_of(f.shape.p), [&](auto kN, auto kPs) {
    if (f.dtype == ElementType::bf16) launch<__nv_bfloat16, kN, kPs>(f, *p, stream);
    else launch<__half, kN, kPs>(f, *p, stream);
  });
  return true;
}

}  // namespace carve::kernels
