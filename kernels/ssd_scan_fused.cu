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

namespace carve::kernels {
namespace {

constexpr int kSpan = 64;               // tokens per step of a block's sweep
constexpr int kRowBlocks = kSpan / 16;  // 16-row output blocks of a step
constexpr int kOutWarps = 2 * kRowBlocks;  // a row block's outputs in two halves of the channels, one warp each
constexpr int kStages = 3;              // steps whose tokens are staged or in flight
constexpr int kTiles = kRowBlocks * (kRowBlocks + 1) / 2;  // a step's 16 x 16 C.B tiles on or below the diagonal
constexpr int kTileFloats = 16 * 16;

// Shared memory of one block: kStages stages of a step's tokens, then the state entering this step and the next one
// (16-bit, [kPs][kLdBC]), then D per channel, the per-token values and the C.B tiles. Rows are padded by 8 elements,
// so that the fragments' 4-byte reads of 8 rows fall in distinct banks, and stay 16-byte aligned for cp.async and
// ldmatrix.
template <typename T, int kN, int kPs>
struct FusedLayout {
  static constexpr int kLdBC = kN + 8;
  static constexpr int kLdX = kPs + 8;
  // A warp's share of the state: 16 channels and half of the kN columns. (With 4 warps, each holding 16 channels and
  // all columns and computing one row block's outputs alone, one warp per scheduler waited out its products'
  // latencies: 6 us a step at HoVLE's sizes.)
  static constexpr int kWarps = kPs / 8;
  static_assert(kWarps >= kOutWarps, "every warp holds state; the first kOutWarps also make outputs");
  static constexpr int kHalfN = kN / 2, kHalfPs = kPs / 2;
  // One stage: C and B rows [kSpan][kLdBC], x and z rows [kSpan][kLdX], the cumsum before the step's first token and
  // at each of its tokens (kSpan + 1 doubles, padded to 16 bytes), dt' [kSpan].
  static constexpr size_t kC = 0;
  static constexpr size_t kB = kC + sizeof(T) * kSpan * kLdBC;
  static constexpr size_t kX = kB + sizeof(T) * kSpan * kLdBC;
  static constexpr size_t kZ = kX + sizeof(T) * kSpan * kLdX;
  static constexpr size_t kCum = kZ + sizeof(T) * kSpan * kLdX;
  static constexpr size_t kDt = kCum + sizeof(double) * (kSpan + 2);
  static constexpr size_t kStage = kDt + sizeof(float) * kSpan;
  static constexpr size_t kState = kStages * kStage;
  static constexpr size_t kD = kState + 2 * sizeof(T) * kPs * kLdBC;
  // Per-token values of a step (TokenValues), twice: this step's, and the next one's being made.
  static constexpr size_t kTokens = kD + sizeof(float) * kPs;
  // A step's C.B tiles in float32, twice: this step's, read by the output warps, and the next step's, being made.
  // Tile i (row block r, source block s <= r, i = r (r + 1) / 2 + s) is stored in the accumulators' own order,
  // [8-column half][lane][4], so that writer and reader move a lane's four floats as one 16-byte access.
  static constexpr size_t kCB = kTokens + 2 * sizeof(float) * 4 * kSpan;
  static constexpr size_t kBytes = kCB + 2 * sizeof(float) * kTiles * kTileFloats;
  static_assert(kStage % 16 == 0 && kD % 16 == 0 && kTokens % 16 == 0 && kCB % 16 == 0, "16-byte aligned regions");
};

// A step's per-token values, made once per step from dt_prepare's float64 cumsums (L_t from the step's start, a
// difference of two nearby cumsums taken in float64): L_t; G_t = log dt'_t - L_t, so that a source's weight for row r
// is exp(L_r + G_s) = exp(L_r - L_s) dt'_s; F_t = exp(L_last - L_t) dt'_t, a token's weight in the state update;
// E_t = exp(L_t), the state's decay to row t.
struct TokenValues {
  float* L;
  float* G;
  float* F;
  float* E;
  __device__ TokenValues(float* base) : L(base), G(base + kSpan), F(base + 2 * kSpan), E(base + 3 * kSpan) {}
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

template <typename T, int kN, int kPs, bool kOutputs>
__global__ void __launch_bounds__(FusedLayout<T, kN, kPs>::kWarps * 32, 1)
    ssd_fused_forward_kernel(SsdScanForward a, ScanDims d, SweepSpans sp) {
  using Lay = FusedLayout<T, kN, kPs>;
  using TC = TensorCore<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int slices = d.p / kPs;
  // The state-only launch has no block for the last span.
  const int span_blocks = kOutputs ? sp.count : sp.count - 1;
  const int slice = blockIdx.x % slices, span = blockIdx.x / slices % span_blocks,
            head_row = blockIdx.x / slices / span_blocks;
  const int hi = head_row % d.h, bi = head_row / d.h, gi = hi / d.r;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  const int p0 = slice * kPs;  // the block's first channel
  const int first = span * sp.steps, steps = min((d.l + kSpan - 1) / kSpan, first + sp.steps);  // [first, steps)
  // Where a span's local state and log-decay go (the first launch) and come from (the second).
  const auto span_state = [&](int i) {
    return a.states + ((static_cast<long>(bi) * d.c + i) * d.h + hi) * d.p * kN;
  };
  float* const span_log_decay = span_state(sp.count - 1);
  // The copies' sources: the block's rows at token 0 (a step adds its first token's rows), and its (row, head)'s
  // per-token workspace. The offsets within a step are ints: 64 rows of g n or h p elements.
  const int bc_row = d.g * kN, x_row = d.h * d.p;
  const T* const C_rows = static_cast<const T*>(a.C) + (static_cast<long>(bi) * d.l * d.g + gi) * kN;
  const T* const B_rows = static_cast<const T*>(a.B) + (static_cast<long>(bi) * d.l * d.g + gi) * kN;
  const T* const x_rows = static_cast<const T*>(a.x) + (static_cast<long>(bi) * d.l * d.h + hi) * d.p + p0;
  const T* const z_rows = a.z ? static_cast<const T*>(a.z) + (static_cast<long>(bi) * d.l * d.h + hi) * d.p + p0
                              : nullptr;
  const long token_base = (static_cast<long>(bi) * d.h + hi) * d.c * d.q;  // of dt_prepare's [b, h, c, q]
  // issue() is called for consecutive steps: the next one's chunk and offset in it, carried instead of divided.
  int next_chunk = first * kSpan / d.q, next_off = first * kSpan % d.q;

  // Step j's tokens into stage j % kStages (an empty group past the last step, so that the waits count alike).
  // (ncu at version 9: the copies' index arithmetic, in 64-bit and per piece, was 15% of the instructions.)
  auto issue = [&](int j) {
    if (j < steps) {
      unsigned char* st = smem + (j % kStages) * Lay::kStage;
      T* Cs = reinterpret_cast<T*>(st + Lay::kC);
      T* Bs = reinterpret_cast<T*>(st + Lay::kB);
      T* Xs = reinterpret_cast<T*>(st + Lay::kX);
      T* Zs = reinterpret_cast<T*>(st + Lay::kZ);
      double* cum_s = reinterpret_cast<double*>(st + Lay::kCum);
      float* dt_s = reinterpret_cast<float*>(st + Lay::kDt);
      const int t0 = j * kSpan;
      const T* C_step = C_rows + static_cast<long>(t0) * bc_row;
      const T* B_step = B_rows + static_cast<long>(t0) * bc_row;
      const T* x_step = x_rows + static_cast<long>(t0) * x_row;
      const T* z_step = z_rows + static_cast<long>(t0) * x_row;
      constexpr unsigned kThreads = Lay::kWarps * 32;
      constexpr unsigned kBcPieces = kN / 8, kXPieces = kPs / 8;  // 16-byte pieces of a row
#pragma unroll
      for (unsigned k = 0; k < (kSpan * kBcPieces + kThreads - 1) / kThreads; ++k) {
        const unsigned i = threadIdx.x + k * kThreads, r = i / kBcPieces, c = i % kBcPieces;
        if (i >= kSpan * kBcPieces) break;
        const bool real = t0 + static_cast<int>(r) < d.l;  // rows past the end are zeros
        const int at = real ? static_cast<int>(r) * bc_row + 8 * static_cast<int>(c) : 0;
        if (kOutputs) copy_async<16>(Cs + r * Lay::kLdBC + 8 * c, C_step + at, real);
        copy_async<16>(Bs + r * Lay::kLdBC + 8 * c, B_step + at, real);
      }
#pragma unroll
      for (unsigned k = 0; k < (kSpan * kXPieces + kThreads - 1) / kThreads; ++k) {
        const unsigned i = threadIdx.x + k * kThreads, r = i / kXPieces, c = i % kXPieces;
        if (i >= kSpan * kXPieces) break;
        const bool real = t0 + static_cast<int>(r) < d.l;
        const int at = real ? static_cast<int>(r) * x_row + 8 * static_cast<int>(c) : 0;
        copy_async<16>(Xs + r * Lay::kLdX + 8 * c, x_step + at, real);
        if (kOutputs && z_rows) copy_async<16>(Zs + r * Lay::kLdX + 8 * c, z_step + at, real);
      }
      // dt_prepare's workspace holds every chunk's q tokens (dt' = 0 and the cumsum constant past the end).
      const long o = token_base + static_cast<long>(next_chunk) * d.q + next_off;
      const int i = threadIdx.x;
      if (i <= kSpan) {
        const bool real = i > 0 || next_off > 0;  // before a chunk's first token the cumsum is 0
        copy_async<8>(cum_s + i, a.cum + o - 1 + (real ? i : 1), real);
      }
      if (i < kSpan) copy_async<4>(dt_s + i, a.dtp + o + i, true);
      next_off += kSpan;
      if (next_off == d.q) next_off = 0, ++next_chunk;
    }
    commit_copies();
  };
  for (int j = first; j + 1 < first + kStages; ++j) issue(j);
  float* tokens_s = reinterpret_cast<float*>(smem + Lay::kTokens);
  // Step j's per-token values into buffer j % 2, by the first kSpan threads.
  auto make_tokens = [&](int j) {
    const unsigned char* st = smem + (j % kStages) * Lay::kStage;
    const double* cum_s = reinterpret_cast<const double*>(st + Lay::kCum);
    const float* dt_s = reinterpret_cast<const float*>(st + Lay::kDt);
    const TokenValues tv(tokens_s + (j & 1) * 4 * kSpan);
    for (int t = threadIdx.x; t < kSpan; t += blockDim.x) {
      const float Lt = static_cast<float>(cum_s[t + 1] - cum_s[0]);
      const float L_last = static_cast<float>(cum_s[kSpan] - cum_s[0]);
      const float dt = dt_s[t];
      tv.L[t] = Lt;
      tv.G[t] = dt > 0.f ? logf(dt) - Lt : -INFINITY;
      tv.F[t] = expf(L_last - Lt) * dt;
      tv.E[t] = expf(Lt);
    }
  };
  // Step j's C.B tiles into buffer j % 2, spread over the warps: each tile is made once, instead of by both warps of
  // its row block as their own operand, and the warps with the most outputs to make (the last row blocks) make the
  // fewest tiles (docs/kernels.md, version 9). Tiles go to warps in the order of their slot: the warps without
  // outputs first, then the row blocks' warps from the first row block to the last.
  const int cb_slot = warp >= kOutWarps ? warp - kOutWarps
                                        : Lay::kWarps - kOutWarps + 2 * (warp % kRowBlocks) + warp / kRowBlocks;
  auto make_cb = [&](int j) {
    const unsigned char* st = smem + (j % kStages) * Lay::kStage;
    const T* Cs = reinterpret_cast<const T*>(st + Lay::kC);
    const T* Bs = reinterpret_cast<const T*>(st + Lay::kB);
    float4* cb_s = reinterpret_cast<float4*>(smem + Lay::kCB) + (j & 1) * kTiles * (kTileFloats / 4);
    for (int i = cb_slot; i < kTiles; i += Lay::kWarps) {
      const int r = (i >= 1) + (i >= 3) + (i >= 6), s = i - r * (r + 1) / 2;
      // Even and odd k steps in separate accumulators: four chains of products in flight instead of two.
      float acc[2][2][4] = {};
#pragma unroll
      for (int kk = 0; kk < kN / 16; ++kk) {
        uint32_t aa[4], bb[2][2];
        load_a_fragment_ldsm(aa, Cs, Lay::kLdBC, 16 * r, 16 * kk);
        load_b_fragments_ldsm(bb, Bs, Lay::kLdBC, 16 * kk, 16 * s);
        TC::mma(acc[kk & 1][0], aa, bb[0][0], bb[0][1]);
        TC::mma(acc[kk & 1][1], aa, bb[1][0], bb[1][1]);
      }
      float4* tile = cb_s + i * (kTileFloats / 4);
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
        tile[32 * nt + lane] = make_float4(acc[0][nt][0] + acc[1][nt][0], acc[0][nt][1] + acc[1][nt][1],
                                           acc[0][nt][2] + acc[1][nt][2], acc[0][nt][3] + acc[1][nt][3]);
    }
  };

  // The warp's state: channels 16 (warp % (kPs / 16)) + gid (elements 0, 1) and + 8 (2, 3) of the slice, columns
  // n0 + 8 nt + 2 tig (+ 1); element e of column block nt at offset state_at(nt, e) of a [kPs][kN] block.
  T* state_s = reinterpret_cast<T*>(smem + Lay::kState);
  float* D_s = reinterpret_cast<float*>(smem + Lay::kD);
  const int c_row = 16 * (warp % (kPs / 16)) + gid, n0 = Lay::kHalfN * (warp / (kPs / 16));
  const auto state_at = [&](int nt, int e) { return (c_row + 8 * (e / 2)) * kN + n0 + 8 * nt + 2 * tig + e % 2; };
  float S[Lay::kHalfN / 8][4];
  // The state entering the block's first step: the initial state (or zeros), and, after the first span, carried
  // through the spans before this one. The state-only launch starts each span from zeros.
  const float* init = kOutputs && a.initial_state
                          ? a.initial_state + ((static_cast<long>(bi) * d.h + hi) * d.p + p0) * kN
                          : nullptr;
#pragma unroll
  for (int nt = 0; nt < Lay::kHalfN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) S[nt][e] = init ? init[state_at(nt, e)] : 0.f;
  if (kOutputs) {
    for (int i = 0; i < span; ++i) {
      const float decay = expf(span_log_decay[i]);
      const float* local = span_state(i) + p0 * kN;
#pragma unroll
      for (int nt = 0; nt < Lay::kHalfN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) S[nt][e] = decay * S[nt][e] + local[state_at(nt, e)];
    }
  }
  T* const state_first = state_s + (first & 1) * kPs * Lay::kLdBC;  // the buffer step `first` reads
#pragma unroll
  for (int nt = 0; nt < Lay::kHalfN / 8; ++nt) {
    const int col = n0 + 8 * nt + 2 * tig;
    *reinterpret_cast<uint32_t*>(state_first + c_row * Lay::kLdBC + col) = TC::pack(S[nt][0], S[nt][1]);
    *reinterpret_cast<uint32_t*>(state_first + (c_row + 8) * Lay::kLdBC + col) = TC::pack(S[nt][2], S[nt][3]);
  }
  double log_decay = 0.;  // of the span, summed by thread 0 in the state-only launch
  for (int i = threadIdx.x; i < kPs; i += blockDim.x)
    D_s[i] = a.D ? a.D[a.D_per_channel ? hi * d.p + p0 + i : hi] : 0.f;

  staged_but<kStages - 2>();  // the first step's tokens
  __syncthreads();
  make_tokens(first);
  if (kOutputs) make_cb(first);

  for (int j = first; j < steps; ++j) {
    staged_but<0>();  // this thread's copies of steps j and j + 1 (issued a step ago: its latency is long hidden)
    __syncthreads();  // everyone's, and step j's per-token values; every warp is done with step j - 1
    issue(j + kStages - 1);
    if (j + 1 < steps) {
      make_tokens(j + 1);
      if (kOutputs) make_cb(j + 1);
    }
    const unsigned char* st = smem + (j % kStages) * Lay::kStage;
    const T* Cs = reinterpret_cast<const T*>(st + Lay::kC);
    const T* Bs = reinterpret_cast<const T*>(st + Lay::kB);
    const T* Xs = reinterpret_cast<const T*>(st + Lay::kX);
    const T* Zs = reinterpret_cast<const T*>(st + Lay::kZ);
    const TokenValues tv(tokens_s + (j & 1) * 4 * kSpan);
    const T* state_in = state_s + (j & 1) * kPs * Lay::kLdBC;
    T* state_out = state_s + ((j + 1) & 1) * kPs * Lay::kLdBC;

    if (!kOutputs && threadIdx.x == 0) {
      const double* cum_s = reinterpret_cast<const double*>(st + Lay::kCum);
      log_decay += cum_s[kSpan] - cum_s[0];
    }
    if (kOutputs && warp < kOutWarps) {
      // Outputs of rows [16 rb, + 16) and channels [ch0, + kPs / 2): the state's term, then the step's sources in
      // 16-token blocks up to the diagonal, each C.B tile (made a step ago, make_cb) weighted in registers and fed to
      // the product with x as the A operand.
      const int rb = warp % kRowBlocks, ch0 = Lay::kHalfPs * (warp / kRowBlocks);
      const int r0 = 16 * rb + gid, r1 = r0 + 8;
      float Y[Lay::kHalfPs / 8][4];
#pragma unroll
      for (int jp = 0; jp < Lay::kHalfPs / 8; ++jp)
#pragma unroll
        for (int e = 0; e < 4; ++e) Y[jp][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kN / 16; ++kk) {
        uint32_t aC[4];
        load_a_fragment_ldsm(aC, Cs, Lay::kLdBC, 16 * rb, 16 * kk);
        mma_across<false>(Y, aC, state_in, Lay::kLdBC, 16 * kk, ch0);
      }
      const float4* cb_s = reinterpret_cast<const float4*>(smem + Lay::kCB) + (j & 1) * kTiles * (kTileFloats / 4) +
                           rb * (rb + 1) / 2 * (kTileFloats / 4);
      float cb[kRowBlocks][2][4];
#pragma unroll
      for (int sb = 0; sb < kRowBlocks; ++sb) {
        if (sb > rb) break;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const float4 v = cb_s[sb * (kTileFloats / 4) + 32 * nt + lane];
          cb[sb][nt][0] = v.x, cb[sb][nt][1] = v.y, cb[sb][nt][2] = v.z, cb[sb][nt][3] = v.w;
        }
      }
      const float L0 = tv.L[r0], L1 = tv.L[r1], e0 = tv.E[r0], e1 = tv.E[r1];
#pragma unroll
      for (int jp = 0; jp < Lay::kHalfPs / 8; ++jp) Y[jp][0] *= e0, Y[jp][1] *= e0, Y[jp][2] *= e1, Y[jp][3] *= e1;
#pragma unroll
      for (int sb = 0; sb < kRowBlocks; ++sb) {
        if (sb > rb) break;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const int src = 16 * sb + 8 * nt + 2 * tig;
          const float2 g = *reinterpret_cast<const float2*>(tv.G + src);
          cb[sb][nt][0] *= src <= r0 ? __expf(L0 + g.x) : 0.f;
          cb[sb][nt][1] *= src + 1 <= r0 ? __expf(L0 + g.y) : 0.f;
          cb[sb][nt][2] *= src <= r1 ? __expf(L1 + g.x) : 0.f;
          cb[sb][nt][3] *= src + 1 <= r1 ? __expf(L1 + g.y) : 0.f;
        }
        const uint32_t aw[4] = {TC::pack(cb[sb][0][0], cb[sb][0][1]), TC::pack(cb[sb][0][2], cb[sb][0][3]),
                                TC::pack(cb[sb][1][0], cb[sb][1][1]), TC::pack(cb[sb][1][2], cb[sb][1][3])};
        mma_across<true>(Y, aw, Xs, Lay::kLdX, 16 * sb, ch0);
      }
      // + D x, * silu(z), rounded once: as the chunk-parallel output kernel's epilogue.
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = half ? r1 : r0, t = j * kSpan + r;
        if (t >= d.l) continue;
        T* out = static_cast<T*>(a.out) + ((static_cast<long>(bi) * d.l + t) * d.h + hi) * d.p + p0;
#pragma unroll
        for (int jp = 0; jp < Lay::kHalfPs / 8; ++jp) {
          const int pc = ch0 + 8 * jp + 2 * tig;
          const float2 xv = TC::unpack(pair_at(Xs + r * Lay::kLdX, pc));
          float y0 = Y[jp][2 * half] + D_s[pc] * xv.x, y1 = Y[jp][2 * half + 1] + D_s[pc + 1] * xv.y;
          if (z_rows) {
            const float2 zv = TC::unpack(pair_at(Zs + r * Lay::kLdX, pc));
            y0 *= silu_fast(zv.x), y1 *= silu_fast(zv.y);
          }
          *reinterpret_cast<uint32_t*>(out + pc) = TC::pack(y0, y1);
        }
      }
    }

