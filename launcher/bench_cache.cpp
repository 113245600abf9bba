// carve bench cache: precompute throughput, streaming read rate next to a plain sequential read of the same files
// (same run), and how long a stage-1-like consumer waits for data.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <random>

#include "base/error.h"
#include "base/fs.h"
#include "base/log.h"
#include "comm/mpi_session.h"
#include "data/activation_source.h"
#include "data/samples.h"
#include "launcher/benches.h"
#include "launcher/model_options.h"
#include "model/attention.h"
#include "model/checkpoint.h"
#include "model/hf_weights.h"
#include "model/random_teacher.h"
#include "model/seeding.h"
#include "model/student.h"
#include "trainer/precompute.h"

namespace carve::launcher {
namespace {

// Reads every file start to end in 8 MiB blocks: the rate a plain sequential reader gets from these files now.
double plain_read_mb_per_s(const std::vector<std::string>& files, int64_t& bytes) {
  std::vector<char> block(8 << 20);
  bytes = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& path : files) {
    int fd = ::open(path.c_str(), O_RDONLY);
    CARVE_CHECK_SYS(fd, "cannot open ", path);
    ssize_t n;
    while ((n = ::read(fd, block.data(), block.size())) > 0) bytes += n;
    ::close(fd);
    CARVE_CHECK_SYS(n, "cannot read ", path);
  }
  return bytes / seconds_since(t0) / 1e6;
}

}  // namespace

void write_random_token_samples(const std::string& path, int64_t tokens, int64_t sample_tokens, int64_t vocab) {
  data::SampleSet s;
  s.vocab_size = vocab;
  s.offsets = {0};
  std::mt19937_64 rng(1);
  while (static_cast<int64_t>(s.tokens.size()) < tokens) {
    for (int64_t i = 0; i < sample_tokens; ++i) s.tokens.push_back(static_cast<int32_t>(rng() % vocab));
    s.offsets.push_back(static_cast<int64_t>(s.tokens.size()));
  }
  data::write_samples(path, s);
}

RandomBenchInputs write_random_bench_inputs(comm::MpiCommunicator& world, const std::string& work,
                                            const model::RandomTeacherDims& dims, int64_t tokens,
                                            int64_t sample_tokens) {
  RandomBenchInputs in{fs::join(work, "teacher"), fs::join(work, "samples.h5")};
  world.rank0_decides([&] {
    fs::remove_tree(work);
    fs::make_directories(work);
    model::write_random_teacher(in.teacher, dims, torch::kBFloat16, 0);
    write_random_token_samples(in.samples, tokens, sample_tokens, dims.vocab);
  });
  return in;
}

