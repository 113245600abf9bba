/*
 * SSD chunked scan in CUDA. The math (per head h, chunk of q tokens, L = cumsum of dt' * A inside the chunk):
 *   local state  S_loc = sum_s exp(L_end - L_s) dt'_s x_s B_s^T                    (tile GEMM, k = tokens)
 *   entering     S_{c+1} = exp(L_end) S_c + S_loc                                  (sequential over chunks)
 *   output       y_l = sum_{s<=l} (C_l . B_s) exp(L_l - L_s) dt'_s x_s + exp(L_l) S_c C_l + D x_l, then * silu(z_l)
 * The backward follows the same pieces in reverse; the derivation of the decay gradient (why dL needs only
 * dy . y_ssm, dt' * (x . U) and one inner product per chunk end) is in docs/kernels.md.
 *
 * Kernels (forward): dt_prepare, chunk_state (GEMM), state_pass, chunk_cb (GEMM), chunk_output (GEMM with the
 * inter-chunk term concatenated along k, D and gate in the epilogue).
 * Backward: gate_backward, chunk_state (GEMM, gradient of the entering states), state_pass_backward, chunk_dx
 * (GEMM: dx and the dt gradient through dt * x), chunk_dcb (segmented GEMM over the heads of a group), chunk_dc and
 * chunk_db (GEMMs), dt_backward (reverse cumsum, softplus, dA, dt_bias).
 * Those are version 1's, on the CUDA-core tile product (tile_gemm.cuh). For 16-bit inputs the products run on tensor
 * cores instead: chunk_state_tc and chunk_cb_tc (ssd_scan_tc.cuh), and the output, dx, dC and dB as instances of one
 * pair kernel (ssd_pair_tc.cuh); with heads sharing a group, dCB on tensor cores too (chunk_dcb_tc), otherwise it
 * is never made. Where they apply, the sweeps of ssd_scan_fused.h replace the forward's chunk-level kernels (versions
 * 8-12) and the backward's entering-state gradient and state pass (version 13) and its dx (version 14).
 */
#include "kernels/ssd_scan.h"

#include <cstdlib>
#include <string>

#include "kernels/ssd_chunk.cuh"
#include "kernels/ssd_pair_tc.cuh"
#include "kernels/ssd_scan_fused.h"
#include "kernels/ssd_scan_tc.cuh"
#include "kernels/tile_gemm.cuh"

namespace carve::kernels {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// dt' = softplus?(dt + dt_bias) and L = cumsum(dt' * A) inside each chunk. One block per (b, h, chunk).

// Inclusive prefix sum over the block's threads (blockDim.x <= 1024, a multiple of 32).
template <typename V>
__device__ V block_inclusive_scan(V v, V* warp_totals) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int o = 1; o < 32; o <<= 1) {
    const V up = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += up;
  }
  if (lane == 31) warp_totals[warp] = v;
  __syncthreads();
  if (warp == 0) {
    V t = lane < warps ? warp_totals[lane] : V(0);
    for (int o = 1; o < 32; o <<= 1) {
      const V up = __shfl_up_sync(0xffffffffu, t, o);
      if (lane >= o) t += up;
    }
    if (lane < warps) warp_totals[lane] = t;
  }
  __syncthreads();
  if (warp > 0) v += warp_totals[warp - 1];
  __syncthreads();
  return v;
}


template <typename T>
__global__ void dt_prepare_kernel(ScanDims d, const T* dt, const float* A, const float* dt_bias, bool softplus,
                                  float* dtp, double* cum) {
  __shared__ double totals[32];
  const int ci = blockIdx.x % d.c, hi = (blockIdx.x / d.c) % d.h, bi = blockIdx.x / (d.c * d.h);
  const int i = threadIdx.x, t = ci * d.q + i;
  float v = 0.f;
  if (i < d.q && t < d.l) {
    v = to_float(dt[((long)bi * d.l + t) * d.h + hi]);
    if (dt_bias) v += dt_bias[hi];
    if (softplus) v = softplusf(v);
  }
  const double L = block_inclusive_scan(static_cast<double>(v) * A[hi], totals);
  if (i < d.q) {
    const long o = (((long)bi * d.h + hi) * d.c + ci) * d.q + i;
    dtp[o] = v;
    cum[o] = L;
  }
}

// CARVE_SSD_TENSOR_CORES=0 runs the 16-bit forward on the version 1 CUDA-core product (side-by-side benchmarks).
bool ssd_tensor_cores_enabled() {
  const char* v = std::getenv("CARVE_SSD_TENSOR_CORES");
  return v == nullptr || std::string(v) != "0";
}

unsigned scan_threads(int q) { return static_cast<unsigned>((q + 31) / 32 * 32); }

// ---------------------------------------------------------------------------------------------------------------
// The state products (StateProduct in ssd_chunk.cuh) on the CUDA-core tile product: [p, n] per head.
template <typename T, StateProduct kind>
struct ChunkStateProblem {
  static constexpr bool kAKFast = false, kBNFast = true, kSegmented = false, kRowReduce = false;
  Chunk cx;
  const T* left;     // x or dy [b, l, h, p]
  const T* left_lo;  // null, or dy_lo
  const T* right;    // B or C [b, l, g, n]
  const float* dtp;
  const double* cum;
  float* out;        // [b, c, h, p, n]
  int M, N, K;
  double L_end;

  __device__ void select(int idx) {
    cx.select(idx, cx.d.h);
    L_end = cum[cx.scan(cx.hi, cx.d.q - 1)];
  }
  __device__ bool skip_k_tile(int, int, int) const { return false; }
  __device__ float a(int m, int k) const {
    const float w = state_weight(kind, cx, dtp, cum, L_end, k);
    return w == 0.f ? 0.f : w * with_rest(left, left_lo, cx.token(k, cx.d.h, cx.hi, cx.d.p) + m);
  }
  __device__ float b(int k, int n) const {
    return cx.valid(k) ? to_float(right[cx.token(k, cx.d.g, cx.hi / cx.d.r, cx.d.n) + n]) : 0.f;
  }
  __device__ float store(int m, int n, float acc) const {
    out[cx.state(cx.hi) + (long)m * cx.d.n + n] = acc;
    return 0.f;
  }
};

// Decay of the state across chunk ci: exp(L_end), or 0 where a new sample starts inside the chunk.
__device__ float chunk_decay(const ScanDims& d, const int* seg, const double* cum, int bi, int hi, int ci) {
  const float L = static_cast<float>(cum[(((long)bi * d.h + hi) * d.c + ci) * d.q + d.q - 1]);
  if (seg) {
    const long row = (long)bi * d.l;
    const int end = seg[row + min(ci * d.q + d.q - 1, d.l - 1)];
    const int prev = ci == 0 ? 0 : seg[row + ci * d.q - 1];
    if (end != prev) return 0.f;
  }
  return expf(L);
}

// Chunks per batch of loads in the sequential passes over chunks: a thread issues the loads of 8 chunks before the
// recursion consumes them, so their latencies overlap instead of adding up (one chunk at a time, the pass took
// longer than the whole tensor-core forward).
constexpr int kPassBatch = 8;
constexpr int kPassThreads = 256;

