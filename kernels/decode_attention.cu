#include "kernels/decode_attention.h"

#include <algorithm>
#include <cmath>

#include "kernels/cp_async.cuh"
#include "kernels/element.cuh"
#include "kernels/launch.cuh"
#include "kernels/rope.cuh"

namespace carve::kernels {
namespace {

constexpr int kThreads = 128;          // per attention block: 4 warps
constexpr long kMinKeysPerSplit = 64;  // a split never reads fewer positions than this (except the last one)
constexpr int kUnroll = 4;             // keys a thread takes per batch
constexpr int kStages = 3;             // batches in shared memory: kStages - 1 in flight while one is computed
// Split blocks per SM: the grid is one wave of them. With two batches each in flight, two blocks keep as many bytes
// in flight per SM as four did loading into registers. Left to itself the driver gives the kernel the largest
// carveout (196 KB, for four blocks of 48 KB; ncu) while the products around it run at 32 or 100 KB, and an SM
// changes carveout only when empty. Teacher ms per token at 1K / 32K / 103K on the H100 (docs/gpu-results.md,
// tenth session): 4 blocks, the driver's carveout 2.40 / - / 7.09; 4 blocks, a 50% carveout 2.30 / 4.04 / 6.99;
// 2 blocks and their carveout 2.30 / 3.74 / 6.72.
constexpr int kSplitBlocksPerSm = 2;

// The splits that hold positions for a row of `length` cached positions, and split s's range. Both kernels compute
// it from the length in device memory, so a captured graph adapts to every step.
struct SplitRange {
  long begin = 0, end = 0;
  bool active = false;
};
// Positions per split: the length over as many splits as the grid has, each at least kMinKeysPerSplit long.
__device__ __forceinline__ long keys_per_split(long length, int splits) {
  const long wanted = min(static_cast<long>(splits), (length + kMinKeysPerSplit - 1) / kMinKeysPerSplit);
  return (length + wanted - 1) / wanted;
}
// Splits that hold positions: every one of them at least one (rounding `per` up can leave the last few empty).
__device__ __forceinline__ long active_splits(long length, int splits) {
  const long per = keys_per_split(length, splits);
  return (length + per - 1) / per;
}
__device__ __forceinline__ SplitRange split_range(long length, int splits, int s) {
  SplitRange r;
  const long per = keys_per_split(length, splits);
  r.begin = s * per;
  r.end = min(length, r.begin + per);
  r.active = r.begin < r.end;
  return r;
}

// Sum over aligned groups of LANES lanes (every lane of the group gets it).
template <int LANES>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// RoPE on q and k of the new token (in the element type's rounding, as the reference does it), k and v into the
// cache. grid (heads + kv_heads, b).
template <typename T>
__global__ void rope_append_kernel(DecodeAttention a) {
  let_next_kernel_launch();
  wait_for_previous_kernel();  // the positions and the projections come from earlier kernels of the step
  const int row = blockIdx.y, head = blockIdx.x;
  const long pos = a.positions[row];
  if (pos < 0 || pos >= a.capacity) return;  // the host checked; never write outside the cache
  const int d = a.head_dim, rd = a.rotary_dim, half = rd / 2;
  const T* src;
  T* dst;
  if (head < a.heads) {
    src = static_cast<const T*>(a.q) + row * a.q_row + static_cast<long>(head) * d;
    dst = static_cast<T*>(a.q_rotated) + (static_cast<long>(row) * a.heads + head) * d;
  } else {
    const int kh = head - a.heads;
    const long slot = ((static_cast<long>(row) * a.kv_heads + kh) * a.capacity + pos) * d;
    src = static_cast<const T*>(a.k) + row * a.k_row + static_cast<long>(kh) * d;
    dst = static_cast<T*>(a.k_cache) + slot;
    const T* v = static_cast<const T*>(a.v) + row * a.v_row + static_cast<long>(kh) * d;
    T* v_dst = static_cast<T*>(a.v_cache) + slot;
    for (int i = threadIdx.x; i < d; i += blockDim.x) v_dst[i] = v[i];
  }
  for (int j = threadIdx.x; j < half; j += blockDim.x)
    rope_rotate_pair<T>(pos, j, rd, a.rope_theta, to_float(src[j]), to_float(src[j + half]), dst[j], dst[j + half]);
  for (int i = rd + threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
}

// One (split, KV head, row): LANES lanes share a key (8 channels each), the block's kThreads / LANES key groups
// take consecutive keys, and each key is read once for the GMAX >= groups query heads that use it. Scores are in
// log2 units (q pre-scaled by log2(e) / sqrt(head_dim)).
template <typename T, int LANES, int GMAX>
__global__ void __launch_bounds__(kThreads)
    attention_split_kernel(DecodeAttention a, const void* q_in, long q_in_row, float q_scale) {
  let_next_kernel_launch();
  wait_for_previous_kernel();
  constexpr int KG = kThreads / LANES;
  const int split = blockIdx.x, kh = blockIdx.y, row = blockIdx.z;
  const long length = a.positions[row] + 1;
  const SplitRange range = split_range(length, a.splits, split);
  if (!range.active) return;
  const int d = a.head_dim, groups = a.heads / a.kv_heads;
  const int lane = threadIdx.x % LANES, kg = threadIdx.x / LANES;
  const bool has_dims = lane * 8 < d;

  // Each lane loads 8 consecutive channels (load_floats: 16-byte loads, aligned since head_dim is a multiple of 8).
  float q[GMAX][8];
  const T* q_row = static_cast<const T*>(q_in) + row * q_in_row + lane * 8;
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    if (g < groups && has_dims) {
      load_floats(q_row + static_cast<long>(kh * groups + g) * d, q[g]);
#pragma unroll
      for (int i = 0; i < 8; ++i) q[g][i] *= q_scale;
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) q[g][i] = 0.f;
    }
  }
  float m[GMAX], l[GMAX], acc[GMAX][8];
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    m[g] = -1e30f, l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.f;
  }

