// carve distill: layer-wise distillation (stages 1 and 2) under mpirun; see trainer/layer_distill.
#include <iostream>

#include "base/error.h"
#include "base/fs.h"
#include "base/log.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_session.h"
#include "launcher/model_options.h"
#include "launcher/student_options.h"
#include "launcher/subcommands.h"
#include "model/config.h"
#include "trainer/layer_distill.h"

namespace carve::launcher {

int distill_main(const std::vector<std::string>& args) {
  ModelOptions teacher;
  StudentOptions student;
  std::string stage = "1", cache, out, init, schedule = "wsd", locking;
  int layer_groups = 1;
  int64_t steps = 0, batch_tokens = 2048, grad_accum = 1, data_seed = 0, checkpoint_every = 0, keep = 2,
          log_every = 10, stop_after = 0, bucket_mb = 25;
  double lr = 0, warmup = 0.1, decay = 0.1, min_lr_ratio = 0.0, weight_decay = 0.05, beta1 = 0.9, beta2 = 0.999,
         clip = 2.0, comm_timeout = 600;
  bool shuffle = true, autocast = true;
  int threads = 0;
  po::options_description run("Run");
  run.add_options()("stage", po::value<std::string>(&stage)->default_value(stage), "1 or 2 (mmMamba's layer-wise stages)")(
      "cache", po::value<std::string>(&cache)->required(), "teacher activation cache (carve precompute)")(
      "out", po::value<std::string>(&out)->required(),
      "run folder: the stage writes OUT/stage<N>/ (checkpoints, metrics.jsonl, student/) and resumes from it")(
      "init", po::value<std::string>(&init), "stage 2: the stage-1 folder to start from (default OUT/stage1)")(
      "layer-groups", po::value<int>(&layer_groups)->default_value(layer_groups),
      "layer groups; the processes are layer groups x data-parallel replicas")(
      "steps", po::value<int64_t>(&steps)->default_value(steps), "optimizer steps (0: one epoch of the cache)")(
      "batch-tokens", po::value<int64_t>(&batch_tokens)->default_value(batch_tokens),
      "token slots per micro-batch per process (whole samples packed)")(
      "grad-accum", po::value<int64_t>(&grad_accum)->default_value(grad_accum), "micro-batches per optimizer step")(
      "data-seed", po::value<int64_t>(&data_seed)->default_value(data_seed), "seed of the sample order")(
      "shuffle", po::value<bool>(&shuffle)->default_value(shuffle), "shuffle the samples every epoch")(
      "checkpoint-every", po::value<int64_t>(&checkpoint_every)->default_value(checkpoint_every),
      "steps between checkpoints (0: only at the end and on a stop)")(
      "keep-checkpoints", po::value<int64_t>(&keep)->default_value(keep), "complete checkpoints to keep")(
      "log-every", po::value<int64_t>(&log_every)->default_value(log_every), "steps between loss lines and metrics")(
      "stop-after", po::value<int64_t>(&stop_after)->default_value(stop_after),
      "stop with a checkpoint after this many steps of this invocation (0: run to the end); SIGTERM does the same")(
      "threads", po::value<int>(&threads)->default_value(threads), "CPU threads per process (0: the node's cores / its processes)")(
      "comm-timeout", po::value<double>(&comm_timeout)->default_value(comm_timeout),
      "seconds a collective may take before the job is ended");
  po::options_description optim("Optimisation (defaults: mmMamba's code)");
  optim.add_options()("lr", po::value<double>(&lr)->default_value(lr), "peak learning rate (0: 1e-3 in stage 1, 5e-4 in stage 2)")(
      "schedule", po::value<std::string>(&schedule)->default_value(schedule), "wsd, cosine or constant")(
      "warmup", po::value<double>(&warmup)->default_value(warmup), "warmup fraction of the steps")(
      "decay", po::value<double>(&decay)->default_value(decay), "decay fraction of the steps (wsd)")(
      "min-lr-ratio", po::value<double>(&min_lr_ratio)->default_value(min_lr_ratio), "final lr / peak lr")(
      "weight-decay", po::value<double>(&weight_decay)->default_value(weight_decay), "AdamW decay of matrices")(
      "beta1", po::value<double>(&beta1)->default_value(beta1), "AdamW beta1")(
      "beta2", po::value<double>(&beta2)->default_value(beta2), "AdamW beta2")(
      "clip", po::value<double>(&clip)->default_value(clip), "gradient norm clip (0: none)")(
      "bucket-mb", po::value<int64_t>(&bucket_mb)->default_value(bucket_mb), "gradient all-reduce bucket size, MiB")(
      "autocast", po::value<bool>(&autocast)->default_value(autocast), "bf16 autocast on CUDA");
  po::options_description desc("carve distill");
  desc.add(model_options(teacher, "teacher", "teacher checkpoint folder (the one the cache was computed from)"))
      .add(student_options(student))
      .add(run)
      .add(optim)
      .add(hdf5_options(locking));
  auto parsed = parse_options("distill", desc, args);
  if (parsed.help) {
    std::cout << "usage: mpirun -np N carve distill --stage 1|2 --teacher DIR --cache CACHE --out RUN --layout AMMM... "
                 "[options]\n"
              << desc << "\n";
    return 0;
  }
  comm::MpiSession mpi;
  apply_hdf5_locking(locking);
  comm::default_cpu_threads(threads);

  trainer::LayerDistillOptions o;
  o.stage = model::parse_stage(stage, "--stage");
  if (o.stage != model::Stage::Stage1 && o.stage != model::Stage::Stage2)
    throw UsageError("--stage: carve distill runs stage 1 or 2 (stage 3 is not built yet)");
  const bool stage2 = o.stage == model::Stage::Stage2;
  o.teacher_dir = teacher.path;
  o.weight_prefix = teacher.weight_prefix;
  o.cache_dir = cache;
  o.run_dir = fs::join(out, stage2 ? "stage2" : "stage1");
  o.init_dir = stage2 ? (init.empty() ? fs::join(out, "stage1") : init) : "";
  if (!stage2 && !init.empty()) throw UsageError("--init: only stage 2 starts from another run");
  const auto config = model::load_model_config(fs::join(teacher.path, "config.json"));
  o.spec = resolve_student(student, config.num_layers);
  o.layer_groups = layer_groups;
  o.steps = steps;
  o.batch_tokens = batch_tokens;
  o.grad_accum = grad_accum;
  o.data_seed = static_cast<uint64_t>(data_seed);
  o.shuffle = shuffle;
  o.lr.kind = trainer::parse_schedule(schedule, "--schedule");
  o.lr.peak = lr > 0 ? lr : (stage2 ? 5e-4 : 1e-3);
  o.lr.warmup = warmup;
  o.lr.decay = decay;
  o.lr.min_ratio = min_lr_ratio;
  if (warmup < 0 || decay < 0 || warmup + decay > 1)
    throw UsageError("--warmup and --decay: fractions of the steps, at least 0 and together at most 1");
  o.adam.beta1 = beta1;
  o.adam.beta2 = beta2;
  o.adam.weight_decay = weight_decay;
  o.clip = clip;
  if (bucket_mb < 1) throw UsageError("--bucket-mb: at least 1");
  o.bucket_bytes = bucket_mb << 20;
  o.checkpoint_every = checkpoint_every;
  o.keep_checkpoints = keep;
  o.log_every = log_every;
  o.stop_after = stop_after;
  o.device = rank_device(parse_device(teacher.device, "device"), teacher.device);
  o.teacher_dtype = parse_dtype(teacher.dtype, "dtype");
  o.autocast = autocast;
  if (comm_timeout <= 0) throw UsageError("--comm-timeout: a positive number of seconds");
  if (mpi.rank() == 0) {
    fs::make_directories(o.run_dir);
    record_config("distill", desc, parsed.values, o.run_dir);
  }
  comm::MpiCommunicator world(MPI_COMM_WORLD, "world",
                              std::chrono::milliseconds(static_cast<int64_t>(comm_timeout * 1000)));
  auto report = trainer::run_layer_distill(o, world);
  if (!report.stopped && mpi.rank() == 0) {
    const auto student_dir = fs::join(o.run_dir, "student");
    trainer::export_layer_student(o, student_dir);
    log::info("distill", "student written to ", student_dir);
  }
  return report.stopped ? 75 : 0;  // 75 (EX_TEMPFAIL): stopped early, run again to resume
}

}  // namespace carve::launcher
