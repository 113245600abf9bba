/*
 * Mamba-2 SSD scan in LibTorch ops: input validation, the chunked form (as in mamba_ssm's ssd_minimal, extended with
 * groups, D, z, dt_bias/softplus, initial states and seq_idx), the per-token oracle, and the single decode step.
 * Everything stays on the inputs' device and avoids host syncs so the same code serves CPU and CUDA tensors.
 */
#include "model/ssd.h"

#include "base/error.h"
#include "model/tensor_util.h"

#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace carve::model {
namespace {

using torch::Tensor;

// Sizes of one scan, read from x and B once they are validated.
struct Dims {
  int64_t b = 0, l = 0, h = 0, p = 0, g = 0, n = 0;
};

// Rank and group checks shared by the whole-sequence and decode paths; `time` is 1 with an l axis, 0 without.
void expect_rank(const char* fn, const char* name, const Tensor& t, int64_t rank, const char* layout) {
  CARVE_CHECK(t.defined() && t.dim() == rank, fn, ": ", name, " must be a ", rank, "-D tensor ", layout, "; got ",
              describe_tensor(t));
  CARVE_CHECK(at::isFloatingType(t.scalar_type()), fn, ": ", name, " must be a floating-point tensor; got ",
              describe_tensor(t));
}

void expect_groups(const char* fn, const Dims& d) {
  CARVE_CHECK(d.g > 0 && d.h % d.g == 0, fn, ": the head count h = ", d.h, " of x must be a multiple of the group ",
              "count g = ", d.g, " of B and C (head i reads group i / (h / g))");
}

void expect_skip(const char* fn, const Tensor& D, const Dims& d, const torch::Device& device) {
  if (!D.defined()) return;
  if (D.dim() == 1) expect_tensor(fn, "D", D, {d.h}, "[h]", device, true);
  else expect_tensor(fn, "D", D, {d.h, d.p}, "[h, p]", device, true);
}

Dims check_inputs(const SsdInputs& in, const char* fn) {
  expect_rank(fn, "x", in.x, 4, "[b, l, h, p]");
  const torch::Device dev = in.x.device();
  Dims d;
  d.b = in.x.size(0), d.l = in.x.size(1), d.h = in.x.size(2), d.p = in.x.size(3);
  CARVE_CHECK(d.l > 0, fn, ": x must hold at least one token (l > 0); got ", describe_tensor(in.x));
  expect_rank(fn, "B", in.B, 4, "[b, l, g, n]");
  d.g = in.B.size(2), d.n = in.B.size(3);
  expect_tensor(fn, "B", in.B, {d.b, d.l, d.g, d.n}, "[b, l, g, n] (b, l from x)", dev, true);
  expect_tensor(fn, "C", in.C, {d.b, d.l, d.g, d.n}, "[b, l, g, n] (like B)", dev, true);
  expect_groups(fn, d);
  expect_tensor(fn, "dt", in.dt, {d.b, d.l, d.h}, "[b, l, h]", dev, true);
  expect_tensor(fn, "A", in.A, {d.h}, "[h]", dev, true);
  expect_skip(fn, in.D, d, dev);
  if (in.z.defined()) expect_tensor(fn, "z", in.z, {d.b, d.l, d.h, d.p}, "[b, l, h, p] (like x)", dev, true);
  if (in.dt_bias.defined()) expect_tensor(fn, "dt_bias", in.dt_bias, {d.h}, "[h]", dev, true);
  if (in.initial_state.defined()) {
    expect_tensor(fn, "initial_state", in.initial_state, {d.b, d.h, d.p, d.n}, "[b, h, p, n]", dev, true);
  }
  if (in.seq_idx.defined()) {
    expect_tensor(fn, "seq_idx", in.seq_idx, {d.b, d.l}, "[b, l]", dev, false);
    CARVE_CHECK(c10::isIntegralType(in.seq_idx.scalar_type(), /*includeBool=*/false), fn,
                ": seq_idx must be an integer tensor (int32 or int64); got ", describe_tensor(in.seq_idx));
  }
  CARVE_CHECK(in.chunk_size > 0, fn, ": chunk_size must be positive; got ", in.chunk_size);
  return d;
}

Dims check_step_inputs(const SsdStepInputs& in, const torch::Tensor& state, const char* fn) {
  expect_rank(fn, "x", in.x, 3, "[b, h, p]");
  const torch::Device dev = in.x.device();
  Dims d;
  d.b = in.x.size(0), d.h = in.x.size(1), d.p = in.x.size(2);
  expect_rank(fn, "B", in.B, 3, "[b, g, n]");
  d.g = in.B.size(1), d.n = in.B.size(2);
  expect_tensor(fn, "B", in.B, {d.b, d.g, d.n}, "[b, g, n] (b from x)", dev, true);
  expect_tensor(fn, "C", in.C, {d.b, d.g, d.n}, "[b, g, n] (like B)", dev, true);
  expect_groups(fn, d);
  expect_tensor(fn, "dt", in.dt, {d.b, d.h}, "[b, h]", dev, true);
  expect_tensor(fn, "A", in.A, {d.h}, "[h]", dev, true);
  expect_skip(fn, in.D, d, dev);
  if (in.z.defined()) expect_tensor(fn, "z", in.z, {d.b, d.h, d.p}, "[b, h, p] (like x)", dev, true);
  if (in.dt_bias.defined()) expect_tensor(fn, "dt_bias", in.dt_bias, {d.h}, "[h]", dev, true);
  expect_tensor(fn, "state", state, {d.b, d.h, d.p, d.n}, "[b, h, p, n]", dev, true);
  CARVE_CHECK(state.scalar_type() == torch::kFloat || state.scalar_type() == torch::kDouble, fn,
              ": state must be float32 (or float64); got ", describe_tensor(state));
  return d;
}

// bf16/fp16/fp32 inputs accumulate in float32; float64 stays float64 so the oracle tests can be exact.
Tensor effective_dt(const Tensor& dt, const Tensor& dt_bias, bool softplus, torch::ScalarType ct) {
  Tensor out = dt.to(ct);  // [..., h]
  if (dt_bias.defined()) out = out + dt_bias.to(ct);
  if (softplus) out = torch::nn::functional::softplus(out, torch::nn::functional::SoftplusFuncOptions());
  return out;
}

// Adds the D skip and applies the silu(z) gate; y and x are in the compute dtype, trailing dims [h, p].
Tensor finish_output(Tensor y, const Tensor& x, const Tensor& D, const Tensor& z, torch::ScalarType out_dtype) {
  if (D.defined()) {
    Tensor d = D.to(y.scalar_type());  // [h] or [h, p]
    if (d.dim() == 1) d = d.unsqueeze(-1);
    y = y + x * d;
  }
  if (z.defined()) y = y * torch::silu(z.to(y.scalar_type()));
  return y.to(out_dtype);
}

// Inputs converted to the compute dtype, dt already biased and softplus-ed.
struct Prepared {
  Tensor x;     // [b, l, h, p]
  Tensor dt;    // [b, l, h]
  Tensor A;     // [h]
  Tensor B;     // [b, l, g, n]
  Tensor C;     // [b, l, g, n]
  Tensor init;  // [b, h, p, n] or undefined
};

Prepared prepare(const SsdInputs& in) {
  const torch::ScalarType ct = accumulate_dtype(in.x);
  Prepared pr;
  pr.x = in.x.to(ct);
  pr.dt = effective_dt(in.dt, in.dt_bias, in.dt_softplus, ct);
  pr.A = in.A.to(ct);
  pr.B = in.B.to(ct);
  pr.C = in.C.to(ct);
  if (in.initial_state.defined()) pr.init = in.initial_state.to(ct);
  return pr;
}

// Zero-pads the time axis (dim 1) up to `length`; padded tokens get dt = 0, so they neither decay nor feed the state.
Tensor pad_time(const Tensor& t, int64_t length) {
  const int64_t extra = length - t.size(1);
  if (extra == 0) return t.contiguous();
  std::vector<int64_t> shape = t.sizes().vec();
  shape[1] = extra;
  return torch::cat({t, torch::zeros(shape, t.options())}, 1);
}

// Padded tokens continue the last sample, so the final state passes through the padding unchanged.
Tensor pad_segments(const Tensor& seg, int64_t length) {  // [b, l] -> [b, length]
  const int64_t extra = length - seg.size(1);
  if (extra == 0) return seg;
  return torch::cat({seg, seg.narrow(1, seg.size(1) - 1, 1).expand({seg.size(0), extra})}, 1);
}

// out[..., i, j] = x[..., j+1] + ... + x[..., i] for j <= i, -inf above the diagonal or where `allowed` is false.
// Summing masked copies (instead of differencing one cumsum) keeps it exact-ish for long chunks, as in ssd_minimal.
// x [..., T]; allowed broadcastable to [..., T, T], or undefined for no extra mask.
Tensor segsum(const Tensor& x, const Tensor& allowed) {
  const int64_t T = x.size(-1);
  auto bool_opts = x.options().dtype(torch::kBool);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.push_back(T);
  Tensor strict = torch::ones({T, T}, bool_opts).tril(-1);
  Tensor sums = x.unsqueeze(-1).expand(shape).masked_fill(strict.logical_not(), 0).cumsum(-2);
  Tensor keep = torch::ones({T, T}, bool_opts).tril(0);
  if (allowed.defined()) keep = keep.logical_and(allowed);
  return sums.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity());
}

