#include "model/random_teacher.h"

#include <sstream>

#include "base/error.h"
#include "base/fs.h"
#include "base/text.h"
#include "model/config.h"
#include "model/hf_weights.h"
#include "model/safetensors.h"
#include "model/transformer.h"

namespace carve::model {

RandomTeacherDims parse_random_teacher_dims(const std::string& text, const std::string& flag) {
  RandomTeacherDims d;
  if (text == "hovle") return d;
  const auto v = split_integers(text, 'x');
  CARVE_CHECK(v.size() == 6 && *std::min_element(v.begin(), v.end()) > 0 && v[0] % v[2] == 0 && v[2] % v[3] == 0,
              flag, ": '", text, "' is neither 'hovle' nor HIDDENxLAYERSxHEADSxKVxMLPxVOCAB with positive sizes, ",
              "hidden divisible by heads and heads by KV heads");
  d.hidden = v[0];
  d.layers = v[1];
  d.heads = v[2];
  d.kv_heads = v[3];
  d.intermediate = v[4];
  d.vocab = v[5];
  return d;
}

nlohmann::json random_teacher_config(const RandomTeacherDims& d, torch::ScalarType dtype, uint64_t seed) {
  CARVE_CHECK(dtype == torch::kBFloat16 || dtype == torch::kFloat16 || dtype == torch::kFloat32,
              "a random teacher is written in bfloat16, float16 or float32, not ", c10::toString(dtype));
  return {{"model_type", "llama"},
          {"architectures", {"LlamaForCausalLM"}},
          {"hidden_size", d.hidden},
          {"num_hidden_layers", d.layers},
          {"num_attention_heads", d.heads},
          {"num_key_value_heads", d.kv_heads},
          {"intermediate_size", d.intermediate},
          {"vocab_size", d.vocab},
          {"max_position_embeddings", 32768},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 1000000.0},
          {"tie_word_embeddings", false},
          {"torch_dtype", dtype == torch::kBFloat16 ? "bfloat16" : dtype == torch::kFloat16 ? "float16" : "float32"},
          {"carve_random_teacher", {{"seed", seed}}}};
}

CausalLM make_random_teacher(const nlohmann::json& config, uint64_t seed) {
  CausalLM lm(parse_model_config(config, "random teacher"));
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : lm->named_parameters()) {
    if (p.value().dim() == 1 && p.key().find("norm") != std::string::npos) p.value().fill_(1.0);
    else if (p.value().dim() == 1) p.value().zero_();
    else p.value().normal_(0.0, 0.02);
  }
  return lm;
}

void write_random_teacher(const std::string& folder, const RandomTeacherDims& d, torch::ScalarType dtype,
                          uint64_t seed) {
  const auto config = random_teacher_config(d, dtype, seed);
  auto lm = make_random_teacher(config, seed);
  lm->to(dtype);
  fs::make_directories(folder);
  save_safetensors(fs::join(folder, "model.safetensors"), hf_state_dict(*lm), {{"format", "pt"}});
  fs::write_file_atomic(fs::join(folder, "config.json"), config.dump(2) + "\n");
}

}  // namespace carve::model
