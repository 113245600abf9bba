// LibTorch glue for the inference kernels (model/inference_ops.h): checks, workspaces, launches on the current
// stream. Nothing here synchronizes or depends on host-side lengths, so a decode step can be captured in a graph.
#include "model/inference_ops.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "base/error.h"
#include "kernels/decode_attention.h"
#include "kernels/gemv.h"
#include "kernels/inference_ops.h"
#include "kernels/mamba_step.h"
#include "model/cuda/glue.h"

namespace carve::model::fused {

bool decode_attention_supports(int64_t heads, int64_t kv_heads, int64_t head_dim) {
  return kernels::decode_attention_supports(static_cast<int>(heads), static_cast<int>(kv_heads),
                                            static_cast<int>(head_dim));
}

namespace {

bool aligned16(const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// The KV caches and positions of `in` for b rows of `like`'s element type and device.
void check_cache_and_positions(const DecodeAttentionInputs& in, int64_t b, const torch::Tensor& like,
                               const char* what) {
  const int64_t d = in.head_dim;
  for (const auto* t : {&in.k_cache, &in.v_cache})
    CARVE_CHECK(t->dim() == 4 && t->size(0) == b && t->size(1) == in.kv_heads && t->size(3) == d &&
                    t->is_contiguous() && t->scalar_type() == like.scalar_type() && t->device() == like.device(),
                what, ": the caches must be contiguous [", b, ", ", in.kv_heads, ", capacity, ", d, "] like ",
                describe_tensor(like), "; got ", describe_tensor(*t));
  CARVE_CHECK(in.k_cache.size(2) == in.v_cache.size(2), what,
              ": the key and value caches must hold as many positions; got ", describe_tensor(in.k_cache), " and ",
              describe_tensor(in.v_cache));
  CARVE_CHECK(in.positions.dim() == 1 && in.positions.size(0) == b && in.positions.scalar_type() == torch::kInt64 &&
                  in.positions.is_contiguous() && in.positions.device() == like.device(),
              what, ": positions must be [", b, "] int64 on ", like.device().str(), "; got ",
              describe_tensor(in.positions));
}

}  // namespace

torch::Tensor decode_attention(const DecodeAttentionInputs& in) {
  const c10::cuda::CUDAGuard guard(in.q.device());
  const int64_t b = in.q.size(0), d = in.head_dim;
  CARVE_CHECK(decode_attention_supports(in.heads, in.kv_heads, d), "decode_attention: ", in.heads, " heads over ",
              in.kv_heads, " KV heads of dim ", d, " are not supported by the kernel");
  CARVE_CHECK(in.q.dim() == 2 && in.q.size(1) == in.heads * d && in.q.stride(1) == 1, "decode_attention: q must be [",
              b, ", ", in.heads * d, "] with unit channel stride; got ", describe_tensor(in.q));
  // The split kernel reads a rotated q in 16-byte pieces (its own workspace is aligned).
  CARVE_CHECK(!in.rope_done || (in.q.stride(0) % 8 == 0 && aligned16(in.q)), "decode_attention: a q rotated by ",
              "gemv_qkv_rope must start 16-byte aligned rows; got ", describe_tensor(in.q));
  for (const auto* t : {&in.k, &in.v})
    CARVE_CHECK(t->dim() == 2 && t->size(0) == b && t->size(1) == in.kv_heads * d && t->stride(1) == 1 &&
                    t->scalar_type() == in.q.scalar_type(),
                "decode_attention: k and v must be [", b, ", ", in.kv_heads * d, "] like q; got ", describe_tensor(*t));
  check_cache_and_positions(in, b, in.q, "decode_attention");
  kernels::DecodeAttention a;
  a.b = static_cast<int>(b), a.heads = static_cast<int>(in.heads), a.kv_heads = static_cast<int>(in.kv_heads);
  a.head_dim = static_cast<int>(d), a.rotary_dim = static_cast<int>(in.rotary_dim);
  a.capacity = in.k_cache.size(2);
  a.rope_theta = static_cast<float>(in.rope_theta);
  a.dtype = element_of(in.q);
  a.q = in.q.data_ptr(), a.k = in.k.data_ptr(), a.v = in.v.data_ptr();
  a.q_row = in.q.stride(0), a.k_row = in.k.stride(0), a.v_row = in.v.stride(0);
  a.positions = in.positions.data_ptr<int64_t>();
  a.k_cache = in.k_cache.data_ptr(), a.v_cache = in.v_cache.data_ptr();
  a.splits = kernels::decode_attention_splits(a.b, a.kv_heads, a.capacity,
                                              at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  a.rope_done = in.rope_done;
  // q's workspace for the attention's own RoPE step.
  torch::Tensor q_rotated = in.rope_done ? torch::Tensor() : fresh({b, in.heads, d}, in.q.options());
  torch::Tensor partial = fresh({static_cast<int64_t>(kernels::decode_attention_partial_floats(a))},
                                in.q.options().dtype(torch::kFloat));
  torch::Tensor out = fresh({b, in.heads * d}, in.q.options());
  a.q_rotated = q_rotated.defined() ? q_rotated.data_ptr() : nullptr;
  a.partial = partial.data_ptr<float>(), a.out = out.data_ptr();
  kernels::decode_attention(a, stream());
  return out;
}

namespace {

// x as [rows, k] with the unit channel stride and 16-byte rows the kernel reads (contiguous when a norm adds delta:
// delta and the sum are laid out as x).
torch::Tensor gemv_input(const torch::Tensor& x_in, const GemvNormStep* norm = nullptr) {
  const int64_t k = x_in.size(-1);
  torch::Tensor x = x_in.reshape({x_in.numel() / k, k});
  if (x.stride(1) != 1 || x.stride(0) % 8 != 0 || !aligned16(x) || (norm && norm->delta.defined()))
    x = x.contiguous();
  if (!aligned16(x)) x = x.clone();  // a contiguous view at an odd offset stays where it is under contiguous()
  return x;
}

std::vector<int64_t> with_last(const torch::Tensor& x, int64_t n) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return shape;
}

kernels::Gemv gemv_args(const torch::Tensor& x, const std::vector<GemvWeight>& parts) {
  kernels::Gemv g;
  g.rows = static_cast<int>(x.size(0)), g.k = static_cast<int>(x.size(1)), g.dtype = element_of(x);
  g.x = x.data_ptr(), g.x_row = x.stride(0);
  g.num_parts = static_cast<int>(parts.size());
  for (size_t i = 0; i < parts.size(); ++i) {
    g.parts[i].w = parts[i].weight.data_ptr();
    g.parts[i].bias = parts[i].bias.defined() ? parts[i].bias.data_ptr() : nullptr;
    g.parts[i].n = static_cast<int>(parts[i].weight.size(0));
  }
  return g;
}

void require_gemv(const torch::Tensor& x, const std::vector<GemvWeight>& parts, const GemvNormStep* norm,
                  const char* what) {
  if (gemv_applies(x, parts, norm)) return;
  std::string got = describe_tensor(x);
  for (const auto& p : parts) got += ", " + describe_tensor(p.weight);
  if (norm) got += ", norm " + describe_tensor(norm->weight) + ", delta " + describe_tensor(norm->delta);
  throw Error(std::string(what) + ": unsupported operands " + got);
}

// The norm's operands for the kernel; x + delta goes to a fresh *norm->sum of x's shape. Returns the delta the
// kernel reads, to be kept until the launch.
torch::Tensor set_norm(kernels::Gemv& g, const torch::Tensor& x, const torch::Tensor& x_in, const GemvNormStep* norm) {
  if (!norm) return {};
  g.norm.weight = norm->weight.data_ptr();
  g.norm.eps = static_cast<float>(norm->eps);
  if (!norm->delta.defined()) return {};
  // The kernel reads delta and writes the sum with x's row stride (x is contiguous here: gemv_input).
  torch::Tensor delta = norm->delta.reshape(x.sizes()).contiguous();
  if (!aligned16(delta)) delta = delta.clone();
  *norm->sum = fresh(x_in.sizes(), x.options());
  g.norm.delta = delta.data_ptr();
  g.norm.sum = norm->sum->data_ptr();
  return delta;
}

}  // namespace

bool gemv_applies(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  if (x.dim() < 1 || weight.dim() != 2 || x.size(-1) != weight.size(1) || x.scalar_type() != weight.scalar_type() ||
      weight.device() != x.device())
    return false;
  if (bias.defined() && (bias.scalar_type() != x.scalar_type() || bias.numel() != weight.size(0) ||
                         !bias.is_contiguous() || bias.device() != x.device()))
    return false;
  const int64_t rows = x.numel() / std::max<int64_t>(1, x.size(-1));
  return rows <= kernels::kGemvMaxRows &&
         kernels::gemv_supports(static_cast<int>(rows), static_cast<int>(x.size(-1)), element_of(x)) &&
         weight.is_contiguous() && aligned16(weight) && weight.size(0) <= std::numeric_limits<int>::max();
}

bool gemv_applies(const torch::Tensor& x, const std::vector<GemvWeight>& parts, const GemvNormStep* norm) {
  if (parts.empty() || parts.size() > static_cast<size_t>(kernels::kGemvMaxParts)) return false;
  int64_t columns = 0;
  for (const auto& p : parts) {
    if (!gemv_applies(x, p.weight, p.bias)) return false;
    columns += p.weight.size(0);
  }
  if (norm) {
    const auto& w = norm->weight;
    if (!w.defined() || w.dim() != 1 || w.size(0) != x.size(-1) || w.scalar_type() != x.scalar_type() ||
        w.device() != x.device() || !w.is_contiguous() || !aligned16(w) || !gemv_norm_fits(x))
      return false;
    const auto& d = norm->delta;
    if (d.defined() && (d.sizes() != x.sizes() || d.scalar_type() != x.scalar_type() || d.device() != x.device() ||
                        !norm->sum))
      return false;
  }
  return columns <= std::numeric_limits<int>::max();
}

bool gemv_norm_fits(const torch::Tensor& x) {
  if (x.dim() < 1 || x.size(-1) == 0) return false;
  const int64_t k = x.size(-1), rows = x.numel() / k;
  return rows <= kernels::kGemvMaxRows && k <= std::numeric_limits<int>::max() &&
         kernels::gemv_norm_supports(static_cast<int>(rows), static_cast<int>(k));
}

torch::Tensor gemv(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  return gemv_parts(x, {{weight, bias}});
}

torch::Tensor gemv_parts(const torch::Tensor& x_in, const std::vector<GemvWeight>& parts, const GemvConvStep* conv,
                         const torch::Tensor& out, const GemvNormStep* norm) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  require_gemv(x_in, parts, norm, "gemv");
  const torch::Tensor x = gemv_input(x_in, norm);
  int64_t columns = 0;
  for (const auto& p : parts) columns += p.weight.size(0);
  const auto shape = with_last(x_in, columns);
  torch::Tensor y = out;
  if (y.defined()) {
    CARVE_CHECK(y.sizes() == at::IntArrayRef(shape) && y.is_contiguous() && y.scalar_type() == x.scalar_type() &&
                    y.device() == x.device(),
                "gemv: the output must be contiguous ", at::IntArrayRef(shape), " like x; got ", describe_tensor(y));
    if (poison_kernel_outputs()) y.fill_(std::numeric_limits<float>::quiet_NaN());
  } else {
    y = fresh(shape, x.options());
  }
  kernels::Gemv g = gemv_args(x, parts);
  g.y = y.data_ptr(), g.y_row = columns;
  const torch::Tensor delta = set_norm(g, x, x_in, norm);
  if (conv) {
    const int64_t channels = conv->end - conv->begin, kernel = conv->weight.size(-1);
    CARVE_CHECK(conv->begin >= 0 && channels > 0 && conv->end <= columns, "gemv: conv columns [", conv->begin, ", ",
                conv->end, ") outside the product's ", columns);
    CARVE_CHECK(conv->weight.dim() == 2 && conv->weight.size(0) == channels && conv->weight.is_contiguous() &&
                    conv->weight.scalar_type() == x.scalar_type() && conv->weight.device() == x.device(),
                "gemv: conv weight must be contiguous [", channels, ", kernel] like x; got ",
                describe_tensor(conv->weight));
    CARVE_CHECK(!conv->bias.defined() || (conv->bias.numel() == channels && conv->bias.is_contiguous() &&
                                          conv->bias.scalar_type() == x.scalar_type() &&
                                          conv->bias.device() == x.device()),
                "gemv: conv bias must be [", channels, "] like x; got ", describe_tensor(conv->bias));
    CARVE_CHECK(kernel == 1 || (conv->state.dim() == 3 && conv->state.size(0) == x.size(0) &&
                                conv->state.size(1) == channels && conv->state.size(2) == kernel - 1 &&
                                conv->state.is_contiguous() && conv->state.scalar_type() == x.scalar_type() &&
                                conv->state.device() == x.device()),
                "gemv: conv state must be contiguous [", x.size(0), ", ", channels, ", ", kernel - 1, "] like x; got ",
                describe_tensor(conv->state));
    g.conv.begin = static_cast<int>(conv->begin), g.conv.end = static_cast<int>(conv->end);
    g.conv.kernel = static_cast<int>(kernel);
    g.conv.state = kernel > 1 ? conv->state.data_ptr() : nullptr;
    g.conv.weight = conv->weight.data_ptr();
    g.conv.bias = conv->bias.defined() ? conv->bias.data_ptr() : nullptr;
  }
  kernels::gemv(g, stream());
  return y;
}

torch::Tensor gemv_swiglu(const torch::Tensor& x_in, const GemvWeight& gate, const GemvWeight& up,
                          const GemvNormStep* norm) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  require_gemv(x_in, {gate, up}, norm, "gemv_swiglu");
  CARVE_CHECK(gate.weight.sizes() == up.weight.sizes(), "gemv_swiglu: gate ", describe_tensor(gate.weight),
              " and up ", describe_tensor(up.weight), " differ");
  const torch::Tensor x = gemv_input(x_in, norm);
  const int64_t n = gate.weight.size(0);
  torch::Tensor y = fresh(with_last(x_in, n), x.options());
  kernels::Gemv g = gemv_args(x, {gate, up});
  g.epilogue = kernels::GemvEpilogue::swiglu;
  g.y = y.data_ptr(), g.y_row = n;
  const torch::Tensor delta = set_norm(g, x, x_in, norm);
  kernels::gemv(g, stream());
  return y;
}

