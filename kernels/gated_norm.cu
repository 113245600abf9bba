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

template <typename T>
__global__ void gated_norm_forward_kernel(GatedNormForward f) {
  const T* y = static_cast<const T*>(f.y);
  const T* z = static_cast<const T*>(f.z);
  T* out = static_cast<T*>(f.out);
  const int groups = f.d / f.group, lane = threadIdx.x % 32;
  const long items = f.rows * groups;
  for (long item = (long)blockIdx.x * kWarps + threadIdx.x / 32; item < items; item += (long)gridDim.x * kWarps) {
    const long row = item / groups;
    const int gi = item % groups;
    const long base = row * f.d + (long)gi * f.group;
    float ss = 0.f;
    for (int i = lane; i < f.group; i += 32) {
      float v = to_float(y[base + i]);
      if (z && !f.norm_before_gate) v *= siluf(to_float(z[base + i]));
      ss += v * v;
    }
    const float rstd = rsqrtf(warp_sum(ss) / f.group + f.eps);
    if (lane == 0) f.rstd[item] = rstd;
    for (int i = lane; i < f.group; i += 32) {
      const float gate = z ? siluf(to_float(z[base + i])) : 1.f;
      const float w = f.weight[f.weight_shared ? i : gi * f.group + i];
      const float v = to_float(y[base + i]) * (f.norm_before_gate ? 1.f : gate);
      out[base + i] = from_float<T>(v * rstd * w * (f.norm_before_gate ? gate : 1.f));
    }
  }
}

template <typename T>
__global__ void gated_norm_backward_kernel(GatedNormForward f, const void* dout_ptr, void* dy_ptr, void* dz_ptr,
                                           float* dweight, int weight_len) {
  extern __shared__ float dw_block[];
  for (int i = threadIdx.x; i < weight_len; i += blockDim.x) dw_block[i] = 0.f;
  __syncthreads();
  const T* y = static_cast<const T*>(f.y);
  const T* z = static_cast<const T*>(f.z);
  const T* dout = static_cast<const T*>(dout_ptr);
  T* dy = static_cast<T*>(dy_ptr);
  T* dz = static_cast<T*>(dz_ptr);
  const int groups = f.d / f.group, lane = threadIdx.x % 32;
  const long items = f.rows * groups;
  for (long item = (long)blockIdx.x * kWarps + threadIdx.x / 32; item < items; item += (long)gridDim.x * kWarps) {
    const long row = item / groups;
    const int gi = item % groups;
    const long base = row * f.d + (long)gi * f.group;
    const float rstd = f.rstd[item];
    // Pass 1: sum of dn * n over the group, where n = v * rstd and dn the gradient at n.
    float dot = 0.f;
    for (int i = lane; i < f.group; i += 32) {
      const float gate = z ? siluf(to_float(z[base + i])) : 1.f;
      const float w = f.weight[f.weight_shared ? i : gi * f.group + i];
      const float v = to_float(y[base + i]) * (f.norm_before_gate ? 1.f : gate);
      const float dn = to_float(dout[base + i]) * w * (f.norm_before_gate ? gate : 1.f);
      dot += dn * v * rstd;
    }
    dot = warp_sum(dot) / f.group;
    for (int i = lane; i < f.group; i += 32) {
      const float zv = z ? to_float(z[base + i]) : 0.f;
      const float gate = z ? siluf(zv) : 1.f;
      const int wi = f.weight_shared ? i : gi * f.group + i;
      const float w = f.weight[wi];
      const float yv = to_float(y[base + i]);
      const float v = yv * (f.norm_before_gate ? 1.f : gate);
      const float n = v * rstd, go = to_float(dout[base + i]);
      const float dn = go * w * (f.norm_before_gate ? gate : 1.f);
      const float dv = rstd * (dn - n * dot);
      atomicAdd(&dw_block[wi], go * n * (f.norm_before_gate ? gate : 1.f));
      if (f.norm_before_gate) {
        dy[base + i] = from_float<T>(dv);
        if (z) dz[base + i] = from_float<T>(go * n * w * silu_grad(zv));
      } else {
        dy[base + i] = from_float<T>(dv * gate);
        if (z) dz[base + i] = from_float<T>(dv * yv * silu_grad(zv));
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
