#include "model/student_checkpoint.h"

#include <filesystem>

#include "base/error.h"
#include "base/json.h"
#include "base/fs.h"
#include "model/checkpoint.h"
#include "model/hf_weights.h"
#include "model/safetensors.h"

namespace carve::model {
namespace {

constexpr int kFormatVersion = 1;
const char* kWeightsFile = "model.safetensors";

// "layers.3.mixer.conv_weight" -> "model.layers.3.mamba.conv_weight".
std::string mixer_file_name(const std::string& name) {
  const auto dot = name.find('.', 7);
  return "model.layers." + name.substr(7, dot - 7) + ".mamba." + name.substr(dot + 1 + 6);
}

}  // namespace

nlohmann::json student_section(const ModelConfig& t, const StudentSpec& spec, const StudentSaveOptions& o) {
  auto mixer = ssm_mixer_config(t, spec);
  nlohmann::json j = {
      {"format_version", kFormatVersion},
      {"layout", spec.layout.str()},
      {"mixer", mixer_kind_name(spec.mixer)},
      {"seeding", seed_method_name(spec.seeding)},
      {"init_seed", spec.init_seed},
      {"chunk_size", mixer.chunk_size},
      {"conv_kernel", mixer.conv_kernel},
      {"ssm", {{"num_heads", mixer.num_heads}, {"num_kv_heads", mixer.num_kv_heads}, {"head_dim", mixer.head_dim},
               {"state_size", mixer.head_dim}, {"norm_eps", mixer.norm_eps}}},
      {"weights", o.full ? "full" : "student-only"},
  };
  if (!o.full) j["teacher"] = {{"folder", o.teacher_folder}, {"weight_prefix", o.teacher_prefix}};
  return j;
}

StudentSpec parse_student_section(const nlohmann::json& j, int64_t num_layers, const std::string& source) {
  CARVE_CHECK(j.is_object(), source, ": field 'carve' must be an object");
  const std::string where = source + " carve section";
  const int version = json_field<int>(j, "format_version", where);
  CARVE_CHECK(version == kFormatVersion, source, ": carve.format_version ", version, " is not supported (this build",
              " reads ", kFormatVersion, ")");
  StudentSpec spec;
  spec.layout = Layout::parse(json_field<std::string>(j, "layout", where), num_layers, source + ": carve.layout");
  spec.mixer = parse_mixer_kind(json_field<std::string>(j, "mixer", where), source + ": carve.mixer");
  spec.seeding = parse_seed_method(json_field<std::string>(j, "seeding", where), source + ": carve.seeding");
  spec.init_seed = json_field<uint64_t>(j, "init_seed", where);
  spec.chunk_size = json_field<int64_t>(j, "chunk_size", where);
  spec.conv_kernel = json_field<int64_t>(j, "conv_kernel", where);
  CARVE_CHECK(spec.chunk_size > 0 && spec.conv_kernel > 0, source, ": carve.chunk_size and carve.conv_kernel must be",
              " positive");
  return spec;
}

void save_student(const std::string& folder, CausalLMImpl& student, const StudentSpec& spec,
                  const StudentSaveOptions& options) {
  CARVE_CHECK(options.full || !options.teacher_folder.empty(), "a student-only checkpoint must record its teacher",
              " folder");
  fs::make_directories(folder);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  if (options.full) tensors = hf_state_dict(student);
  for (auto& item : student.named_parameters())
    if (!is_teacher_parameter(student, item.key()))
      tensors.emplace_back(mixer_file_name(item.key()), item.value().detach());
  save_safetensors(fs::join(folder, kWeightsFile), tensors,
                   {{"format", "pt"}, {"carve", options.full ? "full" : "student-only"}});
  auto config = student.config.raw;
  config["carve"] = student_section(student.config, spec, options);
  // A student is a language model of the teacher's family, whatever wrapped the teacher (a VLM's text_config).
  config["model_type"] = student.config.model_type;
  fs::write_file_atomic(fs::join(folder, "config.json"), config.dump(2) + "\n");
}

LoadedStudent load_student(const std::string& folder, const std::string& teacher_override, torch::ScalarType dtype,
                           torch::Device device) {
  const auto config_path = fs::join(folder, "config.json");
  CheckpointReader own(folder);  // validates config.json and the safetensors headers
  const auto& raw = own.config().raw;
  CARVE_CHECK(raw.contains("carve"), config_path, ": not a carve student (no 'carve' section); load it as a teacher");
  const auto& section = raw["carve"];
  LoadedStudent out;
  out.spec = parse_student_section(section, own.config().num_layers, config_path);
  const auto weights = json_field<std::string>(section, "weights", config_path + " carve section");
  CARVE_CHECK(weights == "full" || weights == "student-only", config_path, ": carve.weights '", weights,
              "' must be 'full' or 'student-only'");
  out.full = weights == "full";

  out.model = CausalLM(own.config());
  carve_student(*out.model, out.spec, /*seed=*/false);
  if (out.full) {
    load_weights(*out.model, own);
  } else {
    std::string teacher = teacher_override;
    const std::string prefix = section.contains("teacher") ? section["teacher"].value("weight_prefix", "") : "";
    if (teacher.empty()) {
      CARVE_CHECK(section.contains("teacher"), config_path, ": a student-only checkpoint needs carve.teacher");
      teacher = json_field<std::string>(section["teacher"], "folder", config_path + ": carve.teacher");
      if (!teacher.empty() && teacher[0] != '/') teacher = fs::join(folder, teacher);
    }
    CARVE_CHECK(fs::is_directory(teacher), config_path, ": teacher folder '", teacher, "' not found (pass the teacher",
                " explicitly if it moved)");
    CheckpointReader teacher_ckpt(teacher, prefix);
    const auto& tc = teacher_ckpt.config();
    CARVE_CHECK(tc.model_type == own.config().model_type && tc.num_layers == own.config().num_layers &&
                    tc.hidden_size == own.config().hidden_size,
                teacher, ": this teacher (", tc.model_type, ", ", tc.num_layers, " layers, hidden ", tc.hidden_size,
                ") is not the one the student at ", folder, " was carved from");
    load_weights(*out.model, teacher_ckpt);
    out.teacher_folder = teacher;
  }
  torch::NoGradGuard no_grad;
  for (auto& item : out.model->named_parameters()) {
    if (is_teacher_parameter(*out.model, item.key())) continue;
    item.value().copy_(own.load(mixer_file_name(item.key()), item.value().sizes().vec()));
  }
  out.model->to(device, dtype);
  out.model->eval();
  return out;
}

}  // namespace carve::model
