// carve convert: carve a seeded student out of a teacher checkpoint and save it as a student folder.
#include <filesystem>
#include <iostream>

#include "base/error.h"
#include "base/fs.h"
#include "base/log.h"
#include "launcher/model_options.h"
#include "launcher/student_options.h"
#include "launcher/subcommands.h"
#include "model/checkpoint.h"
#include "model/hf_weights.h"
#include "model/student_checkpoint.h"
#include "model/summary.h"

namespace carve::launcher {

int convert_main(const std::vector<std::string>& args) {
  ModelOptions teacher;
  StudentOptions student;
  std::string out_dir;
  bool full = false;
  bool overwrite = false;
  po::options_description output("Output");
  output.add_options()("out", po::value<std::string>(&out_dir)->required(), "student folder to write")(
      "full", po::bool_switch(&full), "write every parameter (default: only what the teacher does not hold)")(
      "overwrite", po::bool_switch(&overwrite), "replace the checkpoint already in --out");
  po::options_description desc("carve convert");
  desc.add(model_options(teacher, "teacher", "teacher checkpoint folder")).add(student_options(student)).add(output);
  auto parsed = parse_options("convert", desc, args);
  if (parsed.help) {
    std::cout << "usage: carve convert --teacher DIR --layout AMMM... --seed mimic --out DIR [options]\n"
              << desc << "\n";
    return 0;
  }
  // A student folder may hold hours of distillation; replacing it takes an explicit flag.
  if (!overwrite && fs::exists(fs::join(out_dir, "config.json")))
    throw Error("--out: " + out_dir + " already holds a checkpoint (config.json exists); pass --overwrite to replace it");
  const auto dtype = parse_dtype(teacher.dtype, "dtype");
  const auto device = parse_device(teacher.device, "device");
  model::CheckpointReader ckpt(teacher.path, teacher.weight_prefix);
  auto spec = resolve_student(student, ckpt.config().num_layers);
  record_config("convert", desc, parsed.values, "");

  // Seeding runs in float32 on the chosen device; the student is saved in --dtype.
  auto model = model::load_causal_lm(ckpt, torch::kFloat32, device);
  model::carve_student(*model, spec, /*seed=*/true);
  model->to(dtype);
  model::StudentSaveOptions save;
  save.full = full;
  save.teacher_folder = std::filesystem::absolute(teacher.path).lexically_normal().string();
  save.teacher_prefix = teacher.weight_prefix;
  model::save_student(out_dir, *model, spec, save);
  log::info("convert", "wrote ", out_dir, ": layout ", spec.layout.str(), ", ", model::mixer_kind_name(spec.mixer),
            " mixers seeded by ", model::seed_method_name(spec.seeding));
  std::cout << model::describe_student(model::CheckpointReader(out_dir));
  return 0;
}

}  // namespace carve::launcher