torch::Tensor gemv_qkv_rope(const torch::Tensor& x_in, const std::vector<GemvWeight>& qkv,
                            const DecodeAttentionInputs& in, const GemvNormStep* norm) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  require_gemv(x_in, qkv, norm, "gemv_qkv_rope");
  const int64_t d = in.head_dim, q_size = in.heads * d, kv_size = in.kv_heads * d;
  CARVE_CHECK(qkv.size() == 3 && d > 0 && d % 2 == 0 && in.rotary_dim >= 0 && in.rotary_dim <= d &&
                  in.rotary_dim % 2 == 0,
              "gemv_qkv_rope: takes q, k and v of an even head dim with an even rotary dim no larger; got ",
              qkv.size(), " parts, head dim ", d, ", rotary dim ", in.rotary_dim);
  CARVE_CHECK(qkv[0].weight.size(0) == q_size && qkv[1].weight.size(0) == kv_size &&
                  qkv[2].weight.size(0) == kv_size,
              "gemv_qkv_rope: q, k and v must have ", q_size, ", ", kv_size, " and ", kv_size, " rows (", in.heads,
              " and ", in.kv_heads, " heads of ", d, "); got ", describe_tensor(qkv[0].weight), ", ",
              describe_tensor(qkv[1].weight), ", ", describe_tensor(qkv[2].weight));
  const torch::Tensor x = gemv_input(x_in, norm);
  check_cache_and_positions(in, x.size(0), x, "gemv_qkv_rope");
  const int64_t columns = q_size + 2 * kv_size;
  torch::Tensor y = fresh(with_last(x_in, columns), x.options());
  kernels::Gemv g = gemv_args(x, qkv);
  g.epilogue = kernels::GemvEpilogue::rope_cache;
  g.y = y.data_ptr(), g.y_row = columns;
  const torch::Tensor delta = set_norm(g, x, x_in, norm);
  g.rope.head_dim = static_cast<int>(d), g.rope.rotary_dim = static_cast<int>(in.rotary_dim);
  g.rope.theta = static_cast<float>(in.rope_theta);
  g.rope.positions = in.positions.data_ptr<int64_t>();
  g.rope.capacity = in.k_cache.size(2);
  g.rope.k_cache = in.k_cache.data_ptr(), g.rope.v_cache = in.v_cache.data_ptr();
  kernels::gemv(g, stream());
  return y;
}