    // The state, every warp its share: x's rows of the step are the A operand (channels x tokens, read
    // transposed), each token's column scaled by F_s before it is rounded back to 16 bits.
    const float decay = tv.E[kSpan - 1];
#pragma unroll
    for (int nt = 0; nt < Lay::kHalfN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) S[nt][e] *= decay;
#pragma unroll
    for (int ks = 0; ks < kSpan / 16; ++ks) {
      uint32_t ax[4];
      load_a_fragment_kmajor(ax, Xs, Lay::kLdX, c_row - gid, 16 * ks);
      const int s = 16 * ks + 2 * tig;
      const float2 f01 = *reinterpret_cast<const float2*>(tv.F + s);
      const float2 f89 = *reinterpret_cast<const float2*>(tv.F + s + 8);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 v = TC::unpack(ax[i]);
        ax[i] = i < 2 ? TC::pack(v.x * f01.x, v.y * f01.y) : TC::pack(v.x * f89.x, v.y * f89.y);
      }
      mma_across<true>(S, ax, Bs, Lay::kLdBC, 16 * ks, n0);
    }
#pragma unroll
    for (int nt = 0; nt < Lay::kHalfN / 8; ++nt) {
      if (!kOutputs) break;  // only the outputs read the state from shared memory
      const int col = n0 + 8 * nt + 2 * tig;
      *reinterpret_cast<uint32_t*>(state_out + c_row * Lay::kLdBC + col) = TC::pack(S[nt][0], S[nt][1]);
      *reinterpret_cast<uint32_t*>(state_out + (c_row + 8) * Lay::kLdBC + col) = TC::pack(S[nt][2], S[nt][3]);
    }
  }
  staged();  // the empty groups

  // The last span's state is the final state; the others' local states go to the workspace for the second launch.
  if (kOutputs && span + 1 < sp.count) return;
  float* fin = kOutputs ? a.final_state + ((static_cast<long>(bi) * d.h + hi) * d.p + p0) * kN
                        : span_state(span) + p0 * kN;
