/*
 * Tests of the SSD reference (model/ssd.h): the chunked form against the per-token oracle in float64 (outputs, final
 * states and autograd gradients), the oracle against finite differences, decode-step and prefix-state continuation,
 * seq_idx isolation, low-precision accuracy and argument checks. Sizes are kept tiny so the suite runs in seconds.
 */
#include "model/ssd.h"

#include "base/error.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace {

using carve::model::SsdInputs;
using carve::model::SsdOutputs;
using carve::model::SsdStepInputs;
using torch::Tensor;

const auto kF64 = torch::TensorOptions().dtype(torch::kDouble);

// What one random case contains. D: 0 none, 1 [h], 2 [h, p].
struct Spec {
  int64_t b = 2, l = 37, h = 4, g = 2, p = 3, n = 5;
  int64_t chunk = 8;
  int d_rank = 0;
  bool z = false, dt_bias = false, init = false;
};

SsdInputs make_inputs(const Spec& s, uint64_t seed) {
  torch::manual_seed(seed);
  SsdInputs in;
  in.x = torch::randn({s.b, s.l, s.h, s.p}, kF64);
  if (s.dt_bias) {
    in.dt = torch::randn({s.b, s.l, s.h}, kF64) * 0.5 - 1.0;
    in.dt_bias = torch::randn({s.h}, kF64) * 0.5;
    in.dt_softplus = true;
  } else {
    in.dt = torch::rand({s.b, s.l, s.h}, kF64) * 0.3 + 0.05;
  }
  in.A = -(torch::rand({s.h}, kF64) + 0.5);
  in.B = torch::randn({s.b, s.l, s.g, s.n}, kF64) * 0.5;
  in.C = torch::randn({s.b, s.l, s.g, s.n}, kF64) * 0.5;
  if (s.d_rank == 1) in.D = torch::randn({s.h}, kF64);
  if (s.d_rank == 2) in.D = torch::randn({s.h, s.p}, kF64);
  if (s.z) in.z = torch::randn({s.b, s.l, s.h, s.p}, kF64);
  if (s.init) in.initial_state = torch::randn({s.b, s.h, s.p, s.n}, kF64);
  in.chunk_size = s.chunk;
  return in;
}

// seq_idx [b, l] int32 whose sample index steps up at each listed start; values are spread out (not 0, 1, 2) because
// only changes may matter.
Tensor seq_idx_from_starts(int64_t l, const std::vector<std::vector<int64_t>>& starts) {
  Tensor out = torch::zeros({static_cast<int64_t>(starts.size()), l}, torch::kInt);
  for (size_t row = 0; row < starts.size(); ++row) {
    int value = 3;
    size_t next = 0;
    for (int64_t t = 0; t < l; ++t) {
      if (next < starts[row].size() && starts[row][next] == t) value += 2, ++next;
      out[row][t].fill_(value);
    }
  }
  return out;
}


void expect_same_outputs(const SsdOutputs& got, const SsdOutputs& want, double tol, const std::string& what) {
  EXPECT_LT(carve::test::relative_norm_error(got.y, want.y), tol) << what << ": y";
  EXPECT_LT(carve::test::relative_norm_error(got.final_state, want.final_state), tol) << what << ": final_state";
}

void expect_chunked_matches_sequential(const SsdInputs& in, const std::string& what) {
  SsdOutputs seq = carve::model::ssd_sequential(in, true);
  SsdOutputs chk = carve::model::ssd_chunked(in, true);
  ASSERT_EQ(chk.y.sizes(), in.x.sizes()) << what;
  ASSERT_EQ(chk.final_state.sizes(), torch::IntArrayRef({in.x.size(0), in.x.size(2), in.x.size(3), in.B.size(3)}));
  expect_same_outputs(chk, seq, 1e-10, what);
}

// The inputs gradients are taken with respect to, by name.
const std::vector<std::pair<const char*, Tensor SsdInputs::*>>& grad_fields() {
  static const std::vector<std::pair<const char*, Tensor SsdInputs::*>> fields = {
      {"x", &SsdInputs::x}, {"dt", &SsdInputs::dt}, {"A", &SsdInputs::A},
      {"B", &SsdInputs::B}, {"C", &SsdInputs::C}, {"D", &SsdInputs::D},
      {"z", &SsdInputs::z}, {"dt_bias", &SsdInputs::dt_bias}, {"initial_state", &SsdInputs::initial_state}};
  return fields;
}