torch::Tensor gemv_residual(const torch::Tensor& x_in, const GemvWeight& w, const torch::Tensor& residual_in) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  require_gemv(x_in, {w}, nullptr, "gemv_residual");
  const torch::Tensor x = gemv_input(x_in);
  const int64_t n = w.weight.size(0);
  const auto shape = with_last(x_in, n);
  CARVE_CHECK(residual_in.sizes() == at::IntArrayRef(shape) && residual_in.scalar_type() == x.scalar_type(),
              "gemv_residual: the residual must be ", at::IntArrayRef(shape), " like x; got ",
              describe_tensor(residual_in));
  const torch::Tensor residual = residual_in.contiguous();
  torch::Tensor y = fresh(shape, x.options());
  kernels::Gemv g = gemv_args(x, {w});
  g.epilogue = kernels::GemvEpilogue::residual;
  g.residual = residual.data_ptr(), g.residual_row = n;
  g.y = y.data_ptr(), g.y_row = n;
  kernels::gemv(g, stream());
  return y;
}

torch::Tensor rms_norm(const torch::Tensor& x_in, const torch::Tensor& weight, double eps) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t d = x_in.size(-1);
  CARVE_CHECK(weight.dim() == 1 && weight.size(0) == d, "rms_norm: weight must be [", d, "]; got ",
              describe_tensor(weight));
  torch::Tensor x = x_in.contiguous(), w = weight.to(x.scalar_type()).contiguous();
  torch::Tensor out = fresh(x.sizes(), x.options());
  kernels::rms_norm(x.numel() / d, static_cast<int>(d), element_of(x), x.data_ptr(), w.data_ptr(),
                    static_cast<float>(eps), out.data_ptr(), stream());
  return out;
}

