/*
 * Warp-level tensor-core products (mma.sync m16n8k16, sm_80 and later) on 16-bit operands with float32
 * accumulation, and the fragment layout the kernels rely on to build operands in registers.
 *
 * Per warp, lane = 4 * gid + tig (gid = lane / 4, tig = lane % 4), for D[16 x 8] += A[16 x 16] B[16 x 8]:
 *   A (row-major) in 4 registers of two elements each, low half first:
 *     a[0] = A[gid][2 tig, 2 tig + 1]      a[1] = A[gid + 8][2 tig, 2 tig + 1]
 *     a[2] = A[gid][2 tig + 8, + 9]        a[3] = A[gid + 8][2 tig + 8, + 9]
 *   B (k x n) in 2 registers: b0 = B[2 tig, 2 tig + 1][gid], b1 = B[2 tig + 8, 2 tig + 9][gid]
 *   D in 4 floats: d[0], d[1] = D[gid][2 tig, 2 tig + 1], d[2], d[3] = D[gid + 8][2 tig, 2 tig + 1]
 * So the accumulators of two neighbouring 16 x 8 tiles are, element for element, the A operand of a 16 x 16 k step:
 * a product's result is weighted in registers and fed to the next product without going through memory.
 * The PTX ISA ("Matrix Fragments for mma.m16n8k16") is the reference for this layout.
 */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace carve::kernels {

template <typename T>
struct TensorCore;

template <>
struct TensorCore<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t r;
    __builtin_memcpy(&r, &v, sizeof r);
    return r;
  }
  static __device__ __forceinline__ float2 unpack(uint32_t r) {
    __nv_bfloat162 v;
    __builtin_memcpy(&v, &r, sizeof r);
    return __bfloat1622float2(v);
  }
  static __device__ __forceinline__ void mma(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct TensorCore<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    uint32_t r;
    __builtin_memcpy(&r, &v, sizeof r);
    return r;
  }
  static __device__ __forceinline__ float2 unpack(uint32_t r) {
    __half2 v;
    __builtin_memcpy(&v, &r, sizeof r);
    return __half22float2(v);
  }
  static __device__ __forceinline__ void mma(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// (x, y) as N packed pairs of 16-bit values whose sums are (x, y): part[0] rounded to T, part[1] what that left, and
// so on (N = 1 is one rounding; ssd_scan_tc.cuh's kParts says why the kernels take two). Two elements per paired
// conversion: converting one element at a time was 16% of the pair kernel's stall samples (ncu, dC at hovle).
template <typename TC, int N>
__device__ __forceinline__ void split_pack(float x, float y, uint32_t (&part)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) {
    part[k] = TC::pack(x, y);
    if (k + 1 < N) {
      const float2 v = TC::unpack(part[k]);
      x -= v.x, y -= v.y;
    }
  }
}

// Two neighbouring 16-bit elements of shared memory as one register (the index must be even).
template <typename T>
__device__ __forceinline__ uint32_t pair_at(const T* base, int index) {
  return *reinterpret_cast<const uint32_t*>(base + index);
}

// The A fragment of rows [row0, row0 + 16) and columns [col0, col0 + 16) of a row-major tile with leading
// dimension ld (even).
template <typename T>
__device__ __forceinline__ void load_a_fragment(uint32_t a[4], const T* tile, int ld, int row0, int col0) {
  const int lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  const T* r0 = tile + (row0 + gid) * ld + col0 + 2 * tig;
  const T* r1 = r0 + 8 * ld;
  a[0] = pair_at(r0, 0);
  a[1] = pair_at(r1, 0);
  a[2] = pair_at(r0, 8);
  a[3] = pair_at(r1, 8);
}