// A random scalar projection of (y, final_state): its gradient exercises every output element.
Tensor projected_loss(const SsdOutputs& out, const Tensor& wy, const Tensor& ws) {
  return (out.y * wy).sum() + (out.final_state * ws).sum();
}

std::vector<Tensor> input_grads(const SsdInputs& in, bool chunked, const Tensor& wy, const Tensor& ws) {
  SsdOutputs out = chunked ? carve::model::ssd_chunked(in, true) : carve::model::ssd_sequential(in, true);
  std::vector<Tensor> leaves;
  for (const auto& field : grad_fields()) leaves.push_back(in.*(field.second));
  return torch::autograd::grad({projected_loss(out, wy, ws)}, leaves);
}

Spec all_options_spec() {
  Spec s;
  s.d_rank = 1, s.z = true, s.dt_bias = true, s.init = true;
  return s;
}


TEST(SsdTest, ChunkedMatchesSequentialAcrossChunkSizes) {
  for (int64_t chunk : {4, 8, 16, 64, 1, 5}) {
    Spec s;
    s.chunk = chunk;  // l = 37 is a multiple of none of them; 64 > l
    expect_chunked_matches_sequential(make_inputs(s, 1), "chunk " + std::to_string(chunk));
  }
  Spec s;
  s.l = 32, s.chunk = 8;  // exact multiple: no padding
  expect_chunked_matches_sequential(make_inputs(s, 2), "l = 32, chunk 8");
}

TEST(SsdTest, ChunkedMatchesSequentialWithGroups) {
  for (int64_t g : {1, 2, 4}) {
    Spec s;
    s.g = g;
    expect_chunked_matches_sequential(make_inputs(s, 3), "g " + std::to_string(g) + ", h 4");
  }
}

TEST(SsdTest, ChunkedMatchesSequentialWithOptions) {
  for (int d_rank : {0, 1, 2}) {
    Spec s;
    s.d_rank = d_rank;
    expect_chunked_matches_sequential(make_inputs(s, 4), "D rank " + std::to_string(d_rank));
  }
  Spec s = all_options_spec();
  s.d_rank = 2;
  expect_chunked_matches_sequential(make_inputs(s, 5), "D [h, p], z, dt_bias + softplus, initial_state");
  s.z = false, s.init = false;
  expect_chunked_matches_sequential(make_inputs(s, 6), "dt_bias + softplus only");
}

TEST(SsdTest, ChunkedMatchesSequentialWithSeqIdx) {
  Spec s = all_options_spec();  // chunk 8, l 37
  SsdInputs in = make_inputs(s, 7);
  // Row 0: boundaries exactly at chunk starts 8 and 16, then mid-chunk at 21; row 1: mid-chunk 3 and 30.
  in.seq_idx = seq_idx_from_starts(s.l, {{8, 16, 21}, {3, 30}});
  expect_chunked_matches_sequential(in, "seq_idx");
  for (int64_t chunk : {4, 16, 64}) {
    in.chunk_size = chunk;
    expect_chunked_matches_sequential(in, "seq_idx, chunk " + std::to_string(chunk));
  }
}

// Each packed sample must give what it gives alone: the first with the row's initial state, the others from zero.
TEST(SsdTest, SeqIdxIsolatesPackedSamples) {
  Spec s = all_options_spec();
  s.b = 1;
  SsdInputs in = make_inputs(s, 8);
  in.seq_idx = seq_idx_from_starts(s.l, {{8, 16, 21}});
  SsdOutputs packed = carve::model::ssd_chunked(in, true);
  const std::vector<std::pair<int64_t, int64_t>> samples = {{0, 8}, {8, 16}, {16, 21}, {21, 37}};
  for (const auto& [start, end] : samples) {
    SsdInputs alone = in;
    alone.seq_idx = Tensor();
    for (Tensor SsdInputs::*f : {&SsdInputs::x, &SsdInputs::dt, &SsdInputs::B, &SsdInputs::C, &SsdInputs::z}) {
      alone.*f = (in.*f).narrow(1, start, end - start);
    }
    if (start > 0) alone.initial_state = Tensor();
    SsdOutputs single = carve::model::ssd_sequential(alone, true);
    EXPECT_LT(carve::test::relative_norm_error(packed.y.narrow(1, start, end - start), single.y), 1e-10) << "sample at " << start;
    if (end == s.l) {
      EXPECT_LT(carve::test::relative_norm_error(packed.final_state, single.final_state), 1e-10);
    }
  }
}

