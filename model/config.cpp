#include "model/config.h"

#include <cmath>

#include "base/error.h"
#include "base/fs.h"
#include "base/json.h"

namespace carve::model {
namespace {

// Typed access to config.json fields with errors that name the file and the field.
class Fields {
 public:
  static constexpr int64_t kMaxSize = int64_t{1} << 40;

  Fields(const nlohmann::json& j, std::string source) : j_(j), source_(std::move(source)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  int64_t positive_int(const char* key) const {
    CARVE_CHECK(has(key), source_, ": missing field '", key, "'");
    // Sizes beyond 2^40 are no real model's and would overflow the arithmetic done with them.
    CARVE_CHECK(j_[key].is_number_integer() && j_[key].get<int64_t>() > 0 && j_[key].get<int64_t>() <= kMaxSize,
                source_, ": field '", key, "' must be a positive integer up to 2^40, got ", j_[key].dump());
    return j_[key].get<int64_t>();
  }
  int64_t positive_int_or(const char* key, int64_t fallback) const { return has(key) ? positive_int(key) : fallback; }
  int64_t int_or(const char* key, int64_t fallback) const {
    if (!has(key)) return fallback;
    // eos_token_id may be a list in newer configs: the first entry is the one generation stops on by default.
    const auto& v = j_[key].is_array() && !j_[key].empty() ? j_[key][0] : j_[key];
    CARVE_CHECK(v.is_number_integer(), source_, ": field '", key, "' must be an integer, got ", j_[key].dump());
    return v.get<int64_t>();
  }
  double number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    CARVE_CHECK(j_[key].is_number(), source_, ": field '", key, "' must be a number, got ", j_[key].dump());
    return j_[key].get<double>();
  }
  bool bool_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    CARVE_CHECK(j_[key].is_boolean(), source_, ": field '", key, "' must be true or false, got ", j_[key].dump());
    return j_[key].get<bool>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    CARVE_CHECK(j_[key].is_string(), source_, ": field '", key, "' must be a string, got ", j_[key].dump());
    return j_[key].get<std::string>();
  }

 private:
  const nlohmann::json& j_;
  std::string source_;
};

Family parse_family(const std::string& model_type, const std::string& source) {
  if (model_type == "llama") return Family::Llama;
  if (model_type == "qwen2") return Family::Qwen2;
  if (model_type == "internlm2") return Family::InternLM2;
  if (model_type == "phi") return Family::Phi;
  fail(source, ": unsupported model_type '", model_type, "' (supported: ", supported_model_types(), ")");
}

// Rope parameters live at the top level (transformers 4.x), under `rope_scaling` (4.x, scaling only) or under
// `rope_parameters` (5.x, theta and scaling together). Only unscaled rope is implemented.
void parse_rope(const nlohmann::json& j, const std::string& source, ModelConfig& c) {
  Fields top(j, source);
  c.rope_theta = top.number_or("rope_theta", c.rope_theta);
  c.partial_rotary_factor = top.number_or("partial_rotary_factor", c.partial_rotary_factor);
  for (const char* section : {"rope_scaling", "rope_parameters"}) {
    if (!top.has(section)) continue;
    const auto& r = j[section];
    CARVE_CHECK(r.is_object(), source, ": field '", section, "' must be an object");
    Fields f(r, source + " (" + section + ")");
    std::string type = f.string_or("rope_type", f.string_or("type", "default"));
    CARVE_CHECK(type == "default", source, ": ", section, ".rope_type '", type,
                "' is not implemented (only unscaled rope, 'default')");
    c.rope_theta = f.number_or("rope_theta", c.rope_theta);
    c.partial_rotary_factor = f.number_or("partial_rotary_factor", c.partial_rotary_factor);
  }
  CARVE_CHECK(c.rope_theta > 0, source, ": rope_theta must be positive");
  CARVE_CHECK(c.partial_rotary_factor > 0 && c.partial_rotary_factor <= 1, source,
              ": partial_rotary_factor must be in (0, 1]");
}

}  // namespace

std::string family_name(Family f) {
  switch (f) {
    case Family::Llama: return "llama";
    case Family::Qwen2: return "qwen2";
    case Family::InternLM2: return "internlm2";
    case Family::Phi: return "phi";
  }
  return "?";
}

