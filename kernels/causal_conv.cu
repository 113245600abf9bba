/*
 * Causal conv1d kernels. The conv is memory-bound (k <= 4 taps in practice). Where channels come in runs of 4 with
 * aligned rows and k <= 4 (every mixer's shape), a thread takes 4 channels of a run of kRun tokens, loads the run's
 * inputs (and the k - 1 before it) at once into registers and slides the taps over them, so each input is read from
 * memory about once; the backward recomputes the pre-activation there, forms the gradient before SiLU in registers
 * and takes dx, the weight and the bias gradients from it in the same pass. One thread per output element with each
 * input read k times and the gradient before SiLU in a float32 buffer took 8x (forward) and 13x (forward+backward)
 * the bytes' time at HoVLE's sizes (docs/kernels.md). Other shapes take that element-by-element path.
 */
#include "kernels/causal_conv.h"

#include <algorithm>
#include <initializer_list>
#include <type_traits>

#include "kernels/element.cuh"

namespace carve::kernels {
namespace {

struct ConvDims {
  int b, l, c, k;
};

// Input at time u of row bi (u < 0 reads the initial state, zeros without one) and its segment (0 before the row).
template <typename T>
struct ConvInput {
  ConvDims d;
  const T* x;
  const T* init;
  const int* seg;
  __device__ float at(int bi, int u, int ch) const {
    if (u >= 0) return to_float(x[((long)bi * d.l + u) * d.c + ch]);
    return init ? to_float(init[((long)bi * d.c + ch) * (d.k - 1) + (d.k - 1 + u)]) : 0.f;
  }
  __device__ int seg_at(int bi, int u) const { return seg && u >= 0 ? seg[(long)bi * d.l + u] : 0; }
  // The conv before bias and SiLU at time t.
  __device__ float pre(const float* w, int bi, int t, int ch) const {
    const int st = seg_at(bi, t);
    float acc = 0.f;
    for (int j = 0; j < d.k; ++j) {
      const int u = t - (d.k - 1) + j;
      if (seg_at(bi, u) == st) acc += w[(long)ch * d.k + j] * at(bi, u, ch);
    }
    return acc;
  }
};

template <typename T>
__global__ void conv_forward_kernel(ConvInput<T> in, const float* w, const float* bias, bool silu, T* y) {
  const ConvDims d = in.d;
  const long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (long)d.b * d.l * d.c) return;
  const int ch = e % d.c, t = (e / d.c) % d.l, bi = e / ((long)d.c * d.l);
  float v = in.pre(w, bi, t, ch) + (bias ? bias[ch] : 0.f);
  y[e] = from_float<T>(silu ? siluf(v) : v);
}

// final_state[bi, ch, j] = input at l - (k - 1) + j if it belongs to the row's last sample, else 0.
template <typename T>
__global__ void conv_final_state_kernel(ConvInput<T> in, T* final_state) {
  const ConvDims d = in.d;
  const long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (long)d.b * d.c * (d.k - 1)) return;
  const int j = e % (d.k - 1), ch = (e / (d.k - 1)) % d.c, bi = e / ((long)(d.k - 1) * d.c);
  const int u = d.l - (d.k - 1) + j;
  const bool same = in.seg_at(bi, u) == in.seg_at(bi, d.l - 1);
  final_state[e] = from_float<T>(same ? in.at(bi, u, ch) : 0.f);
}

template <typename T>
__global__ void conv_dpre_kernel(ConvInput<T> in, const float* w, const float* bias, bool silu, const T* dy,
                                 float* dpre) {
  const ConvDims d = in.d;
  const long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (long)d.b * d.l * d.c) return;
  const int ch = e % d.c, t = (e / d.c) % d.l, bi = e / ((long)d.c * d.l);
  float g = to_float(dy[e]);
  if (silu) g *= silu_grad(in.pre(w, bi, t, ch) + (bias ? bias[ch] : 0.f));
  dpre[e] = g;
}

