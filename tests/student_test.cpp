// The Mamba-2 student: layouts, seeding recipes, both mixers' decoding, stage parameter groups, checkpoints.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <set>

#include "base/fs.h"
#include "model/checkpoint.h"
#include "model/hf_weights.h"
#include "model/mamba2_mixer.h"
#include "model/safetensors.h"
#include "model/seeded_mixer.h"
#include "model/student.h"
#include "model/student_checkpoint.h"
#include "tests/test_util.h"

namespace carve::model {
namespace {

using test::error_of;
using test::relative_error;

std::string teacher_dir(const std::string& family) { return test::fixture("teachers/" + family); }

CausalLM load_teacher(const std::string& family, torch::ScalarType dtype = torch::kFloat32) {
  return load_causal_lm(CheckpointReader(teacher_dir(family)), dtype);
}

StudentSpec spec_of(const std::string& layout, MixerKind mixer, SeedMethod seeding, uint64_t seed = 7) {
  StudentSpec s;
  s.layout = Layout::parse(layout, static_cast<int64_t>(layout.size()));
  s.mixer = mixer;
  s.seeding = seeding;
  s.init_seed = seed;
  return s;
}

// ---- layouts ----

TEST(Layout, GeneratorsGiveThePapersLayouts) {
  // mmMamba-hybrid: 8 attention layers, the first of every 4.
  auto hybrid = Layout::generate(32, 8, 'A', Placement::HeadInterleaved);
  EXPECT_EQ(hybrid.indices('A'), (std::vector<int64_t>{0, 4, 8, 12, 16, 20, 24, 28}));
  EXPECT_EQ(hybrid.str().substr(0, 8), "AMMMAMMM");
  // MaTVLM 25%: Mamba at 0, 4, ..., 28; 12.5%: 0, 6, 12, 18 (an explicit list); 50%: every even layer.
  EXPECT_EQ(Layout::generate(32, 8, 'M', Placement::HeadInterleaved).indices('M'),
            (std::vector<int64_t>{0, 4, 8, 12, 16, 20, 24, 28}));
  EXPECT_EQ(Layout::from_list(32, {0, 6, 12, 18}, 'M').indices('M'), (std::vector<int64_t>{0, 6, 12, 18}));
  auto half = Layout::generate(32, 16, 'M', Placement::HeadInterleaved).indices('M');
  ASSERT_EQ(half.size(), 16u);
  for (size_t i = 0; i < half.size(); ++i) EXPECT_EQ(half[i], static_cast<int64_t>(2 * i));
  // mmMamba Table 6 placements.
  EXPECT_EQ(Layout::generate(32, 8, 'A', Placement::TailInterleaved).indices('A'),
            (std::vector<int64_t>{3, 7, 11, 15, 19, 23, 27, 31}));
  EXPECT_EQ(Layout::generate(32, 8, 'A', Placement::HeadStacked).indices('A'),
            (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(Layout::generate(32, 8, 'A', Placement::TailStacked).indices('A'),
            (std::vector<int64_t>{24, 25, 26, 27, 28, 29, 30, 31}));
  EXPECT_EQ(Layout::generate(32, 0, 'A', Placement::HeadInterleaved).str(), std::string(32, 'M'));
  EXPECT_EQ(parse_placement("tail-stacked"), Placement::TailStacked);
}

TEST(Layout, BadLayoutsAreRefusedByName) {
  auto msg = error_of([] { Layout::parse("AMMMAMM", 8, "--layout"); });
  EXPECT_NE(msg.find("--layout: 'AMMMAMM' has 7 characters but the teacher has 8 layers"), std::string::npos) << msg;
  msg = error_of([] { Layout::parse("AMMXAMMM", 8, "--layout"); });
  EXPECT_NE(msg.find("--layout: character 'X' at layer 3"), std::string::npos) << msg;
  msg = error_of([] { Layout::from_list(8, {0, 9}, 'M', "--mamba-layers"); });
  EXPECT_NE(msg.find("--mamba-layers: layer 9 is outside [0, 8)"), std::string::npos) << msg;
  msg = error_of([] { Layout::from_list(8, {2, 2}, 'M', "--mamba-layers"); });
  EXPECT_NE(msg.find("layer 2 is listed twice"), std::string::npos) << msg;
  msg = error_of([] { parse_placement("middle", "--placement"); });
  EXPECT_NE(msg.find("--placement: 'middle' is not a placement"), std::string::npos) << msg;
  msg = error_of([] { parse_index_list("1,x", "--attention-layers"); });
  EXPECT_NE(msg.find("--attention-layers: 'x' is not a layer index"), std::string::npos) << msg;
}

// ---- seeding ----

TEST(Seeding, MimicFollowsTheRecipeForTheSeededMixer) {
  auto teacher = load_teacher("llama");
  auto& attn = dynamic_cast<AttentionImpl&>(*teacher->layers[1]->mixer);
  auto student = load_teacher("llama");
  carve_student(*student, spec_of("MMM", MixerKind::Seeded, SeedMethod::Mimic), true);
  auto& m = dynamic_cast<SeededMixerImpl&>(*student->layers[1]->mixer);
  EXPECT_TRUE(torch::equal(m.q_proj->weight, attn.q_proj->weight));
  EXPECT_TRUE(torch::equal(m.k_proj->weight, attn.k_proj->weight));
  EXPECT_TRUE(torch::equal(m.v_proj->weight, attn.v_proj->weight));
  EXPECT_TRUE(torch::equal(m.o_proj->weight, attn.o_proj->weight));
  // Identity conv: only the current-token tap, at 1; kernel 2 over [v, k, q] = (4 + 2 * 2) * 16 channels.
  ASSERT_EQ(m.conv_weight.sizes(), (std::vector<int64_t>{128, 2}));
  EXPECT_TRUE(torch::equal(m.conv_weight.select(1, 1), torch::ones({128})));
  EXPECT_TRUE(torch::equal(m.conv_weight.select(1, 0), torch::zeros({128})));
  EXPECT_TRUE(torch::equal(m.conv_bias, torch::zeros({128})));
  EXPECT_TRUE(torch::equal(m.dt_proj->weight, torch::zeros({4, 64})));
  EXPECT_TRUE(torch::equal(m.A_log, torch::ones({4})));
  auto dt = torch::softplus(m.dt_bias);
  EXPECT_GE(dt.min().item<double>(), 1e-3 * (1 - 1e-5));
  EXPECT_LE(dt.max().item<double>(), 0.1 * (1 + 1e-5));
  EXPECT_GT(dt.std().item<double>(), 0);  // drawn, not constant
  // xavier_uniform with gain 2^-2.5 on [64, 64]: bound = 2^-2.5 * sqrt(6 / 128).
  const double bound = std::pow(2.0, -2.5) * std::sqrt(6.0 / 128.0);
  EXPECT_LE(m.gate_proj->weight.abs().max().item<double>(), bound);
  EXPECT_GT(m.gate_proj->weight.abs().max().item<double>(), 0.9 * bound);
  EXPECT_TRUE(torch::equal(m.norm_weight, torch::ones({16})));
}

TEST(Seeding, InheritVariantsAndRandomUseMamba2Defaults) {
  auto teacher = load_teacher("llama");
  auto& attn = dynamic_cast<AttentionImpl&>(*teacher->layers[0]->mixer);
  for (auto method : {SeedMethod::Inherit, SeedMethod::InheritQkv, SeedMethod::Random}) {
    auto student = load_teacher("llama");
    carve_student(*student, spec_of("MAA", MixerKind::Seeded, method), true);
    auto& m = dynamic_cast<SeededMixerImpl&>(*student->layers[0]->mixer);
    const bool qkv = method != SeedMethod::Random, o = method == SeedMethod::Inherit;
    EXPECT_EQ(torch::equal(m.q_proj->weight, attn.q_proj->weight), qkv) << seed_method_name(method);
    EXPECT_EQ(torch::equal(m.v_proj->weight, attn.v_proj->weight), qkv) << seed_method_name(method);
    EXPECT_EQ(torch::equal(m.o_proj->weight, attn.o_proj->weight), o) << seed_method_name(method);
    // Mamba-2 defaults: A = -U(1, 16), dt in [1e-4, 0.1], conv U(+-1/sqrt(2)), W_gamma U(+-1/sqrt(64)).
    auto a = torch::exp(m.A_log);
    EXPECT_GE(a.min().item<double>(), 1.0 - 1e-6);
    EXPECT_LE(a.max().item<double>(), 16.0 + 1e-5);
    auto dt = torch::softplus(m.dt_bias);
    EXPECT_GE(dt.min().item<double>(), 1e-4 * (1 - 1e-5));
    EXPECT_LE(dt.max().item<double>(), 0.1 * (1 + 1e-5));
    EXPECT_LE(m.conv_weight.abs().max().item<double>(), 1 / std::sqrt(2.0));
    EXPECT_GT(m.conv_weight.abs().max().item<double>(), 0.5);
    EXPECT_LE(m.dt_proj->weight.abs().max().item<double>(), 1 / 8.0);
    EXPECT_GT(m.dt_proj->weight.abs().max().item<double>(), 0.1);
  }
}

TEST(Seeding, Mamba2BlockTakesAttentionIntoInProjRows) {
  auto teacher = load_teacher("llama");
  auto& attn = dynamic_cast<AttentionImpl&>(*teacher->layers[2]->mixer);
  auto student = load_teacher("llama");
  carve_student(*student, spec_of("AAM", MixerKind::Mamba2, SeedMethod::Inherit), true);
  auto& m = dynamic_cast<Mamba2MixerImpl&>(*student->layers[2]->mixer);
  auto rows = m.in_proj->weight.split_with_sizes(m.in_proj_sizes(), 0);  // z, x, B, C, dt
  EXPECT_TRUE(torch::equal(rows[1], attn.v_proj->weight));
  EXPECT_TRUE(torch::equal(rows[2], attn.k_proj->weight));
  EXPECT_TRUE(torch::equal(rows[3], attn.q_proj->weight));
  EXPECT_TRUE(torch::equal(m.out_proj->weight, attn.o_proj->weight));
  EXPECT_TRUE(torch::equal(m.D, torch::ones({4})));
  EXPECT_EQ(m.conv_weight.size(1), 4);
  EXPECT_EQ(m.config.chunk_size, 256);
  // The same seed gives the same student; another seed another one.
  auto again = load_teacher("llama");
  carve_student(*again, spec_of("AAM", MixerKind::Mamba2, SeedMethod::Inherit), true);
  EXPECT_TRUE(torch::equal(dynamic_cast<Mamba2MixerImpl&>(*again->layers[2]->mixer).A_log, m.A_log));
  auto other = load_teacher("llama");
  carve_student(*other, spec_of("AAM", MixerKind::Mamba2, SeedMethod::Inherit, 8), true);
  EXPECT_FALSE(torch::equal(dynamic_cast<Mamba2MixerImpl&>(*other->layers[2]->mixer).A_log, m.A_log));
}

// On every fixture teacher, the mimic-seeded mixer's output before o_proj is closer (MSE) to the teacher
// attention's than the randomly initialised mixer's, layer by layer.
TEST(Seeding, MimicIsCloserToTheTeacherThanRandom) {
  torch::NoGradGuard no_grad;
  for (const char* family : {"llama", "qwen2", "phi", "internlm2"}) {
    SafetensorsFile expected(teacher_dir(family) + "/expected.safetensors");
    auto mimic = load_teacher(family), random = load_teacher(family);
    const std::string all_m(mimic->config.num_layers, 'M');
    carve_student(*mimic, spec_of(all_m, MixerKind::Seeded, SeedMethod::Mimic), true);
    carve_student(*random, spec_of(all_m, MixerKind::Seeded, SeedMethod::Random), true);
    for (int64_t i = 0; i < mimic->config.num_layers; ++i) {
      auto x = expected.load("layer_input." + std::to_string(i));
      auto target = expected.load("pre_o." + std::to_string(i));
      auto mse = [&](CausalLM& s) {
        torch::Tensor pre;
        MixerContext ctx;
        ctx.pre_output = &pre;
        s->layers[i]->mixer->forward(s->layers[i]->input_norm(x), ctx);
        return (pre - target).pow(2).mean().item<double>();
      };
      const double m = mse(mimic), r = mse(random);
      EXPECT_LT(m, r) << family << " layer " << i;
    }
  }
}

// ---- mixers: decoding and packing ----

class StudentMixers : public ::testing::TestWithParam<MixerKind> {};

// Prefill 5 tokens, then 3 more as a chunk, then one at a time: equal to one full forward (float64).
TEST_P(StudentMixers, PrefillThenDecodeEqualsFullForward) {
  torch::NoGradGuard no_grad;
  auto student = load_teacher("llama", torch::kFloat64);
  auto spec = spec_of("MAM", GetParam(), SeedMethod::Inherit);
  spec.chunk_size = 4;  // several chunks with a padded last one
  carve_student(*student, spec, true);
  auto ids = SafetensorsFile(teacher_dir("llama") + "/expected.safetensors").load("input_ids");
  auto full = student->forward(ids).logits;
  auto state = student->new_decode_state();
  ForwardOptions step;
  step.state = &state;
  std::vector<torch::Tensor> pieces = {student->forward(ids.slice(1, 0, 5), step).logits,
                                       student->forward(ids.slice(1, 5, 8), step).logits};
  for (int64_t t = 8; t < ids.size(1); ++t) pieces.push_back(student->forward(ids.slice(1, t, t + 1), step).logits);
  EXPECT_LT(relative_error(torch::cat(pieces, 1), full), 1e-10);
}

TEST_P(StudentMixers, PackedSamplesAreIndependent) {
  torch::NoGradGuard no_grad;
  auto student = load_teacher("qwen2", torch::kFloat64);
  carve_student(*student, spec_of("MMA", GetParam(), SeedMethod::Mimic), true);
  auto ids = SafetensorsFile(teacher_dir("qwen2") + "/expected.safetensors").load("input_ids");
  auto a = ids[0].slice(0, 0, 7), b = ids[1].slice(0, 0, 9);
  ForwardOptions options;
  options.seq_idx = torch::cat({torch::zeros({7}, torch::kInt32), torch::ones({9}, torch::kInt32)}).unsqueeze(0);
  auto got = student->forward(torch::cat({a, b}).unsqueeze(0), options).logits[0];
  EXPECT_LT(relative_error(got.slice(0, 0, 7), student->forward(a.unsqueeze(0)).logits[0]), 1e-10);
  EXPECT_LT(relative_error(got.slice(0, 7), student->forward(b.unsqueeze(0)).logits[0]), 1e-10);
}

TEST_P(StudentMixers, GradientsReachEveryTrainableParameter) {
  auto student = load_teacher("phi");
  carve_student(*student, spec_of("MAM", GetParam(), SeedMethod::Inherit), true);
  auto ids = SafetensorsFile(teacher_dir("phi") + "/expected.safetensors").load("input_ids");
  student->forward(ids).logits.pow(2).mean().backward();
  auto params = trainable_parameters(*student, Stage::OneStage);
  EXPECT_FALSE(params.empty());
  for (auto& [name, p] : params) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_GT(p.grad().abs().max().item<double>(), 0) << name;
  }
}

// On the GPU host: the student in bf16 on CUDA stays within bf16 tolerance of the float64 student on CPU.
TEST_P(StudentMixers, CudaBfloat16StaysCloseToFloat64) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::NoGradGuard no_grad;
  auto student = load_teacher("internlm2", torch::kFloat64);
  carve_student(*student, spec_of("MAM", GetParam(), SeedMethod::Mimic), true);
  auto ids = SafetensorsFile(teacher_dir("internlm2") + "/expected.safetensors").load("input_ids");
  auto want = student->forward(ids).logits;
  student->to(torch::kCUDA, torch::kBFloat16);
  auto got = student->forward(ids.to(torch::kCUDA)).logits;
  EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
  EXPECT_LT(relative_error(got, want), 3e-2);
}

INSTANTIATE_TEST_SUITE_P(Kinds, StudentMixers, ::testing::Values(MixerKind::Seeded, MixerKind::Mamba2),
                         [](const auto& info) { return mixer_kind_name(info.param); });

// ---- stage parameter groups ----

TEST(Student, StagesTrainWhatTheRecipesSay) {
  auto student = load_teacher("llama");
  carve_student(*student, spec_of("AMM", MixerKind::Seeded, SeedMethod::Mimic), true);
  auto names = [&](Stage s) {
    std::set<std::string> out;
    for (auto& [name, p] : trainable_parameters(*student, s)) out.insert(name);
    return out;
  };
  const std::set<std::string> stage1 = {"conv_weight", "conv_bias", "dt_proj.weight", "dt_bias", "A_log",
                                        "gate_proj.weight", "norm_weight"};
  auto expect = [&](Stage s, std::set<std::string> local) {
    std::set<std::string> want;
    for (int layer : {1, 2})
      for (const auto& n : local) want.insert("layers." + std::to_string(layer) + ".mixer." + n);
    EXPECT_EQ(names(s), want) << stage_name(s);
  };
  expect(Stage::Stage1, stage1);
  auto stage2 = stage1;
  stage2.insert({"q_proj.weight", "k_proj.weight", "v_proj.weight"});
  expect(Stage::Stage2, stage2);
  auto stage3 = stage2;
  stage3.erase("dt_bias");
  stage3.erase("A_log");
  expect(Stage::Stage3, stage3);
  auto all = stage2;
  all.insert("o_proj.weight");
  expect(Stage::OneStage, all);
}

// ---- checkpoints ----

void expect_same_parameters(CausalLMImpl& a, CausalLMImpl& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (auto& item : pa) {
    ASSERT_TRUE(pb.contains(item.key())) << item.key();
    EXPECT_TRUE(torch::equal(item.value(), pb[item.key()])) << item.key();
  }
}

TEST(StudentCheckpoint, RoundTripsExactlyStudentOnlyAndFull) {
  for (const char* family : {"llama", "internlm2", "phi"}) {
    for (bool full : {false, true}) {
      auto student = load_teacher(family);
      carve_student(*student, spec_of("MAM", MixerKind::Seeded, SeedMethod::Mimic), true);
      auto dir = test::scratch_dir(std::string("student_") + family + (full ? "_full" : "_only"));
      StudentSaveOptions options;
      options.full = full;
      options.teacher_folder = teacher_dir(family);
      save_student(dir, *student, spec_of("MAM", MixerKind::Seeded, SeedMethod::Mimic), options);
      SafetensorsFile saved(dir + "/model.safetensors");
      EXPECT_EQ(saved.contains("model.layers.1.mamba.conv_weight"), false);
      EXPECT_EQ(saved.contains("model.layers.0.mamba.conv_weight"), true);
      EXPECT_EQ(saved.names().size() > 30, full) << saved.names().size();

      auto loaded = load_student(dir);
      EXPECT_EQ(loaded.spec.layout.str(), "MAM");
      EXPECT_EQ(loaded.full, full);
      expect_same_parameters(*student, *loaded.model);
      torch::NoGradGuard no_grad;
      auto ids = torch::randint(0, 96, {1, 10});
      EXPECT_TRUE(torch::equal(student->forward(ids).logits, loaded.model->forward(ids).logits)) << family;
    }
  }
}

TEST(StudentCheckpoint, StudentOnlyNeedsItsTeacher) {
  auto student = load_teacher("llama");
  auto spec = spec_of("MMA", MixerKind::Mamba2, SeedMethod::Inherit);
  carve_student(*student, spec, true);
  auto dir = test::scratch_dir("student_moved_teacher");
  StudentSaveOptions options;
  options.teacher_folder = dir + "/nowhere";
  save_student(dir, *student, spec, options);
  auto msg = error_of([&] { load_student(dir); });
  EXPECT_NE(msg.find("teacher folder '" + dir + "/nowhere' not found"), std::string::npos) << msg;
  // The wrong teacher is recognised.
  msg = error_of([&] { load_student(dir, teacher_dir("phi")); });
  EXPECT_NE(msg.find("is not the one the student"), std::string::npos) << msg;
  // An explicit teacher works.
  auto loaded = load_student(dir, teacher_dir("llama"));
  expect_same_parameters(*student, *loaded.model);
}

}  // namespace
}  // namespace carve::model