std::string supported_model_types() { return "llama, qwen2, internlm2, phi"; }

int64_t ModelConfig::rotary_dim() const {
  auto d = static_cast<int64_t>(std::floor(static_cast<double>(head_dim) * partial_rotary_factor));
  return d - d % 2;
}

ModelConfig parse_model_config(const nlohmann::json& config, const std::string& source) {
  CARVE_CHECK(config.is_object(), source, ": expected a JSON object");
  for (const char* nested : {"text_config", "llm_config"})
    if (config.contains(nested) && config[nested].is_object())
      return parse_model_config(config[nested], source + " (" + nested + ")");

  Fields f(config, source);
  ModelConfig c;
  c.raw = config;
  CARVE_CHECK(f.has("model_type"), source, ": missing field 'model_type' (supported: ", supported_model_types(), ")");
  c.model_type = f.string_or("model_type", "");
  c.family = parse_family(c.model_type, source);
  c.hidden_size = f.positive_int("hidden_size");
  c.num_layers = f.positive_int("num_hidden_layers");
  c.num_heads = f.positive_int("num_attention_heads");
  c.num_kv_heads = f.positive_int_or("num_key_value_heads", c.num_heads);
  c.head_dim = f.positive_int_or("head_dim", c.hidden_size / c.num_heads);
  c.intermediate_size = f.positive_int("intermediate_size");
  c.vocab_size = f.positive_int("vocab_size");
  c.max_position_embeddings = f.positive_int_or("max_position_embeddings", 4096);
  c.tie_word_embeddings = f.bool_or("tie_word_embeddings", false);
  c.bos_token_id = f.int_or("bos_token_id", -1);
  c.eos_token_id = f.int_or("eos_token_id", -1);
  c.torch_dtype = f.string_or("torch_dtype", f.string_or("dtype", ""));
  CARVE_CHECK(c.num_heads % c.num_kv_heads == 0, source, ": num_attention_heads (", c.num_heads,
              ") must be a multiple of num_key_value_heads (", c.num_kv_heads, ")");
  parse_rope(config, source, c);

  const std::string act = f.string_or("hidden_act", c.family == Family::Phi ? "gelu_new" : "silu");
  switch (c.family) {
    case Family::Llama:
    case Family::Qwen2:
      c.norm_eps = f.number_or("rms_norm_eps", 1e-6);
      c.qkv_bias = c.family == Family::Qwen2 ? true : f.bool_or("attention_bias", false);
      c.o_bias = c.family == Family::Qwen2 ? false : c.qkv_bias;
      c.mlp_bias = f.bool_or("mlp_bias", false);
      CARVE_CHECK(act == "silu", source, ": hidden_act '", act, "' is not implemented for ", c.model_type,
                  " (expected 'silu')");
      break;
    case Family::InternLM2:
      c.norm_eps = f.number_or("rms_norm_eps", 1e-6);
      c.qkv_bias = c.o_bias = f.bool_or("bias", false);
      CARVE_CHECK(act == "silu", source, ": hidden_act '", act, "' is not implemented for internlm2");
      break;
    case Family::Phi:
      c.norm = NormKind::LayerNorm;
      c.mlp = MlpKind::GeluTanh;
      c.parallel_residual = true;
      c.norm_eps = f.number_or("layer_norm_eps", 1e-5);
      c.qkv_bias = c.o_bias = c.mlp_bias = c.lm_head_bias = true;
      CARVE_CHECK(act == "gelu_new" || act == "gelu_pytorch_tanh", source, ": hidden_act '", act,
                  "' is not implemented for phi (expected gelu_new)");
      CARVE_CHECK(!f.bool_or("qk_layernorm", false), source, ": qk_layernorm is not implemented for phi");
      break;
  }
  // Qwen2 sliding-window attention changes the math only when enabled.
  CARVE_CHECK(!f.bool_or("use_sliding_window", false), source, ": use_sliding_window is not implemented");
  CARVE_CHECK(c.rotary_dim() > 0, source, ": rotary dimension is zero (head_dim ", c.head_dim,
              ", partial_rotary_factor ", c.partial_rotary_factor, ")");
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  CARVE_CHECK(fs::exists(path), path, ": missing (a Hugging Face checkpoint folder needs config.json)");
  return parse_model_config(read_json_file(path), path);
}

}  // namespace carve::model
