// carve pretrain: train the built-in example's small teacher on a sample file (trainer/pretrain).
#include <iostream>

#include "base/error.h"
#include "base/fs.h"
#include "base/log.h"
#include "comm/mpi_session.h"
#include "launcher/options.h"
#include "launcher/subcommands.h"
#include "trainer/pretrain.h"

namespace carve::launcher {

int pretrain_main(const std::vector<std::string>& args) {
  std::string samples, eval, out, dims = "64x4x4x2x172x260", schedule = "cosine";
  int64_t steps = 3000, batch_tokens = 2048, eval_every = 500, eval_samples = 500, seed = 0;
  double lr = 3e-3, warmup = 0.05, weight_decay = 0.01, clip = 1.0;
  int threads = 0;
  bool overwrite = false;
  po::options_description desc("carve pretrain");
  desc.add_options()("samples", po::value<std::string>(&samples)->required(), "training sample file")(
      "eval", po::value<std::string>(&eval), "evaluation sample file (exact match reported)")(
      "out", po::value<std::string>(&out)->required(), "teacher folder to write (config.json + model.safetensors)")(
      "dims", po::value<std::string>(&dims)->default_value(dims), "HIDDENxLAYERSxHEADSxKV_HEADSxMLPxVOCAB (llama)")(
      "steps", po::value<int64_t>(&steps)->default_value(steps), "optimizer steps")(
      "batch-tokens", po::value<int64_t>(&batch_tokens)->default_value(batch_tokens), "token slots per step")(
      "lr", po::value<double>(&lr)->default_value(lr), "peak learning rate")(
      "schedule", po::value<std::string>(&schedule)->default_value(schedule), "wsd, cosine or constant")(
      "warmup", po::value<double>(&warmup)->default_value(warmup), "warmup fraction")(
      "weight-decay", po::value<double>(&weight_decay)->default_value(weight_decay), "AdamW decay of matrices")(
      "clip", po::value<double>(&clip)->default_value(clip), "gradient norm clip (0: none)")(
      "eval-every", po::value<int64_t>(&eval_every)->default_value(eval_every), "steps between evaluations")(
      "eval-samples", po::value<int64_t>(&eval_samples)->default_value(eval_samples), "samples per evaluation")(
      "seed", po::value<int64_t>(&seed)->default_value(seed), "seed of the initial weights and sample order")(
      "threads", po::value<int>(&threads)->default_value(threads), "CPU threads (0: all cores)")(
      "overwrite", po::bool_switch(&overwrite), "replace the teacher already in --out");
  auto parsed = parse_options("pretrain", desc, args);
  if (parsed.help) {
    std::cout << "usage: carve pretrain --samples train.h5 --eval eval.h5 --out DIR [options]\n" << desc << "\n";
    return 0;
  }
  if (!overwrite && fs::exists(fs::join(out, "config.json")))
    throw Error("--out: " + out + " already holds a checkpoint (config.json exists); pass --overwrite to replace it");
  comm::default_cpu_threads(threads);
  trainer::PretrainOptions o;
  o.samples_path = samples;
  o.eval_path = eval;
  o.out_dir = out;
  o.dims = model::parse_random_teacher_dims(dims, "--dims");
  o.seed = static_cast<uint64_t>(seed);
  o.steps = steps;
  o.batch_tokens = batch_tokens;
  o.lr.kind = trainer::parse_schedule(schedule, "--schedule");
  o.lr.peak = lr;
  o.lr.warmup = warmup;
  o.lr.decay = 0.1;
  o.adam.beta2 = 0.95;
  o.adam.weight_decay = weight_decay;
  o.clip = clip;
  o.eval_every = eval_every;
  o.eval_samples = eval_samples;
  std::string command = "carve pretrain";
  for (const auto& a : args) command += " " + a;
  o.command = command;
  record_config("pretrain", desc, parsed.values, "");
  auto report = trainer::pretrain_teacher(o);
  log::info("pretrain", "wrote ", out, ": final loss ", report.final_loss, ", eval exact match ",
            report.eval_exact_match);
  return 0;
}

}  // namespace carve::launcher
