/*
 * Gated RMSNorm kernels. For 16-bit rows whose groups are multiples of 8 elements up to 256 (every mixer's), a
 * (row, group) item takes group / 8 neighbouring threads (rounded up to a power of two), each holding 8 elements
 * loaded 16 bytes at a time, with the sum of squares by shuffles among them; in the backward each thread keeps its
 * 8 weights' gradient in registers over its items (the grid's stride is a multiple of the groups, so a thread's
 * weights stay the same), summed per block in shared memory before one atomic per weight. Other shapes take one
 * warp per item, element by element, re-reading the group for the second pass: that path took 2.8x (forward) and
 * 3x (forward+backward) the bytes' time at HoVLE's sizes (docs/kernels.md).
 */
#include "kernels/gated_norm.h"

#include <algorithm>
#include <initializer_list>
#include <numeric>

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

// The row path: 8 elements per thread, `lanes` threads per item.
constexpr int kRowVec = 8;
constexpr int kRowThreads = 256;

// This thread's 8 elements of an item: y, z (zeros without), the gate, the weight, v whose RMS is taken and the
// factor after the normalization.
template <typename T>
struct RowSlice {
  float y[kRowVec], z[kRowVec], gate[kRowVec], w[kRowVec], v[kRowVec], after[kRowVec];
  __device__ void load(const GatedNormForward& f, long at, const float* weight) {
    load_floats(static_cast<const T*>(f.y) + at, y);
    if (f.z) {
      load_floats(static_cast<const T*>(f.z) + at, z);
    } else {
#pragma unroll
      for (int i = 0; i < kRowVec; ++i) z[i] = 0.f;
    }
    load_floats(weight, w);
#pragma unroll
    for (int i = 0; i < kRowVec; ++i) {
      gate[i] = f.z ? siluf(z[i]) : 1.f;
      v[i] = f.norm_before_gate ? y[i] : y[i] * gate[i];
      after[i] = w[i] * (f.norm_before_gate ? gate[i] : 1.f);
    }
  }
};

// Which item and elements a thread takes (threads past the group's end and items past the last stay idle but take
// part in the shuffles); every thread of a block runs the same number of steps.
struct RowItems {
  long count;
  int groups, group, lanes, k, c0, per_block;
  __device__ RowItems(const GatedNormForward& f, int lanes_) : lanes(lanes_) {
    groups = f.d / f.group, group = f.group, count = f.rows * groups;
    k = threadIdx.x % lanes, c0 = k * kRowVec, per_block = blockDim.x / lanes;
  }
  __device__ long first() const { return (long)blockIdx.x * per_block; }
  __device__ long stride() const { return (long)gridDim.x * per_block; }
  __device__ long item(long base) const { return base + threadIdx.x / lanes; }
  __device__ bool live(long item) const { return item < count && c0 < group; }
  __device__ int group_of(long item) const { return static_cast<int>(item % groups); }
  // Offset of this thread's first element.
  __device__ long at(const GatedNormForward& f, long item) const {
    return (item / groups) * f.d + (long)group_of(item) * group + c0;
  }
  __device__ int weight_at(const GatedNormForward& f, long item) const {
    return f.weight_shared ? c0 : group_of(item) * group + c0;
  }
};