#pragma unroll
  for (int nt = 0; nt < Lay::kHalfN / 8; ++nt) {
    *reinterpret_cast<float2*>(fin + state_at(nt, 0)) = make_float2(S[nt][0], S[nt][1]);
    *reinterpret_cast<float2*>(fin + state_at(nt, 2)) = make_float2(S[nt][2], S[nt][3]);
  }
  if (!kOutputs && slice == 0 && threadIdx.x == 0) span_log_decay[span] = static_cast<float>(log_decay);
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

// The (row, head, slice) blocks of a sweep without spans.
long head_blocks(const SsdScanShape& s) { return static_cast<long>(s.b) * s.h * (s.p / slice_of(s.p)); }

// Spans per (row, head): as many as fill one wave of one block per SM, at most one per chunk (the workspace holds
// a state per chunk) and per step. CARVE_SSD_SPANS=N asks for N (tests, comparisons).
SweepSpans spans_of(const SsdScanShape& s) {
  const int steps = (s.l + kSpan - 1) / kSpan;
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

// The sweep's spans for this forward, or nothing where the sweep does not take it (ssd_fused_forward_applies says
// which conditions). Decided once per forward: the check and the launch read the same plan.
std::optional<SweepSpans> plan(const SsdScanForward& f) {
  const SsdScanShape& s = f.shape;
  const int ps = slice_of(s.p);
  const Setting when = setting();
  if (f.dtype == ElementType::f32 || f.y_ssm || f.seg || when == Setting::never) return std::nullopt;
  if (ps == 0 || s.q % kSpan != 0 || (s.n != 64 && s.n != 80 && s.n != 128)) return std::nullopt;
  if (!aligned16(f.x) || !aligned16(f.B) || !aligned16(f.C) || (f.z && !aligned16(f.z)) || !aligned16(f.out) ||
      !aligned16(f.final_state) || (f.initial_state && !aligned16(f.initial_state)))
    return std::nullopt;
  // State size 128 with 80-channel slices needs 236 KB, past compute capability 9.0's 227 KB; before 9.0 less fits.
  // (The layout is the same for both 16-bit types.)
  const size_t bytes = with_sizes(s.n, ps, [](auto kN, auto kPs) { return FusedLayout<__half, kN, kPs>::kBytes; });
  if (bytes > max_shared_per_block()) return std::nullopt;
  const SweepSpans sp = spans_of(s);
  if (when != Setting::always && head_blocks(s) * sp.count * 2 < sm_count()) return std::nullopt;
  return sp;
}

template <typename T, int kN, int kPs>
void launch(const SsdScanForward& f, const SweepSpans& sp, cudaStream_t stream) {
  using Lay = FusedLayout<T, kN, kPs>;
  const ScanDims d = dims_of(f.shape);
  const long blocks = head_blocks(f.shape);
  if (sp.count > 1) {
    constexpr auto states = ssd_fused_forward_kernel<T, kN, kPs, false>;
    allow_dynamic_shared(reinterpret_cast<const void*>(states), Lay::kBytes);
    states<<<static_cast<unsigned>(blocks * (sp.count - 1)), Lay::kWarps * 32, Lay::kBytes, stream>>>(f, d, sp);
    CARVE_CUDA_CHECK_LAUNCH();
  }
  constexpr auto outputs = ssd_fused_forward_kernel<T, kN, kPs, true>;
  allow_dynamic_shared(reinterpret_cast<const void*>(outputs), Lay::kBytes);
  outputs<<<static_cast<unsigned>(blocks * sp.count), Lay::kWarps * 32, Lay::kBytes, stream>>>(f, d, sp);
  CARVE_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool ssd_fused_forward_applies(const SsdScanForward& f) { return plan(f).has_value(); }

bool ssd_fused_forward(const SsdScanForward& f, cudaStream_t stream) {
  const std::optional<SweepSpans> sp = plan(f);
  if (!sp) return false;
  with_sizes(f.shape.n, slice_of(f.shape.p), [&](auto kN, auto kPs) {
    if (f.dtype == ElementType::bf16) launch<__nv_bfloat16, kN, kPs>(f, *sp, stream);
    else launch<__half, kN, kPs>(f, *sp, stream);
  });
  return true;
}

}  // namespace carve::kernels
