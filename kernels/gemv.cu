#include "kernels/gemv.h"

#include "kernels/element.cuh"
#include "kernels/launch.cuh"
#include "kernels/rope.cuh"

namespace carve::kernels {
namespace {

constexpr int kWarps = 4;        // per block
constexpr int kRowsPerWarp = 2;  // weight rows a warp reduces together (x is loaded once for both)
constexpr int kUnroll = 4;       // 16-byte chunks per lane per weight row in flight
constexpr int kMaxSplit = 4;     // warps of a block that share one row pair, each over a slice of k (<= kWarps)
constexpr int kNormSharedBytes = 40 * 1024;  // normed x in shared memory: with the static arrays, under 48 KB

// Which blocks compute which part: part i owns blocks [first_block[i], first_block[i + 1]) and writes columns from
// first_col[i] on. `split` warps of a block reduce the same rows, warp w taking k's chunks w, w + split, ... (in
// 32-chunk strides), so all of them read adjacent weight segments.
struct GemvGrid {
  int parts = 1;
  int split = 1;
  int first_block[kGemvMaxParts + 1] = {};
  int first_col[kGemvMaxParts] = {};
};

// One decode step of the causal depthwise conv + SiLU for channel `ch` of batch row `b`, whose new input is x (as
// model/cuda's conv step kernel computes it, weights read in the element type).
template <typename T>
__device__ T conv_step(const GemvConv& c, int b, int ch, T x) {
  const long channels = c.end - c.begin;
  T* s = static_cast<T*>(c.state) + (static_cast<long>(b) * channels + ch) * (c.kernel - 1);
  const T* w = static_cast<const T*>(c.weight) + static_cast<long>(ch) * c.kernel;
  float acc = to_float(w[c.kernel - 1]) * to_float(x) + (c.bias ? to_float(static_cast<const T*>(c.bias)[ch]) : 0.f);
  for (int j = 0; j < c.kernel - 1; ++j) acc += to_float(w[j]) * to_float(s[j]);
  for (int j = 0; j + 1 < c.kernel - 1; ++j) s[j] = s[j + 1];
  if (c.kernel > 1) s[c.kernel - 2] = x;
  return from_float<T>(siluf(acc));
}

// rope_cache's row pairs of q and k: pair p is channels (j, j + rotary_dim / 2) of head p / (head_dim / 2), where
// j = p % (head_dim / 2) < rotary_dim / 2, and two consecutive channels past the rotary ones.
__device__ __forceinline__ int2 rope_rows(int pair, int head_dim, int rotary_dim) {
  const int per_head = head_dim / 2, half = rotary_dim / 2;
  const int head = pair / per_head, j = pair % per_head;
  const int first = head * head_dim + (j < half ? j : rotary_dim + 2 * (j - half));
  return make_int2(first, j < half ? first + half : first + 1);
}

template <typename T>
__device__ float bias_of(const void* bias, int row) {
  return bias ? to_float(static_cast<const T*>(bias)[row]) : 0.f;
}

// The norm weight into L1 before the wait for the previous kernel (it is constant while decoding), its 128-byte
// lines spread over the block's threads, so that norm_rows' second pass finds it there instead of waiting on L2
// after the block's sums.
template <typename T>
__device__ __forceinline__ void prefetch_norm_weight(const void* weight, int k) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(weight);
  const uintptr_t first = begin & ~uintptr_t{127}, end = begin + static_cast<uintptr_t>(k) * sizeof(T);
  for (uintptr_t at = first + threadIdx.x * uintptr_t{128}; at < end; at += kWarps * 32 * uintptr_t{128})
    prefetch_l1(reinterpret_cast<const void*>(at));
}

// rms_norm(x [+ delta]) of every row into xs [B][chunks] (16-byte chunks), by all threads of the block, with
// kernels/inference_ops' rounding. Block 0 also writes x + delta to norm.sum.
// A thread takes its chunks two at a time, both loads issued before either is used: under the other blocks' weight
// loads a round trip to L2 is slow, and a loop that stores each chunk's sum to global memory before the next load
// (which the store might alias) waits it out once per chunk. (Each warp normalizing all of k for itself, without the
// block's barriers, took a token from 2.30 to 3.45-3.71 ms; docs/kernels.md.)
// (Arguments by value: a reference to the kernel's parameter would copy it to local memory.)
template <typename T, int B>
__device__ void norm_rows(GemvNorm nm, int rows, int k, const void* x_in, long x_stride, uint4* xs) {
  constexpr int kThreads = kWarps * 32;
  const int chunks = k / 8;
  const long x_row = x_stride / 8;
  const uint4* x = reinterpret_cast<const uint4*>(static_cast<const T*>(x_in));
  const uint4* delta = reinterpret_cast<const uint4*>(static_cast<const T*>(nm.delta));
  uint4* sum_out = reinterpret_cast<uint4*>(static_cast<T*>(nm.sum));
  const uint4 zero = make_uint4(0, 0, 0, 0);
  float ss[B];
#pragma unroll
  for (int b = 0; b < B; ++b) {
    ss[b] = 0.f;
    if (b >= rows) continue;
    for (int c0 = threadIdx.x; c0 < chunks; c0 += 2 * kThreads) {
      const int c[2] = {c0, c0 + kThreads};
      const bool has[2] = {true, c[1] < chunks};
      uint4 raw[2], d[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        raw[j] = has[j] ? __ldg(x + b * x_row + c[j]) : zero;
        d[j] = delta && has[j] ? __ldg(delta + b * x_row + c[j]) : zero;
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        if (!has[j]) break;
        float v[8];
        unpack8<T>(raw[j], v);
        if (delta) {
          float dv[8];
          unpack8<T>(d[j], dv);
#pragma unroll
          for (int i = 0; i < 8; ++i) v[i] = to_float(from_float<T>(v[i] + dv[i]));
          raw[j] = pack8<T>(v);
          if (blockIdx.x == 0) sum_out[b * x_row + c[j]] = raw[j];
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) ss[b] = fmaf(v[i], v[i], ss[b]);
        xs[b * chunks + c[j]] = raw[j];
      }
    }
  }
  __shared__ float partial[kWarps][B];
#pragma unroll
  for (int b = 0; b < B; ++b) {
    const float s = warp_sum(ss[b]);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32][b] = s;
  }
  __syncthreads();
  const uint4* w = reinterpret_cast<const uint4*>(static_cast<const T*>(nm.weight));
  float rstd[B];
#pragma unroll
  for (int b = 0; b < B; ++b) {
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < kWarps; ++i) total += partial[i][b];
    rstd[b] = rsqrtf(total / static_cast<float>(k) + nm.eps);
  }
  // Each thread rewrites the chunks it wrote above: no barrier between the two passes.
  for (int c0 = threadIdx.x; c0 < chunks; c0 += 2 * kThreads) {
    const int c[2] = {c0, c0 + kThreads};
    const bool has[2] = {true, c[1] < chunks};
    uint4 wraw[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) wraw[j] = has[j] ? __ldg(w + c[j]) : zero;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      if (!has[j]) break;
      float wv[8];
      unpack8<T>(wraw[j], wv);
#pragma unroll
      for (int b = 0; b < B; ++b) {
        if (b >= rows) break;
        float v[8];
        unpack8<T>(xs[b * chunks + c[j]], v);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = wv[i] * to_float(from_float<T>(v[i] * rstd[b]));
        xs[b * chunks + c[j]] = pack8<T>(v);
      }
    }
  }
  __syncthreads();
}

