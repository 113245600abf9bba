/*
 * Tests of the causal depthwise conv (model/causal_conv.h) and the gated RMSNorm (model/gated_norm.h) against
 * explicit float64 loops, plus decode continuation, seq_idx isolation, low precision and argument checks.
 */
#include "model/causal_conv.h"
#include "model/gated_norm.h"

#include "base/error.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

namespace {

using torch::Tensor;

const auto kF64 = torch::TensorOptions().dtype(torch::kDouble);

double silu(double v) { return v / (1.0 + std::exp(-v)); }



// The conv written out token by token. x [b, l, c], w [c, k], bias [c] or undefined, seq [b][l] sample ids or empty,
// init [b, c, k - 1] or undefined (it belongs to the row's first sample).
Tensor conv_reference(const Tensor& x, const Tensor& w, const Tensor& bias, bool apply_silu,
                      const std::vector<std::vector<int>>& seq, const Tensor& init) {
  const int64_t b = x.size(0), l = x.size(1), c = x.size(2), k = w.size(1);
  auto xa = x.accessor<double, 3>();
  auto wa = w.accessor<double, 2>();
  Tensor y = torch::zeros({b, l, c}, kF64);
  for (int64_t r = 0; r < b; ++r) {
    for (int64_t t = 0; t < l; ++t) {
      for (int64_t ch = 0; ch < c; ++ch) {
        double acc = bias.defined() ? bias[ch].item<double>() : 0.0;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t src = t - (k - 1) + j;
          const int sample_src = seq.empty() ? 0 : seq[r][src < 0 ? 0 : src];
          if (!seq.empty() && sample_src != seq[r][t]) continue;
          if (src >= 0) acc += wa[ch][j] * xa[r][src][ch];
          else if (init.defined()) acc += wa[ch][j] * init[r][ch][k - 1 + src].item<double>();
        }
        y[r][t][ch].fill_(apply_silu ? silu(acc) : acc);
      }
    }
  }
  return y;
}

Tensor to_seq_tensor(const std::vector<std::vector<int>>& seq) {
  Tensor out = torch::zeros({static_cast<int64_t>(seq.size()), static_cast<int64_t>(seq[0].size())}, torch::kInt);
  for (size_t r = 0; r < seq.size(); ++r) {
    for (size_t t = 0; t < seq[r].size(); ++t) out[r][t].fill_(seq[r][t]);
  }
  return out;
}

TEST(CausalConvTest, MatchesExplicitLoop) {
  torch::manual_seed(21);
  const int64_t b = 2, l = 11, c = 5;
  Tensor x = torch::randn({b, l, c}, kF64);
  for (int64_t k : {2, 3, 4}) {
    Tensor w = torch::randn({c, k}, kF64), bias = torch::randn({c}, kF64);
    Tensor init = torch::randn({b, c, k - 1}, kF64);
    for (int variant = 0; variant < 4; ++variant) {
      const bool with_bias = variant & 1, with_silu = variant & 2;
      Tensor bb = with_bias ? bias : Tensor(), ii = with_silu ? init : Tensor();
      auto out = carve::model::causal_conv1d(x, w, bb, with_silu, {}, ii);
      EXPECT_LT(carve::test::relative_norm_error(out.y, conv_reference(x, w, bb, with_silu, {}, ii)), 1e-12) << "k " << k << " v " << variant;
      EXPECT_TRUE(out.final_state.equal(x.narrow(1, l - (k - 1), k - 1).transpose(1, 2))) << "k " << k;
    }
    // Shorter than the state: the final state still holds initial-state entries.
    auto short_run = carve::model::causal_conv1d(x.narrow(1, 0, 1), w, bias, true, {}, init);
    EXPECT_LT(carve::test::relative_norm_error(short_run.y, conv_reference(x.narrow(1, 0, 1), w, bias, true, {}, init)), 1e-12);
    EXPECT_TRUE(short_run.final_state.narrow(2, k - 2, 1).equal(x.narrow(1, 0, 1).transpose(1, 2)));
    if (k > 2) {
      EXPECT_TRUE(short_run.final_state.narrow(2, 0, k - 2).equal(init.narrow(2, 1, k - 2)));
    }
  }
}

