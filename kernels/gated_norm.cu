/*
 * Gated RMSNorm kernels: one warp per (row, group), the group's sum of squares by warp shuffles. The backward
 * recomputes the normalized values from y, z and the kept 1 / rms, and sums the weight gradient of the rows a block
 * handles in shared memory before one atomic per weight.
 */
#include "kernels/gated_norm.h"

#include "kernels/element.cuh"

namespace carve::kernels {
namespace {

constexpr int kWarps = 8;

// One element of a (row, group) item: y, z, the gate silu(z), the weight, the value v whose RMS is taken, and the
// factor applied after the normalization (w, times the gate when the norm comes first).
struct NormElement {
  float y, z, gate, v, after;
  int wi;  // index into the weight
};

template <typename T>
__device__ NormElement norm_element(const GatedNormForward& f, long base, int gi, int i) {
  NormElement e;
  e.y = to_float(static_cast<const T*>(f.y)[base + i]);
  e.z = f.z ? to_float(static_cast<const T*>(f.z)[base + i]) : 0.f;
  e.gate = f.z ? siluf(e.z) : 1.f;
  e.wi = f.weight_shared ? i : gi * f.group + i;
  e.v = f.norm_before_gate ? e.y : e.y * e.gate;
  e.after = f.weight[e.wi] * (f.norm_before_gate ? e.gate : 1.f);
  return e;
}

// The (row, group) items of one warp: item -> offset of its first element and its group index.
struct NormItems {
  long count;
  int groups;
  __device__ long first() const { return (long)blockIdx.x * kWarps + threadIdx.x / 32; }
  __device__ long stride() const { return (long)gridDim.x * kWarps; }
};

template <typename T>
__global__ void gated_norm_forward_kernel(GatedNormForward f) {
  T* out = static_cast<T*>(f.out);
  const int lane = threadIdx.x % 32;
  const NormItems items{f.rows * (f.d / f.group), f.d / f.group};
  for (long item = items.first(); item < items.count; item += items.stride()) {
    const int gi = item % items.groups;
    const long base = (item / items.groups) * f.d + (long)gi * f.group;
    float ss = 0.f;
    for (int i = lane; i < f.group; i += 32) {
      const float v = norm_element<T>(f, base, gi, i).v;
      ss += v * v;
    }
    const float rstd = rsqrtf(warp_sum(ss) / f.group + f.eps);
    if (lane == 0) f.rstd[item] = rstd;
    for (int i = lane; i < f.group; i += 32) {
      const NormElement e = norm_element<T>(f, base, gi, i);
      out[base + i] = from_float<T>(e.v * rstd * e.after);
    }
  }
}

template <typename T>
__global__ void gated_norm_backward_kernel(GatedNormForward f, const void* dout_ptr, void* dy_ptr, void* dz_ptr,
                                           float* dweight, int weight_len) {
  extern __shared__ float dw_block[];
  for (int i = threadIdx.x; i < weight_len; i += blockDim.x) dw_block[i] = 0.f;
  __syncthreads();
  const T* dout = static_cast<const T*>(dout_ptr);
  T* dy = static_cast<T*>(dy_ptr);
  T* dz = static_cast<T*>(dz_ptr);
  const int lane = threadIdx.x % 32;
  const NormItems items{f.rows * (f.d / f.group), f.d / f.group};
  for (long item = items.first(); item < items.count; item += items.stride()) {
    const int gi = item % items.groups;
    const long base = (item / items.groups) * f.d + (long)gi * f.group;
    const float rstd = f.rstd[item];
    // Pass 1: mean of dn * n over the group, where n = v * rstd and dn = dout * after is the gradient at n.
    float dot = 0.f;
    for (int i = lane; i < f.group; i += 32) {
      const NormElement e = norm_element<T>(f, base, gi, i);
      dot += to_float(dout[base + i]) * e.after * e.v * rstd;
    }
    dot = warp_sum(dot) / f.group;
    for (int i = lane; i < f.group; i += 32) {
      const NormElement e = norm_element<T>(f, base, gi, i);
      const float go = to_float(dout[base + i]), n = e.v * rstd;
      const float dv = rstd * (go * e.after - n * dot);
      const float w = f.weight[e.wi];
      atomicAdd(&dw_block[e.wi], go * n * (f.norm_before_gate ? e.gate : 1.f));
      if (f.norm_before_gate) {
        dy[base + i] = from_float<T>(dv);
        if (f.z) dz[base + i] = from_float<T>(go * n * w * silu_grad(e.z));
      } else {
        dy[base + i] = from_float<T>(dv * e.gate);
        if (f.z) dz[base + i] = from_float<T>(dv * e.y * silu_grad(e.z));
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < weight_len; i += blockDim.x) atomicAdd(&dweight[i], dw_block[i]);
}

void check(const GatedNormForward& f) {
  CARVE_KERNEL_REQUIRE(f.rows >= 0 && f.d > 0 && f.group > 0 && f.d % f.group == 0,
                       "gated_norm: group must divide d");
  CARVE_KERNEL_REQUIRE(f.y && f.weight && f.rstd, "gated_norm: y, weight and rstd are required");
}

unsigned blocks_for(long items) { return std::max(1u, std::min<unsigned>(ceil_div(items, kWarps), 4096)); }

}  // namespace

void gated_norm_forward(const GatedNormForward& f, cudaStream_t stream) {
  check(f);
  CARVE_KERNEL_REQUIRE(f.out, "gated_norm_forward: out is required");
  if (f.rows == 0) return;
  dispatch_element(f.dtype, [&](auto tag) {
    gated_norm_forward_kernel<decltype(tag)><<<blocks_for(f.rows * (f.d / f.group)), 32 * kWarps, 0, stream>>>(f);
    CARVE_CUDA_CHECK_LAUNCH();
  });
}

void gated_norm_backward(const GatedNormBackward& b, cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(b.fwd && b.dout && b.dy && b.dweight, "gated_norm_backward: a required pointer is null");
  const GatedNormForward& f = *b.fwd;
  check(f);
  CARVE_KERNEL_REQUIRE(!f.z || b.dz, "gated_norm_backward: dz is required with z");
  const int weight_len = f.weight_shared ? f.group : f.d;
  CARVE_KERNEL_REQUIRE(weight_len <= kGatedNormMaxWeight, "gated_norm_backward: weight longer than 12288");
  CARVE_CUDA_CHECK(cudaMemsetAsync(b.dweight, 0, sizeof(float) * weight_len, stream));
  if (f.rows == 0) return;
  dispatch_element(f.dtype, [&](auto tag) {
    gated_norm_backward_kernel<decltype(tag)>
        <<<blocks_for(f.rows * (f.d / f.group)), 32 * kWarps, sizeof(float) * weight_len, stream>>>(
            f, b.dout, b.dy, b.dz, b.dweight, weight_len);
    CARVE_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace carve::kernels