// In place over `states`: local states in, entering states out; one thread per state element of one (b, h).
__global__ void state_pass_kernel(ScanDims d, const int* seg, const double* cum, const float* initial, float* states,
                                  float* final_state) {
  const long pn = (long)d.p * d.n;
  const long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
  const int hi = blockIdx.y % d.h, bi = blockIdx.y / d.h;
  if (e >= pn) return;
  auto at = [&](int ci) { return (((long)bi * d.c + ci) * d.h + hi) * pn + e; };
  float s = initial ? initial[((long)bi * d.h + hi) * pn + e] : 0.f;
  for (int c0 = 0; c0 < d.c; c0 += kPassBatch) {
    float local[kPassBatch] = {}, decay[kPassBatch] = {};
#pragma unroll
    for (int k = 0; k < kPassBatch; ++k) {
      if (c0 + k >= d.c) break;
      local[k] = states[at(c0 + k)];
      decay[k] = chunk_decay(d, seg, cum, bi, hi, c0 + k);
    }
#pragma unroll
    for (int k = 0; k < kPassBatch; ++k) {
      if (c0 + k >= d.c) break;
      states[at(c0 + k)] = s;
      s = decay[k] * s + local[k];
    }
  }
  final_state[((long)bi * d.h + hi) * pn + e] = s;
}

// C_l . B_s for every pair of a chunk, per group: [q, q] (only s <= l blocks are used).
template <typename T>
struct ChunkCbProblem {
  static constexpr bool kAKFast = true, kBNFast = false, kSegmented = false, kRowReduce = false;
  Chunk cx;
  const T* C;
  const T* B;
  float* cb;
  int M, N, K;
  __device__ void select(int idx) { cx.select(idx, cx.d.g); }
  __device__ bool skip_k_tile(int m0, int n0, int) const { return n0 > m0 + kTile - 1; }
  __device__ float a(int m, int k) const { return cx.valid(m) ? to_float(C[cx.token(m, cx.d.g, cx.hi, cx.d.n) + k]) : 0.f; }
  __device__ float b(int k, int n) const { return cx.valid(n) ? to_float(B[cx.token(n, cx.d.g, cx.hi, cx.d.n) + k]) : 0.f; }
  __device__ float store(int m, int n, float acc) const {
    cb[cx.cb(cx.hi) + (long)m * cx.d.q + n] = acc;
    return 0.f;
  }
};

// The intra-chunk weight of source s for target l: (C_l . B_s) exp(L_l - L_s) on the causal, same-sample part.
__device__ __forceinline__ float intra_weight(const Chunk& cx, const float* cb, const double* cum, int head, int l,
                                              int s) {
  if (s > l || !cx.valid(l) || cx.seg_of(l) != cx.seg_of(s)) return 0.f;
  return cb[cx.cb(head / cx.d.r) + (long)l * cx.d.q + s] *
         expf(static_cast<float>(cum[cx.scan(head, l)] - cum[cx.scan(head, s)]));
}

// y[l, p] = sum_s w(l, s) dt'_s x[s, p]  (k < q)  +  exp(L_l) sum_n C[l, n] S[p, n]  (k = q + n), then D and gate.
template <typename T>
struct ChunkOutputProblem {
  static constexpr bool kAKFast = true, kBNFast = true, kSegmented = false, kRowReduce = false;
  Chunk cx;
  const T* x;
  const T* C;
  const T* z;
  const float* D;
  bool D_per_channel;
  const float* dtp;
  const double* cum;
  const float* cb;
  const float* states;
  T* out;
  float* y_ssm;
  int M, N, K;

  __device__ void select(int idx) { cx.select(idx, cx.d.h); }
  // Only tiles wholly inside the intra-chunk k range: with q not a multiple of kTileK, a tile past the diagonal can
  // hold the first inter-chunk columns (q = 100 lost them).
  __device__ bool skip_k_tile(int m0, int, int k0) const { return k0 + kTileK <= cx.d.q && k0 > m0 + kTile - 1; }
  __device__ float a(int m, int k) const {
    if (k < cx.d.q) return intra_weight(cx, cb, cum, cx.hi, m, k) * dtp[cx.scan(cx.hi, k)];
    if (!cx.valid(m) || cx.seg_of(m) != cx.seg_prev) return 0.f;
    return expf(static_cast<float>(cum[cx.scan(cx.hi, m)])) *
           to_float(C[cx.token(m, cx.d.g, cx.hi / cx.d.r, cx.d.n) + k - cx.d.q]);
  }
  __device__ float b(int k, int n) const {
    if (k < cx.d.q) return cx.valid(k) ? to_float(x[cx.token(k, cx.d.h, cx.hi, cx.d.p) + n]) : 0.f;
    return states[cx.state(cx.hi) + (long)n * cx.d.n + (k - cx.d.q)];
  }
  __device__ float store(int m, int n, float acc) const {
    if (!cx.valid(m)) return 0.f;
    store_output(cx.token(m, cx.d.h, cx.hi, cx.d.p) + n, cx.hi, n, cx.d.p, acc, x, z, D, D_per_channel, y_ssm, out);
    return 0.f;
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Backward.

// dy = dout * silu(z), dz, dD, and dyy = dy . y_ssm per token. A (token, head) row takes `lanes` neighbouring threads
// (a power of two), each kChunks runs of kVec channels: kVec = 8 (16-bit rows, 16-byte loads and stores, one run) or 1
// (32 lanes, up to 8 runs: any type and width; p <= 256). blockIdx.x is the head, so each thread's dD partial sums
// stay in registers over many tokens. One warp per row, each lane loading 2-byte elements, took twice its bytes' time
// at mamba2-2.7b's sizes (1.44 ms; docs/kernels.md).
template <typename T, int kVec, int kChunks>
__global__ void __launch_bounds__(256) gate_backward_kernel(ScanDims d, int lanes, const T* dout, const T* z,
                                                            const float* y_ssm, const T* x, const float* D,
                                                            bool D_per_channel, T* dy, T* dy_lo, T* dz, float* dD,
                                                            float* dyy) {
  static_assert(kVec == 1 || (kVec == 8 && sizeof(T) == 2), "runs of 8 are 16-byte loads of 16-bit elements");
  __shared__ float dD_sum[256];  // per channel, with D per channel
  const int hi = blockIdx.x, k = threadIdx.x % lanes, rows_per_block = blockDim.x / lanes;
  const long tokens = (long)d.b * d.l;
  float dD_part[kChunks][kVec] = {}, Dv[kChunks][kVec];
#pragma unroll
  for (int j = 0; j < kChunks; ++j)
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const int c = min((k + lanes * j) * kVec + i, d.p - 1);
      Dv[j][i] = D ? D[D_per_channel ? hi * d.p + c : hi] : 0.f;
    }
  // Every thread of the block takes the same number of steps (the row's lanes shuffle together).
  for (long base = (long)blockIdx.y * rows_per_block; base < tokens; base += (long)gridDim.y * rows_per_block) {
    const long row = base + threadIdx.x / lanes;
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int c0 = (k + lanes * j) * kVec;
      if (row >= tokens || c0 >= d.p) continue;
      const long o = (row * d.h + hi) * d.p + c0;
      float go[kVec], xv[kVec], ys[kVec], zv[kVec] = {}, g[kVec], g_lo[kVec], gz[kVec] = {};
      load_floats(dout + o, go);
      load_floats(x + o, xv);
      load_floats(y_ssm + o, ys);
      if (z) load_floats(z + o, zv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        g[i] = go[i];
        if (z) {
          g[i] = go[i] * siluf(zv[i]);
          gz[i] = go[i] * (ys[i] + Dv[j][i] * xv[i]) * silu_grad(zv[i]);
        }
        g_lo[i] = g[i] - to_float(from_float<T>(g[i]));  // see SsdScanBackward::dy
        dot += g[i] * ys[i];
        dD_part[j][i] += g[i] * xv[i];
      }
      store_floats(dy + o, g);
      if (dy_lo) store_floats(dy_lo + o, g_lo);
      if (z) store_floats(dz + o, gz);
    }
    dot = lanes_sum(dot, lanes);
    if (k == 0 && row < tokens) {
      const int bi = static_cast<int>(row / d.l), t = static_cast<int>(row % d.l);
      dyy[(((long)bi * d.h + hi) * d.c + t / d.q) * d.q + t % d.q] = dot;
    }
  }
  if (!D) return;
  if (D_per_channel) {  // summed over the block's rows in shared memory, then one atomic per channel
    for (int i = threadIdx.x; i < d.p; i += blockDim.x) dD_sum[i] = 0.f;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kChunks; ++j)
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const int c = (k + lanes * j) * kVec + i;
        if (c < d.p) atomicAdd(&dD_sum[c], dD_part[j][i]);
      }
    __syncthreads();
    for (int i = threadIdx.x; i < d.p; i += blockDim.x) atomicAdd(&dD[hi * d.p + i], dD_sum[i]);
  } else {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < kChunks; ++j)