// The chunked tensors every stage reads; c = number of chunks, q = chunk length, h split as (g, r = h / g).
struct Chunked {
  Tensor X;         // [b, c, q, g, r, p] x * dt
  Tensor dA;        // [b, c, g, r, q] dt * A
  Tensor A_cs;      // [b, c, g, r, q] cumulative dA inside each chunk
  Tensor B;         // [b, c, q, g, n]
  Tensor C;         // [b, c, q, g, n]
  Tensor seg;       // [b, c, q] int64 segment ids, or undefined
  Tensor seg_end;   // [b, c] segment of each chunk's last token, or undefined
  Tensor seg_prev;  // [b, c] segment of the previous chunk's last token (row start for chunk 0), or undefined
};

Chunked make_chunks(const Prepared& pr, const Tensor& seq_idx, const Dims& d, int64_t q) {
  const int64_t c = (d.l + q - 1) / q, len = c * q, r = d.h / d.g;
  Chunked ch;
  ch.X = pad_time(pr.x * pr.dt.unsqueeze(-1), len).view({d.b, c, q, d.g, r, d.p});
  ch.dA = pad_time(pr.dt * pr.A, len).view({d.b, c, q, d.g, r}).permute({0, 1, 3, 4, 2});
  ch.A_cs = ch.dA.cumsum(-1);
  ch.B = pad_time(pr.B, len).view({d.b, c, q, d.g, d.n});
  ch.C = pad_time(pr.C, len).view({d.b, c, q, d.g, d.n});
  if (seq_idx.defined()) {
    ch.seg = pad_segments(segment_ids(seq_idx), len).view({d.b, c, q});
    ch.seg_end = ch.seg.select(2, q - 1);
    // The initial state belongs to the row's first sample (segment 0).
    ch.seg_prev = torch::cat({torch::zeros({d.b, 1}, ch.seg.options()), ch.seg_end.narrow(1, 0, c - 1)}, 1);
  }
  return ch;
}

