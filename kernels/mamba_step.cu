#include "kernels/mamba_step.h"

#include "kernels/element.cuh"

namespace carve::kernels {
namespace {

constexpr int kWarps = 16;
constexpr int kRowsInFlight = 4;  // state rows a warp loads before it updates any

// kPerLane = ceil(n / 32) state values per lane and row, all loaded before any is used: a batch-1 step has only
// b * h blocks, so each warp keeps kRowsInFlight * kPerLane loads in flight to stream the state.
template <typename T, int kPerLane>
__global__ void __launch_bounds__(kWarps * 32) mamba_step_kernel(MambaStep s) {
  __shared__ float xs[kMambaStepMax], Bs[kMambaStepMax], Cs[kMambaStepMax], ys[kMambaStepMax];
  __shared__ float rstd;
  const int bi = blockIdx.x / s.h, hi = blockIdx.x % s.h;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const T* x = static_cast<const T*>(s.x) + bi * s.x_row + static_cast<long>(hi / (s.h / s.x_heads)) * s.p;
  const T* B = static_cast<const T*>(s.B) + bi * s.B_row + static_cast<long>(hi / (s.h / s.b_heads)) * s.n;
  const T* C = static_cast<const T*>(s.C) + bi * s.C_row + static_cast<long>(hi / (s.h / s.c_heads)) * s.n;
  const T* z = static_cast<const T*>(s.z) + bi * s.z_row + static_cast<long>(hi) * s.p;
  for (int i = threadIdx.x; i < s.p; i += blockDim.x) xs[i] = to_float(x[i]);
  for (int i = threadIdx.x; i < s.n; i += blockDim.x) Bs[i] = to_float(B[i]), Cs[i] = to_float(C[i]);
  float dt = to_float(static_cast<const T*>(s.dt)[bi * s.dt_row + hi]);
  if (s.dt_bias) dt += to_float(static_cast<const T*>(s.dt_bias)[hi]);
  dt = softplusf(dt);
  const float decay = expf(dt * -expf(to_float(static_cast<const T*>(s.A_log)[hi])));
  const float D = s.D ? to_float(static_cast<const T*>(s.D)[hi]) : 0.f;
  __syncthreads();

  float* state = s.state + (static_cast<long>(bi) * s.h + hi) * s.p * s.n;
  for (int p0 = warp * kRowsInFlight; p0 < s.p; p0 += kWarps * kRowsInFlight) {
    float v[kRowsInFlight][kPerLane];
#pragma unroll
    for (int r = 0; r < kRowsInFlight; ++r)
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int ni = lane + 32 * j;
        v[r][j] = p0 + r < s.p && ni < s.n ? state[static_cast<long>(p0 + r) * s.n + ni] : 0.f;
      }
#pragma unroll
    for (int r = 0; r < kRowsInFlight; ++r) {
      if (p0 + r >= s.p) break;
      const float dtx = dt * xs[p0 + r];
      float y = 0.f;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int ni = lane + 32 * j;
        if (ni >= s.n) break;
        const float updated = decay * v[r][j] + dtx * Bs[ni];
        state[static_cast<long>(p0 + r) * s.n + ni] = updated;
        y += updated * Cs[ni];
      }
      y = warp_sum(y);
      if (s.D) y += D * xs[p0 + r];
      if (lane == 0) ys[p0 + r] = to_float(from_float<T>(y));  // the SSD step's output, in the element type
    }
  }
  __syncthreads();

  // Gated RMSNorm over the head's p channels: one warp sums the squares, as the gated norm kernel does per group.
  if (warp == 0) {
    float ss = 0.f;
    for (int i = lane; i < s.p; i += 32) {
      const float v = s.norm_before_gate ? ys[i] : ys[i] * siluf(to_float(z[i]));
      ss += v * v;
    }
    ss = warp_sum(ss);
    if (lane == 0) rstd = rsqrtf(ss / s.p + s.eps);
  }
  __syncthreads();
  T* out = static_cast<T*>(s.out) + (static_cast<long>(bi) * s.h + hi) * s.p;
  const T* w = static_cast<const T*>(s.norm_weight) + (s.norm_weight_shared ? 0 : static_cast<long>(hi) * s.p);
  for (int i = threadIdx.x; i < s.p; i += blockDim.x) {
    const float gate = siluf(to_float(z[i]));
    const float v = s.norm_before_gate ? ys[i] : ys[i] * gate;
    const float after = to_float(w[i]) * (s.norm_before_gate ? gate : 1.f);
    out[i] = from_float<T>(v * rstd * after);
  }
}

template <typename T>
void launch(const MambaStep& s, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(static_cast<long>(s.b) * s.h);
  const int per_lane = (s.n + 31) / 32;
  if (per_lane <= 2) mamba_step_kernel<T, 2><<<blocks, kWarps * 32, 0, stream>>>(s);
  else if (per_lane <= 4) mamba_step_kernel<T, 4><<<blocks, kWarps * 32, 0, stream>>>(s);
  else mamba_step_kernel<T, 8><<<blocks, kWarps * 32, 0, stream>>>(s);
}

}  // namespace

bool mamba_step_supports(int p, int n) { return p > 0 && n > 0 && p <= kMambaStepMax && n <= kMambaStepMax; }

void mamba_step(const MambaStep& s, cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(s.b > 0 && s.h > 0 && mamba_step_supports(s.p, s.n), "mamba_step: unsupported sizes");
  CARVE_KERNEL_REQUIRE(s.x_heads > 0 && s.b_heads > 0 && s.c_heads > 0 && s.h % s.x_heads == 0 &&
                           s.h % s.b_heads == 0 && s.h % s.c_heads == 0,
                       "mamba_step: x, B and C heads must divide the heads");
  CARVE_KERNEL_REQUIRE(s.x && s.B && s.C && s.dt && s.z && s.A_log && s.norm_weight && s.state && s.out,
                       "mamba_step: a required pointer is null");
  dispatch_element(s.dtype, [&](auto tag) { launch<decltype(tag)>(s, stream); });
  CARVE_CUDA_CHECK_LAUNCH();
}

}  // namespace carve::kernels