  const long base = (static_cast<long>(row) * a.kv_heads + kh) * a.capacity * d + lane * 8;
  const T* keys = static_cast<const T*>(a.k_cache) + base;
  const T* values = static_cast<const T*>(a.v_cache) + base;
  // Keys and values stream through shared memory by cp.async, kStages - 1 batches ahead of the one computed: with
  // loads into registers a thread had nothing in flight while it computed, and registers bound how many batches it
  // could hold. Each thread copies and reads back only its own pieces, so its own waits order them (no barrier).
  extern __shared__ uint4 staged_keys[];  // [kStages][kUnroll][key, value][kWords][kThreads]
  constexpr int kWords = sizeof(T) * 8 / 16;  // 16-byte pieces of a lane's 8 channels
  constexpr int kStep = kUnroll * KG;         // keys a block takes per batch
  auto piece = [&](int st, int u, int kind, int w) {
    return staged_keys + (((st * kUnroll + u) * 2 + kind) * kWords + w) * kThreads + threadIdx.x;
  };
  auto copy_batch = [&](long k0, int st) {  // keys past the split, and lanes past head_dim, get zeros
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const long key = k0 + u * KG + kg;
      const bool real = key < range.end && has_dims;
      const T* k_src = real ? keys + key * d : keys;
      const T* v_src = real ? values + key * d : values;
#pragma unroll
      for (int w = 0; w < kWords; ++w) {
        copy_async<16>(piece(st, u, 0, w), k_src + w * (16 / sizeof(T)), real);
        copy_async<16>(piece(st, u, 1, w), v_src + w * (16 / sizeof(T)), real);
      }
    }
    commit_copies();
  };
  auto unpack_piece = [&](int st, int u, int kind, float (&v)[8]) {
    if constexpr (kWords == 1) {
      unpack8<T>(*piece(st, u, kind, 0), v);
    } else {
#pragma unroll
      for (int w = 0; w < kWords; ++w) {
        const uint4 p = *piece(st, u, kind, w);
        v[4 * w] = __uint_as_float(p.x), v[4 * w + 1] = __uint_as_float(p.y);
        v[4 * w + 2] = __uint_as_float(p.z), v[4 * w + 3] = __uint_as_float(p.w);
      }
    }
  };
