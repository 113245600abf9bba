// carve distill: every distillation stage under mpirun. Stages 1 and 2 are layer-wise (trainer/layer_distill),
// stage 3 and MaTVLM's one stage are end to end (trainer/e2e_distill). Each writes OUT/<stage>/ and exports the
// student to OUT/<stage>/student.
#include <iostream>

#include "base/error.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/text.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_session.h"
#include "launcher/model_options.h"
#include "launcher/student_options.h"
#include "launcher/subcommands.h"
#include "model/config.h"
#include "trainer/e2e_distill.h"
#include "trainer/layer_distill.h"

namespace carve::launcher {

int distill_main(const std::vector<std::string>& args) {
  ModelOptions teacher;
  StudentOptions student;
  std::string stage = "1", cache, out, init, schedule = "wsd", locking, samples, teacher_logits = "online", trainable, kernels,
              on_nonfinite = "stop";
  int layer_groups = 1;
  int64_t steps = 0, batch_tokens = 2048, grad_accum = 1, data_seed = 0, checkpoint_every = 0, keep = 2,
          log_every = 10, stop_after = 0, bucket_mb = 25;
  double lr = 0, warmup = 0.1, decay = 0.1, min_lr_ratio = 0.0, weight_decay = 0.05, beta1 = 0.9, beta2 = 0.999,
         clip = 2.0, comm_timeout = 600;
  bool shuffle = true, autocast = true, zero1 = false, export_full = false;
  double temperature = 1.0, kl_weight = 1.0, ce_weight = 0.0, layer_weight = 1.0;
  int threads = 0;
  po::options_description run("Run");
  run.add_options()("stage", po::value<std::string>(&stage)->default_value(stage), "1, 2 (mmMamba's layer-wise stages), 3 (end to end) or one-stage (MaTVLM)")(
      "cache", po::value<std::string>(&cache), "teacher activation cache (carve precompute); stages 1-2 need it")(
      "samples", po::value<std::string>(&samples),
      "stage 3 / one-stage: sample file (token ids, answers, images; default: the one the cache was made from)")(
      "out", po::value<std::string>(&out)->required(),
      "run folder: the stage writes OUT/stage<N>/ (checkpoints, metrics.jsonl, student/) and resumes from it")(
      "init", po::value<std::string>(&init), "stage 2: the stage-1 run folder to start from (default OUT/stage1); stage 3: the student folder "
      "(default OUT/stage2/student)")(
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
      "on-nonfinite", po::value<std::string>(&on_nonfinite)->default_value(on_nonfinite),
      "a step whose loss or gradient norm is NaN or infinite: stop (an error naming the step and the layer or loss "
      "term; weights and checkpoints stay as they were) or skip (no update; logged, counted in metrics.jsonl)")(
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
  po::options_description e2e("Stage 3 and one-stage (defaults: mmMamba's stage 3; MaTVLM: see configs/)");
  e2e.add_options()("teacher-logits", po::value<std::string>(&teacher_logits)->default_value(teacher_logits),
                    "online (run the teacher, full logits) or cache (the cache's top-k log-probabilities)")(
      "temperature", po::value<double>(&temperature)->default_value(temperature), "KL temperature T (loss x T^2)")(
      "kl-weight", po::value<double>(&kl_weight)->default_value(kl_weight), "weight of KL(teacher || student)")(
      "ce-weight", po::value<double>(&ce_weight)->default_value(ce_weight), "weight of cross-entropy on labelled tokens")(
      "layer-weight", po::value<double>(&layer_weight)->default_value(layer_weight),
      "one-stage: weight of the summed per-layer L2 distances")(
      "trainable", po::value<std::string>(&trainable),
      "comma list of mixer parameter roles to train: qkv, out, mixing, dynamics (default: the stage's set)")(
      "zero1", po::value<bool>(&zero1)->default_value(zero1), "shard the optimizer state across the processes")(
      "export-full", po::value<bool>(&export_full)->default_value(export_full),
      "export every parameter (default: only the mixers; the folder records the teacher)");
  po::options_description desc("carve distill");
  desc.add(model_options(teacher, "teacher", "teacher checkpoint folder (the one the cache was computed from)"))
      .add(student_options(student))
      .add(run)
      .add(optim)
      .add(e2e)
      .add(hdf5_options(locking))
      .add(kernel_options(kernels));
  // A recipe file holds every stage: its [stage1], [stage2], [stage3] or [one-stage] section applies to that stage.
  auto parsed = parse_options("distill", desc, args, nullptr,
                              {"stage", "1", [](const std::string& v) { return model::stage_name(model::parse_stage(v, "--stage")); }});
  if (parsed.help) {
    std::cout << "usage: mpirun -np N carve distill --stage 1|2|3|one-stage --teacher DIR --cache CACHE --out RUN "
                 "--layout AMMM... [options]\n"
              << desc << "\n";
    return 0;
  }
  apply_kernels(kernels);
  comm::MpiSession mpi;
  apply_hdf5_locking(locking);
  comm::default_cpu_threads(threads);

  const auto stage_kind = model::parse_stage(stage, "--stage");
  const bool layer_wise = stage_kind == model::Stage::Stage1 || stage_kind == model::Stage::Stage2;
  const auto config = model::load_model_config(fs::join(teacher.path, "config.json"));
  const std::string stage_dir = fs::join(out, model::stage_name(stage_kind));

  // The training-loop options every stage shares.
  auto fill = [&](trainer::TrainRunOptions& o, double default_lr) {
    o.teacher_dir = teacher.path;
    o.weight_prefix = teacher.weight_prefix;
    o.cache_dir = cache;
    o.run_dir = stage_dir;
    o.spec = resolve_student(student, config.num_layers);
    o.steps = steps;
    o.batch_tokens = batch_tokens;
    o.grad_accum = grad_accum;
    o.data_seed = static_cast<uint64_t>(data_seed);
    o.shuffle = shuffle;
    o.lr.kind = trainer::parse_schedule(schedule, "--schedule");
    o.lr.peak = lr > 0 ? lr : default_lr;
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
    o.on_nonfinite = trainer::parse_nonfinite_policy(on_nonfinite, "--on-nonfinite");
    o.device = rank_device(parse_device(teacher.device, "device"), teacher.device);
    o.teacher_dtype = parse_dtype(teacher.dtype, "dtype");
    o.autocast = autocast;
  };
  if (comm_timeout <= 0) throw UsageError("--comm-timeout: a positive number of seconds");
  auto start = [&] {
    if (mpi.rank() == 0) {
      fs::make_directories(stage_dir);
      record_config("distill", desc, parsed.values, stage_dir);
    }
    return std::make_unique<comm::MpiCommunicator>(
        MPI_COMM_WORLD, "world", std::chrono::milliseconds(static_cast<int64_t>(comm_timeout * 1000)));
  };
  const auto student_dir = fs::join(stage_dir, "student");

  if (layer_wise) {
    if (cache.empty()) throw UsageError("--cache: stages 1 and 2 read the teacher's layer inputs from a cache");
    trainer::LayerDistillOptions o;
    const bool stage2 = stage_kind == model::Stage::Stage2;
    fill(o, stage2 ? 5e-4 : 1e-3);
    o.stage = stage_kind;
    o.init_dir = stage2 ? (init.empty() ? fs::join(out, "stage1") : init) : "";
    if (!stage2 && !init.empty()) throw UsageError("--init: stage 1 starts from the seeding, not another run");
    o.layer_groups = layer_groups;
    auto world = start();
    auto report = trainer::run_layer_distill(o, *world);
    if (!report.stopped && mpi.rank() == 0) {
      trainer::export_layer_student(o, student_dir);
      log::info("distill", "student written to ", student_dir);
    }
    return report.stopped ? 75 : 0;  // 75 (EX_TEMPFAIL): stopped early, run again to resume
  }

  trainer::E2eDistillOptions o;
  const bool one_stage = stage_kind == model::Stage::OneStage;
  fill(o, one_stage ? 2e-4 : 5e-5);
  o.stage = stage_kind;
  if (layer_groups != 1) throw UsageError("--layer-groups: stage 3 and one-stage are data parallel only");
  o.samples_path = samples;
  if (one_stage && !init.empty()) throw UsageError("--init: the one-stage recipe starts from the seeding");
  o.init_student = one_stage ? "" : (init.empty() ? fs::join(fs::join(out, "stage2"), "student") : init);
  if (!one_stage && !fs::exists(fs::join(o.init_student, "config.json")))
    throw UsageError("--init: " + o.init_student + " is not a student folder (run stage 2 first, or give --init)");
  o.teacher_signal = trainer::parse_teacher_signal(teacher_logits, "--teacher-logits");
  o.temperature = temperature;
  o.kl_weight = kl_weight;
  o.ce_weight = ce_weight;
  o.layer_weight = layer_weight;
  if (kl_weight < 0 || ce_weight < 0 || layer_weight < 0) throw UsageError("--kl-weight, --ce-weight, --layer-weight: at least 0");
  o.zero1 = zero1;
  if (!trainable.empty()) {
    for (auto& name : split_list(trainable)) {
      if (name == "qkv") o.trainable_roles.insert(model::ParamRole::Qkv);
      else if (name == "out") o.trainable_roles.insert(model::ParamRole::Out);
      else if (name == "mixing") o.trainable_roles.insert(model::ParamRole::Mixing);
      else if (name == "dynamics") o.trainable_roles.insert(model::ParamRole::Dynamics);
      else throw UsageError("--trainable: '" + name + "' is not a role (qkv, out, mixing, dynamics)");
    }
  }
  auto world = start();
  auto report = trainer::run_e2e_distill(o, *world);
  if (!report.stopped && mpi.rank() == 0) {
    trainer::export_e2e_student(o, student_dir, export_full);
    log::info("distill", "student written to ", student_dir);
  }
  return report.stopped ? 75 : 0;
}

}  // namespace carve::launcher