// Gradient of the input at time u in [-(k - 1), l): u < 0 is the initial state.
template <typename T>
__global__ void conv_dx_kernel(ConvInput<T> in, const float* w, const float* dpre, const T* dfinal, T* dx,
                               T* dinit) {
  const ConvDims d = in.d;
  const long span = d.l + d.k - 1;
  const long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (long)d.b * span * d.c) return;
  const int ch = e % d.c, u = static_cast<int>((e / d.c) % span) - (d.k - 1), bi = e / ((long)d.c * span);
  if (u < 0 && !dinit) return;
  const int su = in.seg_at(bi, u);
  float g = 0.f;
  for (int j = 0; j < d.k; ++j) {
    const int t = u + (d.k - 1) - j;
    if (t >= 0 && t < d.l && in.seg_at(bi, t) == su) g += w[(long)ch * d.k + j] * dpre[((long)bi * d.l + t) * d.c + ch];
  }
  if (dfinal && u >= d.l - (d.k - 1) && su == in.seg_at(bi, d.l - 1))
    g += to_float(dfinal[((long)bi * d.c + ch) * (d.k - 1) + (u - d.l + d.k - 1)]);
  if (u >= 0) dx[((long)bi * d.l + u) * d.c + ch] = from_float<T>(g);
  else dinit[((long)bi * d.c + ch) * (d.k - 1) + (d.k - 1 + u)] = from_float<T>(g);
}

// Weight and bias gradients: blockIdx.y picks a slice of the b * l rows, threads run over channels.
template <typename T>
__global__ void conv_dweight_kernel(ConvInput<T> in, const float* dpre, float* dw, float* dbias) {
  constexpr int kMaxTaps = 8;
  const ConvDims d = in.d;
  const int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= d.c) return;
  float acc[kMaxTaps] = {}, accb = 0.f;
  const long rows = (long)d.b * d.l;
  for (long row = blockIdx.y; row < rows; row += gridDim.y) {
    const int bi = row / d.l, t = row % d.l;
    const float g = dpre[row * d.c + ch];
    accb += g;
    const int st = in.seg_at(bi, t);
    for (int j = 0; j < d.k; ++j) {
      const int u = t - (d.k - 1) + j;
      if (in.seg_at(bi, u) == st) acc[j] += g * in.at(bi, u, ch);
    }
  }
  for (int j = 0; j < d.k; ++j) atomicAdd(&dw[(long)ch * d.k + j], acc[j]);
  if (dbias) atomicAdd(&dbias[ch], accb);
}

// ---------------------------------------------------------------------------------------------------------------
// Runs of tokens (the fast path): 4 channels per thread, threads along channels, a block's threads all on one run.

constexpr int kRunChannels = 4;
constexpr int kRun = 8;            // tokens a thread's outputs cover per step
constexpr int kRunsPerThread = 8;  // steps per thread: the weight and bias gradients sum over them before atomics

// The 4 inputs at time u (u < 0: the initial state or zeros) and u's segment; past the row's end, zeros.
template <typename T>
__device__ __forceinline__ void input4(const ConvInput<T>& in, int bi, int u, int ch0, float (&v)[kRunChannels],
                                       int& seg) {
  const ConvDims& d = in.d;
  if (u >= 0 && u < d.l) {
    load_floats(in.x + ((long)bi * d.l + u) * d.c + ch0, v);
  } else {
#pragma unroll
    for (int i = 0; i < kRunChannels; ++i) v[i] = u < 0 ? in.at(bi, u, ch0 + i) : 0.f;
  }
  seg = u < d.l ? in.seg_at(bi, u) : -1;
}

