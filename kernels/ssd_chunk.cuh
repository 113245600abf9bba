// What the SSD scan's chunk-level kernels share: the scan's sizes and the indexing of one (batch row, chunk, head or
// group) block into the inputs, the per-token workspaces, the chunk states and the C.B blocks.
#pragma once

#include "kernels/element.cuh"
#include "kernels/ssd_scan.h"

namespace carve::kernels {

struct ScanDims {
  int b, l, h, p, g, n, q, c, r;
};

inline ScanDims dims_of(const SsdScanShape& s) {
  return {s.b, s.l, s.h, s.p, s.g, s.n, s.q, s.chunks(), s.h / s.g};
}

// What one block of a chunk-level problem works on: batch row bi, chunk ci, head or group hi.
struct Chunk {
  ScanDims d;
  const int* seg;  // [b, l] or null
  int bi, ci, hi;
  int seg_end, seg_prev;  // segment of this chunk's last token / of the previous chunk's last token (0 for chunk 0)

  __device__ void select(int idx, int heads) {
    hi = idx % heads;
    const int rest = idx / heads;
    ci = rest % d.c;
    bi = rest / d.c;
    seg_end = seg_at(ci * d.q + d.q - 1);
    seg_prev = ci == 0 ? 0 : seg_at(ci * d.q - 1);
  }
  // Padding after the last token continues the last sample.
  __device__ int seg_at(int t) const { return seg ? seg[(long)bi * d.l + min(t, d.l - 1)] : 0; }
  __device__ int seg_of(int i) const { return seg_at(ci * d.q + i); }
  __device__ bool valid(int i) const { return ci * d.q + i < d.l; }
  // Offset of token i of this chunk in a [b, l, heads, width] tensor at head `head`.
  __device__ long token(int i, int heads, int head, int width) const {
    return (((long)bi * d.l + ci * d.q + i) * heads + head) * width;
  }
  // Index into the per-token workspaces [b, h, c, q].
  __device__ long scan(int head, int i) const { return (((long)bi * d.h + head) * d.c + ci) * d.q + i; }
  // Offset of a [p, n] state of this chunk and head in [b, c, h, p, n].
  __device__ long state(int head) const { return (((long)bi * d.c + ci) * d.h + head) * (long)d.p * d.n; }
  // Offset of a [q, q] block of this chunk and group in [b, c, g, q, q].
  __device__ long cb(int group) const { return (((long)bi * d.c + ci) * d.g + group) * (long)d.q * d.q; }
};

// The two products over a chunk's tokens that make a [p, n] state per head:
//   Local:        sum_s exp(L_end - L_s) dt'_s x_s B_s^T   (tokens of the chunk's last sample only)
//   EnteringGrad: sum_l exp(L_l) dy_l C_l^T                (tokens of the sample running when the chunk began): the
//                                                          gradient of the state entering the chunk
enum class StateProduct { Local, EnteringGrad };

// Token i's weight in such a product of block cx (L_end: the cumsum at the chunk's last position).
__device__ __forceinline__ float state_weight(StateProduct kind, const Chunk& cx, const float* dtp, const double* cum,
                                              double L_end, int i) {
  const int keep = kind == StateProduct::Local ? cx.seg_end : cx.seg_prev;
  if (!cx.valid(i) || cx.seg_of(i) != keep) return 0.f;
  const long si = cx.scan(cx.hi, i);
  return kind == StateProduct::Local ? dtp[si] * expf(static_cast<float>(L_end - cum[si]))
                                     : expf(static_cast<float>(cum[si]));
}

// A 16-bit value and what rounding it left (lo: null where nothing was left, as for float32): dy in the backward.
template <typename T>
__device__ __forceinline__ float with_rest(const T* v, const T* lo, long o) {
  return to_float(v[o]) + (lo ? to_float(lo[o]) : 0.f);
}

// The output's epilogue, the same in both versions of the forward: y before D kept for the backward (when y_ssm is
// given), then D x and the gate. `o` indexes [b, l, h, p], `pc` is the channel within head `head`.
template <typename T>
__device__ __forceinline__ void store_output(long o, int head, int pc, int p, float y, const T* x, const T* z,
                                             const float* D, bool D_per_channel, float* y_ssm, T* out) {
  if (y_ssm) y_ssm[o] = y;
  if (D) y += D[D_per_channel ? head * p + pc : head] * to_float(x[o]);
  out[o] = from_float<T>(z ? y * siluf(to_float(z[o])) : y);
}

}  // namespace carve::kernels
