// Device-side conversions between the activation element types and float32, and the dispatch from ElementType to
// a template instantiation.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda_check.h"
#include "kernels/element.h"

namespace carve::kernels {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// PyTorch's softplus (threshold 20).
__device__ __forceinline__ float softplusf(float v) { return v > 20.f ? v : log1pf(expf(v)); }
__device__ __forceinline__ float sigmoidf(float v) { return 1.f / (1.f + expf(-v)); }
__device__ __forceinline__ float siluf(float v) { return v * sigmoidf(v); }
// silu with the hardware exponential and reciprocal (a few ulp of float32, far below a 16-bit output's rounding):
// the IEEE division's slow-path branch made siluf the largest part of an epilogue that stores 16-bit values.
__device__ __forceinline__ float silu_fast(float v) { return v * __frcp_rn(1.f + __expf(-v)); }
// 2^v by the hardware's approximation alone (ex2.approx.ftz: one instruction, about 2 ulp, results below 2^-126
// flushed to 0). exp2f and __expf without -ftz add a range check and two scalings around it for subnormal results,
// on the path from a weight to the product that takes it.
__device__ __forceinline__ float exp2_ftz(float v) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}
// d silu(v) / dv
__device__ __forceinline__ float silu_grad(float v) {
  const float s = sigmoidf(v);
  return s * (1.f + v * (1.f - s));
}

// 8 packed 16-bit elements (one 16-byte load) as float32.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& u, float (&o)[8]) {
  static_assert(sizeof(T) == 2, "unpack8 takes 16-bit elements");
  const T* h = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int i = 0; i < 8; ++i) o[i] = to_float(h[i]);
}

__device__ __forceinline__ unsigned short raw_bits(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned short raw_bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

// 8 float32 values rounded to 16-bit elements, packed for one 16-byte store (in registers: writing through a T*
// into a uint4 would put it in local memory).
template <typename T>
__device__ __forceinline__ uint4 pack8(const float (&v)[8]) {
  static_assert(sizeof(T) == 2, "pack8 makes 16-bit elements");
  unsigned w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    w[i] = static_cast<unsigned>(raw_bits(from_float<T>(v[2 * i]))) |
           (static_cast<unsigned>(raw_bits(from_float<T>(v[2 * i + 1]))) << 16);
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// N consecutive elements as float32 in aligned vector loads (16-bit N = 1, 4 or 8 in one load; float32 N = 1, 4 or 8,
// the last in two), and store_floats the reverse, rounding to T, in one aligned store (float32 N = 1 or 4).
template <typename T, int N>
__device__ __forceinline__ void load_floats(const T* p, float (&v)[N]) {
  if constexpr (N == 1) {
    v[0] = to_float(*p);
  } else if constexpr (sizeof(T) == 2 && N == 8) {
    unpack8<T>(*reinterpret_cast<const uint4*>(p), v);
  } else if constexpr (sizeof(T) == 2 && N == 4) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const T* h = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = to_float(h[i]);
  } else {
    static_assert(sizeof(T) == 4 && (N == 4 || N == 8), "load_floats: 1, 4 or 8 16-bit or float32 elements");
#pragma unroll
    for (int i = 0; i < N; i += 4) {
      const float4 f = *reinterpret_cast<const float4*>(p + i);
      v[i] = f.x, v[i + 1] = f.y, v[i + 2] = f.z, v[i + 3] = f.w;
    }
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_floats(T* p, const float (&v)[N]) {
  if constexpr (N == 1) {
    *p = from_float<T>(v[0]);
  } else if constexpr (sizeof(T) == 2 && N == 8) {
    *reinterpret_cast<uint4*>(p) = pack8<T>(v);
  } else if constexpr (sizeof(T) == 2 && N == 4) {
    uint2 u;
    T* h = reinterpret_cast<T*>(&u);
#pragma unroll
    for (int i = 0; i < N; ++i) h[i] = from_float<T>(v[i]);
    *reinterpret_cast<uint2*>(p) = u;
  } else {
    static_assert(sizeof(T) == 4 && N == 4, "store_floats: 1, 4 or 8 16-bit elements, 1 or 4 float32 ones");
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  }
}

// Whether every pointer but the null ones is aligned to `bytes` (vector loads and stores of rows).
inline bool all_aligned(std::initializer_list<const void*> ptrs, uintptr_t bytes) {
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % bytes != 0) return false;
  return true;
}

// Threads per row when each takes `per_thread` elements of `width`: the smallest power of two that covers it (the
// row's threads then reduce with lanes_sum).
inline int lanes_for(int width, int per_thread) {
  int lanes = 1;
  while (lanes * per_thread < width) lanes *= 2;
  return lanes;
}

// Calls f(T{}) with T the C++ type of `type`.
template <typename F>
void dispatch_element(ElementType type, F&& f) {
  switch (type) {
    case ElementType::f32: f(float{}); return;
    case ElementType::f16: f(__half{}); return;
    case ElementType::bf16: f(__nv_bfloat16{}); return;
  }
  CARVE_KERNEL_REQUIRE(false, "unknown element type");
}

inline unsigned ceil_div(long a, long b) { return static_cast<unsigned>((a + b - 1) / b); }

// Warp-wide sum (every lane gets it).
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over aligned groups of `lanes` neighbouring lanes (a power of two up to 32), returned to each lane of the group.
// Every lane of the warp calls it at the same place.
__device__ __forceinline__ float lanes_sum(float v, int lanes) {
  for (int o = lanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block, returned to every thread; scratch is shared memory for one float per warp (at most 32). Every
// thread of the block calls it; scratch may be reused as soon as it returns.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < warps ? scratch[lane] : 0.f;
  t = warp_sum(t);
  __syncthreads();
  return t;
}

}  // namespace carve::kernels
