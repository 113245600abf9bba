// Student checkpoints: a Hugging Face-style folder. config.json is the teacher's (its language-model part) plus a
// `carve` section (layout, mixer kind, SSM sizes, chunk size, seeding, where the teacher is); model.safetensors
// holds either only what the teacher does not (the Mamba-2 mixers, "student-only", the default) or the whole
// student ("full": teacher parameters under the family's Hugging Face names, mixers under
// model.layers.<i>.mamba.<name>). Loading and saving round-trip exactly.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "model/student.h"

namespace carve::model {

struct StudentSaveOptions {
  bool full = false;           // write every parameter, so the folder needs no teacher to load
  std::string teacher_folder;  // recorded in config.json for student-only folders
  std::string teacher_prefix;  // weight-name prefix of the language model in the teacher folder (VLMs)
};

// The `carve` section written into config.json.
nlohmann::json student_section(const ModelConfig& teacher, const StudentSpec& spec, const StudentSaveOptions& o);
StudentSpec parse_student_section(const nlohmann::json& carve, int64_t num_layers, const std::string& source);

// Writes the folder atomically file by file (config.json last, so a folder with config.json is complete).
void save_student(const std::string& folder, CausalLMImpl& student, const StudentSpec& spec,
                  const StudentSaveOptions& options);

struct LoadedStudent {
  CausalLM model{nullptr};
  StudentSpec spec;
  bool full = false;
  std::string teacher_folder;  // the one used (empty for a full checkpoint)
};

// Loads a student folder. A student-only folder reads the teacher's parameters from `teacher_override` when given,
// else from the folder recorded in its config.json (relative paths are relative to the student folder).
LoadedStudent load_student(const std::string& folder, const std::string& teacher_override = "",
                           torch::ScalarType dtype = torch::kFloat32, torch::Device device = torch::kCPU);

}  // namespace carve::model
