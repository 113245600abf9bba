#include "kernels/mamba_step.h"

#include <cooperative_groups.h>

#include "kernels/element.cuh"
#include "kernels/launch.cuh"

namespace carve::kernels {
namespace {

constexpr int kRowsInFlight = 4;  // state rows a warp loads before it updates any
constexpr int kClusterWarps = 4;  // per block when a head is a cluster of blocks
constexpr int kMaxWarps = 16;     // per block when a head is one block (below compute capability 9.0)
constexpr int kMaxSlices = 8;     // the portable cluster size

// Blocks per (row, head): one per kClusterWarps * kRowsInFlight state rows, up to a cluster of kMaxSlices, where
// the kernel runs clusters. One block per head streamed a 128 x 128 state at a few hundred GB/s, since a batch-1
// step has only h blocks.
int slices_of(int p, bool clusters) {
  return clusters ? std::min(kMaxSlices, static_cast<int>(ceil_div(p, kClusterWarps * kRowsInFlight))) : 1;
}

// The sum over the blocks of this block's cluster of the value each holds in `mine` (shared memory).
__device__ float cluster_sum(float* mine, int slices) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every block's value is written
  float total = 0.f;
  for (int r = 0; r < slices; ++r) total += *cluster.map_shared_rank(mine, r);
  cluster.sync();  // no block exits (freeing its shared memory) before the others have read it
  return total;
#else
  __trap();  // runs_clusters() is false for code compiled below 9.0, and then slices is 1
  return 0.f;
#endif
}

// kPerLane = ceil(n / 32) state values per lane and row, all loaded before any is used, so each warp keeps
// kRowsInFlight * kPerLane loads in flight. Block `slice` of a (row, head) takes state rows [begin, end).
template <typename T, int kPerLane>
__global__ void __launch_bounds__(kMaxWarps * 32) mamba_step_kernel(MambaStep s, int slices) {
  let_next_kernel_launch();
  __shared__ float xs[kMambaStepMax], Bs[kMambaStepMax], Cs[kMambaStepMax], ys[kMambaStepMax];
  __shared__ float gates[kMambaStepMax], weights[kMambaStepMax];  // silu(z) and the norm weight of this block's rows
  __shared__ float warp_ss[kMaxWarps], block_ss;  // block_ss: what the cluster's other blocks read
  const int head_block = blockIdx.x / slices, slice = blockIdx.x % slices;
  const int bi = head_block / s.h, hi = head_block % s.h;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int rows_per_pass = warps * kRowsInFlight;
  const int per_slice = (s.p + slices - 1) / slices;
  const int begin = slice * per_slice, end = min(s.p, begin + per_slice);
  float* state = s.state + (static_cast<long>(bi) * s.h + hi) * s.p * s.n;
  // The state's rows come to L2 while the input product finishes (an L2 prefetch is never stale: launch.cuh).
  for (long i = static_cast<long>(threadIdx.x) * 32; i < static_cast<long>(end - begin) * s.n; i += blockDim.x * 32)
    prefetch_l2(state + static_cast<long>(begin) * s.n + i);
  wait_for_previous_kernel();

  // The first pass's state rows are loaded before the inputs, and the gate and norm weight of this block's rows
  // with them, so that all their latencies overlap: a batch-1 step is a few round trips to memory, not bandwidth.
  float v[kRowsInFlight][kPerLane];
  auto load_rows = [&](int p0) {
#pragma unroll
    for (int r = 0; r < kRowsInFlight; ++r)
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int ni = lane + 32 * j;
        v[r][j] = p0 + r < end && ni < s.n ? state[static_cast<long>(p0 + r) * s.n + ni] : 0.f;
      }
  };
  int p0 = begin + warp * kRowsInFlight;
  load_rows(p0);
  const T* x = static_cast<const T*>(s.x) + bi * s.x_row + static_cast<long>(hi / (s.h / s.x_heads)) * s.p;
  const T* B = static_cast<const T*>(s.B) + bi * s.B_row + static_cast<long>(hi / (s.h / s.b_heads)) * s.n;
  const T* C = static_cast<const T*>(s.C) + bi * s.C_row + static_cast<long>(hi / (s.h / s.c_heads)) * s.n;
  const T* z = static_cast<const T*>(s.z) + bi * s.z_row + static_cast<long>(hi) * s.p;
  const T* w = static_cast<const T*>(s.norm_weight) + (s.norm_weight_shared ? 0 : static_cast<long>(hi) * s.p);
  for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
    xs[i] = to_float(x[i]);
    gates[i] = siluf(to_float(z[i]));
    weights[i] = to_float(w[i]);
  }
  for (int i = threadIdx.x; i < s.n; i += blockDim.x) Bs[i] = to_float(B[i]), Cs[i] = to_float(C[i]);
  float dt = to_float(static_cast<const T*>(s.dt)[bi * s.dt_row + hi]);
  if (s.dt_bias) dt += to_float(static_cast<const T*>(s.dt_bias)[hi]);
  dt = softplusf(dt);
  const float decay = expf(dt * -expf(to_float(static_cast<const T*>(s.A_log)[hi])));
  const float D = s.D ? to_float(static_cast<const T*>(s.D)[hi]) : 0.f;
  __syncthreads();

  for (bool loaded = true; p0 < end; p0 += rows_per_pass, loaded = false) {
    if (!loaded) load_rows(p0);
#pragma unroll
    for (int r = 0; r < kRowsInFlight; ++r) {
      if (p0 + r >= end) break;
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

  // Gated RMSNorm over the head's p channels (group size p), as the gated norm kernel computes it: the sum of
  // squares of this block's rows, then of the cluster's blocks.
  float ss = 0.f;
  for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float v = s.norm_before_gate ? ys[i] : ys[i] * gates[i];
    ss += v * v;
  }
  const float block_total = block_sum(ss, warp_ss);
  if (threadIdx.x == 0) block_ss = block_total;  // cluster_sum's first cluster barrier publishes it
  const float total = slices > 1 ? cluster_sum(&block_ss, slices) : block_total;
  const float rstd = rsqrtf(total / s.p + s.eps);
  T* out = static_cast<T*>(s.out) + (static_cast<long>(bi) * s.h + hi) * s.p;
  for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float gate = gates[i];
    const float v = s.norm_before_gate ? ys[i] : ys[i] * gate;
    const float after = weights[i] * (s.norm_before_gate ? gate : 1.f);
    out[i] = from_float<T>(v * rstd * after);
  }
}

template <typename T, int kPerLane>
void launch(const MambaStep& s, cudaStream_t stream) {
  constexpr auto kernel = mamba_step_kernel<T, kPerLane>;
  const bool clusters = s.allow_clusters && runs_clusters<kernel>();
  const int slices = slices_of(s.p, clusters);
  const LaunchShape shape(dim3(static_cast<unsigned>(static_cast<long>(s.b) * s.h * slices)),
                          dim3((clusters ? kClusterWarps : kMaxWarps) * 32), 0, slices);
  launch_kernel(kernel, shape, stream, s, slices);
}

template <typename T>
void launch(const MambaStep& s, cudaStream_t stream) {
  const int per_lane = (s.n + 31) / 32;
  if (per_lane <= 2) launch<T, 2>(s, stream);
  else if (per_lane <= 4) launch<T, 4>(s, stream);
  else launch<T, 8>(s, stream);
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
}

}  // namespace carve::kernels