TEST(SsdTest, GradientsChunkedMatchSequential) {
  Spec s = all_options_spec();
  s.l = 29, s.d_rank = 2;
  SsdInputs in = make_inputs(s, 9);
  in.seq_idx = seq_idx_from_starts(s.l, {{8, 19}, {5}});
  for (const auto& field : grad_fields()) (in.*(field.second)).requires_grad_(true);
  torch::manual_seed(10);
  Tensor wy = torch::randn({s.b, s.l, s.h, s.p}, kF64);
  Tensor ws = torch::randn({s.b, s.h, s.p, s.n}, kF64);
  std::vector<Tensor> chunked = input_grads(in, true, wy, ws);
  std::vector<Tensor> sequential = input_grads(in, false, wy, ws);
  for (size_t i = 0; i < chunked.size(); ++i) {
    const char* name = grad_fields()[i].first;
    ASSERT_TRUE(chunked[i].defined() && sequential[i].defined()) << name;
    EXPECT_GT(sequential[i].abs().max().item<double>(), 0.0) << name;
    EXPECT_LT(carve::test::relative_norm_error(chunked[i], sequential[i]), 1e-10) << "gradient w.r.t. " << name;
  }
}

// Central differences on a tiny case: the oracle's own autograd gradients are right.
TEST(SsdTest, SequentialGradientsMatchFiniteDifferences) {
  Spec s = all_options_spec();
  s.b = 1, s.l = 5, s.h = 2, s.g = 1, s.p = 2, s.n = 2;
  SsdInputs in = make_inputs(s, 11);
  in.seq_idx = seq_idx_from_starts(s.l, {{3}});
  torch::manual_seed(12);
  Tensor wy = torch::randn({s.b, s.l, s.h, s.p}, kF64);
  Tensor ws = torch::randn({s.b, s.h, s.p, s.n}, kF64);
  SsdInputs leaf = in;
  for (const auto& field : grad_fields()) leaf.*(field.second) = (in.*(field.second)).clone().requires_grad_(true);
  std::vector<Tensor> analytic = input_grads(leaf, false, wy, ws);

  const double eps = 1e-6;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < grad_fields().size(); ++i) {
    Tensor SsdInputs::*f = grad_fields()[i].second;
    Tensor numeric = torch::zeros_like(in.*f);
    for (int64_t e = 0; e < numeric.numel(); ++e) {
      double sides[2];
      for (int side = 0; side < 2; ++side) {
        SsdInputs moved = in;
        moved.*f = (in.*f).clone();
        (moved.*f).view(-1)[e].add_(side == 0 ? eps : -eps);
        sides[side] = projected_loss(carve::model::ssd_sequential(moved, true), wy, ws).item<double>();
      }
      numeric.view(-1)[e].fill_((sides[0] - sides[1]) / (2 * eps));
    }
    EXPECT_LT((analytic[i] - numeric).abs().max().item<double>(), 1e-6) << "gradient w.r.t. " << grad_fields()[i].first;
  }
}