// Which steps a thread takes: runs first, first + stride, ... of row bi (about kRunsPerThread of them in the
// backward; more when the grid's 65535 limit on y clamps the stride).
struct RunSteps {
  int bi, first, stride, runs;
  __device__ RunSteps(const ConvDims& d) {
    runs = (d.l + kRun - 1) / kRun;
    bi = blockIdx.z;
    first = blockIdx.y;
    stride = gridDim.y;
  }
};

// A thread's taps and bias for its 4 channels, and the pre-activation of the output whose K inputs start at window
// index a (the output's own input is the last; taps on another sample's inputs drop out).
template <int K>
struct RunTaps {
  float w[K][kRunChannels], b[kRunChannels];
  __device__ RunTaps(const float* weight, const float* bias, int ch0) {
#pragma unroll
    for (int i = 0; i < kRunChannels; ++i) {
      b[i] = bias ? bias[ch0 + i] : 0.f;
#pragma unroll
      for (int j = 0; j < K; ++j) w[j][i] = weight[(long)(ch0 + i) * K + j];
    }
  }
  template <int N>
  __device__ float pre(const float (&xv)[N][kRunChannels], const int (&sv)[N], int a, int i) const {
    float acc = b[i];
#pragma unroll
    for (int j = 0; j < K; ++j) acc += sv[a + j] == sv[a + K - 1] ? w[j][i] * xv[a + j][i] : 0.f;
    return acc;
  }
};

template <typename T, int K>
__global__ void __launch_bounds__(256) conv_forward_runs_kernel(ConvInput<T> in, const float* w, const float* bias,
                                                                bool silu, T* y) {
  const ConvDims d = in.d;
  const int ch0 = (blockIdx.x * blockDim.x + threadIdx.x) * kRunChannels;
  if (ch0 >= d.c) return;
  const RunTaps<K> taps(w, bias, ch0);
  const RunSteps steps(d);
  for (int run = steps.first; run < steps.runs; run += steps.stride) {
    const int t0 = run * kRun;
    // Inputs t0 - (K - 1) .. t0 + kRun - 1, all loads in flight before any is used.
    float xv[kRun + K - 1][kRunChannels];
    int sv[kRun + K - 1];
#pragma unroll
    for (int a = 0; a < kRun + K - 1; ++a) input4(in, steps.bi, t0 - (K - 1) + a, ch0, xv[a], sv[a]);
#pragma unroll
    for (int a = 0; a < kRun; ++a) {
      const int t = t0 + a;
      if (t >= d.l) break;
      float out[kRunChannels];
#pragma unroll
      for (int i = 0; i < kRunChannels; ++i) {
        const float acc = taps.pre(xv, sv, a, i);
        out[i] = silu ? siluf(acc) : acc;
      }
      store_floats(y + ((long)steps.bi * d.l + t) * d.c + ch0, out);
    }
  }
}