#pragma unroll
  for (int st = 0; st + 1 < kStages; ++st) copy_batch(range.begin + st * kStep, st);
  int stage = 0;  // of the batch at k0
  for (long k0 = range.begin; k0 < range.end; k0 += kStep) {
    // Into the stage computed last time (this thread has read its pieces there; on the first pass, the stage the
    // prologue left empty), then wait for this batch.
    copy_batch(k0 + (kStages - 1) * kStep, (stage + kStages - 1) % kStages);
    staged_but<kStages - 1>();
    float kv[kUnroll][8], vv[kUnroll][8];
    bool valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      valid[u] = k0 + u * KG + kg < range.end;
      unpack_piece(stage, u, 0, kv[u]);
      unpack_piece(stage, u, 1, vv[u]);
    }
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
      if (g >= groups) break;
      float s[kUnroll];
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) dot = fmaf(q[g][i], kv[u][i], dot);
        dot = group_sum<LANES>(dot);
        s[u] = valid[u] ? dot : -INFINITY;
        mx = fmaxf(mx, s[u]);
      }
      const float correction = exp2f(m[g] - mx);
      l[g] *= correction;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[g][i] *= correction;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const float p = exp2f(s[u] - mx);
        l[g] += p;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(p, vv[u][i], acc[g][i]);
      }
      m[g] = mx;
    }
    stage = stage + 1 == kStages ? 0 : stage + 1;
  }

  // Merge the key groups' softmax states, then write this split's (unnormalised sum, max, denominator). The states
  // go where the batches were, once every thread is done with its pieces (and its last, empty copies).
  staged();
  __syncthreads();
  float* merge = reinterpret_cast<float*>(staged_keys);
  auto& s_acc = *reinterpret_cast<float(*)[GMAX][KG][LANES * 8]>(merge);
  auto& s_m = *reinterpret_cast<float(*)[GMAX][KG]>(merge + GMAX * KG * LANES * 8);
  auto& s_l = *reinterpret_cast<float(*)[GMAX][KG]>(merge + GMAX * KG * (LANES * 8 + 1));
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    if (lane == 0) s_m[g][kg] = m[g], s_l[g][kg] = l[g];
#pragma unroll
    for (int i = 0; i < 8; ++i) s_acc[g][kg][lane * 8 + i] = acc[g][i];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < groups * d; idx += kThreads) {
    const int g = idx / d, i = idx % d;
    float mx = -1e30f;
    for (int k = 0; k < KG; ++k) mx = fmaxf(mx, s_m[g][k]);
    float sum = 0.f, den = 0.f;
    for (int k = 0; k < KG; ++k) {
      const float w = exp2f(s_m[g][k] - mx);
      sum = fmaf(s_acc[g][k][i], w, sum);
      den = fmaf(s_l[g][k], w, den);
    }
    float* out = a.partial + ((static_cast<long>(row) * a.heads + kh * groups + g) * a.splits + split) * (d + 2);
    out[i] = sum;
    if (i == 0) out[d] = mx, out[d + 1] = den;
  }
}

// Dynamic shared memory of attention_split_kernel<T, LANES, GMAX>: the staged batches, or the merge of its key
// groups' states after them, whichever is larger.
template <typename T, int LANES, int GMAX>
constexpr size_t split_shared_bytes() {
  constexpr size_t batches = static_cast<size_t>(kStages) * kUnroll * 2 * kThreads * sizeof(T) * 8;
  constexpr size_t merge = static_cast<size_t>(GMAX) * (kThreads / LANES) * (LANES * 8 + 2) * sizeof(float);
  return batches > merge ? batches : merge;
}

// grid (heads, b): merges the active splits of one query head. The splits' maxima and weights are read in parallel
// into shared memory first; then each thread sums its channels over the splits.
constexpr int kCombineThreads = 128;
constexpr int kCombineMaxSplits = 1024;

template <typename T>
__global__ void __launch_bounds__(kCombineThreads) combine_kernel(DecodeAttention a) {
  let_next_kernel_launch();
  wait_for_previous_kernel();
  const int head = blockIdx.x, row = blockIdx.y, d = a.head_dim;
  const int active = static_cast<int>(active_splits(a.positions[row] + 1, a.splits));
  const float* part = a.partial + (static_cast<long>(row) * a.heads + head) * a.splits * (d + 2);
  __shared__ float weight[kCombineMaxSplits];
  __shared__ float reduce[kCombineThreads / 32];
  float mx = -1e30f;
  for (int s = threadIdx.x; s < active; s += kCombineThreads) {
    weight[s] = part[static_cast<long>(s) * (d + 2) + d];
    mx = fmaxf(mx, weight[s]);
  }
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (threadIdx.x % 32 == 0) reduce[threadIdx.x / 32] = mx;
  __syncthreads();
  mx = reduce[0];
#pragma unroll
  for (int w = 1; w < kCombineThreads / 32; ++w) mx = fmaxf(mx, reduce[w]);
  float den = 0.f;
  for (int s = threadIdx.x; s < active; s += kCombineThreads) {
    weight[s] = exp2f(weight[s] - mx);
    den = fmaf(part[static_cast<long>(s) * (d + 2) + d + 1], weight[s], den);
  }
  den = warp_sum(den);
  __syncthreads();  // every thread has read reduce[] above
  if (threadIdx.x % 32 == 0) reduce[threadIdx.x / 32] = den;
  __syncthreads();
  den = 0.f;
#pragma unroll
  for (int w = 0; w < kCombineThreads / 32; ++w) den += reduce[w];
  for (int i = threadIdx.x; i < d; i += kCombineThreads) {
    float sum = 0.f;
#pragma unroll 4
    for (int s = 0; s < active; ++s) sum = fmaf(part[static_cast<long>(s) * (d + 2) + i], weight[s], sum);
    static_cast<T*>(a.out)[(static_cast<long>(row) * a.heads + head) * d + i] = from_float<T>(sum / den);
  }
}