// The recurrence written out element by element, sharing no code with model/ssd.cpp: pins the semantics both forms
// implement (dt_bias then softplus, head -> group mapping, D skip before the z gate, seq_idx reset, initial state).
TEST(SsdTest, SequentialMatchesScalarLoop) {
  Spec s = all_options_spec();
  s.l = 9, s.h = 4, s.g = 2, s.p = 2, s.n = 3, s.d_rank = 2;
  SsdInputs in = make_inputs(s, 27);
  in.seq_idx = seq_idx_from_starts(s.l, {{4}, {1, 7}});
  SsdOutputs out = carve::model::ssd_sequential(in, true);
  auto x = in.x.accessor<double, 4>(), z = in.z.accessor<double, 4>();
  auto B = in.B.accessor<double, 4>(), C = in.C.accessor<double, 4>();
  auto dt = in.dt.accessor<double, 3>();
  auto A = in.A.accessor<double, 1>(), bias = in.dt_bias.accessor<double, 1>();
  auto D = in.D.accessor<double, 2>();
  auto seq = in.seq_idx.accessor<int, 2>();
  Tensor y = torch::zeros_like(in.x), state = in.initial_state.clone();
  auto ya = y.accessor<double, 4>();
  auto S = state.accessor<double, 4>();
  for (int64_t r = 0; r < s.b; ++r) {
    for (int64_t t = 0; t < s.l; ++t) {
      const bool reset = t > 0 && seq[r][t] != seq[r][t - 1];
      for (int64_t h = 0; h < s.h; ++h) {
        const double raw = dt[r][t][h] + bias[h];
        const double step = raw > 20 ? raw : std::log1p(std::exp(raw));
        const double decay = reset ? 0.0 : std::exp(step * A[h]);
        const int64_t g = h / (s.h / s.g);
        for (int64_t p = 0; p < s.p; ++p) {
          double acc = 0.0;
          for (int64_t n = 0; n < s.n; ++n) {
            S[r][h][p][n] = decay * S[r][h][p][n] + step * x[r][t][h][p] * B[r][t][g][n];
            acc += S[r][h][p][n] * C[r][t][g][n];
          }
          const double gate = z[r][t][h][p] / (1.0 + std::exp(-z[r][t][h][p]));
          ya[r][t][h][p] = (acc + D[h][p] * x[r][t][h][p]) * gate;
        }
      }
    }
  }
  EXPECT_LT(carve::test::relative_norm_error(out.y, y), 1e-12);
  EXPECT_LT(carve::test::relative_norm_error(out.final_state, state), 1e-12);
}

// Decoding token by token from the state the chunked form leaves after a prefix reproduces the whole-sequence run.
TEST(SsdTest, StepDecodeContinuesChunkedPrefix) {
  Spec s = all_options_spec();
  s.l = 23, s.chunk = 4;
  const int64_t prefix = 13;
  SsdInputs in = make_inputs(s, 13);
  SsdOutputs full = carve::model::ssd_chunked(in, true);
  SsdInputs head = in;
  for (Tensor SsdInputs::*f : {&SsdInputs::x, &SsdInputs::dt, &SsdInputs::B, &SsdInputs::C, &SsdInputs::z}) {
    head.*f = (in.*f).narrow(1, 0, prefix);
  }
  Tensor state = carve::model::ssd_chunked(head, true).final_state.clone();
  for (int64_t t = prefix; t < s.l; ++t) {
    SsdStepInputs step;
    step.x = in.x.select(1, t), step.dt = in.dt.select(1, t), step.A = in.A;
    step.B = in.B.select(1, t), step.C = in.C.select(1, t), step.D = in.D, step.z = in.z.select(1, t);
    step.dt_bias = in.dt_bias, step.dt_softplus = in.dt_softplus;
    Tensor y = carve::model::ssd_step(step, state);
    EXPECT_LT(carve::test::relative_norm_error(y, full.y.select(1, t)), 1e-10) << "token " << t;
  }
  EXPECT_LT(carve::test::relative_norm_error(state, full.final_state), 1e-10);
}

// The prefix's final_state as the suffix's initial_state continues the whole-sequence run.
TEST(SsdTest, PrefixFinalStateContinuesRun) {
  Spec s = all_options_spec();
  s.l = 30, s.chunk = 8, s.d_rank = 2;
  const int64_t prefix = 11;
  SsdInputs in = make_inputs(s, 14);
  SsdOutputs full = carve::model::ssd_chunked(in, true);
  SsdInputs head = in, tail = in;
  for (Tensor SsdInputs::*f : {&SsdInputs::x, &SsdInputs::dt, &SsdInputs::B, &SsdInputs::C, &SsdInputs::z}) {
    head.*f = (in.*f).narrow(1, 0, prefix);
    tail.*f = (in.*f).narrow(1, prefix, s.l - prefix);
  }
  tail.initial_state = carve::model::ssd_chunked(head, true).final_state;
  SsdOutputs rest = carve::model::ssd_chunked(tail, true);
  EXPECT_LT(carve::test::relative_norm_error(rest.y, full.y.narrow(1, prefix, s.l - prefix)), 1e-10);
  EXPECT_LT(carve::test::relative_norm_error(rest.final_state, full.final_state), 1e-10);
}