// A warp reduces two weight rows (w0, w1) against B rows of x; SwiGLU pairs row j of gate with row j of up,
// rope_cache's q and k the two rows RoPE mixes (rope_rows), the other epilogues two consecutive rows of one part.
// With grid.split > 1, that many warps share the rows.
// (At one row of x, rope_cache's epilogue and the norm's paired loads would take the kernel from 64 registers to
// 71-76, 7 blocks per SM instead of 8: the bounds keep 8, with 8 bytes of spills in rope_cache's and none in the
// others.)
template <typename T, int B, GemvEpilogue E>
__global__ void __launch_bounds__(kWarps * 32, B == 1 ? 8 : 0)
    gemv_kernel(Gemv g, GemvGrid grid) {
  let_next_kernel_launch();
  extern __shared__ uint4 normed_x[];  // [B][k / 8] when g.norm.weight is set
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int split = grid.split, slice = warp % split;
  const int chunks = g.k / 8;
  // This block's part, selected with constant indices only (indexing the parameters with a variable copies them
  // to local memory).
  GemvPart pt = g.parts[0];
  int part = 0, first_block = 0, first_col = 0;
#pragma unroll
  for (int i = 1; i < kGemvMaxParts; ++i) {
    if (i < grid.parts && static_cast<int>(blockIdx.x) >= grid.first_block[i]) {
      pt = g.parts[i];
      part = i, first_block = grid.first_block[i], first_col = grid.first_col[i];
    }
  }
  constexpr int kOutPerWarp = E == GemvEpilogue::swiglu ? 1 : kRowsPerWarp;
  const int row0 = ((static_cast<int>(blockIdx.x) - first_block) * (kWarps / split) + warp / split) *
                   kOutPerWarp;
  // Warps past the part's last row still take part in the split's barrier below.
  const bool active = row0 < pt.n;
  // The two weight rows: row0 and the next, or for rope_cache's q and k the two that RoPE mixes.
  int row_a = row0, row_b = row0 + 1;
  if constexpr (E == GemvEpilogue::rope_cache) {
    if (part < 2) {
      const int2 pair = rope_rows(row0 / 2, g.rope.head_dim, g.rope.rotary_dim);
      row_a = pair.x, row_b = pair.y;
    }
  }
  const uint4* w0 = reinterpret_cast<const uint4*>(static_cast<const T*>(pt.w)) + static_cast<long>(row_a) * chunks;
  const uint4* w1;
  bool second = true;
  if constexpr (E == GemvEpilogue::swiglu) {
    w1 = reinterpret_cast<const uint4*>(static_cast<const T*>(g.parts[1].w)) + static_cast<long>(row0) * chunks;
  } else {
    second = row_b < pt.n;
    w1 = w0 + static_cast<long>(row_b - row_a) * chunks;
  }
  const int stride = 32 * split;  // between one lane's consecutive chunks
  const int step = stride * kUnroll;
  uint4 raw[kUnroll][kRowsPerWarp];
  auto load_weights = [&](int c0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * stride;
      const bool in = c < chunks;
      raw[u][0] = in ? __ldg(w0 + c) : make_uint4(0, 0, 0, 0);
      raw[u][1] = in && second ? __ldg(w1 + c) : make_uint4(0, 0, 0, 0);
    }
  };
  int c0 = slice * 32 + lane;
  // The weights are constant while decoding: their first loads are in flight while the previous kernel finishes.
  // (Measured against prefetching them into L2 only, and against no preload: docs/kernels.md.)
  // No caller puts a norm before the residual's product (the MLP's down projection): its code stays without one.
  constexpr bool kMayNorm = E != GemvEpilogue::residual;
  if (active) load_weights(c0);
  if (kMayNorm && g.norm.weight) prefetch_norm_weight<T>(g.norm.weight, g.k);
  wait_for_previous_kernel();

  // x as 16-byte chunks: normed in shared memory, or read from global memory as it is.
  const uint4* x = reinterpret_cast<const uint4*>(static_cast<const T*>(g.x));
  long x_row = g.x_row / 8;
  if (kMayNorm && g.norm.weight) {
    norm_rows<T, B>(g.norm, g.rows, g.k, g.x, g.x_row, normed_x);
    x = normed_x;
    x_row = chunks;
  }
  // At one or two rows, the residual's values are loaded now, so that their round trip overlaps the dot products
  // instead of following them. Not before the wait: the residual may be the previous kernel's x + delta. At more
  // rows they would cost registers, and blocks per SM.
  constexpr bool kResidualEarly = E == GemvEpilogue::residual && B <= 2;
  float res[kRowsPerWarp][B] = {};
  if constexpr (kResidualEarly) {
    if (active && lane == 0 && slice == 0) {
      const T* residual = static_cast<const T*>(g.residual);
#pragma unroll
      for (int b = 0; b < B; ++b) {
        if (b >= g.rows) break;
        res[0][b] = to_float(residual[b * g.residual_row + row0]);
        if (second) res[1][b] = to_float(residual[b * g.residual_row + row0 + 1]);
      }
    }
  }
  float acc[kRowsPerWarp][B];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int b = 0; b < B; ++b) acc[r][b] = 0.f;
  for (bool loaded = true; active && c0 < chunks; c0 += step, loaded = false) {
    if (!loaded) load_weights(c0);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * stride;
      if (c >= chunks) break;
      float f0[8], f1[8];
      unpack8<T>(raw[u][0], f0);
      unpack8<T>(raw[u][1], f1);
#pragma unroll
      for (int b = 0; b < B; ++b) {
        if (b >= g.rows) break;
        float xv[8];
        unpack8<T>(x[b * x_row + c], xv);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          acc[0][b] = fmaf(f0[i], xv[i], acc[0][b]);
          acc[1][b] = fmaf(f1[i], xv[i], acc[1][b]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int b = 0; b < B; ++b) acc[r][b] = warp_sum(acc[r][b]);
  if (split > 1) {
    // The first warp of each group adds the others' partial sums (in slice order: the result does not depend on
    // which warp finished first).
    __shared__ float partial[kWarps][kRowsPerWarp][B];
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
        for (int b = 0; b < B; ++b) partial[warp][r][b] = acc[r][b];
    }
    __syncthreads();
    if (slice != 0) return;
    for (int s = 1; s < split; ++s)
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
        for (int b = 0; b < B; ++b) acc[r][b] += partial[warp + s][r][b];
  }
  if (!active || lane != 0) return;
  T* y = static_cast<T*>(g.y);
#pragma unroll
  for (int b = 0; b < B; ++b) {
    if (b >= g.rows) break;
    if constexpr (E == GemvEpilogue::swiglu) {
      // model/layers.cpp: down(silu(gate(x)) * up(x)) with each product and the silu rounded.
      const float gate = to_float(from_float<T>(acc[0][b] + bias_of<T>(pt.bias, row0)));
      const float up = to_float(from_float<T>(acc[1][b] + bias_of<T>(g.parts[1].bias, row0)));
      const float silu = to_float(from_float<T>(gate / (1.f + expf(-gate))));
      y[b * g.y_row + row0] = from_float<T>(silu * up);
    } else if constexpr (E == GemvEpilogue::rope_cache) {
      // Whole heads (checked on the host): both rows exist and lie in one head.
      T out_a = from_float<T>(acc[0][b] + bias_of<T>(pt.bias, row_a));
      T out_b = from_float<T>(acc[1][b] + bias_of<T>(pt.bias, row_b));
      const long pos = g.rope.positions[b];
      const int d = g.rope.head_dim, j = row_a % d;
      if (part < 2 && j < g.rope.rotary_dim / 2)
        rope_rotate_pair<T>(pos, j, g.rope.rotary_dim, g.rope.theta, to_float(out_a), to_float(out_b), out_a, out_b);
      y[b * g.y_row + first_col + row_a] = out_a;
      y[b * g.y_row + first_col + row_b] = out_b;
      if (part > 0 && pos >= 0 && pos < g.rope.capacity) {
        const long kv_heads = pt.n / d;
        T* slot = static_cast<T*>(part == 1 ? g.rope.k_cache : g.rope.v_cache) +
                  ((b * kv_heads + row_a / d) * g.rope.capacity + pos) * d;
        slot[j] = out_a;
        slot[row_b % d] = out_b;
      }
    } else {
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        if (r == 1 && !second) break;
        const int row = row0 + r;
        const T product = from_float<T>(acc[r][b] + bias_of<T>(pt.bias, row));
        if constexpr (E == GemvEpilogue::residual) {
          const float residual =
              kResidualEarly ? res[r][b] : to_float(static_cast<const T*>(g.residual)[b * g.residual_row + row]);
          y[b * g.y_row + row] = from_float<T>(residual + to_float(product));
        } else {
          const int col = first_col + row;
          const bool conv = col >= g.conv.begin && col < g.conv.end;
          y[b * g.y_row + col] = conv ? conv_step<T>(g.conv, b, col - g.conv.begin, product) : product;
        }
      }
    }
  }
}

