/*
 * Warpgroup tensor-core products (wgmma.mma_async, Hopper: compute capability 9.0 with the arch-specific sm_90a
 * target), 16-bit operands with float32 accumulation. A warpgroup (4 consecutive warps, the first a multiple of 4)
 * computes D[64 x N] (+)= A[64 x 16] B[16 x N] in one instruction that every thread of the 4 warps issues alike; the
 * product runs asynchronously, so a warp issues its next products or other work while the tensor cores run.
 *
 * Registers (the PTX ISA, "Register Fragments and Shared Memory Matrix Layouts" of wgmma; CuTe's ALayout_64x16 and
 * CLayout_64xN say the same): warp w of the warpgroup holds rows [16 w, 16 w + 16) as mma.sync m16n8k16 does for
 * its 16 rows (mma.cuh):
 *   A in registers: a[0..3] as mma.sync's A fragment of those rows.
 *   D: acc[N / 8][4], for each 8-column block j acc[j][0, 1] = D[16 w + gid][8 j + 2 tig + 0, 1] and acc[j][2, 3]
 *      the same 8 rows down: mma.sync's accumulators of the warp's 16 x 8 tiles, in the arrays the kernels keep
 *      them in, so a product's result, weighted in registers, is the A operand of the next (as with mma.sync).
 * Shared memory operands are read through a 64-bit descriptor (start address, two strides, no swizzle here). In the
 * no-swizzle layout an operand is made of 8 x 8 core matrices, each 8 rows of 16 contiguous bytes (128 bytes); LBO is
 * the byte stride between core matrices along K and SBO along M or N, for K-major operands (the 8 elements of a core
 * matrix row run along K) and MN-major ones (they run along M or N) alike. TileLayout in ssd_scan_fused.cu builds
 * its tiles that way.
 *
 * Ordering (PTX ISA, wgmma.fence / commit_group / wait_group): wgmma_fence() before the first product that reads
 * registers (accumulators or A) written since the last fence; products then go into a group with wgmma_commit(), and
 * wgmma_wait<N>() waits until at most N groups are in flight. Registers of a product in flight are neither read nor
 * written until a wait covers it (wgmma_fence_operands keeps the compiler from moving accesses across the wait).
 * Shared memory written by ordinary stores or cp.async must be ordered before a product reads it by
 * async_proxy_fence() in each writing thread, then a barrier.
 *
 * Outside sm_90a (the sm_80 build of the same kernels) the fence and the products compile to a trap (the commits,
 * waits and proxy fence to nothing): a kernel file says which code it has with a __device__ flag set from
 * CARVE_WGMMA, which the host reads (launch.h, device_code_value) before launching a kernel that uses them.
 */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace carve::kernels {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CARVE_WGMMA 1
#else
#define CARVE_WGMMA 0
#endif

// The descriptor of a no-swizzle shared memory operand starting at `tile` (16-byte aligned), with strides lbo (along
// K) and sbo (along M or N) in bytes, multiples of 16. Fields (PTX ISA, "Matrix Descriptor Format"): bits 0-13 the
// start address / 16, 16-29 LBO / 16, 32-45 SBO / 16, 62-63 the layout (0: no swizzle).
__device__ __forceinline__ uint64_t wgmma_descriptor(const void* tile, uint32_t lbo, uint32_t sbo) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(tile));
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16 |
         static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32;
}

// The same descriptor `bytes` further on (a multiple of 16): the start address field is the low bits.
__device__ __forceinline__ uint64_t wgmma_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

