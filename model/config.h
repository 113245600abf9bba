// The architecture of a decoder-only language model, parsed from a Hugging Face config.json.
// Only the fields that change the math are kept; anything that would change it and is not implemented is refused.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace carve::model {

enum class Family { Llama, Qwen2, InternLM2, Phi };
enum class NormKind { RMSNorm, LayerNorm };
enum class MlpKind { GatedSilu, GeluTanh };

std::string family_name(Family f);
// "llama, qwen2, internlm2, phi"
std::string supported_model_types();

struct ModelConfig {
  std::string model_type;  // as written in config.json
  Family family = Family::Llama;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rope_theta = 10000.0;
  double partial_rotary_factor = 1.0;
  double norm_eps = 1e-6;
  NormKind norm = NormKind::RMSNorm;
  MlpKind mlp = MlpKind::GatedSilu;
  bool parallel_residual = false;  // Phi-2: x + attn(ln(x)) + mlp(ln(x)) with one norm
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  bool lm_head_bias = false;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
  std::string torch_dtype;  // informational: what the checkpoint says its weights are

  int64_t rotary_dim() const;  // head_dim * partial_rotary_factor, rounded down to even
  int64_t kv_groups() const { return num_heads / num_kv_heads; }
  nlohmann::json raw;  // the parsed config.json (the text model's part for VLMs), kept for export
};

// Parses config.json (transformers 4.x or 5.x layout). `source` names the file in errors. For a VLM config with
// a `text_config` (or `llm_config`) section, that section describes the language model and is used.
ModelConfig parse_model_config(const nlohmann::json& config, const std::string& source);
ModelConfig load_model_config(const std::string& config_json_path);

}  // namespace carve::model