#pragma unroll
      for (int i = 0; i < kVec; ++i) s += dD_part[j][i];
    s = warp_sum(s);
    if (threadIdx.x % 32 == 0) atomicAdd(&dD[hi], s);
  }
}

template <typename T>
void launch_gate_backward(const SsdScanBackward& bw, const ScanDims& d, cudaStream_t stream) {
  const SsdScanForward& f = *bw.fwd;
  const bool runs = sizeof(T) == 2 && d.p % 8 == 0 &&
                    all_aligned({bw.dout, f.z, f.y_ssm, f.x, bw.dy, bw.dy_lo, bw.dz}, 16);
  const int lanes = runs ? lanes_for(d.p, 8) : 32;
  constexpr unsigned kThreads = 256;
  const long tokens = (long)d.b * d.l, rows_per_block = kThreads / lanes;
  // About 4 steps per block, so that each block's dD sums cover a few rows before their atomics.
  const unsigned slices = std::min<unsigned>(ceil_div(tokens, 4 * rows_per_block), 1024);
  const dim3 grid(d.h, slices);
  auto args = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, stream>>>(d, lanes, static_cast<const T*>(bw.dout), static_cast<const T*>(f.z),
                                          f.y_ssm, static_cast<const T*>(f.x), f.D, f.D_per_channel,
                                          static_cast<T*>(bw.dy), static_cast<T*>(bw.dy_lo), static_cast<T*>(bw.dz),
                                          bw.dD, bw.dyy);
  };
  if constexpr (sizeof(T) == 2) {
    if (runs) {
      args(gate_backward_kernel<T, 8, 1>);
      CARVE_CUDA_CHECK_LAUNCH();
      return;
    }
  }
  args(gate_backward_kernel<T, 1, 8>);
  CARVE_CUDA_CHECK_LAUNCH();
}

// Reverse pass over chunks. In: dstates = gradient of each chunk's entering state through its outputs; out: the
// gradient of each chunk's local state, the initial state's gradient, and per chunk end <G_{c+1}, S_{c+1}> (the
// gradient of L_end through the decay and the local state together, see docs/kernels.md).
__global__ void __launch_bounds__(kPassThreads)
    state_pass_backward_kernel(ScanDims d, const int* seg, const double* cum, const float* states,
                               const float* final_state, const float* dfinal, float* dstates, float* dinitial,
                               float* end_term) {
  const long pn = (long)d.p * d.n;
  const long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
  const int hi = blockIdx.y % d.h, bi = blockIdx.y / d.h;
  const bool live = e < pn;
  const long bh = ((long)bi * d.h + hi) * pn + e;
  auto at = [&](int ci) { return (((long)bi * d.c + ci) * d.h + hi) * pn + e; };
  // Per batch of chunks, each warp's share of <G, S> per chunk, summed over the block before one atomic per chunk.
  // One atomic per warp and chunk put 512 atomics on each end_term element at hovle, and the pass took 4x its
  // bytes' time.
  constexpr int kMaxWarps = kPassThreads / 32;
  __shared__ float warp_part[kPassBatch][kMaxWarps];
  const int warp = threadIdx.x / 32;
  float g = live && dfinal ? dfinal[bh] : 0.f;
  float next = live ? final_state[bh] : 0.f;
  for (int c0 = d.c - 1; c0 >= 0; c0 -= kPassBatch) {
    float enter[kPassBatch] = {}, direct[kPassBatch] = {}, decay[kPassBatch] = {};
#pragma unroll
    for (int k = 0; k < kPassBatch; ++k) {
      if (c0 - k < 0) break;
      if (live) enter[k] = states[at(c0 - k)], direct[k] = dstates[at(c0 - k)];
      decay[k] = chunk_decay(d, seg, cum, bi, hi, c0 - k);
    }
#pragma unroll
    for (int k = 0; k < kPassBatch; ++k) {
      const int ci = c0 - k;
      if (ci < 0) break;
      float contrib = 0.f;
      if (live) {
        dstates[at(ci)] = g;
        contrib = g * next;
      }
      contrib = warp_sum(contrib);
      if (threadIdx.x % 32 == 0) warp_part[k][warp] = contrib;
      g = direct[k] + decay[k] * g;
      next = enter[k];
    }
    __syncthreads();
    if (threadIdx.x < kPassBatch && c0 - static_cast<int>(threadIdx.x) >= 0) {
      float sum = 0.f;
      for (int w = 0; w < kMaxWarps; ++w) sum += warp_part[threadIdx.x][w];
      atomicAdd(&end_term[((long)bi * d.h + hi) * d.c + c0 - threadIdx.x], sum);
    }
    __syncthreads();  // warp_part is rewritten by the next batch
  }
  if (live && dinitial) dinitial[bh] = g;
}