template <typename T>
__global__ void __launch_bounds__(kRowThreads) gated_norm_forward_rows_kernel(GatedNormForward f, int lanes) {
  const RowItems it(f, lanes);
  for (long base = it.first(); base < it.count; base += it.stride()) {
    const long item = it.item(base);
    const bool live = it.live(item);
    RowSlice<T> e;
    float ss = 0.f;
    if (live) {
      e.load(f, it.at(f, item), f.weight + it.weight_at(f, item));
#pragma unroll
      for (int i = 0; i < kRowVec; ++i) ss += e.v[i] * e.v[i];
    }
    const float rstd = rsqrtf(lanes_sum(ss, lanes) / it.group + f.eps);
    if (!live) continue;
    if (it.k == 0) f.rstd[item] = rstd;
    float out[kRowVec];
#pragma unroll
    for (int i = 0; i < kRowVec; ++i) out[i] = e.v[i] * rstd * e.after[i];
    store_floats(static_cast<T*>(f.out) + it.at(f, item), out);
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads) gated_norm_backward_rows_kernel(GatedNormForward f, int lanes,
                                                                             const void* dout_ptr, void* dy_ptr,
                                                                             void* dz_ptr, float* dweight,
                                                                             int weight_len) {
  extern __shared__ float dw_block[];
  for (int i = threadIdx.x; i < weight_len; i += blockDim.x) dw_block[i] = 0.f;
  __syncthreads();
  const RowItems it(f, lanes);
  float dw[kRowVec] = {};
  int w0 = -1;  // this thread's first weight (the same for all its items: the grid's stride is a multiple of groups)
  for (long base = it.first(); base < it.count; base += it.stride()) {
    const long item = it.item(base);
    const bool live = it.live(item);
    RowSlice<T> e;
    float go[kRowVec], n[kRowVec], rstd = 0.f, dot = 0.f;
    if (live) {
      w0 = it.weight_at(f, item);
      e.load(f, it.at(f, item), f.weight + w0);
      load_floats(static_cast<const T*>(dout_ptr) + it.at(f, item), go);
      rstd = f.rstd[item];
#pragma unroll
      for (int i = 0; i < kRowVec; ++i) {
        n[i] = e.v[i] * rstd;
        dot += go[i] * e.after[i] * n[i];
      }
    }
    // Mean of dn * n over the group, where n = v * rstd and dn = dout * after is the gradient at n.
    dot = lanes_sum(dot, lanes) / it.group;
    if (!live) continue;
    float dy[kRowVec], dz[kRowVec];
#pragma unroll
    for (int i = 0; i < kRowVec; ++i) {
      const float dv = rstd * (go[i] * e.after[i] - n[i] * dot);
      dw[i] += go[i] * n[i] * (f.norm_before_gate ? e.gate[i] : 1.f);
      if (f.norm_before_gate) {
        dy[i] = dv;
        dz[i] = go[i] * n[i] * e.w[i] * silu_grad(e.z[i]);
      } else {
        dy[i] = dv * e.gate[i];
        dz[i] = dv * e.y[i] * silu_grad(e.z[i]);
      }
    }
    store_floats(static_cast<T*>(dy_ptr) + it.at(f, item), dy);
    if (f.z) store_floats(static_cast<T*>(dz_ptr) + it.at(f, item), dz);
  }
  if (w0 >= 0) {
#pragma unroll
    for (int i = 0; i < kRowVec; ++i) atomicAdd(&dw_block[w0 + i], dw[i]);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < weight_len; i += blockDim.x) atomicAdd(&dweight[i], dw_block[i]);
}

// The row path's threads per item (0: the shape takes the element-by-element path).
int row_lanes(const GatedNormForward& f, std::initializer_list<const void*> rows) {
  if (f.dtype == ElementType::f32 || f.group % kRowVec != 0 || f.group > 32 * kRowVec) return 0;
  if (!all_aligned(rows, 16) || !all_aligned({f.weight}, 16)) return 0;
  return lanes_for(f.group, kRowVec);
}

// Blocks of the row path: a stride that is a multiple of the groups per row, so each thread's weights stay put.
unsigned row_blocks(const GatedNormForward& f, int lanes) {
  const long per_block = kRowThreads / lanes, groups = f.d / f.group;
  const long items = f.rows * groups;
  const long blocks = std::max(1L, std::min<long>((items + per_block - 1) / per_block, 2048));
  const long unit = groups / std::gcd(per_block, groups);  // blocks * per_block is then a multiple of groups
  return static_cast<unsigned>((blocks + unit - 1) / unit * unit);
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
  const int lanes = row_lanes(f, {f.y, f.z, f.out});
  dispatch_element(f.dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (sizeof(T) == 2) {
      if (lanes) {
        gated_norm_forward_rows_kernel<T><<<row_blocks(f, lanes), kRowThreads, 0, stream>>>(f, lanes);
        CARVE_CUDA_CHECK_LAUNCH();
        return;
      }
    }
    gated_norm_forward_kernel<T><<<blocks_for(f.rows * (f.d / f.group)), 32 * kWarps, 0, stream>>>(f);
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
  const int lanes = row_lanes(f, {f.y, f.z, b.dout, b.dy, b.dz});
  const size_t smem = sizeof(float) * weight_len;
  dispatch_element(f.dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (sizeof(T) == 2) {
      if (lanes) {
        gated_norm_backward_rows_kernel<T><<<row_blocks(f, lanes), kRowThreads, smem, stream>>>(
            f, lanes, b.dout, b.dy, b.dz, b.dweight, weight_len);
        CARVE_CUDA_CHECK_LAUNCH();
        return;
      }
    }
    gated_norm_backward_kernel<T><<<blocks_for(f.rows * (f.d / f.group)), 32 * kWarps, smem, stream>>>(
        f, b.dout, b.dy, b.dz, b.dweight, weight_len);
    CARVE_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace carve::kernels
