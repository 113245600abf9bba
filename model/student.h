// A student is the teacher's CausalLM with the mixers of its 'M' layers replaced by Mamba-2 mixers seeded from the
// attention they replace. Embeddings, norms, MLPs, the head and the kept attention layers are the teacher's own
// (copied into the student). Parameters are grouped by what each distillation stage trains.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "model/layout.h"
#include "model/seeding.h"
#include "model/ssm_state.h"
#include "model/transformer.h"

namespace carve::model {

enum class MixerKind { Seeded, Mamba2 };
MixerKind parse_mixer_kind(const std::string& text, const std::string& source = "mixer");
std::string mixer_kind_name(MixerKind k);

struct StudentSpec {
  Layout layout;
  MixerKind mixer = MixerKind::Seeded;
  SeedMethod seeding = SeedMethod::Mimic;
  int64_t chunk_size = 0;   // 0: the mixer's default (seeded 128, mamba2 256)
  int64_t conv_kernel = 0;  // 0: the mixer's default (seeded 2, mamba2 4)
  uint64_t init_seed = 0;

  int64_t effective_chunk_size() const;
  int64_t effective_conv_kernel() const;
};

SsmMixerConfig ssm_mixer_config(const ModelConfig& teacher, const StudentSpec& spec);
std::shared_ptr<Mixer> make_ssm_mixer(const ModelConfig& teacher, const StudentSpec& spec);

// Replaces the mixer of every 'M' layer of `model` (a loaded teacher) with a new Mamba-2 mixer. With `seed`, each
// one is initialised from the attention it replaces by spec.seeding (layer i draws from init_seed + i); without, the
// new parameters are left for a checkpoint to fill.
void carve_student(CausalLMImpl& model, const StudentSpec& spec, bool seed);

// What a parameter is, for the stage policies below.
enum class ParamRole {
  Frozen,    // not a student mixer parameter: embeddings, norms, MLPs, head, kept attention
  Qkv,       // inherited input projections: q/k/v (seeded), in_proj (mamba2)
  Out,       // inherited output projection: o_proj / out_proj
  Mixing,    // new parameters: conv, W_gamma, W_G, per-head norm, D
  Dynamics,  // dt_bias, A_log
};
ParamRole param_role(const CausalLMImpl& student, const std::string& name);
// The role of a Mamba-2 mixer's own parameter ("q_proj.weight", "A_log", ...).
ParamRole mixer_param_role(const std::string& mixer_param_name);

// stage1: mmMamba stage 1 (new parameters, Q/K/V/O frozen); stage2: plus Q/K/V; stage3: end to end, every mixer
// parameter except dt_bias, A_log and O (mmMamba's code); one-stage: every Mamba-2 mixer parameter (MaTVLM).
enum class Stage { Stage1, Stage2, Stage3, OneStage };
Stage parse_stage(const std::string& text, const std::string& source = "stage");
std::string stage_name(Stage s);
bool trains(Stage stage, ParamRole role);

// The named parameters `stage` trains, in the model's order.
std::vector<std::pair<std::string, torch::Tensor>> trainable_parameters(CausalLMImpl& student, Stage stage);

}  // namespace carve::model
