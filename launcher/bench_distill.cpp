// carve bench distill: stage-1 throughput per GPU for 1 process and for all of them, as data-parallel replicas and
// as layer groups, side by side in one run, with the scaling efficiency and the share of step time spent waiting for
// data or communication. Under `mpirun -np P`; the single-process row runs on rank 0 alone.
#include <filesystem>
#include <iomanip>
#include <iostream>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/fs.h"
#include "base/log.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_session.h"
#include "data/samples.h"
#include "launcher/benches.h"
#include "launcher/model_options.h"
#include "model/random_teacher.h"
#include "trainer/layer_distill.h"
#include "trainer/precompute.h"

namespace carve::launcher {
namespace {

struct Row {
  std::string name;
  int processes = 1, groups = 1, replicas = 1;
  double seconds = 0, tokens = 0, data_wait = 0, comm_wait = 0;
  double tokens_per_s_per_gpu() const { return tokens / seconds / processes; }
};


}  // namespace

int bench_distill(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i)
    if (args[i] == "--stage=3" || (args[i] == "--stage" && i + 1 < args.size() && args[i + 1] == "3"))
      return bench_e2e(args);
  std::string random_teacher = "hovle", work = "bench-distill", device_text, json_path, mixer = "seeded";
  int threads = 0;
  int64_t layers = 4, tokens = 1 << 17, sample_tokens = 2048, batch_tokens = 8192, steps = 12, warmup_steps = 3;
  po::options_description desc("carve bench distill");
  desc.add_options()("random-teacher", po::value<std::string>(&random_teacher)->default_value(random_teacher),
                     "random llama teacher: hovle or HIDDENxLAYERSxHEADSxKVxMLPxVOCAB")(
      "stage", po::value<std::string>()->default_value("1"), "1 (layer-wise; stage 2 costs the same) or 3 (bench_e2e)")(
      "layers", po::value<int64_t>(&layers)->default_value(layers), "teacher layers (all become Mamba layers)")(
      "mixer", po::value<std::string>(&mixer)->default_value(mixer), "seeded or mamba2")(
      "tokens", po::value<int64_t>(&tokens)->default_value(tokens), "tokens in the cache")(
      "sample-tokens", po::value<int64_t>(&sample_tokens)->default_value(sample_tokens), "tokens per sample")(
      "batch-tokens", po::value<int64_t>(&batch_tokens)->default_value(batch_tokens), "tokens per micro-batch")(
      "steps", po::value<int64_t>(&steps)->default_value(steps), "timed steps per configuration")(
      "warmup-steps", po::value<int64_t>(&warmup_steps)->default_value(warmup_steps), "untimed steps first")(
      "work", po::value<std::string>(&work)->default_value(work), "scratch folder")(
      "threads", po::value<int>(&threads)->default_value(threads), "CPU threads per process (0: the node's cores / processes)")(
      "device", po::value<std::string>(&device_text)->default_value(torch::cuda::is_available() ? "cuda" : "cpu"),
      "cpu | cuda (one GPU per local rank)")("json", po::value<std::string>(&json_path)->default_value(""),
                                             "write results as JSON");
  auto parsed = parse_options("bench distill", desc, args);
  if (parsed.help) {
    std::cout << "usage: [mpirun -np P] carve bench distill [options]\n" << desc << "\n";
    return 0;
  }
  comm::MpiSession mpi;
  comm::default_cpu_threads(threads);
  const auto device = rank_device(parse_device(device_text, "device"), device_text);
  comm::MpiCommunicator world(MPI_COMM_WORLD, "world");
  const bool lead = world.rank() == 0;

  auto dims = model::parse_random_teacher_dims(random_teacher, "--random-teacher");
  dims.layers = layers;
  const auto [teacher, samples] = write_random_bench_inputs(world, work, dims, tokens, sample_tokens);
  const auto cache = fs::join(work, "cache");
  trainer::PrecomputeOptions pre;
  pre.teacher_dir = teacher;
  pre.samples_path = samples;
  pre.cache_dir = cache;
  for (int64_t l = 0; l < layers; ++l) pre.layers.push_back(l);
  pre.final_hidden = false;
  pre.top_k = 0;
  pre.compute = device.is_cuda() ? torch::kBFloat16 : torch::kFloat32;
  pre.device = device;
  pre.batch_tokens = batch_tokens;
  trainer::precompute_cache(pre);

  trainer::LayerDistillOptions o;
  o.teacher_dir = teacher;
  o.cache_dir = cache;
  o.spec.layout = model::Layout::parse(std::string(static_cast<size_t>(layers), 'M'), layers);
  o.spec.mixer = model::parse_mixer_kind(mixer, "--mixer");
  o.batch_tokens = batch_tokens;
  o.steps = warmup_steps + steps;
  o.lr.warmup = 0;
  o.lr.kind = trainer::Schedule::Constant;
  o.log_every = 1 << 30;
  o.progress_seconds = 1e30;
  o.device = device;
  o.teacher_dtype = device.is_cuda() ? torch::kBFloat16 : torch::kFloat32;
  o.profile_sync = true;
  o.write_metrics = false;
  o.save_checkpoints = false;

