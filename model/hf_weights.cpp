#include "model/hf_weights.h"

#include <map>
#include <utility>
#include <vector>

#include "base/error.h"

namespace carve::model {
namespace {

using Renames = std::vector<std::pair<std::string, std::string>>;

// carve name inside a layer -> the family's name inside a layer.
const Renames& layer_renames(Family f) {
  static const Renames llama = {
      {"input_norm.", "input_layernorm."}, {"post_norm.", "post_attention_layernorm."}, {"mixer.", "self_attn."},
      {"mlp.", "mlp."}};
  static const Renames phi = {{"input_norm.", "input_layernorm."}, {"mixer.o_proj.", "self_attn.dense."},
                              {"mixer.", "self_attn."}, {"mlp.", "mlp."}};
  static const Renames internlm2 = {
      {"input_norm.", "attention_norm."},   {"post_norm.", "ffn_norm."},          {"mixer.o_proj.", "attention.wo."},
      {"mlp.gate_proj.", "feed_forward.w1."}, {"mlp.up_proj.", "feed_forward.w3."}, {"mlp.down_proj.", "feed_forward.w2."}};
  switch (f) {
    case Family::Phi: return phi;
    case Family::InternLM2: return internlm2;
    default: return llama;
  }
}

std::optional<std::string> top_level_name(Family f, const std::string& name) {
  const bool ilm = f == Family::InternLM2;
  if (name == "embed_tokens") return ilm ? "model.tok_embeddings.weight" : "model.embed_tokens.weight";
  if (name.rfind("final_norm.", 0) == 0)
    return (f == Family::Phi ? "model.final_layernorm." : "model.norm.") + name.substr(11);
  if (name.rfind("lm_head.", 0) == 0) return (ilm ? "output." : "lm_head.") + name.substr(8);
  return std::nullopt;
}

bool is_packed_qkv(const std::string& rest) {
  return rest.rfind("mixer.q_proj.", 0) == 0 || rest.rfind("mixer.k_proj.", 0) == 0 ||
         rest.rfind("mixer.v_proj.", 0) == 0;
}

// InternLM2 stores q, k, v as one matrix whose rows are grouped per KV head: [q x groups, k, v] x head_dim each.
torch::Tensor unpack_internlm2_qkv(const CheckpointReader& ckpt, int64_t layer, const std::string& which,
                                   const std::string& param) {
  const auto& c = ckpt.config();
  const int64_t g = c.kv_groups(), d = c.head_dim;
  const std::string name = "model.layers." + std::to_string(layer) + ".attention.wqkv." + param;
  const bool is_bias = param == "bias";
  std::vector<int64_t> shape = {c.num_kv_heads * (g + 2) * d};
  if (!is_bias) shape.push_back(c.hidden_size);
  auto packed = ckpt.load(name, shape).view({c.num_kv_heads, g + 2, d, is_bias ? 1 : c.hidden_size});
  torch::Tensor part;
  if (which == "q") part = packed.narrow(1, 0, g);
  else if (which == "k") part = packed.narrow(1, g, 1);
  else part = packed.narrow(1, g + 1, 1);
  part = part.reshape({-1, is_bias ? 1 : c.hidden_size});
  return is_bias ? part.squeeze(1) : part;
}

}  // namespace

std::optional<std::string> hf_weight_name(const ModelConfig& c, const std::string& name) {
  if (auto top = top_level_name(c.family, name)) return top;
  CARVE_CHECK(name.rfind("layers.", 0) == 0, "no Hugging Face name for parameter '", name, "'");
  const auto dot = name.find('.', 7);
  const std::string index = name.substr(7, dot - 7), rest = name.substr(dot + 1);
  if (c.family == Family::InternLM2 && is_packed_qkv(rest)) return std::nullopt;
  for (const auto& [from, to] : layer_renames(c.family))
    if (rest.rfind(from, 0) == 0) return "model.layers." + index + "." + to + rest.substr(from.size());
  fail("no Hugging Face name for parameter '", name, "' of a ", c.model_type, " model");
}

bool is_teacher_parameter(const CausalLMImpl& model, const std::string& name) {
  if (name.rfind("layers.", 0) != 0) return true;
  const auto dot = name.find('.', 7);
  const int64_t layer = std::stoll(name.substr(7, dot - 7));
  return name.compare(dot + 1, 6, "mixer.") != 0 || model.layers.at(layer)->mixer->kind() == "attention";
}

int64_t load_weights(CausalLMImpl& model, const CheckpointReader& ckpt, const std::string& only_prefix) {
  torch::NoGradGuard no_grad;
  int64_t loaded = 0;
  for (auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    if (name.rfind(only_prefix, 0) != 0 || !is_teacher_parameter(model, name)) continue;
    auto& param = item.value();
    torch::Tensor value;
    if (auto hf = hf_weight_name(model.config, name)) {
      value = ckpt.load(*hf, param.sizes().vec());
    } else {  // InternLM2 packed q/k/v: "layers.<i>.mixer.<q|k|v>_proj.<weight|bias>"
      const auto dot = name.find('.', 7);
      const int64_t layer = std::stoll(name.substr(7, dot - 7));
      const std::string rest = name.substr(dot + 1);
      value = unpack_internlm2_qkv(ckpt, layer, rest.substr(6, 1), rest.substr(rest.rfind('.') + 1));
      CARVE_CHECK(value.sizes() == param.sizes(), ckpt.folder(), ": wqkv of layer ", layer,
                  " does not unpack to the shape config.json implies for ", rest);
    }
    param.copy_(value);
    ++loaded;
  }
  return loaded;
}

std::vector<std::pair<std::string, torch::Tensor>> hf_state_dict(CausalLMImpl& model) {
  const auto& c = model.config;
  std::vector<std::pair<std::string, torch::Tensor>> out;
  // InternLM2 q/k/v parts per "<layer>.<weight|bias>", packed once all three are seen.
  std::map<std::string, std::map<char, torch::Tensor>> pending;
  for (auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    if (!is_teacher_parameter(model, name)) continue;
    if (auto hf = hf_weight_name(c, name)) {
      out.emplace_back(*hf, item.value().detach());
      continue;
    }
    const auto dot = name.find('.', 7);
    const std::string layer = name.substr(7, dot - 7), rest = name.substr(dot + 1);
    const std::string param = rest.substr(rest.rfind('.') + 1);
    auto& parts = pending[layer + "." + param];
    parts[rest[6]] = item.value().detach();
    if (parts.size() < 3) continue;
    const int64_t g = c.kv_groups(), d = c.head_dim, cols = param == "bias" ? 1 : c.hidden_size;
    auto q = parts['q'].reshape({c.num_kv_heads, g, d, cols});
    auto k = parts['k'].reshape({c.num_kv_heads, 1, d, cols});
    auto v = parts['v'].reshape({c.num_kv_heads, 1, d, cols});
    auto packed = torch::cat({q, k, v}, 1).reshape({-1, cols});
    out.emplace_back("model.layers." + layer + ".attention.wqkv." + param,
                     param == "bias" ? packed.squeeze(1) : packed);
    pending.erase(layer + "." + param);
  }
  CARVE_CHECK(pending.empty(), "internlm2 export: q, k and v of a layer were not all present");
  return out;
}

CausalLM load_causal_lm(const CheckpointReader& ckpt, torch::ScalarType dtype, torch::Device device) {
  CausalLM model(ckpt.config());
  load_weights(*model, ckpt);
  model->to(device, dtype);
  model->eval();
  return model;
}

}  // namespace carve::model