torch::Tensor silu_mul(const torch::Tensor& gate_in, const torch::Tensor& up_in) {
  const c10::cuda::CUDAGuard guard(gate_in.device());
  CARVE_CHECK(gate_in.sizes() == up_in.sizes() && gate_in.scalar_type() == up_in.scalar_type(),
              "silu_mul: gate and up must match; got ", describe_tensor(gate_in), " and ", describe_tensor(up_in));
  torch::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  torch::Tensor out = fresh(gate.sizes(), gate.options());
  kernels::silu_mul(gate.numel(), element_of(gate), gate.data_ptr(), up.data_ptr(), out.data_ptr(), stream());
  return out;
}

std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& x_in, const torch::Tensor& delta_in,
                                                     const torch::Tensor& weight, double eps) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t d = x_in.size(-1);
  CARVE_CHECK(delta_in.sizes() == x_in.sizes() && delta_in.scalar_type() == x_in.scalar_type(),
              "add_rms_norm: x and delta must match; got ", describe_tensor(x_in), " and ", describe_tensor(delta_in));
  CARVE_CHECK(weight.dim() == 1 && weight.size(0) == d && weight.scalar_type() == x_in.scalar_type(),
              "add_rms_norm: weight must be [", d, "] like x; got ", describe_tensor(weight));
  torch::Tensor x = x_in.contiguous(), delta = delta_in.contiguous(), w = weight.contiguous();
  torch::Tensor sum = fresh(x.sizes(), x.options()), out = fresh(x.sizes(), x.options());
  kernels::add_rms_norm(x.numel() / d, static_cast<int>(d), element_of(x), x.data_ptr(), delta.data_ptr(),
                        w.data_ptr(), static_cast<float>(eps), sum.data_ptr(), out.data_ptr(), stream());
  return {sum, out};
}