  // Each configuration: (processes, layer groups). Timings are the slowest rank's, after the warmup steps.
  auto measure = [&](const std::string& name, comm::MpiCommunicator& comm, int groups) {
    auto opt = o;
    opt.layer_groups = groups;
    opt.run_dir = fs::join(work, "run_" + name);
    auto report = trainer::run_layer_distill(opt, comm);
    Row r;
    r.name = name;
    r.processes = comm.size();
    r.groups = groups;
    r.replicas = comm.size() / groups;
    const auto timed = report.steps.totals(static_cast<size_t>(warmup_steps));
    r.seconds = timed.seconds;
    r.data_wait = timed.data_wait;
    r.comm_wait = timed.comm_wait;
    // Tokens through every layer: a group's tokens cover its share of the layers.
    r.tokens = static_cast<double>(timed.tokens) / groups;
    // The slowest rank sets the pace: its time, and the tokens of the whole world.
    r.seconds = comm.all_reduce_value(r.seconds, comm::ReduceOp::Max);
    r.data_wait = comm.all_reduce_value(r.data_wait, comm::ReduceOp::Max);
    r.comm_wait = comm.all_reduce_value(r.comm_wait, comm::ReduceOp::Max);
    r.tokens = comm.all_reduce_value(r.tokens, comm::ReduceOp::Sum) / r.replicas;
    return r;
  };
  std::vector<Row> rows;
  // One process alone on each rank's GPU in turn: the baseline, and whether the GPUs (and their NUMA nodes) differ.
  // Rank r measures; its figures reach rank 0 by a broadcast.
  for (int r = 0; r < world.size(); ++r) {
    auto alone = world.split_mpi(world.rank() == r ? 0 : 1, world.rank(), "rank " + std::to_string(r) + " alone");
    Row row;
    row.name = r == 0 ? "1 process" : "1 process, rank " + std::to_string(r);
    if (world.rank() == r) row = measure(row.name, *alone, 1);
    auto numbers = torch::tensor({row.seconds, row.tokens, row.data_wait, row.comm_wait}, torch::kFloat64);
    world.broadcast(numbers, r);
    row.seconds = numbers[0].item<double>();
    row.tokens = numbers[1].item<double>();
    row.data_wait = numbers[2].item<double>();
    row.comm_wait = numbers[3].item<double>();
    rows.push_back(row);
  }
  if (world.size() > 1) {
    rows.push_back(measure(std::to_string(world.size()) + " replicas", world, 1));
    if (layers >= world.size())
      rows.push_back(measure(std::to_string(world.size()) + " layer groups", world, world.size()));
  }
  if (!lead) return 0;

  nlohmann::json out = {{"bench", "distill"},
                        {"stage", 1},
                        {"device", device.str()},
                        {"teacher", {{"hidden", dims.hidden}, {"layers", layers}, {"heads", dims.heads},
                                     {"kv_heads", dims.kv_heads}}},
                        {"mixer", mixer},
                        {"batch_tokens", batch_tokens},
                        {"steps", steps},
                        {"rows", nlohmann::json::array()}};
  std::cout << "\nstage-1 distillation, " << layers << " Mamba layers of hidden " << dims.hidden << ", " << dims.heads
            << " heads, " << dims.kv_heads << " KV heads; " << batch_tokens << "-token micro-batches on "
            << device.str() << "\n\n";
  std::cout << std::left << std::setw(22) << "configuration" << std::right << std::setw(12) << "tok/s/GPU"
            << std::setw(12) << "scaling" << std::setw(12) << "data wait" << std::setw(12) << "comm wait" << "\n";
  const double base = rows.front().tokens_per_s_per_gpu();
  for (const auto& r : rows) {
    const double scaling = r.tokens_per_s_per_gpu() / base;
    std::cout << std::left << std::setw(22) << r.name << std::right << std::fixed << std::setprecision(0)
              << std::setw(12) << r.tokens_per_s_per_gpu() << std::setprecision(3) << std::setw(12) << scaling
              << std::setprecision(1) << std::setw(11) << 100 * r.data_wait / r.seconds << "%" << std::setw(11)
              << 100 * r.comm_wait / r.seconds << "%\n";
    out["rows"].push_back({{"configuration", r.name},
                           {"processes", r.processes},
                           {"layer_groups", r.groups},
                           {"replicas", r.replicas},
                           {"tokens_per_s_per_gpu", r.tokens_per_s_per_gpu()},
                           {"scaling_efficiency", scaling},
                           {"data_wait_share", r.data_wait / r.seconds},
                           {"comm_wait_share", r.comm_wait / r.seconds},
                           {"seconds", r.seconds}});
  }
  std::cout << "\ntokens/s per GPU counts tokens through all " << layers
            << " layers; scaling = per-GPU rate / the 1-process rate; waits are shares of the slowest rank's step "
               "time (communication measured with the device synchronised around it)\n";
  if (!json_path.empty()) fs::write_file_atomic(json_path, out.dump(2) + "\n");
  return 0;
}

}  // namespace carve::launcher