template <typename T, GemvEpilogue E>
void launch(const Gemv& g, const GemvGrid& grid, cudaStream_t stream) {
  const LaunchShape shape(dim3(static_cast<unsigned>(grid.first_block[grid.parts])), dim3(kWarps * 32),
                          g.norm.weight ? static_cast<size_t>(g.rows) * g.k * sizeof(T) : 0);
  if (g.rows <= 1) launch_kernel(gemv_kernel<T, 1, E>, shape, stream, g, grid);
  else if (g.rows <= 2) launch_kernel(gemv_kernel<T, 2, E>, shape, stream, g, grid);
  else if (g.rows <= 4) launch_kernel(gemv_kernel<T, 4, E>, shape, stream, g, grid);
  else launch_kernel(gemv_kernel<T, 8, E>, shape, stream, g, grid);
}

template <typename T>
void launch(const Gemv& g, const GemvGrid& grid, cudaStream_t stream) {
  switch (g.epilogue) {
    case GemvEpilogue::plain: launch<T, GemvEpilogue::plain>(g, grid, stream); return;
    case GemvEpilogue::swiglu: launch<T, GemvEpilogue::swiglu>(g, grid, stream); return;
    case GemvEpilogue::residual: launch<T, GemvEpilogue::residual>(g, grid, stream); return;
    case GemvEpilogue::rope_cache: launch<T, GemvEpilogue::rope_cache>(g, grid, stream); return;
  }
}