// U[s, p] = sum_l w(l, s) dy[l, p]  (k < q)  +  exp(L_end - L_s) sum_n B[s, n] G[p, n]  (k = q + n): the gradient
// of dt'_s x_s. Epilogue: dx = dt' U + D dy; the row sum x . U is the dt' gradient through dt' x.
template <typename T>
struct ChunkDxProblem {
  static constexpr bool kAKFast = false, kBNFast = true, kSegmented = false, kRowReduce = true;
  Chunk cx;
  const T* x;
  const T* B;
  const float* D;
  bool D_per_channel;
  const float* dtp;
  const double* cum;
  const float* cb;
  const T* dy;
  const T* dy_lo;
  const float* dlocal;
  T* dx;
  float* ddt_u;
  int M, N, K;
  double L_end;

  __device__ void select(int idx) {
    cx.select(idx, cx.d.h);
    L_end = cum[cx.scan(cx.hi, cx.d.q - 1)];
  }
  __device__ bool skip_k_tile(int m0, int, int k0) const { return k0 + kTileK <= cx.d.q && k0 + kTileK - 1 < m0; }
  __device__ float a(int m, int k) const {
    if (k < cx.d.q) return intra_weight(cx, cb, cum, cx.hi, k, m);
    if (!cx.valid(m) || cx.seg_of(m) != cx.seg_end) return 0.f;
    return expf(static_cast<float>(L_end - cum[cx.scan(cx.hi, m)])) *
           to_float(B[cx.token(m, cx.d.g, cx.hi / cx.d.r, cx.d.n) + k - cx.d.q]);
  }
  __device__ float b(int k, int n) const {
    if (k < cx.d.q) return cx.valid(k) ? with_rest(dy, dy_lo, cx.token(k, cx.d.h, cx.hi, cx.d.p) + n) : 0.f;
    return dlocal[cx.state(cx.hi) + (long)n * cx.d.n + (k - cx.d.q)];
  }
  __device__ float store(int m, int n, float acc) const {
    if (!cx.valid(m)) return 0.f;
    const long o = cx.token(m, cx.d.h, cx.hi, cx.d.p) + n;
    float g = dtp[cx.scan(cx.hi, m)] * acc;
    if (D) g += D[D_per_channel ? cx.hi * cx.d.p + n : cx.hi] * with_rest(dy, dy_lo, o);
    dx[o] = from_float<T>(g);
    return to_float(x[o]) * acc;
  }
  __device__ void row_reduce(int m, float v) const {
    if (cx.valid(m)) atomicAdd(&ddt_u[cx.scan(cx.hi, m)], v);
  }
};

// dCB[l, s] = sum over the group's heads j of (dy_j[l] . x_j[s]) exp(L_j,l - L_j,s) dt'_j,s on the causal,
// same-sample part: k runs over (head, p), one segment per head.
template <typename T>
struct ChunkDcbProblem {
  static constexpr bool kAKFast = true, kBNFast = false, kSegmented = true, kRowReduce = false;
  Chunk cx;
  const T* x;
  const T* dy;
  const T* dy_lo;
  const float* dtp;
  const double* cum;
  float* dcb;
  int M, N, K;
  __device__ void select(int idx) { cx.select(idx, cx.d.g); }
  __device__ int segment_length() const { return cx.d.p; }
  __device__ bool skip_k_tile(int, int, int) const { return false; }
  __device__ float a(int m, int k) const {
    const int head = cx.hi * cx.d.r + k / cx.d.p;
    return cx.valid(m) ? with_rest(dy, dy_lo, cx.token(m, cx.d.h, head, cx.d.p) + k % cx.d.p) : 0.f;
  }
  __device__ float b(int k, int n) const {
    const int head = cx.hi * cx.d.r + k / cx.d.p;
    return cx.valid(n) ? to_float(x[cx.token(n, cx.d.h, head, cx.d.p) + k % cx.d.p]) : 0.f;
  }
  __device__ float segment_scale(int j, int m, int n) const {
    if (n > m || !cx.valid(m) || cx.seg_of(m) != cx.seg_of(n)) return 0.f;
    const int head = cx.hi * cx.d.r + j;
    return expf(static_cast<float>(cum[cx.scan(head, m)] - cum[cx.scan(head, n)])) * dtp[cx.scan(head, n)];
  }
  __device__ float store(int m, int n, float acc) const {
    dcb[cx.cb(cx.hi) + (long)m * cx.d.q + n] = acc;
    return 0.f;
  }
};

// dC[l, n] = sum_s dCB[l, s] B[s, n]  (k < q)  +  sum_(j, p) exp(L_j,l) dy_j[l, p] S_j[p, n]  (k = q + (j, p)).
// dB[s, n] = sum_l dCB[l, s] C[l, n]  (k < q)  +  sum_(j, p) exp(L_j,end - L_j,s) dt'_j,s x_j[s, p] G_j[p, n].
enum class Projection { C, B };

template <typename T, Projection which>
struct ChunkDprojProblem {
  static constexpr bool kAKFast = which == Projection::C, kBNFast = true, kSegmented = false, kRowReduce = false;
  Chunk cx;
  const T* other;        // B for dC, C for dB
  const float* dcb;
  const T* x;            // dB only
  const T* dy;           // dC only
  const T* dy_lo;
  const float* dtp;
  const double* cum;
  const float* state;    // entering states (dC) or local-state gradients (dB), [b, c, h, p, n]
  T* out;
  int M, N, K;

  __device__ void select(int idx) { cx.select(idx, cx.d.g); }
  __device__ bool skip_k_tile(int m0, int, int k0) const {
    if (k0 + kTileK > cx.d.q) return false;  // holds inter-chunk columns (see ChunkOutputProblem)
    return which == Projection::C ? k0 > m0 + kTile - 1 : k0 + kTileK - 1 < m0;
  }
  __device__ float a(int m, int k) const {
    if (k < cx.d.q) {
      // dcb is zero off the causal same-sample part, but only s <= l blocks were written: guard the rest.
      const int l = which == Projection::C ? m : k, s = which == Projection::C ? k : m;
      return s <= l ? dcb[cx.cb(cx.hi) + (long)l * cx.d.q + s] : 0.f;
    }
    const int kk = k - cx.d.q, head = cx.hi * cx.d.r + kk / cx.d.p, pi = kk % cx.d.p;
    if (!cx.valid(m)) return 0.f;
    const long si = cx.scan(head, m);
    if (which == Projection::C) {
      if (cx.seg_of(m) != cx.seg_prev) return 0.f;
      return expf(static_cast<float>(cum[si])) * with_rest(dy, dy_lo, cx.token(m, cx.d.h, head, cx.d.p) + pi);
    }
    if (cx.seg_of(m) != cx.seg_end) return 0.f;
    return expf(static_cast<float>(cum[cx.scan(head, cx.d.q - 1)] - cum[si])) * dtp[si] *
           to_float(x[cx.token(m, cx.d.h, head, cx.d.p) + pi]);
  }
  __device__ float b(int k, int n) const {
    if (k < cx.d.q) return cx.valid(k) ? to_float(other[cx.token(k, cx.d.g, cx.hi, cx.d.n) + n]) : 0.f;
    const int kk = k - cx.d.q, head = cx.hi * cx.d.r + kk / cx.d.p, pi = kk % cx.d.p;
    return state[cx.state(head) + (long)pi * cx.d.n + n];
  }
  __device__ float store(int m, int n, float acc) const {
    if (cx.valid(m)) out[cx.token(m, cx.d.g, cx.hi, cx.d.n) + n] = from_float<T>(acc);
    return 0.f;
  }
};