// Tokens of one chunk seeing each other: the masked quadratic ("attention-like") form.
Tensor intra_chunk_output(const Chunked& ch) {  // -> [b, c, q, g, r, p]
  Tensor allowed;
  if (ch.seg.defined()) {
    const int64_t b = ch.seg.size(0), c = ch.seg.size(1), q = ch.seg.size(2);
    allowed = (ch.seg.unsqueeze(-1) == ch.seg.unsqueeze(-2)).view({b, c, 1, 1, q, q});
  }
  Tensor decay = segsum(ch.dA, allowed).exp();                           // [b, c, g, r, q(l), q(s)]
  Tensor CB = torch::einsum("bclgn,bcsgn->bcgls", {ch.C, ch.B});         // [b, c, g, q, q], shared by the r heads
  Tensor M = decay * CB.unsqueeze(3);                                    // [b, c, g, r, q, q]
  return torch::einsum("bcgrls,bcsgrp->bclgrp", {M, ch.X});
}

// State each chunk adds on its own (from a zero state at its start), at its last token.
Tensor chunk_states(const Chunked& ch) {  // -> [b, c, g, r, p, n]
  const int64_t q = ch.A_cs.size(-1);
  Tensor decay = (ch.A_cs.narrow(-1, q - 1, 1) - ch.A_cs).exp();  // [b, c, g, r, q]
  if (ch.seg.defined()) {
    // Tokens of an earlier sample than the chunk's last token do not reach its state.
    Tensor same = (ch.seg == ch.seg_end.unsqueeze(-1)).to(decay.scalar_type());  // [b, c, q]
    decay = decay * same.unsqueeze(2).unsqueeze(2);
  }
  Tensor Xd = ch.X * decay.permute({0, 1, 4, 2, 3}).unsqueeze(-1);  // [b, c, q, g, r, p]
  return torch::einsum("bcsgrp,bcsgn->bcgrpn", {Xd, ch.B});
}

