// carve bench distill --stage 3: end-to-end distillation of a hybrid student at a real teacher's dimensions (random
// weights), online teacher, for 1 process and for all of them as data-parallel replicas (plain and with the optimizer
// state sharded), side by side in one run: tokens/s per GPU, model FLOPs utilisation, peak memory, scaling.
//
// Model FLOPs per token follow the usual convention (so they compare with the peers in ../shared/TARGETS.md): the
// student's forward and backward as 3 x its forward (6 x its matrix parameters, plus 3 x its attention and SSD work),
// and the teacher's forward (2 x its matrix parameters plus its attention). Causal attention over a sample of l
// tokens costs 2 x l x heads x head_dim per token per layer in the forward (QK^T and AV, half the square each); the
// chunked SSD of chunk Q costs Q x (N + P) + 4 x N x P per token per head (intra-chunk scores and outputs, chunk
// states in and out). Embedding lookups are not counted. Utilisation = model FLOPs / time / the GPU's dense bf16 peak.
#include <iomanip>
#include <iostream>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/fs.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_session.h"
#include "launcher/benches.h"
#include "launcher/model_options.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/random_teacher.h"
#include "trainer/device_memory.h"
#include "trainer/e2e_distill.h"

namespace carve::launcher {
namespace {

struct Row {
  std::string name;
  int processes = 1;
  bool zero1 = false;
  double seconds = 0, tokens = 0, comm_wait = 0, peak_bytes = 0;
  double tokens_per_s_per_gpu() const { return tokens / seconds / processes; }
};

// Forward FLOPs per token of the matrix parameters (2 per weight) of a model with `layout` ('A' attention kept,
// 'M' seeded Mamba mixer of the same q/k/v/o shapes plus W_gamma and W_G), and of its sequence mixing.
struct Flops {
  double matmul = 0, mixing = 0;
};
Flops forward_flops(const model::ModelConfig& c, const std::string& layout, int64_t sample_tokens, int64_t chunk) {
  const double d = static_cast<double>(c.hidden_size), h = static_cast<double>(c.num_heads),
               kv = static_cast<double>(c.num_kv_heads), p = static_cast<double>(c.head_dim),
               mlp = static_cast<double>(c.intermediate_size), vocab = static_cast<double>(c.vocab_size);
  Flops f;
  for (char kind : layout) {
    double weights = d * (h * p) * 2 + d * (kv * p) * 2 + 3 * d * mlp;  // q, o, k, v; gate, up, down
    if (kind == 'M') {
      weights += d * h + d * (h * p);  // W_gamma (dt), W_G (gate)
      f.mixing += h * (static_cast<double>(chunk) * (p + p) + 4 * p * p);
    } else {
      f.mixing += 2 * static_cast<double>(sample_tokens) * h * p;
    }
    f.matmul += 2 * weights;
  }
  f.matmul += 2 * d * vocab;  // the LM head
  return f;
}

}  // namespace

int bench_e2e(const std::vector<std::string>& args) {
  std::string random_teacher = "hovle", work = "bench-e2e", device_text, json_path, layout, stage = "3", kernels;
  int threads = 0;
  int64_t layers = 32, sample_tokens = 8192, batch_tokens = 8192, steps = 6, warmup_steps = 2;
  double peak_tflops = 989.0;
  po::options_description desc("carve bench distill --stage 3");
  desc.add_options()("stage", po::value<std::string>(&stage)->default_value(stage), "3 (end to end)")(
      "random-teacher", po::value<std::string>(&random_teacher)->default_value(random_teacher),
      "random llama teacher: hovle or HIDDENxLAYERSxHEADSxKVxMLPxVOCAB")(
      "layers", po::value<int64_t>(&layers)->default_value(layers), "teacher layers")(
      "layout", po::value<std::string>(&layout),
      "student layout (default: attention kept in the first layer of every 4, mmMamba-hybrid)")(
      "sample-tokens", po::value<int64_t>(&sample_tokens)->default_value(sample_tokens), "tokens per sample")(
      "batch-tokens", po::value<int64_t>(&batch_tokens)->default_value(batch_tokens), "tokens per micro-batch")(
      "steps", po::value<int64_t>(&steps)->default_value(steps), "timed steps per configuration")(
      "warmup-steps", po::value<int64_t>(&warmup_steps)->default_value(warmup_steps), "untimed steps first")(
      "peak-tflops", po::value<double>(&peak_tflops)->default_value(peak_tflops),
      "the GPU's dense bf16 peak, TFLOP/s (H100/H200 SXM: 989)")(
      "work", po::value<std::string>(&work)->default_value(work), "scratch folder")(
      "threads", po::value<int>(&threads)->default_value(threads), "CPU threads per process")(
      "device", po::value<std::string>(&device_text)->default_value(torch::cuda::is_available() ? "cuda" : "cpu"),
      "cpu | cuda (one GPU per local rank)")("json", po::value<std::string>(&json_path)->default_value(""),
                                             "write results as JSON");
  desc.add(kernel_options(kernels));
  auto parsed = parse_options("bench distill", desc, args);
  if (parsed.help) {
    std::cout << "usage: [mpirun -np P] carve bench distill --stage 3 [options]\n" << desc << "\n";
    return 0;
  }
  apply_kernels(kernels);
  if (stage != "3") throw UsageError("--stage: this benchmark runs stage 3");
  comm::MpiSession mpi;
  comm::default_cpu_threads(threads);
  const auto device = rank_device(parse_device(device_text, "device"), device_text);
  comm::MpiCommunicator world(MPI_COMM_WORLD, "world");
  const bool lead = world.rank() == 0;
  auto dims = model::parse_random_teacher_dims(random_teacher, "--random-teacher");
  dims.layers = layers;
  if (layout.empty())
    for (int64_t i = 0; i < layers; ++i) layout.push_back(i % 4 == 0 ? 'A' : 'M');
  const int64_t tokens = sample_tokens * ((batch_tokens / sample_tokens) * (warmup_steps + steps) * world.size() + 1);
  const auto [teacher, samples] = write_random_bench_inputs(world, work, dims, tokens, sample_tokens);

  trainer::E2eDistillOptions o;
  o.teacher_dir = teacher;
  o.samples_path = samples;
  o.spec.layout = model::Layout::parse(layout, layers);
  o.batch_tokens = batch_tokens;
  o.steps = warmup_steps + steps;
  o.lr.warmup = 0;
  o.lr.kind = trainer::Schedule::Constant;
  o.lr.peak = 1e-5;
  o.log_every = 1 << 30;
  o.progress_seconds = 1e30;
  o.device = device;
  o.teacher_dtype = device.is_cuda() ? torch::kBFloat16 : torch::kFloat32;
  o.profile_sync = true;
  o.write_metrics = false;
  o.save_checkpoints = false;

  const auto config = model::CheckpointReader(teacher).config();
  const auto student_flops = forward_flops(config, layout, sample_tokens, o.spec.effective_chunk_size());
  const auto teacher_flops = forward_flops(config, std::string(static_cast<size_t>(layers), 'A'), sample_tokens, 0);
  const double flops_per_token = 3 * (student_flops.matmul + student_flops.mixing) + teacher_flops.matmul +
                                 teacher_flops.mixing;

  auto measure = [&](const std::string& name, comm::MpiCommunicator& comm, bool zero1) {
    auto opt = o;
    opt.zero1 = zero1;
    opt.run_dir = fs::join(work, "run_" + std::to_string(comm.size()) + (zero1 ? "_zero1" : ""));
    trainer::reset_peak_device_bytes(device);
    auto report = trainer::run_e2e_distill(opt, comm);
    Row r;
    r.name = name;
    r.processes = comm.size();
    r.zero1 = zero1;
    const auto timed = report.steps.totals(static_cast<size_t>(warmup_steps));
    r.seconds = timed.seconds;
    r.comm_wait = timed.comm_wait;
    r.tokens = static_cast<double>(timed.tokens);
    r.seconds = comm.all_reduce_value(r.seconds, comm::ReduceOp::Max);
    r.comm_wait = comm.all_reduce_value(r.comm_wait, comm::ReduceOp::Max);
    r.peak_bytes = comm.all_reduce_value(static_cast<double>(trainer::peak_device_bytes(device)), comm::ReduceOp::Max);
    return r;
  };
  std::vector<Row> rows;
  {
    auto alone = world.split_mpi(world.rank() == 0 ? 0 : 1, world.rank(), "rank 0 alone");
    Row row;
    if (world.rank() == 0) row = measure("1 process", *alone, false);
    auto numbers = torch::tensor({row.seconds, row.tokens, row.comm_wait, row.peak_bytes}, torch::kFloat64);
    world.broadcast(numbers, 0);
    row.name = "1 process";
    row.seconds = numbers[0].item<double>();
    row.tokens = numbers[1].item<double>();
    row.comm_wait = numbers[2].item<double>();
    row.peak_bytes = numbers[3].item<double>();
    rows.push_back(row);
  }
  if (world.size() > 1) {
    rows.push_back(measure(std::to_string(world.size()) + " replicas", world, false));
    rows.push_back(measure(std::to_string(world.size()) + " replicas, zero1", world, true));
  }
  if (!lead) return 0;

  nlohmann::json out = {{"bench", "distill"},
                        {"stage", 3},
                        {"device", device.str()},
                        {"teacher", {{"hidden", dims.hidden}, {"layers", layers}, {"heads", dims.heads},
                                     {"kv_heads", dims.kv_heads}, {"intermediate", dims.intermediate},
                                     {"vocab", dims.vocab}}},
                        {"layout", layout},
                        {"sample_tokens", sample_tokens},
                        {"batch_tokens", batch_tokens},
                        {"steps", steps},
                        {"model_flops_per_token", flops_per_token},
                        {"peak_tflops", peak_tflops},
                        {"rows", nlohmann::json::array()}};
  std::cout << "\nstage-3 distillation, " << layout << " student of a " << layers << "-layer teacher (hidden "
            << dims.hidden << ", vocab " << dims.vocab << "), online teacher, " << batch_tokens
            << "-token micro-batches of " << sample_tokens << "-token samples on " << device.str() << "; "
            << flops_per_token / 1e9 << " GFLOP per token\n\n";
  std::cout << std::left << std::setw(24) << "configuration" << std::right << std::setw(12) << "tok/s/GPU"
            << std::setw(10) << "MFU" << std::setw(12) << "peak GB" << std::setw(10) << "scaling" << std::setw(12)
            << "comm wait" << "\n";
  const double base = rows.front().tokens_per_s_per_gpu();
  for (const auto& r : rows) {
    const double mfu = r.tokens_per_s_per_gpu() * flops_per_token / (peak_tflops * 1e12);
    const double scaling = r.tokens_per_s_per_gpu() / base;
    std::cout << std::left << std::setw(24) << r.name << std::right << std::fixed << std::setprecision(0)
              << std::setw(12) << r.tokens_per_s_per_gpu() << std::setprecision(3) << std::setw(10) << mfu
              << std::setprecision(1) << std::setw(12) << r.peak_bytes / 1e9 << std::setprecision(3) << std::setw(10)
              << scaling << std::setprecision(1) << std::setw(11) << 100 * r.comm_wait / r.seconds << "%\n";
    out["rows"].push_back({{"configuration", r.name},
                           {"processes", r.processes},
                           {"zero1", r.zero1},
                           {"tokens_per_s_per_gpu", r.tokens_per_s_per_gpu()},
                           {"mfu", mfu},
                           {"peak_memory_bytes", r.peak_bytes},
                           {"scaling_efficiency", scaling},
                           {"comm_wait_share", r.comm_wait / r.seconds},
                           {"seconds", r.seconds}});
  }
  std::cout << "\nMFU = model FLOPs (student forward + backward as 3 x forward, teacher forward) / time / "
            << peak_tflops << " TFLOP/s; peak GB is the largest rank's allocator peak\n";
  if (!json_path.empty()) fs::write_file_atomic(json_path, out.dump(2) + "\n");
  return 0;
}

}  // namespace carve::launcher
