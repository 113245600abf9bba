/*
 * Causal conv1d kernels. The conv is memory-bound (k <= 4 taps): one thread per output element, channels along
 * threads for coalescing; each input is read k times, from L1/L2 after the first. The backward recomputes the
 * pre-activation instead of keeping it, writes the gradient before SiLU once, and reduces the weight gradient per
 * channel over row slices with one atomic per slice.
 */
#include "kernels/causal_conv.h"

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

}  // namespace

void causal_conv_forward(const CausalConvForward& f, cudaStream_t stream) {
  check(f);
  CARVE_KERNEL_REQUIRE(f.y, "causal_conv_forward: y is required");
  dispatch_element(f.dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto in = input_of<T>(f);
    conv_forward_kernel<T><<<ceil_div((long)f.b * f.l * f.c, kThreads), kThreads, 0, stream>>>(
        in, f.weight, f.bias, f.silu, static_cast<T*>(f.y));
    CARVE_CUDA_CHECK_LAUNCH();
    if (f.final_state && f.k > 1) {
      conv_final_state_kernel<T><<<ceil_div((long)f.b * f.c * (f.k - 1), kThreads), kThreads, 0, stream>>>(
          in, static_cast<T*>(f.final_state));
      CARVE_CUDA_CHECK_LAUNCH();
    }
  });
}

void causal_conv_backward(const CausalConvBackward& b, cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(b.fwd && b.dy && b.dx && b.dweight && b.dpre, "causal_conv_backward: a required pointer is null");
  const CausalConvForward& f = *b.fwd;
  check(f);
  CARVE_KERNEL_REQUIRE(!f.bias || b.dbias, "causal_conv_backward: dbias is required with a bias");
  CARVE_CUDA_CHECK(cudaMemsetAsync(b.dweight, 0, sizeof(float) * f.c * f.k, stream));
  if (f.bias) CARVE_CUDA_CHECK(cudaMemsetAsync(b.dbias, 0, sizeof(float) * f.c, stream));
  dispatch_element(f.dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto in = input_of<T>(f);
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