// Linear recurrence over chunks. Returns the state entering each chunk [b, c, g, r, p, n] and the final state
// [b, g, r, p, n]. A loop keeps it O(c) in time and memory (ssd_minimal's c x c matrix is quadratic in l).
std::pair<Tensor, Tensor> pass_states(const Chunked& ch, const Tensor& local, const Tensor& init) {
  const int64_t q = ch.A_cs.size(-1), c = local.size(1);
  Tensor decay = ch.A_cs.select(-1, q - 1).exp();  // [b, c, g, r]
  if (ch.seg.defined()) {
    // A chunk whose last token is in a later sample than the previous chunk's last token starts from zero.
    Tensor same = (ch.seg_prev == ch.seg_end).to(decay.scalar_type());  // [b, c]
    decay = decay * same.unsqueeze(-1).unsqueeze(-1);
  }
  Tensor state = init.defined() ? init : torch::zeros_like(local.select(1, 0));  // [b, g, r, p, n]
  std::vector<Tensor> entering;
  entering.reserve(c);
  for (int64_t i = 0; i < c; ++i) {
    entering.push_back(state);
    state = decay.select(1, i).unsqueeze(-1).unsqueeze(-1) * state + local.select(1, i);
  }
  return {torch::stack(entering, 1), state};
}

// Contribution of the state entering each chunk to that chunk's outputs.
Tensor inter_chunk_output(const Chunked& ch, const Tensor& entering) {  // entering [b, c, g, r, p, n]
  Tensor decay = ch.A_cs.exp();                                         // [b, c, g, r, q]
  if (ch.seg.defined()) {
    Tensor same = (ch.seg == ch.seg_prev.unsqueeze(-1)).to(decay.scalar_type());  // [b, c, q]
    decay = decay * same.unsqueeze(2).unsqueeze(2);
  }
  Tensor Y = torch::einsum("bclgn,bcgrpn->bclgrp", {ch.C, entering});  // [b, c, q, g, r, p]
  return Y * decay.permute({0, 1, 4, 2, 3}).unsqueeze(-1);
}

}  // namespace

void validate_ssd_inputs(const SsdInputs& in, const char* fn) { check_inputs(in, fn); }

void validate_ssd_step_inputs(const SsdStepInputs& in, const torch::Tensor& state, const char* fn) {
  check_step_inputs(in, state, fn);
}