// The split kernel reads the rotated q from the workspace step 1 wrote, or from the qkv product's output.
template <typename T, int LANES, int GMAX>
void launch_split(const DecodeAttention& a, float q_scale, cudaStream_t stream) {
  constexpr size_t bytes = split_shared_bytes<T, LANES, GMAX>();
  LaunchShape shape(dim3(a.splits, a.kv_heads, a.b), dim3(kThreads), bytes);
  shape.carveout = shared_carveout_for(kSplitBlocksPerSm, bytes);
  const void* q = a.rope_done ? a.q : a.q_rotated;
  const long q_row = a.rope_done ? a.q_row : static_cast<long>(a.heads) * a.head_dim;
  launch_kernel(attention_split_kernel<T, LANES, GMAX>, shape, stream, a, q, q_row, q_scale);
}

template <typename T, int LANES>
void launch_split(const DecodeAttention& a, float q_scale, int groups, cudaStream_t stream) {
  if (groups <= 1) launch_split<T, LANES, 1>(a, q_scale, stream);
  else if (groups <= 2) launch_split<T, LANES, 2>(a, q_scale, stream);
  else if (groups <= 4) launch_split<T, LANES, 4>(a, q_scale, stream);
  else launch_split<T, LANES, 8>(a, q_scale, stream);
}

}  // namespace

int decode_attention_splits(int b, int kv_heads, long capacity, int sm_count) {
  const long by_sms =
      (static_cast<long>(kSplitBlocksPerSm) * sm_count + static_cast<long>(b) * kv_heads - 1) /
      (static_cast<long>(b) * kv_heads);
  const long by_cache = (capacity + kMinKeysPerSplit - 1) / kMinKeysPerSplit;
  return static_cast<int>(std::max(1L, std::min({by_sms, by_cache, static_cast<long>(kCombineMaxSplits)})));
}

size_t decode_attention_partial_floats(const DecodeAttention& a) {
  return static_cast<size_t>(a.b) * a.heads * a.splits * (a.head_dim + 2);
}

bool decode_attention_supports(int heads, int kv_heads, int head_dim) {
  return kv_heads > 0 && heads % kv_heads == 0 && heads / kv_heads <= 8 && head_dim % 8 == 0 && head_dim >= 8 &&
         head_dim <= 256;
}

void decode_attention(const DecodeAttention& a, cudaStream_t stream) {
  CARVE_KERNEL_REQUIRE(decode_attention_supports(a.heads, a.kv_heads, a.head_dim),
                       "decode_attention: unsupported heads / KV heads / head dim");
  CARVE_KERNEL_REQUIRE(a.rotary_dim >= 0 && a.rotary_dim <= a.head_dim && a.rotary_dim % 2 == 0,
                       "decode_attention: rotary_dim must be even and at most head_dim");
  CARVE_KERNEL_REQUIRE(a.b > 0 && a.capacity > 0 && a.splits > 0, "decode_attention: empty batch, cache or grid");
  CARVE_KERNEL_REQUIRE(!a.rope_done || (a.q_row % 8 == 0 && reinterpret_cast<uintptr_t>(a.q) % 16 == 0),
                       "decode_attention: a rotated q must have 16-byte aligned rows");
  const int groups = a.heads / a.kv_heads;
  const float q_scale = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(a.head_dim)));
  const int lanes_needed = a.head_dim / 8;
  dispatch_element(a.dtype, [&](auto t) {
    using T = decltype(t);
    if (!a.rope_done)
      launch_kernel(rope_append_kernel<T>, LaunchShape(dim3(a.heads + a.kv_heads, a.b), dim3(128)), stream, a);
    if (lanes_needed <= 1) {
      launch_split<T, 1>(a, q_scale, groups, stream);
    } else if (lanes_needed <= 2) {
      launch_split<T, 2>(a, q_scale, groups, stream);
    } else if (lanes_needed <= 4) {
      launch_split<T, 4>(a, q_scale, groups, stream);
    } else if (lanes_needed <= 8) {
      launch_split<T, 8>(a, q_scale, groups, stream);
    } else if (lanes_needed <= 16) {
      launch_split<T, 16>(a, q_scale, groups, stream);
    } else {
      launch_split<T, 32>(a, q_scale, groups, stream);
    }
    launch_kernel(combine_kernel<T>, LaunchShape(dim3(a.heads, a.b), dim3(kCombineThreads)), stream, a);
  });
}

}  // namespace carve::kernels