// dL_i = dyy_i - dt'_i ddt_u_i (+ end term at the chunk's last position); dA-cumsum gradient da = reverse cumsum of
// dL; dt' gradient = ddt_u + da A; then softplus and the bias. One block per (b, h, chunk).
template <typename T>
__global__ void dt_backward_kernel(ScanDims d, const T* dt, const float* A, const float* dt_bias, bool softplus,
                                   const float* dtp, const float* dyy, const float* ddt_u, const float* end_term,
                                   T* ddt, float* dA, float* ddt_bias) {
  __shared__ float scratch[32];
  __shared__ double totals[32];
  const int ci = blockIdx.x % d.c, hi = (blockIdx.x / d.c) % d.h, bi = blockIdx.x / (d.c * d.h);
  // Thread i handles position q-1-i so that an inclusive scan over threads is a reverse cumsum over positions.
  const int i = d.q - 1 - static_cast<int>(threadIdx.x);
  const long base = (((long)bi * d.h + hi) * d.c + ci) * d.q;
  float dL = 0.f, dtp_i = 0.f, du = 0.f;
  if (i >= 0) {
    dtp_i = dtp[base + i];
    du = ddt_u[base + i];
    dL = dyy[base + i] - dtp_i * du;
    if (i == d.q - 1) dL += end_term[((long)bi * d.h + hi) * d.c + ci];
  }
  const float da = static_cast<float>(block_inclusive_scan(static_cast<double>(dL), totals));
  const int t = ci * d.q + i;
  const bool real = i >= 0 && t < d.l;
  float g = real ? du + da * A[hi] : 0.f;
  const float dA_part = block_sum(real ? da * dtp_i : 0.f, scratch);
  if (real && softplus) {
    float v = to_float(dt[((long)bi * d.l + t) * d.h + hi]);
    if (dt_bias) v += dt_bias[hi];
    if (v <= 20.f) g *= sigmoidf(v);
  }
  if (real) ddt[((long)bi * d.l + t) * d.h + hi] = from_float<T>(g);
  const float dbias_part = dt_bias ? block_sum(g, scratch) : 0.f;
  if (threadIdx.x == 0) {
    atomicAdd(&dA[hi], dA_part);
    if (dt_bias) atomicAdd(&ddt_bias[hi], dbias_part);
  }
}

void check_shape(const SsdScanShape& s) {
  CARVE_KERNEL_REQUIRE(s.b > 0 && s.l > 0 && s.h > 0 && s.p > 0 && s.g > 0 && s.n > 0,
                       "ssd_scan: every size must be positive");
  CARVE_KERNEL_REQUIRE(s.h % s.g == 0, "ssd_scan: h must be a multiple of g");
  CARVE_KERNEL_REQUIRE(s.q >= 1 && s.q <= 1024 && s.q <= s.l, "ssd_scan: chunk length must be in [1, min(l, 1024)]");
  CARVE_KERNEL_REQUIRE(s.p <= 256, "ssd_scan: head dim above 256 is not supported");
}

template <typename P>
P with_chunk(P p, const ScanDims& d, const int* seg) {
  p.cx.d = d;
  p.cx.seg = seg;
  return p;
}

// The steps both versions of the forward share: dt' and its cumsum per chunk, then (after the local states) the pass
// that turns them into the states entering each chunk.
template <typename T>
void launch_dt_prepare(const SsdScanForward& f, const ScanDims& d, cudaStream_t stream) {
  dt_prepare_kernel<T><<<(unsigned)((long)d.b * d.h * d.c), scan_threads(d.q), 0, stream>>>(
      d, static_cast<const T*>(f.dt), f.A, f.dt_bias, f.dt_softplus, f.dtp, f.cum);
  CARVE_CUDA_CHECK_LAUNCH();
}

void launch_state_pass(const SsdScanForward& f, const ScanDims& d, cudaStream_t stream) {
  const long pn = (long)d.p * d.n;
  state_pass_kernel<<<dim3(ceil_div(pn, kPassThreads), d.b * d.h), kPassThreads, 0, stream>>>(
      d, f.seg, f.cum, f.initial_state, f.states, f.final_state);
  CARVE_CUDA_CHECK_LAUNCH();
}

// Token rows of a [b, l, h, p] operand (x, dy) and of a [b, l, g, n] one (B, C), for the tensor-core kernels.
template <typename T>
TokenRows<T> head_rows(const T* base, const ScanDims& d) {
  return {base, d.h, 1, d.p};
}
template <typename T>
TokenRows<T> group_rows(const T* base, const ScanDims& d) {
  return {base, d.g, d.r, d.n};
}

bool aligned(const void* p, uintptr_t to) { return reinterpret_cast<uintptr_t>(p) % to == 0; }

// Whether a 16-bit scan takes the tensor-core kernels (forward and backward decide alike).
bool use_tensor_cores(const SsdScanShape& s) { return ssd_tensor_core_shape(s) && ssd_tensor_cores_enabled(); }

// Version 1: every product on the CUDA-core tile product (float32 inputs, and 16-bit ones outside the tensor-core
// shapes or with CARVE_SSD_TENSOR_CORES=0).
template <typename T>
void forward_cuda_core(const SsdScanForward& f, const ScanDims& d, cudaStream_t stream) {
  const T* x = static_cast<const T*>(f.x);
  const T* B = static_cast<const T*>(f.B);
  const T* C = static_cast<const T*>(f.C);
  const long heads = (long)d.b * d.c * d.h, groups = (long)d.b * d.c * d.g;
  launch_dt_prepare<T>(f, d, stream);

  ChunkStateProblem<T, StateProduct::Local> local{};
  local.left = x, local.right = B, local.dtp = f.dtp, local.cum = f.cum, local.out = f.states;
  local.M = d.p, local.N = d.n, local.K = d.q;
  launch_tile_gemm(with_chunk(local, d, f.seg), heads, stream);
  launch_state_pass(f, d, stream);

  ChunkCbProblem<T> cb{};
  cb.C = C, cb.B = B, cb.cb = f.cb, cb.M = d.q, cb.N = d.q, cb.K = d.n;
  launch_tile_gemm(with_chunk(cb, d, f.seg), groups, stream);

  ChunkOutputProblem<T> out{};
  out.x = x, out.C = C, out.z = static_cast<const T*>(f.z), out.D = f.D, out.D_per_channel = f.D_per_channel;
  out.dtp = f.dtp, out.cum = f.cum, out.cb = f.cb, out.states = f.states;
  out.out = static_cast<T*>(f.out), out.y_ssm = f.y_ssm;
  out.M = d.q, out.N = d.p, out.K = d.q + d.n;
  launch_tile_gemm(with_chunk(out, d, f.seg), heads, stream);
}