int bench_cache(const std::vector<std::string>& args) {
  std::string teacher_dir, random_teacher, samples, work = "bench-cache", device_text, dtype_text, json_path;
  int64_t tokens = 1 << 16, sample_tokens = 1024, batch_tokens = 8192, shard_tokens = 1 << 18, top_k = 16;
  int stage_steps = 20;
  po::options_description desc("carve bench cache");
  desc.add_options()("teacher", po::value<std::string>(&teacher_dir), "teacher folder (or --random-teacher)")(
      "random-teacher", po::value<std::string>(&random_teacher),
      "write a random llama teacher: hovle or HIDDENxLAYERSxHEADSxKVxMLPxVOCAB")(
      "samples", po::value<std::string>(&samples), "sample file (default: random tokens, see --tokens)")(
      "tokens", po::value<int64_t>(&tokens)->default_value(tokens), "random samples: total tokens")(
      "sample-tokens", po::value<int64_t>(&sample_tokens)->default_value(sample_tokens), "random samples: length")(
      "batch-tokens", po::value<int64_t>(&batch_tokens)->default_value(batch_tokens), "tokens per batch")(
      "shard-tokens", po::value<int64_t>(&shard_tokens)->default_value(shard_tokens), "tokens per shard")(
      "top-k", po::value<int64_t>(&top_k)->default_value(top_k), "logits stream width")(
      "stage-steps", po::value<int>(&stage_steps)->default_value(stage_steps), "steps of the stage-1-like consumer")(
      "work", po::value<std::string>(&work)->default_value(work), "scratch folder (its cache is rewritten)")(
      "dtype", po::value<std::string>(&dtype_text)->default_value("bfloat16"), "teacher compute dtype")(
      "device", po::value<std::string>(&device_text)->default_value(torch::cuda::is_available() ? "cuda" : "cpu"),
      "cpu | cuda | cuda:N")("json", po::value<std::string>(&json_path)->default_value(""), "write results as JSON");
  auto parsed = parse_options("bench cache", desc, args);
  if (parsed.help) {
    std::cout << "usage: carve bench cache (--teacher DIR | --random-teacher hovle) [options]\n" << desc << "\n";
    return 0;
  }
  if (teacher_dir.empty() == random_teacher.empty())
    throw UsageError("give exactly one of --teacher and --random-teacher");
  const auto device = parse_device(device_text, "device");
  const auto dtype = parse_dtype(dtype_text, "dtype");
  comm::MpiSession mpi;
  CARVE_CHECK(mpi.size() == 1, "bench cache runs as one process");
  fs::make_directories(work);
  if (!random_teacher.empty()) {
    teacher_dir = fs::join(work, "teacher");
    if (!fs::exists(fs::join(teacher_dir, "config.json")))
      model::write_random_teacher(teacher_dir, model::parse_random_teacher_dims(random_teacher, "--random-teacher"),
                                  torch::kBFloat16, 0);
  }
  model::CheckpointReader ckpt(teacher_dir);
  const auto& config = ckpt.config();
  if (samples.empty()) {
    samples = fs::join(work, "samples.h5");
    write_random_token_samples(samples, tokens, sample_tokens, config.vocab_size);
  }
  const auto cache = fs::join(work, "cache");
  fs::remove_tree(cache);

  // 1. Precompute: layer 0's input and the logits (what stage 1 of layer 0 and stage 3 read).
  trainer::PrecomputeOptions po_;
  po_.teacher_dir = teacher_dir;
  po_.samples_path = samples;
  po_.cache_dir = cache;
  po_.layers = {0};
  po_.final_hidden = false;
  po_.top_k = top_k;
  po_.compute = dtype;
  po_.device = device;
  po_.shard_tokens = shard_tokens;
  po_.batch_tokens = batch_tokens;
  auto t0 = std::chrono::steady_clock::now();
  auto report = trainer::precompute_cache(po_);
  const double precompute_s = seconds_since(t0);

  // 2. Plain sequential read, streaming one epoch with nothing else to do, plain read again (the page cache is
  //    in the same state for the three).
  auto manifest = data::read_manifest(cache);
  std::vector<std::string> files;
  for (const auto& shard : manifest.files)
    for (const auto& f : shard) files.push_back(fs::join(cache, f.path));
  int64_t plain_bytes = 0;
  const double plain1 = plain_read_mb_per_s(files, plain_bytes);
  data::ActivationSourceOptions so;
  so.cache_dir = cache;
  so.layers = {0};
  so.logits = top_k > 0;
  so.batch_tokens = batch_tokens;
  so.prefetch = 4;
  so.pin_memory = device.is_cuda();
  double stream_mb_s = 0, stream_reader_mb_s = 0;
  {
    data::ActivationSource source(so);
    t0 = std::chrono::steady_clock::now();
    for (int64_t s = 0; s < source.steps_in_epoch(0); ++s) source.next();
    const double wall = seconds_since(t0);
    stream_mb_s = source.stats().bytes_read / wall / 1e6;
    stream_reader_mb_s = source.stats().read_mb_per_s();
  }
  const double plain2 = plain_read_mb_per_s(files, plain_bytes);
  const double plain = (plain1 + plain2) / 2;

  // 3. Feeding a stage: the seeded mixer of layer 0 trained against the teacher attention (forward, backward,
  //    AdamW) on each streamed batch; the share of the time it waited for data.
  auto lm = model::load_causal_lm(ckpt, torch::kFloat32, device);
  auto& layer = lm->layers[0];
  auto teacher_attention = std::dynamic_pointer_cast<model::AttentionImpl>(layer->mixer);
  CARVE_CHECK(teacher_attention, "layer 0 of the teacher has no attention");
  model::StudentSpec spec;
  spec.layout = model::Layout::parse(std::string(1, 'M') + std::string(config.num_layers - 1, 'A'), config.num_layers);
  auto mixer = model::make_ssm_mixer(config, spec);
  model::seed_mixer(*mixer, *teacher_attention, model::SeedMethod::Mimic, 0);
  mixer->to(device);
  std::vector<torch::Tensor> params;
  for (auto& p : mixer->parameters()) params.push_back(p);
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-4));
  data::ActivationSource source(so);
  const int steps = static_cast<int>(std::min<int64_t>(stage_steps, source.steps_in_epoch(0)));
  auto step = [&] {
    auto batch = source.next();
    auto x = batch.hidden[0].to(device, /*non_blocking=*/true).unsqueeze(0);
    model::MixerContext ctx;
    ctx.seq_idx = batch.seq_idx.to(device, true);
    ctx.positions = model::make_positions(1, x.size(1), 0, ctx.seq_idx, device);
    torch::Tensor target, pre;
    {
      torch::NoGradGuard no_grad;
      auto u = layer->input_norm(x.to(torch::kFloat32));
      ctx.pre_output = &target;
      teacher_attention->forward(u, ctx);
    }
    auto u = layer->input_norm(x.to(torch::kFloat32)).detach();
    ctx.pre_output = &pre;
    mixer->forward(u, ctx);
    auto mask = batch.valid.to(device, true).view({1, -1, 1});
    auto loss = ((pre - target).pow(2) * mask).sum() / (mask.sum() * pre.size(2)) * 1000.0;
    opt.zero_grad();
    loss.backward();
    opt.step();
    synchronize(device);
  };
  step();  // warm-up (allocations, first kernels)
  const auto wait0 = source.stats().wait_seconds;
  t0 = std::chrono::steady_clock::now();
  for (int i = 1; i < steps; ++i) step();
  const double stage_s = seconds_since(t0);
  const double waited = source.stats().wait_seconds - wait0;
  const int64_t stage_tokens = static_cast<int64_t>(steps - 1) * batch_tokens;

  nlohmann::json r = {
      {"device", device.str()},
      {"teacher", {{"hidden", config.hidden_size}, {"layers", config.num_layers}, {"vocab", config.vocab_size}}},
      {"tokens", manifest.plan.num_tokens},
      {"precompute_seconds", precompute_s},
      {"precompute_tokens_per_s", report.tokens_written / precompute_s},
      {"precompute_shard_loop_tokens_per_s", report.tokens_written / std::max(report.seconds, 1e-9)},
      {"cache_bytes_read_per_epoch", plain_bytes},
      {"plain_read_mb_per_s", {plain1, plain2}},
      {"stream_mb_per_s", stream_mb_s},
      {"stream_reader_thread_mb_per_s", stream_reader_mb_s},
      {"stream_over_plain", stream_mb_s / plain},
      {"stage_steps_timed", steps - 1},
      {"stage_tokens_per_s", stage_tokens / std::max(stage_s, 1e-9)},
      {"stage_wait_fraction", waited / std::max(stage_s, 1e-9)}};
  std::cout << std::fixed << std::setprecision(2) << "activation cache, teacher hidden " << config.hidden_size << ", "
            << manifest.plan.num_tokens << " tokens, " << device.str() << "\n"
            << "  precompute                 " << std::setw(12) << r["precompute_tokens_per_s"].get<double>()
            << " tokens/s (" << precompute_s << " s, layer 0 input + top-" << top_k << " logits; shards alone "
            << r["precompute_shard_loop_tokens_per_s"].get<double>() << " tokens/s, the rest is hashing, validation "
            << "and loading)\n"
            << "  plain sequential read      " << std::setw(12) << plain << " MB/s (" << plain1 << ", " << plain2
            << ")\n"
            << "  streaming (one epoch)      " << std::setw(12) << stream_mb_s << " MB/s = " << std::setprecision(3)
            << stream_mb_s / plain << " of plain (reader thread alone " << std::setprecision(2) << stream_reader_mb_s
            << " MB/s)\n"
            << "  stage-1-like consumer      " << std::setw(12) << r["stage_tokens_per_s"].get<double>()
            << " tokens/s, waited for data " << std::setprecision(1) << 100 * r["stage_wait_fraction"].get<double>()
            << "% of its time (" << steps - 1 << " steps)\n";
  if (!json_path.empty()) fs::write_file_atomic(json_path, r.dump(2) + "\n");
  return 0;
}

}  // namespace carve::launcher
