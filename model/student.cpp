#include "model/student.h"

#include "base/error.h"
#include "model/attention.h"
#include "model/hf_weights.h"
#include "model/mamba2_mixer.h"
#include "model/seeded_mixer.h"

namespace carve::model {

MixerKind parse_mixer_kind(const std::string& text, const std::string& source) {
  if (text == "seeded") return MixerKind::Seeded;
  if (text == "mamba2") return MixerKind::Mamba2;
  fail(source, ": '", text, "' is not a mixer (seeded: mmMamba, mamba2: MaTVLM)");
}

std::string mixer_kind_name(MixerKind k) { return k == MixerKind::Seeded ? "seeded" : "mamba2"; }

int64_t StudentSpec::effective_chunk_size() const {
  return chunk_size > 0 ? chunk_size : (mixer == MixerKind::Seeded ? 128 : 256);
}
int64_t StudentSpec::effective_conv_kernel() const {
  return conv_kernel > 0 ? conv_kernel : (mixer == MixerKind::Seeded ? 2 : 4);
}

SsmMixerConfig ssm_mixer_config(const ModelConfig& t, const StudentSpec& spec) {
  SsmMixerConfig c;
  c.hidden_size = t.hidden_size;
  c.num_heads = t.num_heads;
  c.num_kv_heads = t.num_kv_heads;
  c.head_dim = t.head_dim;
  c.conv_kernel = spec.effective_conv_kernel();
  c.chunk_size = spec.effective_chunk_size();
  c.norm_eps = 1e-5;
  c.qkv_bias = spec.mixer == MixerKind::Seeded && t.qkv_bias;
  c.o_bias = spec.mixer == MixerKind::Seeded && t.o_bias;
  return c;
}

std::shared_ptr<Mixer> make_ssm_mixer(const ModelConfig& teacher, const StudentSpec& spec) {
  auto c = ssm_mixer_config(teacher, spec);
  if (spec.mixer == MixerKind::Seeded) return std::make_shared<SeededMixerImpl>(c);
  return std::make_shared<Mamba2MixerImpl>(c);
}

void carve_student(CausalLMImpl& model, const StudentSpec& spec, bool seed) {
  const auto& c = model.config;
  CARVE_CHECK(spec.layout.size() == c.num_layers, "layout '", spec.layout.str(), "' has ", spec.layout.size(),
              " layers, the teacher ", c.num_layers);
  const auto param = model.embed_tokens;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    if (!spec.layout.is_mamba(i)) continue;
    auto& layer = model.layers[i];
    auto mixer = make_ssm_mixer(c, spec);
    mixer->to(param.device(), param.scalar_type());
    if (seed) {
      auto* attention = dynamic_cast<AttentionImpl*>(layer->mixer.get());
      CARVE_CHECK(attention != nullptr, "layer ", i, " has no attention to seed from (mixer '",
                  layer->mixer->kind(), "')");
      seed_mixer(*mixer, *attention, spec.seeding, spec.init_seed + static_cast<uint64_t>(i));
    }
    layer->set_mixer(mixer);
  }
}

ParamRole param_role(const CausalLMImpl& student, const std::string& name) {
  if (is_teacher_parameter(student, name)) return ParamRole::Frozen;
  // What is left is "layers.<i>.mixer.<p>" of a Mamba-2 mixer.
  return mixer_param_role(name.substr(name.find(".mixer.") + 7));
}

ParamRole mixer_param_role(const std::string& p) {
  auto starts = [&](const char* prefix) { return p.rfind(prefix, 0) == 0; };
  if (starts("q_proj.") || starts("k_proj.") || starts("v_proj.") || starts("in_proj.")) return ParamRole::Qkv;
  if (starts("o_proj.") || starts("out_proj.")) return ParamRole::Out;
  if (p == "dt_bias" || p == "A_log") return ParamRole::Dynamics;
  return ParamRole::Mixing;
}

Stage parse_stage(const std::string& text, const std::string& source) {
  if (text == "stage1" || text == "1") return Stage::Stage1;
  if (text == "stage2" || text == "2") return Stage::Stage2;
  if (text == "stage3" || text == "3") return Stage::Stage3;
  if (text == "one-stage") return Stage::OneStage;
  fail(source, ": '", text, "' is not a stage (stage1, stage2, stage3, one-stage)");
}

std::string stage_name(Stage s) {
  switch (s) {
    case Stage::Stage1: return "stage1";
    case Stage::Stage2: return "stage2";
    case Stage::Stage3: return "stage3";
    case Stage::OneStage: return "one-stage";
  }
  return "?";
}

bool trains(Stage stage, ParamRole role) {
  if (role == ParamRole::Frozen) return false;
  switch (stage) {
    case Stage::Stage1: return role == ParamRole::Mixing || role == ParamRole::Dynamics;
    case Stage::Stage2: return role != ParamRole::Out;
    case Stage::Stage3: return role == ParamRole::Mixing || role == ParamRole::Qkv;
    case Stage::OneStage: return true;
  }
  return false;
}

std::vector<std::pair<std::string, torch::Tensor>> trainable_parameters(CausalLMImpl& student, Stage stage) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& item : student.named_parameters())
    if (trains(stage, param_role(student, item.key()))) out.emplace_back(item.key(), item.value());
  return out;
}

}  // namespace carve::model