// C.B once per chunk and group into f.cb, on or below the diagonal (heads sharing a group).
template <typename T>
void launch_group_cb(const SsdScanForward& f, const ScanDims& d, const T* B, const T* C, bool bc_rows,
                     cudaStream_t stream) {
  ChunkCbTc<T> cb{};
  cb.B = B, cb.C = C, cb.cb = f.cb, cb.vector = bc_rows;
  chunk_cb_tc(with_chunk(cb, d, f.seg), stream);
}

// Version 2 (16-bit inputs): the products on tensor cores (ssd_scan_tc.cuh).
template <typename T>
void forward_tensor_core(const SsdScanForward& f, const ScanDims& d, cudaStream_t stream) {
  const T* x = static_cast<const T*>(f.x);
  const T* B = static_cast<const T*>(f.B);
  const T* C = static_cast<const T*>(f.C);
  const bool x_rows = rows_vectorizable(x, d.p), bc_rows = rows_vectorizable(B, d.n) && rows_vectorizable(C, d.n);
  launch_dt_prepare<T>(f, d, stream);
  // One sweep per head that keeps the state on chip (versions 8 and 12, ssd_scan_fused.h), where it takes this
  // forward. Training's backward also reads C.B where heads share a group, which the sweep does not store.
  if (ssd_fused_forward(f, stream)) {
    if (f.y_ssm && d.r > 1) launch_group_cb(f, d, B, C, bc_rows, stream);
    return;
  }

  // Without a backward to follow (no y_ssm kept), computed operands are rounded to 16 bits once (kParts says why).
  // (The output kernel decides the same from y_ssm.)
  ChunkStateTc<T> local{};
  local.kind = StateProduct::Local, local.left = x, local.right = B;
  local.dtp = f.dtp, local.cum = f.cum, local.states = f.states;
  local.vector = x_rows && bc_rows, local.parts = f.y_ssm ? kParts : kInferenceParts;
  chunk_state_tc(with_chunk(local, d, f.seg), stream);
  launch_state_pass(f, d, stream);

  // With heads sharing a group, C.B is computed once per group (only on or below the diagonal, which is all the
  // output reads); with one head per group the output kernel computes it itself, and nothing stores it: the
  // tensor-core backward makes its own.
  if (d.r > 1) launch_group_cb(f, d, B, C, bc_rows, stream);

  ChunkPairTc<T> out{};
  out.P = group_rows(C, d), out.Q = group_rows(B, d), out.V = head_rows(x, d);
  out.inter = f.states, out.dtp = f.dtp, out.cum = f.cum, out.cb = f.cb;
  out.cb_source = d.r > 1 ? CbSource::Load : CbSource::Compute;
  out.x = x, out.z = static_cast<const T*>(f.z), out.extra = out.z, out.D = f.D, out.D_per_channel = f.D_per_channel;
  out.out = static_cast<T*>(f.out), out.y_ssm = f.y_ssm;
  out.vector = x_rows && bc_rows;
  // The epilogue's pairs: 4-byte stores of out, 8-byte ones of y_ssm, z's rows copied 16 bytes at a time.
  out.pairs = out.vector && aligned(f.out, 4) && aligned(f.y_ssm, 8) && (!f.z || rows_vectorizable(f.z, d.p));
  chunk_pair_tc<T, PairKind::Output>(with_chunk(out, d, f.seg), stream);
}

template <typename T>
void forward_typed(const SsdScanForward& f, cudaStream_t stream) {
  const ScanDims d = dims_of(f.shape);
  if constexpr (sizeof(T) == 2) {
    if (use_tensor_cores(f.shape)) return forward_tensor_core<T>(f, d, stream);
  }
  forward_cuda_core<T>(f, d, stream);
}

// The backward's first product: the gradient of each chunk's entering state through its outputs, into dstates.
template <typename T>
void backward_entering_grad(const SsdScanBackward& bw, const ScanDims& d, bool tensor_cores, cudaStream_t stream) {
  const SsdScanForward& f = *bw.fwd;
  const T* dy = static_cast<const T*>(bw.dy);
  const T* dy_lo = static_cast<const T*>(bw.dy_lo);
  const T* C = static_cast<const T*>(f.C);
  if constexpr (sizeof(T) == 2) {
    if (tensor_cores) {
      ChunkStateTc<T> enter{};
      enter.kind = StateProduct::EnteringGrad, enter.left = dy, enter.left_lo = dy_lo, enter.right = C;
      enter.dtp = f.dtp, enter.cum = f.cum, enter.states = bw.dstates;
      enter.vector = rows_vectorizable(dy, d.p) && rows_vectorizable(dy_lo, d.p) && rows_vectorizable(C, d.n);
      chunk_state_tc(with_chunk(enter, d, f.seg), stream);
      return;
    }
  }
  ChunkStateProblem<T, StateProduct::EnteringGrad> enter{};
  enter.left = dy, enter.left_lo = dy_lo, enter.right = C, enter.dtp = f.dtp, enter.cum = f.cum, enter.out = bw.dstates;
  enter.M = d.p, enter.N = d.n, enter.K = d.q;
  launch_tile_gemm(with_chunk(enter, d, f.seg), (long)d.b * d.c * d.h, stream);
}

// The parts of dC's and dB's computed operands on tensor cores (ChunkPairTc::parts): one (version 15: they feed no
// other gradient, and Triton rounds them once too), or two with CARVE_SSD_PROJECTION_PARTS=2 (comparisons; the
// parts before version 15).
int projection_parts() {
  const char* v = std::getenv("CARVE_SSD_PROJECTION_PARTS");
  return v && std::string(v) == "2" ? kParts : kInferenceParts;
}

