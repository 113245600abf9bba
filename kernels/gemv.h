/*
 * y = x W^T (+ bias) for a few rows of x: the matrix products of a decode step at small batch, where every weight
 * byte is read once per step and the product is bound by memory bandwidth. cuBLAS's kernels for one row read the
 * weights at 0.5-2 TB/s on an H100 (ncu, docs/performance.md); these keep 16-byte loads of two weight rows per warp
 * and several chunks per lane in flight. float32 accumulation; bf16 or fp16 only.
 *
 * At batch 1 a product of a few MB costs about as much in fixed launch and tail time as in bytes, so one launch
 * covers what a layer would otherwise launch several times for, each fused with the elementwise step that follows:
 *   - Parts: up to kGemvMaxParts weights that read the same x, their outputs side by side in one row (attention's
 *     q, k and v; the seeded mixer's v, k, q, dt and gate). A range of those columns can go through the causal
 *     conv step + SiLU of a Mamba-2 mixer, updating its conv state.
 *   - SwiGLU: round(silu(gate x)) * (up x), two weights read together and only the product written.
 *   - Residual: residual + x W^T, the residual stream's add after an output projection.
 *   - RoPE and the KV cache append after attention's q, k and v (GemvRope): the attention's own first launch.
 *   - An RMSNorm of x first (GemvNorm), the residual add before it optional: every block normalizes the rows of x
 *     into shared memory (they are a few KB and come from L2), so the norm that precedes a product is no launch of
 *     its own. A single-block norm kernel took 6.5-10 us at hidden 2048, more than the 2048 x 2048 product after it.
 * Every intermediate is rounded to the element type where the unfused LibTorch code rounds it.
 *
 * Launched as dependent launches (kernels/launch.h): a block issues its first weight loads before it waits for the
 * previous kernel, and several earlier dependent kernels may still be running then, so the weights must not be
 * written by any kernel not yet finished when this one is launched (a decode step's weights are constant).
 *
 * Products with few output rows split k across the warps of a block (partial sums added in shared memory): 256
 * blocks of one warp per row pair read a 2048 x 2048 weight at 1 TB/s, too few loads in flight.
 */
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/element.h"

namespace carve::kernels {

constexpr int kGemvMaxRows = 8;
constexpr int kGemvMaxParts = 5;

enum class GemvEpilogue {
  plain,       // y = x W^T + bias (per part), optionally through the conv step on columns [conv.begin, conv.end)
  swiglu,      // parts[0] = gate, parts[1] = up (same n): y = round(silu(round(gate))) * round(up)
  residual,    // one part: y = round(residual + round(x W^T + bias))
  rope_cache,  // parts q, k, v of attention (GemvRope): q and k rotated, k and v also written into the KV cache
};

struct GemvPart {
  const void* w = nullptr;     // [n, k] contiguous
  const void* bias = nullptr;  // null or [n]
  int n = 0;
};

// Columns [begin, end) of a plain product (one channel each) through one decode step of the causal depthwise conv
// and SiLU: out = silu(bias + sum_j weight[c][j] * window[j]) where the window is the state's kernel - 1 earlier
// inputs and this product; the state shifts by one in place.
struct GemvConv {
  int begin = 0, end = 0;
  int kernel = 0;              // 1..8
  void* state = nullptr;       // [rows, end - begin, kernel - 1] in the element type
  const void* weight = nullptr;  // [end - begin, kernel] in the element type
  const void* bias = nullptr;    // null or [end - begin]
};

// Attention's q, k and v products of one decode token (parts 0, 1 and 2, of heads * head_dim and twice kv_heads *
// head_dim columns), with what kernels/decode_attention's first step would do next: q and k rotated by RoPE at each
// row's position (kernels/rope.cuh, bit for bit the same), k and v also written into the caches at that position.
// Each warp reduces the two weight rows of q or k that RoPE mixes, (j, j + rotary_dim / 2) of a head, so the rotation
// needs no other warp's result. decode_attention then runs with rope_done. Rows whose position is outside the
// cache write nothing there.
struct GemvRope {
  int head_dim = 0, rotary_dim = 0;  // rotary_dim even, at most head_dim
  float theta = 10000.f;
  const int64_t* positions = nullptr;  // [rows]: the new token's position
  long capacity = 0;                   // positions each cache row holds
  void* k_cache = nullptr;             // [rows, kv_heads, capacity, head_dim] in the element type
  void* v_cache = nullptr;
};

// x's rows are replaced by rms_norm(x [+ delta]) before the product, as kernels/inference_ops' add_rms_norm
// computes it: v = round(x + delta), round(weight * round(v * rsqrt(mean(v^2) + eps))).
struct GemvNorm {
  const void* weight = nullptr;  // [k]; null: x is used as it is
  float eps = 1e-6f;
  const void* delta = nullptr;  // null or [rows, k], row stride x_row
  void* sum = nullptr;          // with delta: [rows, k] (row stride x_row) receives x + delta, written by block 0
};

struct Gemv {
  int rows = 0;  // rows of x, 1..kGemvMaxRows
  int k = 0;     // input features, a multiple of 8
  ElementType dtype = ElementType::bf16;
  const void* x = nullptr;  // [rows, k], row stride x_row (elements, a multiple of 8)
  long x_row = 0;
  GemvPart parts[kGemvMaxParts];
  int num_parts = 1;
  GemvEpilogue epilogue = GemvEpilogue::plain;
  GemvNorm norm;                   // any epilogue but residual; gemv_norm_supports bounds rows x k (shared memory)
  GemvConv conv;                   // plain only; ignored when conv.end == conv.begin
  GemvRope rope;                   // rope_cache only
  const void* residual = nullptr;  // residual: [rows, n], row stride residual_row
  long residual_row = 0;
  void* y = nullptr;  // [rows, y_row]: the parts' columns side by side (swiglu and residual: n columns)
  long y_row = 0;
};

bool gemv_supports(int rows, int k, ElementType dtype);
bool gemv_norm_supports(int rows, int k);
void gemv(const Gemv& g, cudaStream_t stream);

}  // namespace carve::kernels
