/*
 * carve's CUDA kernels against the LibTorch reference computed in float64 on the same (quantized) inputs: outputs
 * and every gradient of the SSD scan, the causal conv and the gated norm, and the two decode steps, at many shapes,
 * with every kernel output and workspace NaN-poisoned before the kernels run. Relative errors are Frobenius
 * ||kernel - reference|| / ||reference||: under 1e-4 for float32 inputs (1e-3 for the whole-row sums dA and
 * dt_bias, see tolerance_for) and 1e-2 for bfloat16/float16.
 * Without a GPU (or in a build without CUDA) only the dispatch tests run; the rest skip.
 */
#include "model/kernel_ops.h"

#include "model/gated_norm.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <torch/torch.h>
#ifdef CARVE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

using carve::model::SsdInputs;
using torch::Tensor;
namespace model = carve::model;

bool have_kernels() { return torch::cuda::is_available() && model::fused_kernels_built(); }

#define REQUIRE_KERNELS()                                                          \
  do {                                                                             \
    if (!have_kernels()) GTEST_SKIP() << "needs a GPU and a CUDA build of carve";  \
  } while (0)

// Poisoned outputs and the fused mode for one test, restored afterwards.
struct KernelScope {
  model::KernelMode saved = model::kernel_mode();
  KernelScope() {
    model::set_poison_kernel_outputs(true);
    model::set_kernel_mode(model::KernelMode::fused);
  }
  ~KernelScope() {
    model::set_poison_kernel_outputs(false);
    model::set_kernel_mode(saved);
  }
};

double tolerance(torch::ScalarType t) { return t == torch::kFloat ? 1e-4 : 1e-2; }

// Gradients that are one sum over every token of a row (dA, dt_bias): the decay gradient behind them is a
// difference of a token's "target" and "source" sums, which cancel to a small residual, so float32 keeps about
// three fewer digits there than elsewhere (measured: up to 4e-4 at chunk 256). Triton's "stable" form sums the
// pairs straddling each token instead; carve's tensor-core version of it, with products rounded once, left dA at
// 1.3e-2 on the short-sample bfloat16 case below and was not merged (docs/kernels.md, "The stable decay gradient").
// Low precision keeps 1e-2.
double tolerance_for(const std::string& name, double tol) {
  return (name == "ddt_bias" || name == "dA") && tol < 1e-3 ? 1e-3 : tol;
}