SsdOutputs ssd_chunked(const SsdInputs& in, bool want_final_state) {
  const Dims d = check_inputs(in, "ssd_chunked");
  const Prepared pr = prepare(in);
  const int64_t q = std::min(in.chunk_size, d.l), r = d.h / d.g;
  Tensor init = pr.init.defined() ? pr.init.reshape({d.b, d.g, r, d.p, d.n}) : Tensor();
  const Chunked ch = make_chunks(pr, in.seq_idx, d, q);
  Tensor entering, last;
  std::tie(entering, last) = pass_states(ch, chunk_states(ch), init);
  Tensor y = intra_chunk_output(ch) + inter_chunk_output(ch, entering);  // [b, c, q, g, r, p]
  y = y.reshape({d.b, -1, d.h, d.p}).narrow(1, 0, d.l);
  SsdOutputs out;
  out.y = finish_output(y, pr.x, in.D, in.z, in.x.scalar_type());
  if (want_final_state) out.final_state = last.reshape({d.b, d.h, d.p, d.n});
  return out;
}

SsdOutputs ssd_sequential(const SsdInputs& in, bool want_final_state) {
  const Dims d = check_inputs(in, "ssd_sequential");
  const Prepared pr = prepare(in);
  const int64_t r = d.h / d.g;
  Tensor Bh = pr.B.repeat_interleave(r, 2);   // [b, l, h, n]
  Tensor Ch = pr.C.repeat_interleave(r, 2);   // [b, l, h, n]
  Tensor decay = (pr.dt * pr.A).exp();        // [b, l, h]
  Tensor xdt = pr.x * pr.dt.unsqueeze(-1);    // [b, l, h, p]
  Tensor keep;                                // [b, l] 0 where a new sample starts
  if (in.seq_idx.defined()) {
    Tensor same = in.seq_idx.narrow(1, 1, d.l - 1) == in.seq_idx.narrow(1, 0, d.l - 1);
    keep = torch::cat({torch::ones({d.b, 1}, same.options()), same}, 1).to(decay.scalar_type());
    decay = decay * keep.unsqueeze(-1);
  }
  Tensor state = pr.init.defined() ? pr.init : torch::zeros({d.b, d.h, d.p, d.n}, pr.x.options());
  std::vector<Tensor> ys;
  ys.reserve(d.l);
  for (int64_t t = 0; t < d.l; ++t) {
    Tensor a = decay.select(1, t).unsqueeze(-1).unsqueeze(-1);  // [b, h, 1, 1]
    state = a * state + xdt.select(1, t).unsqueeze(-1) * Bh.select(1, t).unsqueeze(2);
    ys.push_back((state * Ch.select(1, t).unsqueeze(2)).sum(-1));  // [b, h, p]
  }
  SsdOutputs out;
  out.y = finish_output(torch::stack(ys, 1), pr.x, in.D, in.z, in.x.scalar_type());
  if (want_final_state) out.final_state = state;
  return out;
}

torch::Tensor ssd_step(const SsdStepInputs& in, torch::Tensor& state) {
  const Dims d = check_step_inputs(in, state, "ssd_step");
  const torch::ScalarType ct = state.scalar_type();
  torch::NoGradGuard no_grad;
  const int64_t r = d.h / d.g;
  Tensor dt = effective_dt(in.dt, in.dt_bias, in.dt_softplus, ct);  // [b, h]
  Tensor x = in.x.to(ct);                                            // [b, h, p]
  Tensor Bh = in.B.to(ct).repeat_interleave(r, 1);                   // [b, h, n]
  Tensor Ch = in.C.to(ct).repeat_interleave(r, 1);                   // [b, h, n]
  Tensor decay = (dt * in.A.to(ct)).exp().unsqueeze(-1).unsqueeze(-1);  // [b, h, 1, 1]
  state.mul_(decay).add_((x * dt.unsqueeze(-1)).unsqueeze(-1) * Bh.unsqueeze(2));
  Tensor y = (state * Ch.unsqueeze(2)).sum(-1);  // [b, h, p]
  return finish_output(y, x, in.D, in.z, in.x.scalar_type());
}

}  // namespace carve::model