// The B fragment of k rows [k0, k0 + 16) and column n0 + gid of a tile stored transposed (n-major: element (k, n)
// at n * ld + k).
template <typename T>
__device__ __forceinline__ void load_b_fragment(uint32_t& b0, uint32_t& b1, const T* tile_t, int ld, int k0, int n0) {
  const int lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  const T* c = tile_t + (n0 + gid) * ld + k0 + 2 * tig;
  b0 = pair_at(c, 0);
  b1 = pair_at(c, 8);
}

// Where element (r, c) of a tile lies, in elements from its start. Strided: row-major with leading dimension ld (a
// multiple of 8 for the ldmatrix loads below). The ldmatrix loads take any layout whose rows of 8 elements starting
// at a multiple of 8 are 16 contiguous bytes (ssd_scan_fused.cu's core-matrix tiles for wgmma are one).
struct Strided {
  int ld;
  __device__ __forceinline__ int at(int r, int c) const { return r * ld + c; }
};

namespace mma_detail {
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* row) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* row) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
}  // namespace mma_detail

// The same fragments through ldmatrix (one instruction instead of four or eight 4-byte loads; 16-byte aligned rows):
// the A fragment of rows [row0, row0 + 16) and columns [col0, col0 + 16) of a row-major tile, and the B fragments of
// k rows [k0, k0 + 16) and columns n0 + gid and n0 + 8 + gid of an n-major tile (b[0] for the first 8 columns, b[1]
// for the next). `lay` places the tile's elements (Strided{ld} for a row-major one).
template <typename T, typename Lay>
__device__ __forceinline__ void ldsm_a(uint32_t (&a)[4], const T* tile, const Lay& lay, int row0, int col0) {
  const int lane = threadIdx.x % 32, i = lane % 8, which = lane / 8;  // matrices: rows +0/+8, columns +0/+8
  mma_detail::ldsm_x4(a, tile + lay.at(row0 + i + 8 * (which % 2), col0 + 8 * (which / 2)));
}

template <typename T, typename Lay>
__device__ __forceinline__ void ldsm_b_pair(uint32_t (&b)[2][2], const T* tile_t, const Lay& lay, int k0, int n0) {
  const int lane = threadIdx.x % 32, i = lane % 8, which = lane / 8;  // matrices: k +0/+8, then columns +8
  uint32_t r[4];
  mma_detail::ldsm_x4(r, tile_t + lay.at(n0 + i + 8 * (which / 2), k0 + 8 * (which % 2)));
  b[0][0] = r[0], b[0][1] = r[1], b[1][0] = r[2], b[1][1] = r[3];
}

// Fragments of a tile stored the other way round, through ldmatrix.trans: the A fragment of rows [m0, m0 + 16) and k
// columns [k0, k0 + 16) from a k-major tile (element (m, k) at lay.at(k, m)), and the B fragments of k rows
// [k0, k0 + 16) and columns n0 + gid (and n0 + 8 + gid) from a row-major k x n tile (element (k, n) at lay.at(k, n)).
// This is how token-major data (x, B) feeds products over tokens without a transposing copy.
template <typename T, typename Lay>
__device__ __forceinline__ void ldsm_a_kmajor(uint32_t (&a)[4], const T* tile, const Lay& lay, int m0, int k0) {
  const int lane = threadIdx.x % 32, i = lane % 8, which = lane / 8;  // matrices: (k0, m0) (k0, m0+8) (k0+8, m0) ..
  mma_detail::ldsm_x4_trans(a, tile + lay.at(k0 + i + 8 * (which / 2), m0 + 8 * (which % 2)));
}

template <typename T, typename Lay>
__device__ __forceinline__ void ldsm_b_kmajor(uint32_t& b0, uint32_t& b1, const T* tile, const Lay& lay, int k0,
                                              int n0) {
  const int lane = threadIdx.x % 32, i = lane % 8, which = (lane / 8) % 2;  // lanes 16-31 repeat 0-15's addresses
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(tile + lay.at(k0 + i + 8 * which, n0)));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(addr));
}