torch::Tensor argmax(const torch::Tensor& logits) {
  const c10::cuda::CUDAGuard guard(logits.device());
  CARVE_CHECK(logits.dim() == 2 && logits.size(1) > 0, "argmax: logits must be [batch, vocab]; got ",
              describe_tensor(logits));
  // Rows the kernel reads in place: unit stride along the vocabulary and rows that do not overlap (a row's stride
  // means nothing when there is one row; expanded rows have stride 0).
  const bool in_place = logits.stride(1) == 1 && (logits.size(0) == 1 || logits.stride(0) >= logits.size(1));
  torch::Tensor x = in_place ? logits : logits.contiguous();
  torch::Tensor out = fresh({x.size(0)}, x.options().dtype(torch::kInt64));
  if (x.size(0) == 0) return out;
  const int64_t row_stride = x.size(0) == 1 ? x.size(1) : x.stride(0);
  kernels::argmax_rows(x.size(0), x.size(1), row_stride, element_of(x), x.data_ptr(),
                       reinterpret_cast<long long*>(out.data_ptr<int64_t>()), stream());
  return out;
}

namespace {

// A [b, columns] view the step kernel reads: unit channel stride, at least `columns` per row.
bool step_view(const torch::Tensor& t, int64_t b, int64_t columns, const torch::Tensor& like) {
  return t.defined() && t.dim() == 2 && t.size(0) == b && t.size(1) == columns && t.stride(1) == 1 &&
         t.scalar_type() == like.scalar_type() && t.device() == like.device();
}

bool step_param(const torch::Tensor& t, int64_t numel, const torch::Tensor& like, bool optional) {
  if (!t.defined()) return optional;
  return t.numel() == numel && t.is_contiguous() && t.scalar_type() == like.scalar_type() &&
         t.device() == like.device();
}

}  // namespace