__device__ __forceinline__ void wgmma_fence() {
#if CARVE_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#if CARVE_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
#if CARVE_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}

// Orders this thread's generic-proxy writes to shared memory (stores, cp.async once waited for) before later reads
// of the same bytes by wgmma (the async proxy); a barrier must follow for other threads' products.
__device__ __forceinline__ void async_proxy_fence() {
#if CARVE_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Ties registers to this point of the program: the compiler keeps their reads and writes on their side of it (after a
// wgmma_wait, before the product's results are read).
template <int kBlocks>
__device__ __forceinline__ void wgmma_fence_operands(float (&acc)[kBlocks][4]) {
#pragma unroll
  for (int i = 0; i < kBlocks; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(acc[i][e])::"memory");
}

namespace wgmma_detail {

// The accumulators of an instruction of width N: N / 2 floats, listed as asm operands and as the register list
// "{%0, ..., %(N/2 - 1)}".
#define CARVE_WG_D8(i)                                                                                          \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define CARVE_WG_D16 CARVE_WG_D8(0), CARVE_WG_D8(8)
#define CARVE_WG_D20 CARVE_WG_D16, "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19])
#define CARVE_WG_D32 CARVE_WG_D16, CARVE_WG_D8(16), CARVE_WG_D8(24)
#define CARVE_WG_L16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define CARVE_WG_L20 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19}"
#define CARVE_WG_L32                                                                                                \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
  "%24, %25, %26, %27, %28, %29, %30, %31}"

// A and B from shared memory, both K-major (no transposes): D = A B where the operand numbered F (after the
// accumulators) is nonzero, else D += A B. F + 1 and F + 2 are the descriptors.
#define CARVE_WG_SS(N, TYPE, LIST, D, F, FA, FB)                                                               \
  asm volatile("{\n.reg .pred p;\nsetp.eq.u32 p, %" F ", 0;\nwgmma.mma_async.sync.aligned.m64n" #N         \
               "k16.f32." TYPE "." TYPE " " LIST ", %" FA ", %" FB ", p, 1, 1, 0, 0;\n}\n"                    \
               : D                                                                                              \
               : "r"(fresh ? 1u : 0u), "l"(a), "l"(b))

// A from registers, B from shared memory MN-major (imm-trans-b 1: its core matrices' rows run along N).
#define CARVE_WG_RS(N, TYPE, LIST, D, F, A0, A1, A2, A3, FB)                                                   \
  asm volatile("{\n.reg .pred p;\nsetp.eq.u32 p, %" F ", 0;\nwgmma.mma_async.sync.aligned.m64n" #N         \
               "k16.f32." TYPE "." TYPE " " LIST ", {%" A0 ", %" A1 ", %" A2 ", %" A3 "}, %" FB                  \
               ", p, 1, 1, 1;\n}\n"                                                                            \
               : D                                                                                              \
               : "r"(fresh ? 1u : 0u), "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b))

template <typename T>
constexpr bool is_bf16 = std::is_same_v<T, __nv_bfloat16>;

}  // namespace wgmma_detail

// D[64 x N] (+)= A[64 x 16] B[16 x N], A and B K-major in shared memory (descriptors a and b); D = A B when
// `fresh`. N is 32 or 64.
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss(float (&acc)[N / 8][4], uint64_t a, uint64_t b, bool fresh) {
  static_assert(N == 32 || N == 64, "wgmma_ss has instances for N 32 and 64");
#if CARVE_WGMMA
  float(&d)[N / 2] = reinterpret_cast<float(&)[N / 2]>(acc);
  if constexpr (N == 32) {
    if constexpr (wgmma_detail::is_bf16<T>) CARVE_WG_SS(32, "bf16", CARVE_WG_L16, CARVE_WG_D16, "16", "17", "18");
    else CARVE_WG_SS(32, "f16", CARVE_WG_L16, CARVE_WG_D16, "16", "17", "18");
  } else {
    if constexpr (wgmma_detail::is_bf16<T>) CARVE_WG_SS(64, "bf16", CARVE_WG_L32, CARVE_WG_D32, "32", "33", "34");
    else CARVE_WG_SS(64, "f16", CARVE_WG_L32, CARVE_WG_D32, "32", "33", "34");
  }
#else
  __trap();
#endif
}

// D[64 x N] (+)= A[64 x 16] B[16 x N], A in registers (the warp's 16 rows, as mma.sync's A fragment), B MN-major in
// shared memory (descriptor b); D = A B when `fresh`. N is 32, 40 or 64.
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&acc)[N / 8][4], const uint32_t (&a)[4], uint64_t b, bool fresh) {
  static_assert(N == 32 || N == 40 || N == 64, "wgmma_rs has instances for N 32, 40 and 64");
#if CARVE_WGMMA
  float(&d)[N / 2] = reinterpret_cast<float(&)[N / 2]>(acc);
  if constexpr (N == 32) {
    if constexpr (wgmma_detail::is_bf16<T>)
      CARVE_WG_RS(32, "bf16", CARVE_WG_L16, CARVE_WG_D16, "16", "17", "18", "19", "20", "21");
    else CARVE_WG_RS(32, "f16", CARVE_WG_L16, CARVE_WG_D16, "16", "17", "18", "19", "20", "21");
  } else if constexpr (N == 40) {
    if constexpr (wgmma_detail::is_bf16<T>)
      CARVE_WG_RS(40, "bf16", CARVE_WG_L20, CARVE_WG_D20, "20", "21", "22", "23", "24", "25");
    else CARVE_WG_RS(40, "f16", CARVE_WG_L20, CARVE_WG_D20, "20", "21", "22", "23", "24", "25");
  } else {
    if constexpr (wgmma_detail::is_bf16<T>)
      CARVE_WG_RS(64, "bf16", CARVE_WG_L32, CARVE_WG_D32, "32", "33", "34", "35", "36", "37");
    else CARVE_WG_RS(64, "f16", CARVE_WG_L32, CARVE_WG_D32, "32", "33", "34", "35", "36", "37");
  }
#else
  __trap();
#endif
}

#undef CARVE_WG_SS
#undef CARVE_WG_RS
#undef CARVE_WG_L16
#undef CARVE_WG_L20
#undef CARVE_WG_L32
#undef CARVE_WG_D32
#undef CARVE_WG_D20
#undef CARVE_WG_D16
#undef CARVE_WG_D8

}  // namespace carve::kernels