// The backward's products after the state pass (dstates then holds each chunk's local-state gradient): dx and the
// dt gradient through dt' x, then dC and dB. On tensor cores (version 4) with the pair kernel; with heads sharing
// a group, dC and dB read the (dy . x) block summed over the group's heads from the dcb buffer (chunk_dcb_tc, version
// 5). Version 1 runs all of them on the CUDA-core tile product. dx_made: the reverse sweep made dx (version 14).
template <typename T>
void backward_products(const SsdScanBackward& bw, const ScanDims& d, bool tensor_cores, bool dx_made,
                       cudaStream_t stream) {
  const SsdScanForward& f = *bw.fwd;
  const T* x = static_cast<const T*>(f.x);
  const T* B = static_cast<const T*>(f.B);
  const T* C = static_cast<const T*>(f.C);
  const T* dy = static_cast<const T*>(bw.dy);
  const T* dy_lo = static_cast<const T*>(bw.dy_lo);
  const long heads = (long)d.b * d.c * d.h, groups = (long)d.b * d.c * d.g;
  if constexpr (sizeof(T) == 2) {
    if (tensor_cores) {
      const bool vector = rows_vectorizable(x, d.p) && rows_vectorizable(dy, d.p) && rows_vectorizable(dy_lo, d.p) &&
                          rows_vectorizable(B, d.n) && rows_vectorizable(C, d.n);
      ChunkPairTc<T> dx{};
      dx.P = group_rows(B, d), dx.Q = group_rows(C, d), dx.V = head_rows(dy, d), dx.v_lo = dy_lo, dx.extra = x;
      dx.inter = bw.dstates, dx.dtp = f.dtp, dx.cum = f.cum;
      // With heads sharing a group, dx reads the forward's C.B transposed instead of making B.C once per head:
      // mamba2-2.7b forward+backward 13.52 -> 12.86 ms (docs/kernels.md).
      dx.cb_source = d.r > 1 ? CbSource::Load : CbSource::Compute, dx.cb = f.cb;
      dx.x = x, dx.D = f.D, dx.D_per_channel = f.D_per_channel, dx.out = static_cast<T*>(bw.dx), dx.ddt_u = bw.ddt_u;
      dx.vector = vector, dx.pairs = vector && aligned(bw.dx, 4);
      if (!dx_made) chunk_pair_tc<T, PairKind::Dx>(with_chunk(dx, d, f.seg), stream);
      ChunkPairTc<T> dC{};
      if (d.r > 1) {  // the (dy . x) block summed over the group's heads, which dC and dB then read
        ChunkDcbTc<T> dcb{};
        dcb.dy = dy, dcb.x = x, dcb.dtp = f.dtp, dcb.cum = f.cum, dcb.dcb = bw.dcb;
        dcb.vector = rows_vectorizable(dy, d.p) && rows_vectorizable(x, d.p);
        chunk_dcb_tc(with_chunk(dcb, d, f.seg), stream);
        dC.cb = bw.dcb, dC.cb_source = CbSource::Load, dC.group_heads = true;
      } else {
        dC.cb_source = CbSource::Compute;
      }
      dC.P = head_rows(dy, d), dC.Q = head_rows(x, d), dC.V = group_rows(B, d);
      dC.inter = f.states, dC.dtp = f.dtp, dC.cum = f.cum;
      dC.out = static_cast<T*>(bw.dC), dC.vector = vector, dC.pairs = vector && aligned(bw.dC, 4);
      dC.parts = projection_parts();
      chunk_pair_tc<T, PairKind::DC>(with_chunk(dC, d, f.seg), stream);
      ChunkPairTc<T> dB = dC;
      dB.P = head_rows(x, d), dB.Q = head_rows(dy, d), dB.V = group_rows(C, d), dB.inter = bw.dstates;
      dB.out = static_cast<T*>(bw.dB), dB.pairs = vector && aligned(bw.dB, 4);
      chunk_pair_tc<T, PairKind::DB>(with_chunk(dB, d, f.seg), stream);
      return;
    }
  }
  // Version 1: every product on the CUDA-core tile product.
  ChunkDxProblem<T> dx{};
  dx.x = x, dx.B = B, dx.D = f.D, dx.D_per_channel = f.D_per_channel, dx.dtp = f.dtp, dx.cum = f.cum, dx.cb = f.cb;
  dx.dy = dy, dx.dy_lo = dy_lo, dx.dlocal = bw.dstates, dx.dx = static_cast<T*>(bw.dx), dx.ddt_u = bw.ddt_u;
  dx.M = d.q, dx.N = d.p, dx.K = d.q + d.n;
  launch_tile_gemm(with_chunk(dx, d, f.seg), heads, stream);

  ChunkDcbProblem<T> dcb{};
  dcb.x = x, dcb.dy = dy, dcb.dy_lo = dy_lo, dcb.dtp = f.dtp, dcb.cum = f.cum, dcb.dcb = bw.dcb;
  dcb.M = d.q, dcb.N = d.q, dcb.K = d.r * d.p;
  launch_tile_gemm(with_chunk(dcb, d, f.seg), groups, stream);

  ChunkDprojProblem<T, Projection::C> dC{};
  dC.other = B, dC.dcb = bw.dcb, dC.dy = dy, dC.dy_lo = dy_lo, dC.dtp = f.dtp, dC.cum = f.cum, dC.state = f.states;
  dC.out = static_cast<T*>(bw.dC), dC.M = d.q, dC.N = d.n, dC.K = d.q + d.r * d.p;
  launch_tile_gemm(with_chunk(dC, d, f.seg), groups, stream);

  ChunkDprojProblem<T, Projection::B> dB{};
  dB.other = C, dB.dcb = bw.dcb, dB.x = x, dB.dtp = f.dtp, dB.cum = f.cum, dB.state = bw.dstates;
  dB.out = static_cast<T*>(bw.dB), dB.M = d.q, dB.N = d.n, dB.K = d.q + d.r * d.p;
  launch_tile_gemm(with_chunk(dB, d, f.seg), groups, stream);
}

template <typename T>
void backward_typed(const SsdScanBackward& bw, cudaStream_t stream) {
  const SsdScanForward& f = *bw.fwd;
  const ScanDims d = dims_of(f.shape);
  const SsdScanWorkspace ws = ssd_scan_workspace(f.shape);
  bool tensor_cores = false;
  if constexpr (sizeof(T) == 2) tensor_cores = use_tensor_cores(f.shape);

  CARVE_CUDA_CHECK(cudaMemsetAsync(bw.ddt_u, 0, ws.per_token * sizeof(float), stream));
  CARVE_CUDA_CHECK(cudaMemsetAsync(bw.end_term, 0, sizeof(float) * d.b * d.h * d.c, stream));
  CARVE_CUDA_CHECK(cudaMemsetAsync(bw.dA, 0, sizeof(float) * d.h, stream));
  if (f.D) CARVE_CUDA_CHECK(cudaMemsetAsync(bw.dD, 0, sizeof(float) * d.h * (f.D_per_channel ? d.p : 1), stream));
  if (f.dt_bias) CARVE_CUDA_CHECK(cudaMemsetAsync(bw.ddt_bias, 0, sizeof(float) * d.h, stream));

  // Padded positions of the last chunk have no token: dyy stays 0 there.
  CARVE_CUDA_CHECK(cudaMemsetAsync(bw.dyy, 0, ws.per_token * sizeof(float), stream));
  launch_gate_backward<T>(bw, d, stream);

  // The gradient of the state leaving each chunk: one reverse sweep per head (version 13, ssd_scan_fused.h; with dx
  // since version 14), or each chunk's own part, then the pass over chunks. ssd_scan_backward_sweeps says which.
  const SsdBackwardSweeps sweeps = tensor_cores ? ssd_fused_state_grad(bw, stream) : SsdBackwardSweeps::none;
  if (sweeps == SsdBackwardSweeps::none) {
    backward_entering_grad<T>(bw, d, tensor_cores, stream);
    const long pn = (long)d.p * d.n;
    state_pass_backward_kernel<<<dim3(ceil_div(pn, kPassThreads), d.b * d.h), kPassThreads, 0, stream>>>(
        d, f.seg, f.cum, f.states, f.final_state, bw.dfinal_state, bw.dstates, bw.dinitial_state, bw.end_term);
    CARVE_CUDA_CHECK_LAUNCH();
  }

  backward_products<T>(bw, d, tensor_cores, sweeps == SsdBackwardSweeps::state_grad_and_dx, stream);

  dt_backward_kernel<T><<<(unsigned)((long)d.b * d.h * d.c), scan_threads(d.q), 0, stream>>>(
      d, static_cast<const T*>(f.dt), f.A, f.dt_bias, f.dt_softplus, f.dtp, bw.dyy, bw.ddt_u, bw.end_term,
      static_cast<T*>(bw.ddt), bw.dA, bw.ddt_bias);
  CARVE_CUDA_CHECK_LAUNCH();
}