// Blocks enough for 8 warps per SM of an H100 with split 1 need no split (gate/up: 2048 blocks read at 2.35 TB/s);
// fewer, and k is split in 2 or 4 while every lane keeps at least one chunk of each slice.
constexpr int kEnoughBlocks = 1024;

GemvGrid grid_of(const Gemv& g) {
  GemvGrid grid;
  grid.parts = g.epilogue == GemvEpilogue::swiglu ? 1 : g.num_parts;
  const int rows_per_warp = g.epilogue == GemvEpilogue::swiglu ? 1 : kRowsPerWarp;
  auto blocks_at = [&](int split) {
    long blocks = 0;
    for (int i = 0; i < grid.parts; ++i) blocks += ceil_div(g.parts[i].n, (kWarps / split) * rows_per_warp);
    return blocks;
  };
  while (grid.split < kMaxSplit && blocks_at(grid.split) < kEnoughBlocks && g.k / 8 >= 32 * grid.split * 2)
    grid.split *= 2;
  const int rows_per_block = (kWarps / grid.split) * rows_per_warp;
  for (int i = 0; i < grid.parts; ++i) {
    grid.first_block[i + 1] = grid.first_block[i] + static_cast<int>(ceil_div(g.parts[i].n, rows_per_block));
    if (i + 1 < grid.parts) grid.first_col[i + 1] = grid.first_col[i] + g.parts[i].n;
  }
  return grid;
}