// Compares named tensors; reports every failing name with its error.
void expect_close(const std::map<std::string, Tensor>& got, const std::map<std::string, Tensor>& want, double tol,
                  const std::string& what) {
  for (const auto& [name, ref] : want) {
    ASSERT_TRUE(got.count(name)) << what << ": missing " << name;
    const Tensor& g = got.at(name);
    ASSERT_TRUE(g.defined() && ref.defined()) << what << ": " << name << " undefined";
    ASSERT_EQ(g.sizes(), ref.sizes()) << what << ": " << name;
    ASSERT_TRUE(torch::isfinite(g).all().item<bool>()) << what << ": " << name << " has non-finite values";
    ASSERT_GT(ref.abs().max().item<double>(), 0.0) << what << ": " << name << " reference is all zero";
    const double err = carve::test::relative_norm_error(g, ref);
    EXPECT_LT(err, tolerance_for(name, tol)) << what << ": " << name << " relative error " << err;
    // CARVE_TEST_ERRORS=1 prints every error, not only the failing ones (the margins docs/kernels.md quotes).
    if (std::getenv("CARVE_TEST_ERRORS")) std::printf("error %s: %s %.3g\n", what.c_str(), name.c_str(), err);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// SSD scan.

struct ScanCase {
  int64_t b, l, h, g, p, n, chunk;
  int d_rank;  // 0 none, 1 [h], 2 [h, p]
  bool z, bias, init, seq;
};

std::string describe(const ScanCase& c, torch::ScalarType t) {
  std::ostringstream o;
  o << c10::toString(t) << " b" << c.b << " l" << c.l << " h" << c.h << " g" << c.g << " p" << c.p << " n" << c.n
    << " chunk" << c.chunk << " D" << c.d_rank << (c.z ? " z" : "") << (c.bias ? " dt_bias" : "")
    << (c.init ? " init" : "") << (c.seq ? " seq_idx" : "");
  return o.str();
}

// Runs the scan on `in` (leaves set to require grad) with loss sum(y gy) + sum(final gf); returns outputs and
// gradients by name, in float64.
std::map<std::string, Tensor> scan_with_grads(SsdInputs in, const Tensor& gy, const Tensor& gf, bool fused) {
  std::map<std::string, Tensor*> leaves = {{"x", &in.x}, {"dt", &in.dt}, {"A", &in.A}, {"B", &in.B},
                                           {"C", &in.C}, {"D", &in.D},   {"z", &in.z}, {"dt_bias", &in.dt_bias},
                                           {"initial_state", &in.initial_state}};
  for (auto& [name, t] : leaves)
    if (t->defined()) *t = t->detach().requires_grad_();
  auto out = fused ? model::ssd_scan(in, true) : model::ssd_chunked(in, true);
  auto loss = (out.y.to(torch::kDouble) * gy).sum() + (out.final_state.to(torch::kDouble) * gf).sum();
  loss.backward();
  std::map<std::string, Tensor> r = {{"y", out.y.detach().to(torch::kDouble)},
                                     {"final_state", out.final_state.detach().to(torch::kDouble)}};
  for (auto& [name, t] : leaves)
    if (t->defined()) r["d" + name] = t->grad().to(torch::kDouble);
  return r;
}

// With `path`, the forward alone must take that path (the sweeps: kernels/ssd_scan_fused.h).
void check_scan(const ScanCase& c, torch::ScalarType type, uint64_t seed,
                std::optional<model::SsdForwardPath> path = std::nullopt) {
  torch::manual_seed(seed);
  const auto f64 = torch::TensorOptions().dtype(torch::kDouble).device(torch::kCUDA);
  SsdInputs ref;  // float64, later filled with the quantized values the kernels see
  ref.x = torch::randn({c.b, c.l, c.h, c.p}, f64);
  ref.dt = torch::randn({c.b, c.l, c.h}, f64) * 0.5 - 1.0;
  ref.A = -(torch::rand({c.h}, f64) * 3 + 0.5);
  ref.B = torch::randn({c.b, c.l, c.g, c.n}, f64) / std::sqrt(static_cast<double>(c.n));
  ref.C = torch::randn({c.b, c.l, c.g, c.n}, f64) / std::sqrt(static_cast<double>(c.n));
  if (c.d_rank == 1) ref.D = torch::randn({c.h}, f64);
  if (c.d_rank == 2) ref.D = torch::randn({c.h, c.p}, f64);
  if (c.z) ref.z = torch::randn({c.b, c.l, c.h, c.p}, f64);
  if (c.bias) {
    ref.dt_bias = torch::randn({c.h}, f64) * 0.5;
    ref.dt_softplus = true;
  } else {
    ref.dt = ref.dt.abs() * 0.3 + 0.01;  // raw step sizes must be positive without the softplus
  }
  if (c.init) ref.initial_state = torch::randn({c.b, c.h, c.p, c.n}, f64);
  if (c.seq) {
    // Sample starts at varied places, some on chunk boundaries.
    auto seq = torch::zeros({c.b, c.l}, torch::TensorOptions().dtype(torch::kInt).device(torch::kCUDA));
    for (int64_t bi = 0; bi < c.b; ++bi)
      for (int64_t start : {c.l / 5, c.chunk, c.l / 2 + 3, c.l - 2})
        if (start > 0 && start < c.l) seq[bi].narrow(0, start, c.l - start).add_(1 + bi);
    ref.seq_idx = seq;
  }
  ref.chunk_size = c.chunk;

  SsdInputs fused = ref;
  fused.x = ref.x.to(type), fused.dt = ref.dt.to(type), fused.B = ref.B.to(type), fused.C = ref.C.to(type);
  if (c.z) fused.z = ref.z.to(type);
  fused.A = ref.A.to(torch::kFloat);
  if (ref.D.defined()) fused.D = ref.D.to(torch::kFloat);
  if (ref.dt_bias.defined()) fused.dt_bias = ref.dt_bias.to(torch::kFloat);
  if (ref.initial_state.defined()) fused.initial_state = ref.initial_state.to(torch::kFloat);
  // The reference sees exactly the values the kernels see.
  for (auto [dst, src] : std::vector<std::pair<Tensor*, Tensor*>>{{&ref.x, &fused.x}, {&ref.dt, &fused.dt},
                                                                  {&ref.B, &fused.B}, {&ref.C, &fused.C},
                                                                  {&ref.z, &fused.z}, {&ref.A, &fused.A},
                                                                  {&ref.D, &fused.D}, {&ref.dt_bias, &fused.dt_bias},
                                                                  {&ref.initial_state, &fused.initial_state}})
    if (src->defined()) *dst = src->to(torch::kDouble);

  // The incoming gradients as the kernels receive them (the output's in the activation type, the final state's in
  // float32): dA and dt_bias are small differences of large sums, and a 16-bit rounding of dy that only the kernels
  // saw moved dA by 1.3e-2 on a small case, with the float32-accumulating version 1 kernels as well.
  const Tensor gy = torch::randn({c.b, c.l, c.h, c.p}, f64).to(type).to(torch::kDouble);
  const Tensor gf = torch::randn({c.b, c.h, c.p, c.n}, f64).to(torch::kFloat).to(torch::kDouble);
  ASSERT_TRUE(model::uses_fused_kernels(fused.x));
  if (path) {
    ASSERT_EQ(static_cast<int>(model::ssd_scan_forward_path(fused)), static_cast<int>(*path)) << describe(c, type);
    // Training's forward takes the mma.sync sweep wherever the forward alone takes a sweep (version 12), unless
    // CARVE_SSD_SWEEP_TRAINING=0 keeps it on the chunk-parallel kernels.
    const char* training_sweep = std::getenv("CARVE_SSD_SWEEP_TRAINING");
    const bool sweeps = *path != model::SsdForwardPath::chunk_parallel &&
                        !(training_sweep && std::string(training_sweep) == "0");
    ASSERT_EQ(static_cast<int>(model::ssd_scan_forward_path(fused, true)),
              static_cast<int>(sweeps ? model::SsdForwardPath::sweep : model::SsdForwardPath::chunk_parallel))
        << describe(c, type) << ", training";
    // So does the backward's state gradient (version 13's reverse sweep), unless CARVE_SSD_SWEEP_GRAD=0, and dx with
    // it (version 14; every sweep case fits), unless CARVE_SSD_SWEEP_DX=0.
    const auto off = [](const char* name) {
      const char* v = std::getenv(name);
      return v && std::string(v) == "0";
    };
    model::SsdBackwardPath backward = model::SsdBackwardPath::chunk_parallel;
    if (*path != model::SsdForwardPath::chunk_parallel && !off("CARVE_SSD_SWEEP_GRAD"))
      backward = off("CARVE_SSD_SWEEP_DX") ? model::SsdBackwardPath::state_grad_sweep
                                           : model::SsdBackwardPath::state_grad_and_dx_sweep;
    ASSERT_EQ(static_cast<int>(model::ssd_scan_backward_path(fused)), static_cast<int>(backward))
        << describe(c, type) << ", backward";
  }
  const auto want = scan_with_grads(ref, gy, gf, false);
  const auto got = scan_with_grads(fused, gy, gf, true);
  expect_close(got, want, tolerance(type), describe(c, type));

  // The forward alone (no autograd node, no y_ssm: 16-bit kernels round computed operands once) against the same
  // reference.
  torch::NoGradGuard no_grad;
  const auto alone = model::ssd_scan(fused, true);
  expect_close({{"y", alone.y.to(torch::kDouble)}, {"final_state", alone.final_state.to(torch::kDouble)}},
               {{"y", want.at("y")}, {"final_state", want.at("final_state")}}, tolerance(type),
               describe(c, type) + ", forward alone");
}

const std::vector<ScanCase>& scan_cases() {
  static const std::vector<ScanCase> cases = {
      // b  l    h  g  p    n    chunk D  z      bias   init   seq
      {2, 300, 4, 2, 64, 64, 64, 1, true, true, true, false},
      {1, 513, 2, 1, 80, 80, 128, 2, false, true, false, true},
      {2, 256, 2, 2, 128, 128, 256, 1, true, false, false, false},
      {1, 700, 6, 3, 64, 128, 128, 0, true, true, true, true},
      {3, 37, 4, 4, 16, 32, 16, 1, true, true, true, false},
      {1, 50, 2, 1, 128, 64, 128, 2, true, true, false, true},
      {1, 640, 8, 1, 64, 128, 256, 1, false, true, true, false},
      {2, 129, 2, 2, 80, 128, 64, 1, true, true, true, true},
      // p and n not multiples of 8: the element-by-element copies and stores of the tensor-core kernels
      {2, 150, 3, 3, 36, 20, 64, 2, true, true, true, true},
      // a chunk over 64 tokens and not a multiple of 64: the last source tile runs past the chunk
      {1, 330, 2, 2, 64, 32, 100, 1, true, true, true, true},
      // heads sharing a group with both: dCB and the group's dC and dB, element by element and past the chunk
      {2, 200, 6, 2, 36, 20, 100, 1, true, true, true, true},
      // an odd chunk over 128 with heads sharing a group: C.B tiles off the diagonal read at odd row offsets
      {1, 400, 4, 2, 32, 32, 131, 1, false, true, false, true},
  };
  return cases;
}

TEST(SsdKernel, Float32MatchesFloat64Reference) {
  REQUIRE_KERNELS();
  KernelScope scope;
  uint64_t seed = 1;
  for (const auto& c : scan_cases()) check_scan(c, torch::kFloat, seed++);
}

TEST(SsdKernel, Bfloat16MatchesFloat64Reference) {
  REQUIRE_KERNELS();
  KernelScope scope;
  uint64_t seed = 100;
  for (const auto& c : scan_cases()) check_scan(c, torch::kBFloat16, seed++);
}

TEST(SsdKernel, Float16MatchesFloat64Reference) {
  REQUIRE_KERNELS();
  KernelScope scope;
  check_scan(scan_cases()[0], torch::kHalf, 7);
  check_scan(scan_cases()[3], torch::kHalf, 8);
  check_scan(scan_cases()[2], torch::kHalf, 9);  // one head per group: the dC and dB pair kernels
}

// Sets an environment variable for one scope, restoring what was there.
class EnvScope {
 public:
  EnvScope(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    setenv(name, value, 1);
  }
  ~EnvScope() {
    if (had_) setenv(name_, old_.c_str(), 1);
    else unsetenv(name_);
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

// Whether this GPU runs the sweep on wgmma (compute capability 9.0; the default build has its sm_90a code).
bool gpu_runs_wgmma() {
#ifdef CARVE_WITH_CUDA
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
    return false;
  return major == 9 && minor == 0;
#else
  return false;
#endif
}

// Version 8's forward, one sweep per head with the state on chip, on the cases it takes, forced with
// CARVE_SSD_FUSED=1 (these shapes have too few blocks for it otherwise): check_scan's forward alone is then the sweep,
// and so is the forward of its gradients (version 12's training sweep, y_ssm and the chunk states checked through
// every gradient of the backward that reads them).
// Each case runs the mma.sync sweep and, where the GPU has wgmma, with CARVE_SSD_WGMMA=1 the wgmma one (version 10,
// 64-channel slices). With heads sharing a group, the mma.sync sweep reads C.B tiles made once per group, and also
// runs with CARVE_SSD_SWEEP_CB=0, making them per head.
TEST(SsdKernel, SweepForwardMatchesFloat64Reference) {
  REQUIRE_KERNELS();
  KernelScope scope;
  EnvScope always("CARVE_SSD_FUSED", "1");
  const std::vector<ScanCase> cases = {
      // b  l    h  g  p    n    chunk D  z      bias   init   seq
      {2, 300, 4, 2, 64, 64, 64, 1, true, true, true, false},       // a last step past the end, groups, init
      {2, 256, 2, 2, 128, 128, 256, 1, true, false, false, false},  // two 64-channel slices of a head
      {1, 640, 8, 1, 64, 128, 256, 2, false, true, true, false},    // 8 heads sharing a group, D per channel
      {2, 200, 4, 2, 80, 80, 128, 2, true, true, true, false},      // Phi-2's head dim and state size
      {1, 70, 2, 1, 128, 80, 64, 0, true, true, true, false},       // 70 tokens: chunk 64, then 6
  };
  // The sequence in spans, each swept by its own blocks from the state stitched from the spans before it
  // (version 9): spans that end mid-chunk, a shorter last span, Phi-2's sizes.
  const std::vector<std::pair<ScanCase, const char*>> span_cases = {
      {{1, 1000, 2, 1, 128, 128, 128, 1, true, true, true, false}, "6"},  // 6 spans of 3 steps (1.5 chunks), then 1
      {{2, 300, 4, 2, 64, 64, 64, 2, true, true, true, false}, "3"},      // 2, 2 and 1 steps
      {{2, 200, 4, 2, 80, 80, 128, 1, true, true, false, false}, "2"},    // without an initial state
  };
  uint64_t seed = 300;
  for (const bool wgmma : {true, false}) {
    if (wgmma && !gpu_runs_wgmma()) continue;
    EnvScope products("CARVE_SSD_WGMMA", wgmma ? "1" : "0");
    const auto path = [&](const ScanCase& c) {
      return wgmma && c.p % 64 == 0 ? model::SsdForwardPath::sweep_wgmma : model::SsdForwardPath::sweep;
    };
    for (const auto& c : cases) {
      check_scan(c, torch::kBFloat16, seed++, path(c));
      check_scan(c, torch::kHalf, seed++, path(c));
      if (c.h > c.g && !wgmma) {  // C.B tiles made per head instead of once per group
        EnvScope per_head("CARVE_SSD_SWEEP_CB", "0");
        check_scan(c, torch::kBFloat16, seed++, path(c));
      }
      if (c.p == 128 && !wgmma) {  // the reverse sweep without dx (as where dx does not fit), the pair kernel's dx
        EnvScope pair_dx("CARVE_SSD_SWEEP_DX", "0");
        check_scan(c, torch::kBFloat16, seed++, path(c));
      }
    }
    for (const auto& [c, spans] : span_cases) {
      EnvScope span_count("CARVE_SSD_SPANS", spans);
      check_scan(c, torch::kBFloat16, seed++, path(c));
      check_scan(c, torch::kHalf, seed++, path(c));
    }
  }
  // Packed samples keep the chunk-parallel forward, and CARVE_SSD_FUSED=0 turns the sweep off.
  const auto opts = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  SsdInputs in;
  in.x = torch::randn({1, 128, 2, 64}, opts), in.dt = torch::rand({1, 128, 2}, opts);
  in.A = -torch::rand({2}, opts.dtype(torch::kFloat)) - 0.5;
  in.B = torch::randn({1, 128, 1, 64}, opts), in.C = torch::randn({1, 128, 1, 64}, opts);
  in.chunk_size = 64;
  const auto sweeps = [](const SsdInputs& i) {
    const model::SsdForwardPath p = model::ssd_scan_forward_path(i);
    return p == model::SsdForwardPath::sweep || p == model::SsdForwardPath::sweep_wgmma;
  };
  const auto backward = [](const SsdInputs& i) { return static_cast<int>(model::ssd_scan_backward_path(i)); };
  EXPECT_TRUE(sweeps(in));
  EXPECT_EQ(backward(in), static_cast<int>(model::SsdBackwardPath::state_grad_and_dx_sweep));
  in.seq_idx = torch::zeros({1, 128}, opts.dtype(torch::kInt));
  EXPECT_EQ(static_cast<int>(model::ssd_scan_forward_path(in)),
            static_cast<int>(model::SsdForwardPath::chunk_parallel));
  EXPECT_EQ(backward(in), static_cast<int>(model::SsdBackwardPath::chunk_parallel));
  in.seq_idx = Tensor();
  // State size 128 with Phi-2's head dim needs more shared memory than a block has (236 KB on compute capability 9.0).
  SsdInputs wide = in;
  wide.x = torch::randn({1, 128, 2, 80}, opts);
  wide.B = torch::randn({1, 128, 1, 128}, opts), wide.C = torch::randn({1, 128, 1, 128}, opts);
  EXPECT_FALSE(sweeps(wide));
  EnvScope never("CARVE_SSD_FUSED", "0");
  EXPECT_FALSE(sweeps(in));
  EXPECT_EQ(backward(in), static_cast<int>(model::SsdBackwardPath::chunk_parallel));
}

// The final state of a prefix continues into the rest: two calls equal one.
TEST(SsdKernel, FinalStateContinuesPrefix) {
  REQUIRE_KERNELS();
  KernelScope scope;
  torch::manual_seed(3);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(torch::kCUDA);
  SsdInputs in;
  in.x = torch::randn({2, 300, 4, 64}, f32);
  in.dt = torch::randn({2, 300, 4}, f32) * 0.5 - 1;
  in.A = -(torch::rand({4}, f32) * 3 + 0.5);
  in.B = torch::randn({2, 300, 2, 64}, f32) * 0.2;
  in.C = torch::randn({2, 300, 2, 64}, f32) * 0.2;
  in.D = torch::randn({4}, f32);
  in.dt_softplus = true;
  in.chunk_size = 64;
  torch::NoGradGuard no_grad;
  auto whole = model::ssd_scan(in, true);
  auto first = in, second = in;
  for (auto* t : {&first.x, &first.dt, &first.B, &first.C}) *t = t->narrow(1, 0, 111);
  for (auto* t : {&second.x, &second.dt, &second.B, &second.C}) *t = t->narrow(1, 111, 189);
  auto a = model::ssd_scan(first, true);
  second.initial_state = a.final_state;
  auto b = model::ssd_scan(second, true);
  EXPECT_LT(carve::test::relative_norm_error(torch::cat({a.y, b.y}, 1), whole.y), 1e-5);
  EXPECT_LT(carve::test::relative_norm_error(b.final_state, whole.final_state), 1e-5);
}

TEST(SsdKernel, DecodeStepMatchesReference) {
  REQUIRE_KERNELS();
  KernelScope scope;
  torch::manual_seed(4);
  for (auto type : {torch::kFloat, torch::kBFloat16}) {
    const auto opts = torch::TensorOptions().dtype(type).device(torch::kCUDA);
    const auto f32 = opts.dtype(torch::kFloat);
    const int64_t b = 3, h = 8, g = 2, p = 80, n = 64;
    Tensor state = torch::randn({b, h, p, n}, f32);
    Tensor ref_state = state.to(torch::kDouble);
    Tensor A = -(torch::rand({h}, f32) + 0.5), D = torch::randn({h, p}, f32), bias = torch::randn({h}, f32);
    for (int step = 0; step < 5; ++step) {
      model::SsdStepInputs in;
      in.x = torch::randn({b, h, p}, opts);
      in.dt = torch::randn({b, h}, opts);
      in.A = A, in.D = D, in.dt_bias = bias, in.dt_softplus = true;
      in.B = torch::randn({b, g, n}, opts), in.C = torch::randn({b, g, n}, opts);
      in.z = torch::randn({b, h, p}, opts);
      Tensor y = model::ssd_decode_step(in, state);
      model::SsdStepInputs ref = in;
      for (auto* t : {&ref.x, &ref.dt, &ref.A, &ref.D, &ref.dt_bias, &ref.B, &ref.C, &ref.z}) *t = t->to(torch::kDouble);
      Tensor y_ref = model::ssd_step(ref, ref_state);
      EXPECT_LT(carve::test::relative_norm_error(y, y_ref), tolerance(type)) << c10::toString(type) << " step " << step;
    }
    EXPECT_LT(carve::test::relative_norm_error(state, ref_state), 1e-5) << c10::toString(type);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Causal conv.

struct ConvCase {
  int64_t b, l, c, k;
  bool bias, silu, seq, init;
};

void check_conv(const ConvCase& c, torch::ScalarType type, uint64_t seed) {
  torch::manual_seed(seed);
  const auto f64 = torch::TensorOptions().dtype(torch::kDouble).device(torch::kCUDA);
  Tensor x = torch::randn({c.b, c.l, c.c}, f64).to(type).to(torch::kDouble);
  Tensor w = torch::randn({c.c, c.k}, f64).to(torch::kFloat).to(torch::kDouble);
  Tensor bias = c.bias ? torch::randn({c.c}, f64).to(torch::kFloat).to(torch::kDouble) : Tensor();
  Tensor init = c.init ? torch::randn({c.b, c.c, c.k - 1}, f64).to(type).to(torch::kDouble) : Tensor();
  Tensor seq;
  if (c.seq) {
    seq = torch::zeros({c.b, c.l}, torch::TensorOptions().dtype(torch::kLong).device(torch::kCUDA));
    seq.narrow(1, c.l / 3, c.l - c.l / 3).add_(1);
    seq.narrow(1, c.l - 1, 1).add_(1);  // a one-token sample at the end: final_state keeps only it
  }
  const Tensor gy = torch::randn({c.b, c.l, c.c}, f64), gf = torch::randn({c.b, c.c, c.k - 1}, f64);
  auto run = [&](torch::ScalarType t, bool fused) {
    Tensor xl = x.detach().to(t).requires_grad_();
    Tensor wl = w.detach().to(fused ? torch::kFloat : torch::kDouble).requires_grad_();
    Tensor bl = bias.defined() ? bias.detach().to(wl.scalar_type()).requires_grad_() : Tensor();
    Tensor il = init.defined() ? init.detach().to(t).requires_grad_() : Tensor();
    auto out = fused ? model::causal_conv(xl, wl, bl, c.silu, seq, il)
                     : model::causal_conv1d(xl, wl, bl, c.silu, seq, il);
    auto loss = (out.y.to(torch::kDouble) * gy).sum() + (out.final_state.to(torch::kDouble) * gf).sum();
    loss.backward();
    std::map<std::string, Tensor> r = {{"y", out.y.detach().to(torch::kDouble)},
                                       {"dx", xl.grad().to(torch::kDouble)},
                                       {"dweight", wl.grad().to(torch::kDouble)}};
    if (c.k > 1) r["final_state"] = out.final_state.detach().to(torch::kDouble);  // (one tap keeps no state)
    if (bl.defined()) r["dbias"] = bl.grad().to(torch::kDouble);
    if (il.defined()) r["dinitial_state"] = il.grad().to(torch::kDouble);
    return r;
  };
  std::ostringstream what;
  what << c10::toString(type) << " conv b" << c.b << " l" << c.l << " c" << c.c << " k" << c.k
       << (c.bias ? " bias" : "") << (c.silu ? " silu" : "") << (c.seq ? " seq_idx" : "") << (c.init ? " init" : "");
  expect_close(run(type, true), run(torch::kDouble, false), tolerance(type), what.str());
}

TEST(ConvKernel, MatchesFloat64Reference) {
  REQUIRE_KERNELS();
  KernelScope scope;
  const std::vector<ConvCase> cases = {{2, 77, 96, 4, true, true, false, true},
                                       {1, 130, 300, 3, false, true, true, false},
                                       {3, 5, 64, 2, true, false, false, true},
                                       {2, 64, 33, 4, true, true, true, true},
                                       // runs of 8 tokens: samples starting inside runs, the initial state and the
                                       // final state's gradient reaching across a run boundary
                                       {2, 301, 128, 4, true, true, true, true},
                                       {1, 40, 8, 1, false, false, false, false},
                                       // more than 4 taps: the element-by-element path with aligned channels
                                       {1, 50, 64, 6, true, true, true, true}};
  uint64_t seed = 20;
  for (const auto& c : cases)
    for (auto type : {torch::kFloat, torch::kBFloat16}) check_conv(c, type, seed++);
}

TEST(ConvKernel, DecodeStepMatchesReference) {
  REQUIRE_KERNELS();
  KernelScope scope;
  torch::manual_seed(21);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat).device(torch::kCUDA);
  Tensor w = torch::randn({70, 4}, opts), bias = torch::randn({70}, opts);
  Tensor state = torch::randn({3, 70, 3}, opts), ref_state = state.to(torch::kDouble);
  for (int step = 0; step < 6; ++step) {
    Tensor x = torch::randn({3, 70}, opts);
    Tensor y = model::causal_conv_decode_step(x, state, w, bias, true);
    Tensor y_ref = model::causal_conv1d_step(x.to(torch::kDouble), ref_state, w.to(torch::kDouble),
                                             bias.to(torch::kDouble), true);
    EXPECT_LT(carve::test::relative_norm_error(y, y_ref), 1e-5) << "step " << step;
  }
  EXPECT_LT(carve::test::relative_norm_error(state, ref_state), 1e-6);
}

// ---------------------------------------------------------------------------------------------------------------
// Gated norm.

TEST(GatedNormKernel, MatchesFloat64Reference) {
  REQUIRE_KERNELS();
  KernelScope scope;
  struct Case {
    int64_t rows, d, group;
    bool z, before, shared_weight;
  };
  const std::vector<Case> cases = {{66, 512, 64, true, true, false},  {33, 640, 80, true, false, false},
                                   {10, 256, 128, false, true, true}, {17, 384, 128, true, false, true},
                                   {5, 96, 96, true, true, false},
                                   // more items than the row path's grid holds at once: threads take several,
                                   // keeping their weights (5 groups against 32 items per block; 8 against 16)
                                   {14000, 320, 64, true, false, false}, {5000, 640, 80, true, true, false}};
  uint64_t seed = 40;
  for (const auto& c : cases)
    for (auto type : {torch::kFloat, torch::kBFloat16}) {
      torch::manual_seed(seed++);
      const auto f64 = torch::TensorOptions().dtype(torch::kDouble).device(torch::kCUDA);
      Tensor y = torch::randn({c.rows, c.d}, f64).to(type).to(torch::kDouble);
      Tensor z = c.z ? torch::randn({c.rows, c.d}, f64).to(type).to(torch::kDouble) : Tensor();
      Tensor w = (torch::rand({c.shared_weight ? c.group : c.d}, f64) + 0.5).to(torch::kFloat).to(torch::kDouble);
      Tensor gy = torch::randn({c.rows, c.d}, f64);
      auto run = [&](torch::ScalarType t, bool fused) {
        Tensor yl = y.detach().to(t).requires_grad_();
        Tensor wl = w.detach().to(fused ? torch::kFloat : torch::kDouble).requires_grad_();
        Tensor zl = z.defined() ? z.detach().to(t).requires_grad_() : Tensor();
        Tensor out = fused ? model::gated_norm(yl, zl, wl, c.group, 1e-5, c.before)
                           : model::gated_rmsnorm(yl, zl, wl, c.group, 1e-5, c.before);
        (out.to(torch::kDouble) * gy).sum().backward();
        std::map<std::string, Tensor> r = {{"out", out.detach().to(torch::kDouble)},
                                           {"dy", yl.grad().to(torch::kDouble)},
                                           {"dweight", wl.grad().to(torch::kDouble)}};
        if (zl.defined()) r["dz"] = zl.grad().to(torch::kDouble);
        return r;
      };
      std::ostringstream what;
      what << c10::toString(type) << " norm rows" << c.rows << " d" << c.d << " group" << c.group
           << (c.z ? " z" : "") << (c.before ? " norm_before_gate" : " gate_before_norm")
           << (c.shared_weight ? " shared weight" : "");
      expect_close(run(type, true), run(torch::kDouble, false), tolerance(type), what.str());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Dispatch (runs everywhere).

TEST(KernelDispatch, ReferenceOnCpuAndWhenForced) {
  torch::manual_seed(5);
  Tensor x = torch::randn({2, 9, 4, 8});
  EXPECT_FALSE(model::uses_fused_kernels(x));  // CPU tensors always take the reference
  SsdInputs in;
  in.x = x;
  in.dt = torch::rand({2, 9, 4}) * 0.3 + 0.05;
  in.A = -(torch::rand({4}) + 0.5);
  in.B = torch::randn({2, 9, 2, 8});
  in.C = torch::randn({2, 9, 2, 8});
  in.chunk_size = 4;
  EXPECT_TRUE(torch::equal(model::ssd_scan(in, false).y, model::ssd_chunked(in, false).y));
  if (torch::cuda::is_available()) {
    const Tensor xc = x.to(torch::kCUDA);
    EXPECT_EQ(model::uses_fused_kernels(xc), model::fused_kernels_built());
    model::set_kernel_mode(model::KernelMode::reference);
    EXPECT_FALSE(model::uses_fused_kernels(xc));
    EXPECT_FALSE(model::uses_fused_kernels(xc.to(torch::kDouble)));
    model::set_kernel_mode(model::KernelMode::fused);
    EXPECT_FALSE(model::uses_fused_kernels(xc.to(torch::kDouble)));  // float64 stays on the reference
  }
}

TEST(KernelDispatch, ParsesModes) {
  EXPECT_EQ(model::parse_kernel_mode("fused", "--kernels"), model::KernelMode::fused);
  EXPECT_EQ(model::parse_kernel_mode("reference", "--kernels"), model::KernelMode::reference);
  const std::string msg = carve::test::error_of([] { model::parse_kernel_mode("triton", "--kernels"); });
  EXPECT_NE(msg.find("--kernels"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'triton'"), std::string::npos) << msg;
}

}  // namespace
