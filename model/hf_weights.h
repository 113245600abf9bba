// Hugging Face weight names of each family, and loading a checkpoint folder into a CausalLM.
// carve's modules use one naming for all families ("layers.3.mixer.q_proj.weight"); this file is the only place
// that knows how each family spells them and how InternLM2 packs q, k and v into one `wqkv` matrix.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/checkpoint.h"
#include "model/transformer.h"

namespace carve::model {

// The Hugging Face name of a carve parameter, or nullopt for InternLM2's q/k/v, which live packed in `wqkv`.
std::optional<std::string> hf_weight_name(const ModelConfig& config, const std::string& carve_name);

// Copies every teacher parameter of `model` whose name starts with `only_prefix` from the checkpoint, checking shapes
// against config.json. Returns the number of parameters loaded.
int64_t load_weights(CausalLMImpl& model, const CheckpointReader& checkpoint, const std::string& only_prefix = "");

// Whether `name` is one of the teacher's parameters (everything except the mixers of a student's Mamba-2 layers).
bool is_teacher_parameter(const CausalLMImpl& model, const std::string& name);

// The model's teacher parameters under their Hugging Face names (InternLM2's q/k/v packed back into wqkv): what
// a Hugging Face checkpoint of this family holds. Student mixers are left out.
std::vector<std::pair<std::string, torch::Tensor>> hf_state_dict(CausalLMImpl& model);

// Builds the model described by the checkpoint's config.json and loads all its weights.
CausalLM load_causal_lm(const CheckpointReader& checkpoint, torch::ScalarType dtype = torch::kFloat32,
                        torch::Device device = torch::kCPU);

}  // namespace carve::model