void check(const Gemv& g) {
  CARVE_KERNEL_REQUIRE(gemv_supports(g.rows, g.k, g.dtype) && g.x && g.y && g.x_row % 8 == 0,
                       "gemv: unsupported rows, k, stride or element type");
  CARVE_KERNEL_REQUIRE(g.num_parts >= 1 && g.num_parts <= kGemvMaxParts, "gemv: 1 to 5 parts");
  long columns = 0;
  for (int i = 0; i < g.num_parts; ++i) {
    CARVE_KERNEL_REQUIRE(g.parts[i].w && g.parts[i].n > 0, "gemv: a part without weights");
    columns += g.parts[i].n;
  }
  switch (g.epilogue) {
    case GemvEpilogue::plain:
      CARVE_KERNEL_REQUIRE(g.y_row >= columns, "gemv: output rows shorter than the parts' columns");
      break;
    case GemvEpilogue::swiglu:
      CARVE_KERNEL_REQUIRE(g.num_parts == 2 && g.parts[0].n == g.parts[1].n && g.y_row >= g.parts[0].n,
                           "gemv: swiglu takes gate and up of one size");
      break;
    case GemvEpilogue::residual:
      CARVE_KERNEL_REQUIRE(g.num_parts == 1 && g.residual && g.y_row >= g.parts[0].n &&
                               g.residual_row >= g.parts[0].n && !g.norm.weight,
                           "gemv: residual takes one part and the residual, and no norm");
      break;
    case GemvEpilogue::rope_cache: {
      const GemvRope& r = g.rope;
      const int d = r.head_dim;
      CARVE_KERNEL_REQUIRE(g.num_parts == 3 && d > 0 && d % 2 == 0 && r.rotary_dim >= 0 && r.rotary_dim <= d &&
                               r.rotary_dim % 2 == 0 && g.parts[0].n % d == 0 && g.parts[1].n % d == 0 &&
                               g.parts[2].n == g.parts[1].n && g.y_row >= columns && r.positions && r.k_cache &&
                               r.v_cache && r.capacity > 0,
                           "gemv: rope_cache takes q, k and v of whole heads, the positions and both caches");
      break;
    }
  }
  const GemvNorm& nm = g.norm;
  if (nm.weight) {
    CARVE_KERNEL_REQUIRE(gemv_norm_supports(g.rows, g.k) && (!nm.delta || nm.sum) && nm.eps >= 0.f,
                         "gemv: the norm's x does not fit in shared memory, or delta without its sum's output");
  }
  const GemvConv& c = g.conv;
  if (c.end != c.begin) {
    CARVE_KERNEL_REQUIRE(g.epilogue == GemvEpilogue::plain && c.begin >= 0 && c.begin < c.end && c.end <= columns &&
                             c.kernel >= 1 && c.kernel <= 8 && c.weight && (c.kernel == 1 || c.state),
                         "gemv: bad conv columns, kernel or pointers");
  }
}

}  // namespace

bool gemv_supports(int rows, int k, ElementType dtype) {
  return rows >= 1 && rows <= kGemvMaxRows && k > 0 && k % 8 == 0 && dtype != ElementType::f32;
}

bool gemv_norm_supports(int rows, int k) {
  return rows >= 1 && rows <= kGemvMaxRows && k > 0 && static_cast<long>(rows) * k * 2 <= kNormSharedBytes;
}

void gemv(const Gemv& g, cudaStream_t stream) {
  check(g);
  const GemvGrid grid = grid_of(g);
  if (g.dtype == ElementType::bf16) launch<__nv_bfloat16>(g, grid, stream);
  else launch<__half>(g, grid, stream);
}

}  // namespace carve::kernels