// One decode step; blocks of (b, h) x a slice of the head's state rows, one warp per row. At batch 1 a block per head
// alone left most SMs idle (16 blocks streaming a 1 MB state took 43 us at HoVLE's sizes).
template <typename T>
__global__ void ssd_step_kernel(SsdStep s) {
  const int bi = blockIdx.x / s.h, hi = blockIdx.x % s.h, r = s.h / s.g, gi = hi / r;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const T* x = static_cast<const T*>(s.x);
  const T* Bp = static_cast<const T*>(s.B) + ((long)bi * s.g + gi) * s.n;
  const T* Cp = static_cast<const T*>(s.C) + ((long)bi * s.g + gi) * s.n;
  float dtv = to_float(static_cast<const T*>(s.dt)[(long)bi * s.h + hi]);
  if (s.dt_bias) dtv += s.dt_bias[hi];
  if (s.dt_softplus) dtv = softplusf(dtv);
  const float decay = expf(dtv * s.A[hi]);
  for (int pi = blockIdx.y * warps + warp; pi < s.p; pi += warps * gridDim.y) {
    const long o = ((long)bi * s.h + hi) * s.p + pi;
    const float xv = to_float(x[o]);
    float* row = s.state + o * s.n;
    float y = 0.f;
    for (int ni = lane; ni < s.n; ni += 32) {
      const float v = decay * row[ni] + dtv * xv * to_float(Bp[ni]);
      row[ni] = v;
      y += v * to_float(Cp[ni]);
    }
    y = warp_sum(y);
    if (lane == 0) {
      if (s.D) y += s.D[s.D_per_channel ? hi * s.p + pi : hi] * xv;
      if (s.z) y *= siluf(to_float(static_cast<const T*>(s.z)[o]));
      static_cast<T*>(s.y)[o] = from_float<T>(y);
    }
  }
}

// Whether the tensor-core kernels make every (C . B) and (dy . x) block in registers, never storing one: with one head
// per group. Version 1 stores both for its products; with heads sharing a group, C.B is made once per group for
// the output and dx, and (dy . x) summed over the group's heads for dC and dB (backward_products).
bool pair_blocks_in_registers(const SsdScanShape& s, ElementType dtype) {
  return dtype != ElementType::f32 && s.h == s.g && use_tensor_cores(s);
}

}  // namespace

bool ssd_scan_uses_cb(const SsdScanShape& s, ElementType dtype) { return !pair_blocks_in_registers(s, dtype); }

bool ssd_scan_backward_uses_dcb(const SsdScanShape& s, ElementType dtype) {
  return !pair_blocks_in_registers(s, dtype);
}

SsdScanWorkspace ssd_scan_workspace(const SsdScanShape& s) {
  const size_t b = s.b, h = s.h, c = s.chunks(), q = s.q;
  return {b * h * c * q, b * c * h * static_cast<size_t>(s.p) * s.n, b * c * s.g * q * q};
}

void ssd_scan_forward(const SsdScanForward& f, cudaStream_t stream) {
  check_shape(f.shape);
  CARVE_KERNEL_REQUIRE(f.x && f.dt && f.A && f.B && f.C && f.out && f.final_state && f.dtp && f.cum && f.states &&
                           (f.cb || !ssd_scan_uses_cb(f.shape, f.dtype)),
                       "ssd_scan_forward: a required pointer is null");
  dispatch_element(f.dtype, [&](auto t) { forward_typed<decltype(t)>(f, stream); });
}

SsdForwardKernels ssd_scan_forward_kernels(const SsdScanForward& f) {
  if (f.dtype == ElementType::f32 || !use_tensor_cores(f.shape)) return SsdForwardKernels::chunk_parallel;
  return ssd_fused_forward_kernels(f);
}

SsdBackwardSweeps ssd_scan_backward_sweeps(const SsdScanBackward& b) {
  if (b.fwd->dtype == ElementType::f32 || !use_tensor_cores(b.fwd->shape)) return SsdBackwardSweeps::none;
  return ssd_fused_backward_sweeps(b);
}

size_t ssd_scan_backward_span_floats(const SsdScanForward& f) {
  if (f.dtype == ElementType::f32 || !use_tensor_cores(f.shape) || f.seg) return 0;
  return ssd_fused_state_grad_span_floats(f.shape);
}

size_t ssd_scan_forward_span_floats(const SsdScanForward& f) {
  if (ssd_scan_forward_kernels(f) == SsdForwardKernels::chunk_parallel) return 0;
  return ssd_fused_forward_span_floats(f);
}

void ssd_scan_backward(const SsdScanBackward& b, cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(b.fwd && b.fwd->y_ssm, "ssd_scan_backward: the forward must have kept y_ssm");
  check_shape(b.fwd->shape);
  CARVE_KERNEL_REQUIRE(b.dout && b.dx && b.ddt && b.dB && b.dC && b.dA && b.dy && b.dyy && b.ddt_u && b.end_term &&
                           b.dstates && (b.dcb || !ssd_scan_backward_uses_dcb(b.fwd->shape, b.fwd->dtype)),
                       "ssd_scan_backward: a required pointer is null");
  CARVE_KERNEL_REQUIRE(!b.fwd->z || b.dz, "ssd_scan_backward: dz is required with z");
  CARVE_KERNEL_REQUIRE(b.fwd->dtype == ElementType::f32 || b.dy_lo,
                       "ssd_scan_backward: dy_lo is required for 16-bit types");
  CARVE_KERNEL_REQUIRE(!b.fwd->D || b.dD, "ssd_scan_backward: dD is required with D");
  CARVE_KERNEL_REQUIRE(!b.fwd->dt_bias || b.ddt_bias, "ssd_scan_backward: ddt_bias is required with dt_bias");
  dispatch_element(b.fwd->dtype, [&](auto t) { backward_typed<decltype(t)>(b, stream); });
}

void ssd_step(const SsdStep& s, cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(s.b > 0 && s.h > 0 && s.p > 0 && s.g > 0 && s.n > 0 && s.h % s.g == 0,
                       "ssd_step: sizes must be positive with h a multiple of g");
  CARVE_KERNEL_REQUIRE(s.x && s.dt && s.A && s.B && s.C && s.state && s.y, "ssd_step: a required pointer is null");
  dispatch_element(s.dtype, [&](auto t) {
    const dim3 grid(static_cast<unsigned>(static_cast<long>(s.b) * s.h), ceil_div(s.p, 4));
    ssd_step_kernel<decltype(t)><<<grid, 128, 0, stream>>>(s);
    CARVE_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace carve::kernels