// The whole backward of kRun inputs per step: the gradient before SiLU (dpre) at times t0 .. t0 + kRun + K - 2 from
// dy and the recomputed pre-activation, then dx[u] = sum_j w_j dpre[u + K - 1 - j] (same sample) for the run's u (and,
// at a row's start, the initial state's u < 0), the final state's gradient on the last K - 1 inputs, and the weight
// and bias gradients of the run's own times, summed over the thread's steps before one atomic each.
// Two blocks per SM: the compiler then keeps it within 128 registers, spilling a few hundred bytes at K = 4 to L1, and
// the backward is 1.2x faster than with one block of up to 190 registers (docs/kernels.md).
template <typename T, int K>
__global__ void __launch_bounds__(256, 2) conv_backward_runs_kernel(ConvInput<T> in, const float* w, const float* bias,
                                                                 bool silu, const T* dy, const T* dfinal, T* dx,
                                                                 T* dinit, float* dw, float* dbias) {
  constexpr int kX = kRun + 2 * (K - 1);  // inputs t0 - (K - 1) .. t0 + kRun + K - 2
  constexpr int kG = kRun + K - 1;        // dpre at t0 .. t0 + kRun + K - 2
  const ConvDims d = in.d;
  const int ch0 = (blockIdx.x * blockDim.x + threadIdx.x) * kRunChannels;
  if (ch0 >= d.c) return;
  const RunTaps<K> taps(w, bias, ch0);
  float dw_acc[K][kRunChannels] = {}, db_acc[kRunChannels] = {};
  const RunSteps steps(d);
  const int bi = steps.bi, last_seg = in.seg_at(bi, d.l - 1);
  for (int run = steps.first; run < steps.runs; run += steps.stride) {
    const int t0 = run * kRun;
    float xv[kX][kRunChannels], g[kG][kRunChannels];
    int sv[kX];
#pragma unroll
    for (int a = 0; a < kX; ++a) input4(in, bi, t0 - (K - 1) + a, ch0, xv[a], sv[a]);
#pragma unroll
    for (int a = 0; a < kG; ++a) {
      const int t = t0 + a;
      if (t < d.l) {
        load_floats(dy + ((long)bi * d.l + t) * d.c + ch0, g[a]);
      } else {
#pragma unroll
        for (int i = 0; i < kRunChannels; ++i) g[a][i] = 0.f;
      }
    }
    // dpre at t0 + a: inputs xv[a .. a + K - 1], the output's own at xv[a + K - 1].
#pragma unroll
    for (int a = 0; a < kG; ++a) {
      if (!silu) break;
#pragma unroll
      for (int i = 0; i < kRunChannels; ++i) g[a][i] *= silu_grad(taps.pre(xv, sv, a, i));
    }
    // The run's own times: weight and bias gradients.
#pragma unroll
    for (int a = 0; a < kRun; ++a) {
      if (t0 + a >= d.l) break;
#pragma unroll
      for (int i = 0; i < kRunChannels; ++i) {
        db_acc[i] += g[a][i];
#pragma unroll
        for (int j = 0; j < K; ++j) dw_acc[j][i] += sv[a + j] == sv[a + K - 1] ? g[a][i] * xv[a + j][i] : 0.f;
      }
    }
    // dx at u = t0 + a - (K - 1) for a in [K - 1, K - 1 + kRun) (the run's inputs), and at a row's start a in
    // [0, K - 1) too (u < 0, the initial state). Input u = xv index a, its taps' outputs t = u + K - 1 - j are
    // g index a - j.
#pragma unroll
    for (int a = 0; a < kRun + K - 1; ++a) {
      const int u = t0 + a - (K - 1);
      if (u >= d.l) break;
      if (u < 0 && !dinit) continue;
      if (a < K - 1 && t0 > 0) continue;  // the run before owns it
      float out[kRunChannels] = {};
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int ga = a - j;  // dpre index of output t = u + K - 1 - j, i.e. time t0 + ga
        if (ga < 0 || ga >= kG) continue;
        if (t0 + ga >= d.l || sv[ga + K - 1] != sv[a]) continue;
#pragma unroll
        for (int i = 0; i < kRunChannels; ++i) out[i] += taps.w[j][i] * g[ga][i];
      }
      if (dfinal && u >= d.l - (K - 1) && sv[a] == last_seg) {
#pragma unroll
        for (int i = 0; i < kRunChannels; ++i)
          out[i] += to_float(dfinal[((long)bi * d.c + ch0 + i) * (K - 1) + (u - d.l + K - 1)]);
      }
      if (u >= 0) {
        store_floats(dx + ((long)bi * d.l + u) * d.c + ch0, out);
      } else {
#pragma unroll
        for (int i = 0; i < kRunChannels; ++i)
          dinit[((long)bi * d.c + ch0 + i) * (K - 1) + (K - 1 + u)] = from_float<T>(out[i]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kRunChannels; ++i) {
#pragma unroll
    for (int j = 0; j < K; ++j) atomicAdd(&dw[(long)(ch0 + i) * K + j], dw_acc[j][i]);
    if (dbias) atomicAdd(&dbias[ch0 + i], db_acc[i]);
  }
}

template <typename T>
__global__ void conv_step_kernel(ConvDims d, const T* x, T* state, const float* w, const float* bias, bool silu,
                                 T* y) {
  const long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (long)d.b * d.c) return;
  const int ch = e % d.c;
  T* s = state + e * (d.k - 1);
  const float xv = to_float(x[e]);
  float acc = w[(long)ch * d.k + d.k - 1] * xv + (bias ? bias[ch] : 0.f);
  for (int j = 0; j < d.k - 1; ++j) acc += w[(long)ch * d.k + j] * to_float(s[j]);
  for (int j = 0; j + 1 < d.k - 1; ++j) s[j] = s[j + 1];
  if (d.k > 1) s[d.k - 2] = x[e];
  y[e] = from_float<T>(silu ? siluf(acc) : acc);
}

void check(const CausalConvForward& f) {
  CARVE_KERNEL_REQUIRE(f.b > 0 && f.l > 0 && f.c > 0 && f.k >= 1 && f.k <= 8,
                       "causal_conv: sizes must be positive with 1 <= k <= 8");
  CARVE_KERNEL_REQUIRE(f.x && f.weight, "causal_conv: x and weight are required");
}

template <typename T>
ConvInput<T> input_of(const CausalConvForward& f) {
  return {{f.b, f.l, f.c, f.k}, static_cast<const T*>(f.x), static_cast<const T*>(f.initial_state), f.seg};
}

constexpr int kThreads = 256;

// Whether the runs path takes this conv: 4 channels per thread with aligned 4-element loads of every row operand.
bool runs_apply(const CausalConvForward& f, std::initializer_list<const void*> rows) {
  const size_t elem = f.dtype == ElementType::f32 ? 4 : 2;
  // (b is the grid's z)
  return f.k <= 4 && f.c % kRunChannels == 0 && f.b <= 65535 && all_aligned(rows, kRunChannels * elem);
}

// The runs path's grid: threads along channels (4 each), blockIdx.y over runs of the row (steps_per_thread each),
// blockIdx.z the row.
struct RunGrid {
  dim3 grid, block;
};
RunGrid run_grid(const CausalConvForward& f, int steps_per_thread) {
  const int threads_needed = f.c / kRunChannels;
  const int threads = std::min(kThreads, (threads_needed + 31) / 32 * 32);
  const long runs = (f.l + kRun - 1) / kRun;
  const unsigned y = std::min<long>(ceil_div(runs, steps_per_thread), 65535);
  return {dim3(ceil_div(threads_needed, threads), y, static_cast<unsigned>(f.b)), dim3(threads)};
}

// Calls f(std::integral_constant<int, K>{}) for k in 1..4.
template <typename F>
void dispatch_taps(int k, F&& f) {
  switch (k) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
  }
  CARVE_KERNEL_REQUIRE(false, "causal_conv: the runs path takes 1 to 4 taps");
}

}  // namespace

