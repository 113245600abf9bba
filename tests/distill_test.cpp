// Stages 1 and 2 (trainer/layer_distill): the optimizer and schedules against references, the loss falling, mimic
// seeding beating random (mmMamba's ablation in miniature), stop and resume, and, under `mpirun -np 4` (the test
// mpi.distill), 2 layer groups x 2 replicas reaching the weights of 1 process with the same global batch.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include <nlohmann/json.hpp>

#include "base/fs.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_session.h"
#include "data/activation_source.h"
#include "data/samples.h"
#include "model/checkpoint.h"
#include "test_util.h"
#include "trainer/distill_checkpoint.h"
#include "trainer/layer_distill.h"
#include "trainer/optimizer.h"
#include "trainer/precompute.h"

namespace carve {
namespace {

comm::MpiCommunicator& world() { return test::world_communicator(); }

// The llama fixture teacher (3 layers) and a cache of its layer inputs over 40 random samples, made collectively.
struct DistillFixture {
  std::string dir, teacher, cache;
  DistillFixture() {
    auto& w = world();
    dir = test::shared_scratch_dir("distill_fixture");
    teacher = test::fixture("teachers/llama");
    const auto samples = fs::join(dir, "train.h5");
    if (w.rank() == 0) data::write_samples(samples, test::random_samples(40, 11, /*images=*/false));
    w.barrier();
    trainer::PrecomputeOptions o;
    o.teacher_dir = teacher;
    o.samples_path = samples;
    o.cache_dir = fs::join(dir, "cache");
    o.layers = {0, 1, 2};
    o.top_k = 0;
    o.final_hidden = false;
    o.batch_tokens = 256;
    trainer::precompute_cache(o);
    cache = o.cache_dir;
  }
  static DistillFixture& get() {
    static DistillFixture f;
    return f;
  }
  trainer::LayerDistillOptions options(const std::string& run, const std::string& layout = "MMM") const {
    trainer::LayerDistillOptions o;
    o.teacher_dir = teacher;
    o.cache_dir = cache;
    o.run_dir = fs::join(dir, run);
    o.spec.layout = model::Layout::parse(layout, 3);
    o.batch_tokens = 128;
    o.steps = 8;
    o.lr.peak = 3e-3;
    o.log_every = 1000;
    o.progress_seconds = 1e9;
    return o;
  }
};


double mean_loss(const std::map<int64_t, double>& losses) {
  double s = 0;
  for (const auto& [layer, l] : losses) s += l;
  return s / static_cast<double>(losses.size());
}

TEST(Optimizer, AdamWMatchesLibTorch) {
  torch::manual_seed(5);
  auto a = torch::randn({4, 3}, torch::kFloat64).requires_grad_(true);
  auto b = a.detach().clone().requires_grad_(true);
  trainer::AdamWOptions o;
  o.beta1 = 0.8;
  o.beta2 = 0.95;
  o.weight_decay = 0.1;
  trainer::AdamW ours({{"w", a}}, o);
  torch::optim::AdamW theirs({b}, torch::optim::AdamWOptions(0.01).betas({0.8, 0.95}).eps(1e-8).weight_decay(0.1));
  for (int step = 0; step < 5; ++step) {
    auto g = torch::randn({4, 3}, torch::kFloat64);
    a.mutable_grad() = g.clone();
    b.mutable_grad() = g.clone();
    // Moments are float32 in carve: the comparison holds to float32 precision.
    ours.step(0.01);
    theirs.step();
  }
  EXPECT_LT(test::relative_error(a.detach(), b.detach()), 1e-5);
  EXPECT_EQ(ours.steps(), 5);
}

TEST(Optimizer, SchedulesHaveTheirShapes) {
  trainer::LrSchedule wsd;
  wsd.peak = 1.0;
  wsd.warmup = 0.1;
  wsd.decay = 0.2;
  EXPECT_DOUBLE_EQ(wsd.at(0, 100), 0.1);   // warmup: 1/10 of the peak at the first step
  EXPECT_DOUBLE_EQ(wsd.at(9, 100), 1.0);   // peak at the end of warmup
  EXPECT_DOUBLE_EQ(wsd.at(50, 100), 1.0);  // stable
  EXPECT_DOUBLE_EQ(wsd.at(89, 100), 0.5);  // halfway down the decay (steps 80-99)
  EXPECT_DOUBLE_EQ(wsd.at(99, 100), 0.0);
  trainer::LrSchedule cosine = wsd;
  cosine.kind = trainer::Schedule::Cosine;
  cosine.min_ratio = 0.1;
  EXPECT_DOUBLE_EQ(cosine.at(10, 100), 1.0);
  EXPECT_NEAR(cosine.at(55, 100), 0.55, 1e-12);  // halfway: the mean of peak and floor
  EXPECT_NEAR(cosine.at(100, 100), 0.1, 1e-12);
  EXPECT_NE(test::error_of([] { trainer::parse_schedule("linear", "--schedule"); }).find("--schedule: 'linear'"),
            std::string::npos);
}

// Per-step losses from a run's metrics.jsonl: mean over layers, per step.
std::vector<double> logged_losses(const std::string& run_dir) {
  std::vector<double> out;
  std::istringstream lines(fs::read_file(fs::join(run_dir, "metrics.jsonl")));
  for (std::string line; std::getline(lines, line);) out.push_back(nlohmann::json::parse(line).at("loss").get<double>());
  return out;
}

double mean_of(const std::vector<double>& v, size_t begin, size_t end) {
  double s = 0;
  for (size_t i = begin; i < end; ++i) s += v[i];
  return s / static_cast<double>(end - begin);
}

TEST(LayerDistill, MimicSeedingBeatsRandomAndTheLossFalls) {
  auto& f = DistillFixture::get();
  if (world().size() > 1) GTEST_SKIP() << "single-process test";
  // Unshuffled, so every epoch sees the same batches and epochs compare directly.
  auto mimic = f.options("mimic");
  mimic.shuffle = false;
  mimic.log_every = 1;
  data::SampleFile samples(fs::join(f.dir, "train.h5"));
  const auto epoch = static_cast<int64_t>(data::epoch_batches(samples.offsets(), mimic.batch_tokens, 0, 0, false).size());
  mimic.steps = 4 * epoch;
  auto random = mimic;
  random.run_dir = fs::join(f.dir, "random");
  random.spec.seeding = model::SeedMethod::Random;
  auto a = trainer::run_layer_distill(mimic, world());
  auto b = trainer::run_layer_distill(random, world());
  ASSERT_EQ(a.first_loss.size(), 3u);
  EXPECT_EQ(a.end_step, 4 * epoch);
  EXPECT_GT(a.steps.totals().tokens, 0);
  // Step 1's loss is measured before the first update: the seeding alone.
  EXPECT_LT(mean_loss(a.first_loss), mean_loss(b.first_loss));
  const auto la = logged_losses(mimic.run_dir), lb = logged_losses(random.run_dir);
  ASSERT_EQ(la.size(), static_cast<size_t>(4 * epoch));
  const size_t e = static_cast<size_t>(epoch);
  // The loss over the same batches falls from the first epoch to the last, and mimic stays ahead.
  EXPECT_LT(mean_of(la, 3 * e, 4 * e), 0.95 * mean_of(la, 0, e));
  EXPECT_LT(mean_of(lb, 3 * e, 4 * e), 0.95 * mean_of(lb, 0, e));
  EXPECT_LT(mean_of(la, 3 * e, 4 * e), mean_of(lb, 3 * e, 4 * e));
}

TEST(LayerDistill, StoppedAndResumedEqualsUninterrupted) {
  auto& f = DistillFixture::get();
  if (world().size() > 1) GTEST_SKIP() << "single-process test";
  auto whole = f.options("whole", "AMM");
  whole.clip = 0.05;  // active, so the clipping path is part of what must match
  whole.checkpoint_every = 3;
  auto parts = whole;
  parts.run_dir = fs::join(f.dir, "parts");
  parts.stop_after = 4;
  ASSERT_FALSE(trainer::run_layer_distill(whole, world()).stopped);
  auto first = trainer::run_layer_distill(parts, world());
  EXPECT_TRUE(first.stopped);
  EXPECT_EQ(first.end_step, 4);
  parts.stop_after = 0;
  auto second = trainer::run_layer_distill(parts, world());
  EXPECT_EQ(second.start_step, 4);
  EXPECT_EQ(second.end_step, 8);
  for (int64_t layer : {1, 2}) {
    const auto name = trainer::layer_file_name(layer);
    EXPECT_EQ(fs::read_file(fs::join(trainer::checkpoint_dir(whole.run_dir, 8), name)),
              fs::read_file(fs::join(trainer::checkpoint_dir(parts.run_dir, 8), name)))
        << name << " differs between the uninterrupted and the resumed run";
  }
  // Only the newest 2 complete checkpoints are kept.
  EXPECT_FALSE(fs::exists(trainer::checkpoint_dir(parts.run_dir, 3)));
  EXPECT_TRUE(fs::exists(trainer::checkpoint_dir(parts.run_dir, 6)));
  // A damaged newest checkpoint is skipped for the one before it.
  const auto last = trainer::checkpoint_dir(parts.run_dir, 8);
  fs::write_file_atomic(fs::join(last, trainer::layer_file_name(1)), "garbage");
  auto found = trainer::latest_checkpoint(parts.run_dir);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->step, 6);
  // A resume with other settings is refused by name.
  parts.batch_tokens = 256;
  auto message = test::error_of([&] { trainer::run_layer_distill(parts, world()); });
  EXPECT_NE(message.find("batch_tokens = 128, this run has 256"), std::string::npos) << message;
}

TEST(LayerDistill, StageTwoStartsFromStageOneAndTrainsQkv) {
  auto& f = DistillFixture::get();
  if (world().size() > 1) GTEST_SKIP() << "single-process test";
  auto one = f.options("two_stages/stage1", "MAM");
  one.steps = 4;
  trainer::run_layer_distill(one, world());
  auto two = one;
  two.stage = model::Stage::Stage2;
  two.run_dir = fs::join(f.dir, "two_stages/stage2");
  two.init_dir = one.run_dir;
  two.steps = 4;
  auto report = trainer::run_layer_distill(two, world());
  EXPECT_EQ(report.end_step, 4);
  const auto layer2 = trainer::layer_file_name(2);
  auto s1 = test::safetensors_map(fs::join(trainer::checkpoint_dir(one.run_dir, 4), layer2), "mixer.");
  auto s2 = test::safetensors_map(fs::join(trainer::checkpoint_dir(two.run_dir, 4), layer2), "mixer.");
  // Stage 1 froze q_proj, stage 2 trains it; o_proj stays frozen in both.
  EXPECT_FALSE(torch::equal(s1.at("mixer.q_proj.weight"), s2.at("mixer.q_proj.weight")));
  EXPECT_TRUE(torch::equal(s1.at("mixer.o_proj.weight"), s2.at("mixer.o_proj.weight")));
  model::CheckpointReader teacher(f.teacher);
  EXPECT_TRUE(torch::equal(s1.at("mixer.q_proj.weight"), teacher.load("model.layers.2.self_attn.q_proj.weight")));
  // The exported student loads as a student folder.
  trainer::export_layer_student(two, fs::join(f.dir, "two_stages/student"));
  EXPECT_TRUE(fs::exists(fs::join(f.dir, "two_stages/student/config.json")));
}

// Under mpirun -np 4: 2 layer groups x 2 replicas, one micro-batch each, against rank 0 alone with 2 micro-batches.
TEST(LayerDistillMpi, FourRanksEqualOneRank) {
  auto& f = DistillFixture::get();
  auto& w = world();
  if (w.size() != 4) GTEST_SKIP() << "needs mpirun -np 4 (the test mpi.distill)";
  auto single = f.options("one_rank");
  // Within one epoch: at an epoch's end 2 replicas may get an empty batch where 1 process would go on.
  data::SampleFile samples(fs::join(f.dir, "train.h5"));
  single.steps = static_cast<int64_t>(data::epoch_batches(samples.offsets(), single.batch_tokens, 0, 0, true).size()) / 2;
  ASSERT_GE(single.steps, 3);
  single.grad_accum = 2;
  single.clip = 0.05;  // active: the norm must be the world's
  auto alone = w.split_mpi(w.rank() == 0 ? 0 : 1, w.rank(), "rank 0 alone");
  if (w.rank() == 0) trainer::run_layer_distill(single, *alone);
  w.barrier();
  auto grid = single;
  grid.run_dir = fs::join(f.dir, "four_ranks");
  grid.grad_accum = 1;
  grid.layer_groups = 2;
  trainer::run_layer_distill(grid, w);
  w.barrier();
  if (w.rank() != 0) return;
  model::CheckpointReader teacher(f.teacher);
  for (int64_t layer : {0, 1, 2}) {
    const auto name = trainer::layer_file_name(layer);
    auto a = test::safetensors_map(fs::join(trainer::checkpoint_dir(single.run_dir, single.steps), name), "mixer.");
    auto b = test::safetensors_map(fs::join(trainer::checkpoint_dir(grid.run_dir, single.steps), name), "mixer.");
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [key, ta] : a) {
      EXPECT_LT(test::relative_norm_error(b.at(key), ta), 2e-5) << name << " " << key;
    }
    // And training moved them: A_log starts at 1 under mimic seeding.
    EXPECT_GT((a.at("mixer.A_log") - 1).abs().max().item<double>(), 1e-3) << name;
  }
}

}  // namespace
}  // namespace carve