TEST(CausalConvTest, SeqIdxIsolatesSamples) {
  torch::manual_seed(22);
  const int64_t l = 10, c = 3, k = 4;
  const std::vector<std::vector<int>> seq = {{0, 0, 0, 1, 1, 1, 1, 1, 4, 4}, {2, 2, 2, 2, 2, 2, 2, 2, 2, 7}};
  Tensor x = torch::randn({2, l, c}, kF64), w = torch::randn({c, k}, kF64), bias = torch::randn({c}, kF64);
  Tensor init = torch::randn({2, c, k - 1}, kF64);
  auto out = carve::model::causal_conv1d(x, w, bias, true, to_seq_tensor(seq), init);
  EXPECT_LT(carve::test::relative_norm_error(out.y, conv_reference(x, w, bias, true, seq, init)), 1e-12);
  // The middle sample of row 0 alone, from a zero state.
  auto alone = carve::model::causal_conv1d(x.narrow(0, 0, 1).narrow(1, 3, 5), w, bias, true);
  EXPECT_LT(carve::test::relative_norm_error(out.y.narrow(0, 0, 1).narrow(1, 3, 5), alone.y), 1e-12);
  // Final state keeps only the last sample's inputs (2 tokens in row 0, 1 in row 1), zeros elsewhere.
  Tensor want = x.narrow(1, l - 3, 3).transpose(1, 2).clone();  // [2, c, 3]
  want[0].narrow(1, 0, 1).zero_();
  want[1].narrow(1, 0, 2).zero_();
  EXPECT_TRUE(out.final_state.equal(want));
}

// Step decoding from a prefix's final state, and the final state as the next call's initial state, both reproduce
// the whole-sequence run.
TEST(CausalConvTest, StepAndStateContinuePrefix) {
  torch::manual_seed(23);
  const int64_t b = 2, l = 15, c = 6, prefix = 9;
  for (int64_t k : {2, 4}) {
    Tensor x = torch::randn({b, l, c}, kF64), w = torch::randn({c, k}, kF64), bias = torch::randn({c}, kF64);
    Tensor init = torch::randn({b, c, k - 1}, kF64);
    auto full = carve::model::causal_conv1d(x, w, bias, true, {}, init);
    auto head = carve::model::causal_conv1d(x.narrow(1, 0, prefix), w, bias, true, {}, init);
    auto tail = carve::model::causal_conv1d(x.narrow(1, prefix, l - prefix), w, bias, true, {}, head.final_state);
    EXPECT_LT(carve::test::relative_norm_error(tail.y, full.y.narrow(1, prefix, l - prefix)), 1e-12) << "k " << k;
    EXPECT_TRUE(tail.final_state.equal(full.final_state)) << "k " << k;
    Tensor state = head.final_state.clone();
    for (int64_t t = prefix; t < l; ++t) {
      Tensor y = carve::model::causal_conv1d_step(x.select(1, t), state, w, bias, true);
      EXPECT_LT(carve::test::relative_norm_error(y, full.y.select(1, t)), 1e-12) << "k " << k << " token " << t;
    }
    EXPECT_TRUE(state.equal(full.final_state)) << "k " << k;
  }
}

TEST(CausalConvTest, Bf16StaysCloseToFloat64) {
  torch::manual_seed(24);
  Tensor x = torch::randn({2, 33, 16}, kF64).to(torch::kBFloat16);
  Tensor w = torch::randn({16, 4}, kF64).to(torch::kBFloat16), bias = torch::randn({16}, kF64).to(torch::kBFloat16);
  auto out = carve::model::causal_conv1d(x, w, bias, true);
  auto ref = carve::model::causal_conv1d(x.to(torch::kDouble), w.to(torch::kDouble), bias.to(torch::kDouble), true);
  EXPECT_EQ(out.y.scalar_type(), torch::kBFloat16);
  EXPECT_LT(carve::test::relative_norm_error(out.y, ref.y), 1e-2);
  Tensor state = out.final_state.clone();
  Tensor y = carve::model::causal_conv1d_step(x.select(1, 0), state, w, bias, true);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(state.scalar_type(), torch::kBFloat16);
}

TEST(CausalConvTest, RejectsBadArguments) {
  Tensor x = torch::randn({2, 7, 5}, kF64), w = torch::randn({5, 3}, kF64);
  std::string msg = carve::test::error_of([&] { carve::model::causal_conv1d(x, torch::randn({4, 3}, kF64)); });
  EXPECT_NE(msg.find("weight must have shape [c, k]"), std::string::npos) << msg;
  msg = carve::test::error_of([&] { carve::model::causal_conv1d(x.select(0, 0), w); });
  EXPECT_NE(msg.find("x must be a 3-D"), std::string::npos) << msg;
  msg = carve::test::error_of([&] { carve::model::causal_conv1d(x, w, {}, false, {}, torch::zeros({2, 5, 3}, kF64)); });
  EXPECT_NE(msg.find("initial_state must have shape [b, c, k - 1]"), std::string::npos) << msg;
  msg = carve::test::error_of([&] { carve::model::causal_conv1d(x, w, {}, false, torch::zeros({2, 6}, torch::kInt)); });
  EXPECT_NE(msg.find("seq_idx must be"), std::string::npos) << msg;
  Tensor state = torch::zeros({2, 5, 3}, kF64);
  msg = carve::test::error_of([&] { carve::model::causal_conv1d_step(x.select(1, 0), state, w); });
  EXPECT_NE(msg.find("state must have shape [b, c, k - 1]"), std::string::npos) << msg;
}