// Low-precision inputs accumulate in float32: stay close to float64 run on the same (rounded) values.
// bf16 and float32 inputs on `device` against the float64 recurrence on CPU.
void check_low_precision_on(torch::Device device) {
  Spec s = all_options_spec();
  s.l = 64, s.chunk = 16, s.p = 8, s.n = 8;
  const SsdInputs base = make_inputs(s, 15);
  const std::vector<std::pair<torch::ScalarType, double>> cases = {{torch::kFloat, 1e-5}, {torch::kBFloat16, 2e-2}};
  for (const auto& [dtype, tol] : cases) {
    SsdInputs low = base, ref = base;
    // Activations in the low dtype; parameters (A, D, dt_bias) in float32 as a model keeps them.
    for (Tensor SsdInputs::*f : {&SsdInputs::x, &SsdInputs::dt, &SsdInputs::B, &SsdInputs::C, &SsdInputs::z,
                                 &SsdInputs::initial_state}) {
      low.*f = (base.*f).to(dtype);
      ref.*f = (low.*f).to(torch::kDouble);
      low.*f = (low.*f).to(device);
    }
    for (Tensor SsdInputs::*f : {&SsdInputs::A, &SsdInputs::D, &SsdInputs::dt_bias}) {
      low.*f = (base.*f).to(torch::kFloat);
      ref.*f = (low.*f).to(torch::kDouble);
      low.*f = (low.*f).to(device);
    }
    low.seq_idx = low.seq_idx.defined() ? low.seq_idx.to(device) : low.seq_idx;
    SsdOutputs got = carve::model::ssd_chunked(low, true);
    SsdOutputs want = carve::model::ssd_sequential(ref, true);
    EXPECT_EQ(got.y.scalar_type(), dtype);
    EXPECT_EQ(got.y.device().type(), device.type());
    EXPECT_EQ(got.final_state.scalar_type(), torch::kFloat);
    expect_same_outputs(got, want, tol, std::string("dtype ") + c10::toString(dtype) + " on " + device.str());
  }
}

TEST(SsdTest, LowPrecisionStaysCloseToFloat64) { check_low_precision_on(torch::kCPU); }

// The reference on the GPU host: bf16 on CUDA within bf16 tolerance of float64.
TEST(SsdTest, CudaLowPrecisionStaysCloseToFloat64) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  check_low_precision_on(torch::kCUDA);
}

TEST(SsdTest, RejectsBadArguments) {
  Spec s;
  s.g = 3;  // h = 4
  SsdInputs groups = make_inputs(s, 16);
  std::string msg = carve::test::error_of([&] { carve::model::ssd_chunked(groups, false); });
  EXPECT_NE(msg.find("group count g = 3 of B and C"), std::string::npos) << msg;

  SsdInputs rank = make_inputs(Spec(), 17);
  rank.x = rank.x.select(3, 0);
  msg = carve::test::error_of([&] { carve::model::ssd_sequential(rank, false); });
  EXPECT_NE(msg.find("x must be a 4-D tensor"), std::string::npos) << msg;

  SsdInputs length = make_inputs(Spec(), 18);
  length.B = length.B.narrow(1, 0, 30);
  msg = carve::test::error_of([&] { carve::model::ssd_chunked(length, false); });
  EXPECT_NE(msg.find("B must have shape [b, l, g, n]"), std::string::npos) << msg;

  SsdInputs skip = make_inputs(Spec(), 19);
  skip.D = torch::ones({3}, kF64);
  msg = carve::test::error_of([&] { carve::model::ssd_chunked(skip, false); });
  EXPECT_NE(msg.find("D must have shape [h]"), std::string::npos) << msg;

  SsdInputs chunk = make_inputs(Spec(), 20);
  chunk.chunk_size = 0;
  msg = carve::test::error_of([&] { carve::model::ssd_chunked(chunk, false); });
  EXPECT_NE(msg.find("chunk_size"), std::string::npos) << msg;

  SsdStepInputs step;
  step.x = torch::randn({2, 4, 3}, kF64), step.dt = torch::rand({2, 4}, kF64), step.A = -torch::ones({4}, kF64);
  step.B = torch::randn({2, 2, 5}, kF64), step.C = torch::randn({2, 2, 5}, kF64);
  Tensor bad_state = torch::zeros({2, 4, 3, 6}, kF64);
  msg = carve::test::error_of([&] { carve::model::ssd_step(step, bad_state); });
  EXPECT_NE(msg.find("state must have shape [b, h, p, n]"), std::string::npos) << msg;
}

}  // namespace
