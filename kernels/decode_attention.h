/*
 * One decode step of grouped-query attention over a KV cache, in CUDA (model/attention.cpp is the reference):
 *   1. RoPE on the new token's q and k (rotate-half over the first rotary_dim channels, Hugging Face's numerics),
 *      k and v written into the cache at the row's position (or already done by the qkv product: rope_done);
 *   2. split-KV attention ("flash decoding"): the cached positions are cut into splits and every (row, KV head,
 *      split) block reads its keys and values once for all the query heads that share them, keeping an online
 *      softmax in float32;
 *   3. the splits' partial results merged by their log-sum-exp.
 * Positions are read from device memory, so one launch sequence serves every step of a captured CUDA graph: the
 * work per split follows the row's current length while the grid stays fixed.
 */
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/element.h"

namespace carve::kernels {

struct DecodeAttention {
  int b = 0, heads = 0, kv_heads = 0, head_dim = 0, rotary_dim = 0;
  long capacity = 0;  // positions each cache row holds
  float rope_theta = 10000.f;
  ElementType dtype = ElementType::bf16;
  // The new token's projections, before RoPE (after it for q and k with rope_done): row r of q starts at q + r *
  // q_row (elements), and so on.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  long q_row = 0, k_row = 0, v_row = 0;
  const int64_t* positions = nullptr;  // [b]: the new token's position, i.e. how many positions are cached before it
  void* k_cache = nullptr;             // [b, kv_heads, capacity, head_dim], after RoPE
  void* v_cache = nullptr;             // [b, kv_heads, capacity, head_dim]
  int splits = 0;                      // grid splits per (row, KV head): decode_attention_splits
  // Set when the qkv product already rotated q and k and wrote k and v into the cache (kernels/gemv.h,
  // GemvEpilogue::rope_cache): step 1 is not launched and q is read as it is.
  bool rope_done = false;
  void* q_rotated = nullptr;           // workspace [b, heads, head_dim] in dtype (unused with rope_done)
  float* partial = nullptr;            // workspace [b, heads, splits, head_dim + 2]
  void* out = nullptr;                 // [b, heads * head_dim]
};

// Splits per (row, KV head): enough blocks to keep every SM streaming at long contexts, no more than the cache
// has 64-position pieces.
int decode_attention_splits(int b, int kv_heads, long capacity, int sm_count);
size_t decode_attention_partial_floats(const DecodeAttention& a);
// Head dims 8..256 in multiples of 8; heads a multiple of kv_heads with at most 8 query heads per KV head.
bool decode_attention_supports(int heads, int kv_heads, int head_dim);
void decode_attention(const DecodeAttention& a, cudaStream_t stream);

}  // namespace carve::kernels