bool mamba_step_applies(const MambaStepInputs& in) {
  const int64_t h = in.heads, p = in.head_dim, n = in.state_size;
  if (!in.x.defined() || h <= 0 || in.x_heads <= 0 || in.b_heads <= 0 || in.c_heads <= 0 || h % in.x_heads != 0 ||
      h % in.b_heads != 0 || h % in.c_heads != 0 || !kernels::mamba_step_supports(static_cast<int>(p),
                                                                                  static_cast<int>(n)))
    return false;
  const auto& x = in.x;
  const int64_t b = x.size(0);
  return x.scalar_type() != torch::kDouble && step_view(x, b, in.x_heads * p, x) &&
         step_view(in.B, b, in.b_heads * n, x) && step_view(in.C, b, in.c_heads * n, x) &&
         step_view(in.dt, b, h, x) && step_view(in.z, b, h * p, x) && step_param(in.A_log, h, x, false) &&
         step_param(in.dt_bias, h, x, true) && step_param(in.D, h, x, true) &&
         (step_param(in.norm_weight, p, x, false) || step_param(in.norm_weight, h * p, x, false)) &&
         in.state.defined() && in.state.dim() == 4 && in.state.size(0) == b && in.state.size(1) == h &&
         in.state.size(2) == p && in.state.size(3) == n && in.state.is_contiguous() &&
         in.state.scalar_type() == torch::kFloat && in.state.device() == x.device();
}

torch::Tensor mamba_step(const MambaStepInputs& in) {
  const c10::cuda::CUDAGuard guard(in.x.device());
  CARVE_CHECK(mamba_step_applies(in), "mamba_step: unsupported inputs: x ", describe_tensor(in.x), ", state ",
              describe_tensor(in.state), " for ", in.heads, " heads of ", in.head_dim, " with state size ",
              in.state_size);
  const int64_t b = in.x.size(0);
  torch::Tensor out = fresh({b, in.heads * in.head_dim}, in.x.options());
  kernels::MambaStep s;
  s.b = static_cast<int>(b), s.h = static_cast<int>(in.heads), s.p = static_cast<int>(in.head_dim);
  s.n = static_cast<int>(in.state_size);
  s.x_heads = static_cast<int>(in.x_heads), s.b_heads = static_cast<int>(in.b_heads);
  s.c_heads = static_cast<int>(in.c_heads);
  s.dtype = element_of(in.x);
  s.x = in.x.data_ptr(), s.B = in.B.data_ptr(), s.C = in.C.data_ptr(), s.dt = in.dt.data_ptr(), s.z = in.z.data_ptr();
  s.x_row = in.x.stride(0), s.B_row = in.B.stride(0), s.C_row = in.C.stride(0), s.dt_row = in.dt.stride(0);
  s.z_row = in.z.stride(0);
  s.A_log = in.A_log.data_ptr();
  s.dt_bias = in.dt_bias.defined() ? in.dt_bias.data_ptr() : nullptr;
  s.D = in.D.defined() ? in.D.data_ptr() : nullptr;
  s.norm_weight = in.norm_weight.data_ptr();
  s.norm_weight_shared = in.norm_weight.numel() == in.head_dim;
  s.norm_before_gate = in.norm_before_gate;
  s.eps = static_cast<float>(in.eps);
  s.state = in.state.data_ptr<float>(), s.out = out.data_ptr();
  s.allow_clusters = in.allow_clusters;
  kernels::mamba_step(s, stream());
  return out;
}

}  // namespace carve::model::fused