void causal_conv_forward(const CausalConvForward& f, cudaStream_t stream) {
  check(f);
  CARVE_KERNEL_REQUIRE(f.y, "causal_conv_forward: y is required");
  dispatch_element(f.dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto in = input_of<T>(f);
    if (runs_apply(f, {f.x, f.y})) {
      const RunGrid g = run_grid(f, 1);
      dispatch_taps(f.k, [&](auto taps) {
        conv_forward_runs_kernel<T, decltype(taps)::value><<<g.grid, g.block, 0, stream>>>(
            in, f.weight, f.bias, f.silu, static_cast<T*>(f.y));
      });
    } else {
      conv_forward_kernel<T><<<ceil_div((long)f.b * f.l * f.c, kThreads), kThreads, 0, stream>>>(
          in, f.weight, f.bias, f.silu, static_cast<T*>(f.y));
    }
    CARVE_CUDA_CHECK_LAUNCH();
    if (f.final_state && f.k > 1) {
      conv_final_state_kernel<T><<<ceil_div((long)f.b * f.c * (f.k - 1), kThreads), kThreads, 0, stream>>>(
          in, static_cast<T*>(f.final_state));
      CARVE_CUDA_CHECK_LAUNCH();
    }
  });
}

bool causal_conv_backward_uses_dpre(const CausalConvForward& f, const void* dy, const void* dx) {
  return !runs_apply(f, {f.x, dy, dx});
}