template <typename T, typename Lay>
__device__ __forceinline__ void ldsm_b_pair_kmajor(uint32_t (&b)[2][2], const T* tile, const Lay& lay, int k0,
                                                   int n0) {
  const int lane = threadIdx.x % 32, i = lane % 8, which = lane / 8;  // matrices: k +0/+8, then columns +8
  uint32_t r[4];
  mma_detail::ldsm_x4_trans(r, tile + lay.at(k0 + i + 8 * (which % 2), n0 + 8 * (which / 2)));
  b[0][0] = r[0], b[0][1] = r[1], b[1][0] = r[2], b[1][1] = r[3];
}

// The row-major (leading dimension ld, a multiple of 8) forms of the above that the chunk-parallel kernels use.
template <typename T>
__device__ __forceinline__ void load_a_fragment_kmajor(uint32_t a[4], const T* tile, int ld, int m0, int k0) {
  ldsm_a_kmajor(*reinterpret_cast<uint32_t(*)[4]>(a), tile, Strided{ld}, m0, k0);
}
template <typename T>
__device__ __forceinline__ void load_b_fragment_kmajor(uint32_t& b0, uint32_t& b1, const T* tile, int ld, int k0,
                                                       int n0) {
  ldsm_b_kmajor(b0, b1, tile, Strided{ld}, k0, n0);
}

// acc[i] += A B_i for the kCount 8-column blocks B_i of a 16-row (k) operand starting at (k0, n0), two blocks per
// ldmatrix: from a k-major tile (element (k, n) at lay.at(k, n)) or an n-major one (at lay.at(n, k)). With kParts A
// operands (a computed value's 16-bit parts, split_pack), each B fragment is loaded once and multiplied
// by every part into the same accumulator.
template <bool kKMajor, int kParts, typename T, int kCount, typename Lay>
__device__ __forceinline__ void mma_across_at(float (&acc)[kCount][4], const uint32_t (&a)[kParts][4], const T* tile,
                                              const Lay& lay, int k0, int n0) {
#pragma unroll
  for (int i = 0; i < kCount; i += 2) {
    if (i + 1 < kCount) {
      uint32_t b[2][2];
      if constexpr (kKMajor) ldsm_b_pair_kmajor(b, tile, lay, k0, n0 + 8 * i);
      else ldsm_b_pair(b, tile, lay, k0, n0 + 8 * i);
#pragma unroll
      for (int k = 0; k < kParts; ++k) {
        TensorCore<T>::mma(acc[i], a[k], b[0][0], b[0][1]);
        TensorCore<T>::mma(acc[i + 1], a[k], b[1][0], b[1][1]);
      }
    } else {
      uint32_t b0, b1;
      if constexpr (kKMajor) {
        ldsm_b_kmajor(b0, b1, tile, lay, k0, n0 + 8 * i);
      } else {  // one 8-column block of an n-major tile: 4-byte loads
        // (load_b_fragment's loads through a layout. Not shared with it: load_b_fragment computing its addresses
        // this way changed the chunk-parallel kernels' code, chunk_dcb_tc's sm_80 registers 168 -> 140, unmeasured.)
        const int lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
        b0 = pair_at(tile + lay.at(n0 + 8 * i + gid, k0 + 2 * tig), 0);
        b1 = pair_at(tile + lay.at(n0 + 8 * i + gid, k0 + 2 * tig + 8), 0);
      }
#pragma unroll
      for (int k = 0; k < kParts; ++k) TensorCore<T>::mma(acc[i], a[k], b0, b1);
    }
  }
}

// The same with one A operand.
template <bool kKMajor, typename T, int kCount, typename Lay>
__device__ __forceinline__ void mma_across_at(float (&acc)[kCount][4], const uint32_t a[4], const T* tile,
                                              const Lay& lay, int k0, int n0) {
  mma_across_at<kKMajor, 1>(acc, *reinterpret_cast<const uint32_t(*)[1][4]>(a), tile, lay, k0, n0);
}

}  // namespace carve::kernels
