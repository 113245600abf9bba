// End-to-end distillation (trainer/e2e_distill), its losses (trainer/logit_losses), evaluation (trainer/evaluate)
// and the synthetic example (data/synth_vqa), on the shipped example teacher (examples/synth-vqa/teacher).
// Under `mpirun -np 2` (the test mpi.e2e), E2eDistillMpi checks 2 processes with sharded optimizer state against
// one process with the same global batch.
#include <gtest/gtest.h>

#include <cmath>

#include "base/fs.h"
#include "data/activation_source.h"
#include "data/sample_batch.h"
#include "data/synth_vqa.h"
#include "model/checkpoint.h"
#include "model/hf_weights.h"
#include "model/student_checkpoint.h"
#include "test_util.h"
#include "trainer/distill_checkpoint.h"
#include "trainer/e2e_distill.h"
#include "trainer/evaluate.h"
#include "trainer/generate.h"
#include "trainer/logit_losses.h"
#include "trainer/precompute.h"
#include "trainer/vlm_inputs.h"

namespace carve {
namespace {

comm::MpiCommunicator& world() { return test::world_communicator(); }

std::string example_teacher() { return fs::join(CARVE_SOURCE_DIR, "examples/synth-vqa/teacher"); }

// 96 synthetic samples, a cache of every layer input and the top-16 logits, and a seeded AMMM student folder.
struct E2eFixture {
  std::string dir, samples, eval_samples, cache, student;
  E2eFixture() {
    auto& w = world();
    dir = test::shared_scratch_dir("e2e_fixture");
    samples = fs::join(dir, "train.h5");
    eval_samples = fs::join(dir, "eval.h5");
    cache = fs::join(dir, "cache");
    student = fs::join(dir, "seeded");
    if (w.rank() == 0) {
      data::SynthVqaOptions so;
      so.samples = 96;
      data::write_samples(samples, data::make_synth_vqa(so));
      so.samples = 60;
      so.split = 1;
      data::write_samples(eval_samples, data::make_synth_vqa(so));
      model::CheckpointReader reader(example_teacher());
      auto lm = model::load_causal_lm(reader);
      model::StudentSpec spec;
      spec.layout = model::Layout::parse("AMMM", 4);
      model::carve_student(*lm, spec, /*seed=*/true);
      model::StudentSaveOptions save;
      save.teacher_folder = example_teacher();
      model::save_student(student, *lm, spec, save);
    }
    w.barrier();
    trainer::PrecomputeOptions o;
    o.teacher_dir = example_teacher();
    o.samples_path = samples;
    o.cache_dir = cache;
    o.layers = {0, 1, 2, 3, 4};
    o.top_k = 16;
    o.batch_tokens = 512;
    trainer::precompute_cache(o);
  }
  static model::CausalLM teacher() {
    model::CheckpointReader reader(example_teacher());
    return model::load_causal_lm(reader);
  }
  model::CausalLM seeded_student() const { return model::load_student(student).model; }
  static E2eFixture& get() {
    static E2eFixture f;
    return f;
  }
  trainer::E2eDistillOptions options(const std::string& run) const {
    trainer::E2eDistillOptions o;
    o.teacher_dir = example_teacher();
    o.cache_dir = cache;
    o.samples_path = samples;
    o.run_dir = fs::join(dir, run);
    o.spec.layout = model::Layout::parse("AMMM", 4);
    o.init_student = student;
    o.batch_tokens = 256;
    o.steps = 6;
    o.lr.peak = 2e-3;
    o.log_every = 1000;
    o.progress_seconds = 1e9;
    o.write_metrics = false;
    return o;
  }
};


// KL(p || q) per row in float64, straight from the definition.
torch::Tensor reference_kl(const torch::Tensor& t, const torch::Tensor& s, double temperature) {
  auto p = torch::softmax(t.to(torch::kFloat64) / temperature, -1);
  auto q = torch::softmax(s.to(torch::kFloat64) / temperature, -1);
  return (p * (p.log() - q.log())).sum(-1) * temperature * temperature;
}

TEST(LogitLosses, KlMatchesFloat64Definition) {
  torch::manual_seed(1);
  auto t = torch::randn({7, 50}) * 3;
  auto s = torch::randn({7, 50}) * 2;
  for (double temperature : {1.0, 2.5}) {
    auto ours = trainer::kl_full(t, s, temperature);
    EXPECT_LT(test::relative_error(ours, reference_kl(t, s, temperature)), 1e-5) << "T = " << temperature;
  }
  EXPECT_LT(trainer::kl_full(t, t, 1.0).abs().max().item<double>(), 1e-6);
}

TEST(LogitLosses, TopkKlIsTheMergedTailKl) {
  torch::manual_seed(2);
  auto t = torch::randn({5, 40}) * 3;
  auto s = torch::randn({5, 40}) * 2;
  auto logp = torch::log_softmax(t, -1);
  // k = vocabulary: exactly the full KL.
  auto all = torch::topk(logp, 40, -1);
  EXPECT_LT(test::relative_error(trainer::kl_topk(std::get<0>(all), std::get<1>(all), s), reference_kl(t, s, 1.0)), 1e-5);
  // k < vocabulary: the KL over k tokens plus one merged "other" outcome, computed here in float64, and never above
  // the full KL.
  auto top = torch::topk(logp, 6, -1);
  auto ours = trainer::kl_topk(std::get<0>(top), std::get<1>(top), s);
  auto p = logp.to(torch::kFloat64).exp();
  auto q = torch::softmax(s.to(torch::kFloat64), -1);
  auto idx = std::get<1>(top);
  auto pk = p.gather(-1, idx), qk = q.gather(-1, idx);
  auto pt = 1 - pk.sum(-1), qt = 1 - qk.sum(-1);
  auto expected = (pk * (pk.log() - qk.log())).sum(-1) + pt * (pt.log() - qt.log());
  EXPECT_LT(test::relative_error(ours, expected), 1e-4);
  EXPECT_TRUE((ours <= reference_kl(t, s, 1.0).to(torch::kFloat32) + 1e-5).all().item<bool>());
  // Gradients are finite, also where the top k hold all the mass the float sum can express.
  auto z = s.clone().requires_grad_(true);
  trainer::kl_topk(std::get<0>(top), std::get<1>(top), z).sum().backward();
  EXPECT_TRUE(torch::isfinite(z.grad()).all().item<bool>());
}

TEST(SynthVqa, DeterministicSplitsWithAnswersMasked) {
  data::SynthVqaOptions o;
  o.samples = 50;
  auto a = data::make_synth_vqa(o), b = data::make_synth_vqa(o);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_TRUE(torch::equal(a.image_embeds, b.image_embeds));
  o.split = 1;
  auto c = data::make_synth_vqa(o);
  EXPECT_NE(a.tokens, c.tokens);
  EXPECT_EQ(a.image_embeds.size(0), 150);
  for (int64_t s = 0; s < 50; ++s) {
    // Masked tokens are exactly the answer after "? " and EOS.
    std::string answer;
    for (int64_t t = a.offsets[s]; t < a.offsets[s + 1]; ++t)
      if (a.loss_mask[t] && a.tokens[t] < 256) answer.push_back(static_cast<char>(a.tokens[t]));
    EXPECT_EQ(a.tokens[a.offsets[s + 1] - 1], data::SynthVqaVocab::kEos);
    const auto text = data::synth_vqa_text(a, s);
    EXPECT_NE(text.find("? " + answer + "</s>"), std::string::npos) << text;
    if (text.find("how many") != std::string::npos) {
      EXPECT_TRUE(answer.size() == 1 && answer[0] >= '0' && answer[0] <= '3') << text;
    }
  }
}

TEST(Evaluate, ExactMatchIsGreedyGeneration) {
  auto& f = E2eFixture::get();
  auto teacher = E2eFixture::teacher();
  auto student = f.seeded_student();
  trainer::EvalOptions eo;
  eo.samples_path = f.eval_samples;
  eo.batch_tokens = 512;
  auto scores = trainer::evaluate_models(*teacher, "teacher", {{"seeded", student.get()}}, eo);
  ASSERT_EQ(scores.size(), 2u);
  EXPECT_EQ(scores[0].answered_samples, 60);
  EXPECT_DOUBLE_EQ(scores[0].kl, 0.0);
  EXPECT_DOUBLE_EQ(scores[0].top1_agreement, 1.0);
  EXPECT_GT(scores[1].kl, 0.0);
  // The shipped teacher answers most questions; the undistilled student fewer.
  EXPECT_GT(scores[0].exact_match, 0.8);
  EXPECT_LT(scores[1].exact_match, scores[0].exact_match);
  // Greedy generation sample by sample gives the same count for both models.
  data::SampleFile file(f.eval_samples);
  for (auto* lm : {teacher.get(), student.get()}) {
    int64_t exact = 0;
    for (int64_t s = 0; s < file.num_samples(); ++s) {
      const int64_t begin = file.offsets()[s], len = file.length(s);
      auto tokens = file.tokens(begin, begin + len), mask = file.loss_mask(begin, begin + len);
      const int64_t prompt_len = mask.nonzero()[0].item<int64_t>();
      trainer::GenerateOptions go;
      go.max_new_tokens = len - prompt_len;
      go.stop_token = data::SynthVqaVocab::kEos;
      go.image_token_id = file.image_token_id();
      go.image_rows = file.image_rows(s, s + 1);
      auto out = trainer::generate(*lm, tokens.narrow(0, 0, prompt_len).unsqueeze(0), go)[0];
      auto answer = tokens.narrow(0, prompt_len, len - prompt_len);
      exact += out.size(0) == answer.size(0) && torch::equal(out, answer) ? 1 : 0;
    }
    const auto& score = lm == teacher.get() ? scores[0] : scores[1];
    EXPECT_EQ(exact, score.exact_samples);
  }
}

TEST(E2eDistill, CachedTopkKlAgreesWithOnlineTeacher) {
  auto& f = E2eFixture::get();
  auto teacher = E2eFixture::teacher();
  auto student = f.seeded_student();
  data::ActivationSourceOptions so;
  so.cache_dir = f.cache;
  so.samples_path = f.samples;
  so.logits = true;
  so.batch_tokens = 1024;
  so.shuffle = false;
  data::ActivationSource source(so);
  torch::NoGradGuard no_grad;
  double online = 0, cached = 0;
  int64_t tokens = 0;
  for (int i = 0; i < 2; ++i) {
    auto b = source.next();
    model::ForwardOptions fo;
    fo.seq_idx = b.seq_idx;
    auto tokens_2d = b.token_ids.view({1, -1});
    auto image_id = data::SynthVqaVocab::kImage;
    auto t = teacher->forward_embeds(trainer::embed_with_images(*teacher, tokens_2d, image_id, b.image_rows), fo).logits[0];
    auto s = student->forward_embeds(trainer::embed_with_images(*student, tokens_2d, image_id, b.image_rows), fo).logits[0];
    auto valid = b.valid.to(torch::kFloat32);
    online += (trainer::kl_full(t, s, 1.0) * valid).sum().item<double>();
    cached += (trainer::kl_topk(b.topk_logprobs, b.topk_indices, s) * valid).sum().item<double>();
    tokens += b.tokens;
  }
  online /= static_cast<double>(tokens);
  cached /= static_cast<double>(tokens);
  // Tolerance: the merged-tail KL is below the full KL by (tail mass) x (KL of the tails), and the cache stores
  // bfloat16-free float32 log-probabilities of the same teacher. With 16 of 260 tokens the shipped teacher leaves
  // little mass in the tail: the two agree within 5% (measured: well inside).
  EXPECT_GT(online, 0.05);
  EXPECT_LE(cached, online * (1 + 1e-4));
  EXPECT_LT(std::abs(cached - online) / online, 0.05) << "online " << online << " cached " << cached;
}

TEST(E2eDistill, LossFallsAndStopResumeIsBitIdentical) {
  auto& f = E2eFixture::get();
  // The loss falls: two epochs of the 96 samples (13 batches each), the second epoch's mean below the first's.
  auto learn = f.options("learn");
  learn.steps = 26;
  learn.log_every = 13;
  learn.lr.peak = 5e-4;
  learn.shuffle = false;
  learn.save_checkpoints = false;
  auto l = trainer::run_e2e_distill(learn, world());
  ASSERT_EQ(l.logged_loss.size(), 3u);  // step 1, steps 2-13, steps 14-26
  EXPECT_LT(l.logged_loss[2].second, 0.9 * (l.logged_loss[0].second + 12 * l.logged_loss[1].second) / 13);

  auto whole = f.options("whole");
  whole.checkpoint_every = 2;
  auto r = trainer::run_e2e_distill(whole, world());
  EXPECT_EQ(r.end_step, 6);

  auto part = f.options("part");
  part.checkpoint_every = 2;
  part.stop_after = 3;
  auto first = trainer::run_e2e_distill(part, world());
  EXPECT_TRUE(first.stopped);
  EXPECT_EQ(first.end_step, 3);
  part.stop_after = 0;
  auto second = trainer::run_e2e_distill(part, world());
  EXPECT_EQ(second.start_step, 3);
  EXPECT_EQ(second.end_step, 6);
  for (auto file : {"student.safetensors", "adam_00000.safetensors"}) {
    auto a = test::safetensors_map(fs::join(trainer::checkpoint_dir(whole.run_dir, 6), file));
    auto b = test::safetensors_map(fs::join(trainer::checkpoint_dir(part.run_dir, 6), file));
    ASSERT_EQ(a.size(), b.size());
    for (auto& [name, t] : a) EXPECT_TRUE(torch::equal(t, b.at(name))) << file << ": " << name;
  }
  // The export loads as a student whose mixers are the checkpoint's.
  const auto out = fs::join(f.dir, "exported");
  trainer::export_e2e_student(whole, out, /*full=*/false);
  auto exported = model::load_student(out).model;
  auto params = test::safetensors_map(fs::join(trainer::checkpoint_dir(whole.run_dir, 6), "student.safetensors"));
  for (auto& item : exported->named_parameters())
    if (params.count("param." + item.key())) {
      EXPECT_TRUE(torch::equal(item.value(), params.at("param." + item.key()))) << item.key();
    }
}

TEST(E2eDistill, OneStageFromCacheMatchesOnlineAtTheStart) {
  auto& f = E2eFixture::get();
  double first[2];
  int i = 0;
  for (auto signal : {trainer::TeacherSignal::Online, trainer::TeacherSignal::Cache}) {
    auto o = f.options(std::string("one_stage_") + trainer::teacher_signal_name(signal));
    o.stage = model::Stage::OneStage;
    o.init_student.clear();
    o.teacher_signal = signal;
    o.steps = 26;
    o.log_every = 13;
    o.lr.peak = 5e-3;
    o.shuffle = false;
    o.save_checkpoints = false;
    auto r = trainer::run_e2e_distill(o, world());
    ASSERT_EQ(r.logged_loss.size(), 3u);
    EXPECT_LT(r.logged_loss[2].second, 0.9 * (r.logged_loss[0].second + 12 * r.logged_loss[1].second) / 13);
    first[i++] = r.first_loss;
  }
  // The cached residual streams are bfloat16 and the KL uses the top 16: the first losses agree within 5%.
  EXPECT_LT(std::abs(first[0] - first[1]) / first[0], 0.05) << first[0] << " vs " << first[1];
}

TEST(E2eDistill, RefusesWhatCannotWork) {
  auto& f = E2eFixture::get();
  auto o = f.options("refused");
  o.teacher_signal = trainer::TeacherSignal::Cache;
  o.temperature = 2.0;
  EXPECT_NE(test::error_of([&] { trainer::run_e2e_distill(o, world()); }).find("needs --teacher-logits online"),
            std::string::npos);
  auto p = f.options("refused2");
  p.spec.layout = model::Layout::parse("MMMM", 4);
  EXPECT_NE(test::error_of([&] { trainer::run_e2e_distill(p, world()); }).find("this run asks for"), std::string::npos);
}

// Under mpirun -np 2: 2 processes x 1 micro-batch with sharded optimizer state reach the weights of 1 process
// with 2 micro-batches.
TEST(E2eDistillMpi, TwoRanksWithZero1EqualOneRank) {
  auto& w = world();
  if (w.size() != 2) GTEST_SKIP() << "run under mpirun -np 2";
  auto& f = E2eFixture::get();
  auto many = f.options("mpi_zero1");
  many.zero1 = true;
  many.steps = 4;
  trainer::run_e2e_distill(many, w);
  auto one_comm = w.split_mpi(w.rank(), 0, "self");
  if (w.rank() == 0) {
    auto single = f.options("mpi_single");
    single.grad_accum = 2;
    single.steps = 4;
    trainer::run_e2e_distill(single, *one_comm);
    auto a = test::safetensors_map(fs::join(trainer::checkpoint_dir(many.run_dir, 4), "student.safetensors"));
    auto b = test::safetensors_map(fs::join(trainer::checkpoint_dir(single.run_dir, 4), "student.safetensors"));
    for (auto& [name, t] : a) EXPECT_LT(test::relative_error(t, b.at(name)), 1e-4) << name;
  }
  w.barrier();
}

}  // namespace
}  // namespace carve
