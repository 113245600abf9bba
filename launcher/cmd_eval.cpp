// carve eval: a teacher and its students side by side on the same samples (trainer/evaluate).
#include <iostream>

#include "base/error.h"
#include "base/fs.h"
#include "base/log.h"
#include "comm/mpi_session.h"
#include "launcher/model_options.h"
#include "launcher/options.h"
#include "launcher/subcommands.h"
#include "model/checkpoint.h"
#include "model/hf_weights.h"
#include "model/student_checkpoint.h"
#include "trainer/evaluate.h"

namespace carve::launcher {
namespace {

std::pair<std::string, std::string> split_named(const std::string& text, const std::string& flag) {
  const auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size())
    throw UsageError(flag + ": '" + text + "' must be NAME=VALUE");
  return {text.substr(0, eq), text.substr(eq + 1)};
}

}  // namespace

int eval_main(const std::vector<std::string>& args) {
  ModelOptions teacher;
  std::vector<std::string> students, required_shares, worse;
  std::string samples, out, kernels;
  int64_t batch_tokens = 4096, max_samples = 0;
  int threads = 0;
  po::options_description run("Evaluation");
  run.add_options()("student", po::value<std::vector<std::string>>(&students)->composing(),
                    "NAME=FOLDER of a student to score (repeat the flag for more)")(
      "samples", po::value<std::string>(&samples)->required(), "sample file (the answers are its loss-masked tokens)")(
      "out", po::value<std::string>(&out), "JSON file for the scores")(
      "batch-tokens", po::value<int64_t>(&batch_tokens)->default_value(batch_tokens), "token slots per forward")(
      "max-samples", po::value<int64_t>(&max_samples)->default_value(max_samples), "score the first N samples (0: all)")(
      "require", po::value<std::vector<std::string>>(&required_shares)->composing(),
      "NAME=FRACTION: exit 1 unless that student's exact match reaches FRACTION of the teacher's")(
      "worse-than", po::value<std::vector<std::string>>(&worse)->composing(),
      "A=B: exit 1 unless student A's exact match is below student B's (a baseline that must lose)")(
      "threads", po::value<int>(&threads)->default_value(threads), "CPU threads (0: all cores)");
  po::options_description desc("carve eval");
  desc.add(model_options(teacher, "teacher", "teacher checkpoint folder (the reference)")).add(run).add(kernel_options(kernels));
  auto parsed = parse_options("eval", desc, args);
  if (parsed.help) {
    std::cout << "usage: carve eval --teacher DIR --student NAME=DIR [--student ...] --samples eval.h5 [options]\n"
              << desc << "\n";
    return 0;
  }
  apply_kernels(kernels);
  comm::default_cpu_threads(threads);
  const auto dtype = parse_dtype(teacher.dtype, "dtype");
  const auto device = parse_device(teacher.device, "device");
  model::CheckpointReader reader(teacher.path, teacher.weight_prefix);
  auto teacher_lm = model::load_causal_lm(reader, dtype, device);
  std::vector<model::LoadedStudent> loaded;
  std::vector<std::pair<std::string, model::CausalLMImpl*>> models;
  for (const auto& s : students) {
    auto [name, folder] = split_named(s, "--student");
    loaded.push_back(model::load_student(folder, "", dtype, device));
    models.emplace_back(name, loaded.back().model.get());
  }
  trainer::EvalOptions o;
  o.samples_path = samples;
  o.batch_tokens = batch_tokens;
  o.max_samples = max_samples;
  o.device = device;
  auto scores = trainer::evaluate_models(*teacher_lm, "teacher", models, o);
  std::cout << trainer::scores_table(scores);
  if (!out.empty()) {
    nlohmann::json j = {{"samples", samples}, {"teacher", teacher.path}, {"scores", trainer::scores_to_json(scores)}};
    fs::write_file_atomic(out, j.dump(2) + "\n");
    log::info("eval", "scores written to ", out);
  }
  // A model by name, from the table just printed.
  auto find = [&](const std::string& name, const std::string& flag) {
    auto it = std::find_if(scores.begin(), scores.end(), [&](const auto& s) { return s.name == name; });
    if (it == scores.end()) throw UsageError(flag + ": no model named '" + name + "' (give it with --student)");
    return *it;
  };
  int status = 0;
  for (const auto& r : required_shares) {
    auto [name, value] = split_named(r, "--require");
    double fraction = 0;
    try {
      fraction = std::stod(value);
    } catch (const std::exception&) {
      throw UsageError("--require: '" + value + "' is not a number");
    }
    const double share = find(name, "--require").exact_match_vs_teacher;
    const bool ok = share >= fraction;
    std::cout << name << " keeps " << 100 * share << "% of the teacher's exact match (required " << 100 * fraction
              << "%): " << (ok ? "meets it" : "MISSES it") << "\n";
    if (!ok) status = 1;
  }
  for (const auto& w : worse) {
    auto [a, b] = split_named(w, "--worse-than");
    const auto sa = find(a, "--worse-than"), sb = find(b, "--worse-than");
    const bool ok = sa.exact_match < sb.exact_match;
    std::cout << a << " (" << 100 * sa.exact_match << "%) " << (ok ? "is below " : "is NOT below ") << b << " ("
              << 100 * sb.exact_match << "%)\n";
    if (!ok) status = 1;
  }
  return status;
}

}  // namespace carve::launcher