// Gated RMSNorm written out group by group. y, z [rows, d]; weight [d] or [gs].
Tensor norm_reference(const Tensor& y, const Tensor& z, const Tensor& weight, int64_t gs, double eps,
                      bool norm_before_gate) {
  const int64_t rows = y.size(0), d = y.size(1);
  Tensor out = torch::zeros({rows, d}, kF64);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g0 = 0; g0 < d; g0 += gs) {
      std::vector<double> v(gs);
      double ms = 0.0;
      for (int64_t i = 0; i < gs; ++i) {
        const double gate = z.defined() ? silu(z[r][g0 + i].item<double>()) : 1.0;
        v[i] = y[r][g0 + i].item<double>() * (norm_before_gate ? 1.0 : gate);
        ms += v[i] * v[i] / gs;
      }
      for (int64_t i = 0; i < gs; ++i) {
        const double gate = z.defined() ? silu(z[r][g0 + i].item<double>()) : 1.0;
        const double w = weight[weight.size(0) == d ? g0 + i : i].item<double>();
        out[r][g0 + i].fill_(v[i] / std::sqrt(ms + eps) * w * (norm_before_gate ? gate : 1.0));
      }
    }
  }
  return out;
}

TEST(GatedNormTest, BothOrdersMatchFormula) {
  torch::manual_seed(25);
  const int64_t d = 12;
  Tensor y = torch::randn({2, 3, d}, kF64), z = torch::randn({2, 3, d}, kF64);
  for (int64_t gs : {4, 12}) {
    for (Tensor weight : {torch::randn({d}, kF64), torch::randn({gs}, kF64)}) {
      for (bool before : {true, false}) {
        for (Tensor gate : {z, Tensor()}) {
          Tensor got = carve::model::gated_rmsnorm(y, gate, weight, gs, 1e-5, before);
          Tensor want = norm_reference(y.reshape({-1, d}), gate.defined() ? gate.reshape({-1, d}) : Tensor(), weight,
                                       gs, 1e-5, before);
          EXPECT_LT(carve::test::relative_norm_error(got.reshape({-1, d}), want), 1e-12)
              << "group " << gs << " weight " << weight.size(0) << " before " << before << " gate " << gate.defined();
        }
      }
    }
  }
  // group_size 0 means one group over all of d.
  Tensor w = torch::randn({d}, kF64);
  EXPECT_TRUE(carve::model::gated_rmsnorm(y, z, w, 0, 1e-5, false)
                  .allclose(carve::model::gated_rmsnorm(y, z, w, d, 1e-5, false), 0, 0));
}

TEST(GatedNormTest, LowPrecisionKeepsDtype) {
  torch::manual_seed(26);
  Tensor y = torch::randn({4, 16}, kF64).to(torch::kBFloat16), z = torch::randn({4, 16}, kF64).to(torch::kBFloat16);
  Tensor w = torch::randn({8}, torch::kFloat);
  Tensor got = carve::model::gated_rmsnorm(y, z, w, 8, 1e-5, true);
  EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
  Tensor want = norm_reference(y.to(torch::kDouble), z.to(torch::kDouble), w.to(torch::kDouble), 8, 1e-5, true);
  EXPECT_LT(carve::test::relative_norm_error(got, want), 1e-2);
}

TEST(GatedNormTest, RejectsBadArguments) {
  Tensor y = torch::randn({3, 12}, kF64), z = torch::randn({3, 12}, kF64);
  std::string msg =
      carve::test::error_of([&] { carve::model::gated_rmsnorm(y, z, torch::ones({5}, kF64), 5, 1e-5, true); });
  EXPECT_NE(msg.find("group_size must divide"), std::string::npos) << msg;
  msg = carve::test::error_of([&] { carve::model::gated_rmsnorm(y, z, torch::ones({6}, kF64), 4, 1e-5, true); });
  EXPECT_NE(msg.find("weight must be"), std::string::npos) << msg;
  msg = carve::test::error_of(
      [&] { carve::model::gated_rmsnorm(y, z.narrow(1, 0, 6), torch::ones({12}, kF64), 4, 1e-5, true); });
  EXPECT_NE(msg.find("z must be"), std::string::npos) << msg;
}

}  // namespace