void causal_conv_backward(const CausalConvBackward& b, cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(b.fwd && b.dy && b.dx && b.dweight, "causal_conv_backward: a required pointer is null");
  const CausalConvForward& f = *b.fwd;
  check(f);
  CARVE_KERNEL_REQUIRE(!f.bias || b.dbias, "causal_conv_backward: dbias is required with a bias");
  const bool uses_dpre = causal_conv_backward_uses_dpre(f, b.dy, b.dx);
  CARVE_KERNEL_REQUIRE(b.dpre || !uses_dpre, "causal_conv_backward: dpre is required for this shape");
  CARVE_CUDA_CHECK(cudaMemsetAsync(b.dweight, 0, sizeof(float) * f.c * f.k, stream));
  if (f.bias) CARVE_CUDA_CHECK(cudaMemsetAsync(b.dbias, 0, sizeof(float) * f.c, stream));
  dispatch_element(f.dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto in = input_of<T>(f);
    if (!uses_dpre) {
      const RunGrid g = run_grid(f, kRunsPerThread);
      dispatch_taps(f.k, [&](auto taps) {
        conv_backward_runs_kernel<T, decltype(taps)::value><<<g.grid, g.block, 0, stream>>>(
            in, f.weight, f.bias, f.silu, static_cast<const T*>(b.dy), static_cast<const T*>(b.dfinal_state),
            static_cast<T*>(b.dx), static_cast<T*>(b.dinitial_state), b.dweight, b.dbias);
      });
      CARVE_CUDA_CHECK_LAUNCH();
      return;
    }
    const long elems = (long)f.b * f.l * f.c;
    conv_dpre_kernel<T><<<ceil_div(elems, kThreads), kThreads, 0, stream>>>(in, f.weight, f.bias, f.silu,
                                                                              static_cast<const T*>(b.dy), b.dpre);
    CARVE_CUDA_CHECK_LAUNCH();
    conv_dx_kernel<T><<<ceil_div((long)f.b * (f.l + f.k - 1) * f.c, kThreads), kThreads, 0, stream>>>(
        in, f.weight, b.dpre, static_cast<const T*>(b.dfinal_state), static_cast<T*>(b.dx),
        static_cast<T*>(b.dinitial_state));
    CARVE_CUDA_CHECK_LAUNCH();
    const unsigned slices = std::min<unsigned>(ceil_div((long)f.b * f.l, 32), 256);
    conv_dweight_kernel<T><<<dim3(ceil_div(f.c, 128), slices), 128, 0, stream>>>(in, b.dpre, b.dweight, b.dbias);
    CARVE_CUDA_CHECK_LAUNCH();
  });
}

void causal_conv_step(int b, int c, int k, ElementType dtype, const void* x, void* state, const float* weight,
                      const float* bias, bool silu, void* y, cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(b > 0 && c > 0 && k >= 1 && x && weight && y && (k == 1 || state),
                       "causal_conv_step: bad arguments");
  dispatch_element(dtype, [&](auto tag) {
    using T = decltype(tag);
    conv_step_kernel<T><<<ceil_div((long)b * c, kThreads), kThreads, 0, stream>>>(
        {b, 1, c, k}, static_cast<const T*>(x), static_cast<T*>(state), weight, bias, silu, static_cast<T*>(y));
    CARVE_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace carve::kernels
