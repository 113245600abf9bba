#include "model/summary.h"

#include <iomanip>
#include <map>
#include <set>
#include <sstream>

#include "base/error.h"

#include "base/fs.h"
#include "model/student_checkpoint.h"

namespace carve::model {
namespace {

std::string component_of(const std::string& name) {
  if (name.find("layers.") == std::string::npos) {
    if (name.find("embed") != std::string::npos) return "embeddings";
    if (name.find("norm") != std::string::npos) return "final norm";
    return "lm head";
  }
  if (name.find(".mamba.") != std::string::npos) return "mamba-2 mixers";
  if (name.find("attn") != std::string::npos || name.find("attention.") != std::string::npos) return "attention";
  if (name.find("mlp") != std::string::npos || name.find("feed_forward") != std::string::npos) return "mlp";
  if (name.find("norm") != std::string::npos) return "layer norms";
  return "other layer tensors";
}

std::string human(double n) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(2);
  if (n >= 1e9) out << n / 1e9 << "B";
  else if (n >= 1e6) out << n / 1e6 << "M";
  else if (n >= 1e3) out << n / 1e3 << "K";
  else out << std::setprecision(0) << n;
  return out.str();
}

}  // namespace

std::string describe_student(const CheckpointReader& ckpt) {
  const auto& c = ckpt.config();
  CARVE_CHECK(c.raw.contains("carve"), ckpt.folder(), ": not a carve student");
  const auto& section = c.raw["carve"];
  const auto spec = parse_student_section(section, c.num_layers, fs::join(ckpt.folder(), "config.json"));
  // The skeleton has every parameter's shape; no weights are read.
  CausalLM skeleton(c);
  carve_student(*skeleton, spec, /*seed=*/false);
  const auto mixer = ssm_mixer_config(c, spec);
  std::ostringstream out;
  out << "student      layout " << spec.layout.str() << " (" << spec.layout.indices('A').size() << " attention, "
      << spec.layout.indices('M').size() << " mamba-2)\n";
  out << "mixer        " << mixer_kind_name(spec.mixer) << ", seeded by " << seed_method_name(spec.seeding)
      << " (init seed " << spec.init_seed << "), heads " << mixer.num_heads << " (kv " << mixer.num_kv_heads
      << "), head dim = state size " << mixer.head_dim << ", conv " << mixer.conv_kernel << ", chunk "
      << mixer.chunk_size << "\n";
  out << "weights      " << section.value("weights", "?");
  if (section.contains("teacher")) out << ", teacher " << section["teacher"].value("folder", "?");
  out << "\n";
  int64_t total = 0;
  for (auto& p : skeleton->parameters()) total += p.numel();
  out << "student parameters " << human(static_cast<double>(total)) << " (" << total << "); trainable per stage:\n";
  for (auto stage : {Stage::Stage1, Stage::Stage2, Stage::Stage3, Stage::OneStage}) {
    int64_t n = 0;
    for (auto& [name, p] : trainable_parameters(*skeleton, stage)) n += p.numel();
    out << "  " << std::left << std::setw(20) << stage_name(stage) << human(static_cast<double>(n)) << " (" << n
        << ")\n";
  }
  return out.str();
}

std::string describe_checkpoint(const CheckpointReader& ckpt) {
  const auto& c = ckpt.config();
  std::ostringstream out;
  out << "checkpoint   " << ckpt.folder() << (ckpt.weight_prefix().empty() ? "" : " (prefix " + ckpt.weight_prefix() + ")")
      << "\n";
  out << "family       " << family_name(c.family) << " (model_type " << c.model_type << ")\n";
  out << "layers       " << c.num_layers << ", hidden " << c.hidden_size << ", heads " << c.num_heads << " (kv "
      << c.num_kv_heads << ", head dim " << c.head_dim << "), mlp " << c.intermediate_size << ", vocab "
      << c.vocab_size << "\n";
  out << "rope         theta " << c.rope_theta << ", rotary dim " << c.rotary_dim() << " of " << c.head_dim << "\n";
  out << "norm         " << (c.norm == NormKind::RMSNorm ? "RMSNorm" : "LayerNorm") << " eps " << c.norm_eps
      << (c.parallel_residual ? ", parallel attention + MLP" : "") << (c.tie_word_embeddings ? ", tied LM head" : "")
      << "\n";

  std::map<std::string, int64_t> counts;
  std::set<std::string> dtypes;
  int64_t total = 0;
  for (const auto& name : ckpt.names()) {
    const auto& e = ckpt.file_of(name).entry(ckpt.weight_prefix() + name);
    int64_t n = 1;
    for (auto d : e.shape) n *= d;
    counts[component_of(name)] += n;
    dtypes.insert(safetensors_dtype_name(e.dtype));
    total += n;
  }
  out << "parameters   " << human(static_cast<double>(total)) << " (" << total << ")\n";
  for (const auto& [component, n] : counts)
    out << "  " << std::left << std::setw(20) << component << human(static_cast<double>(n)) << "\n";
  out << "dtypes      ";
  for (const auto& d : dtypes) out << " " << d;
  out << (c.torch_dtype.empty() ? "" : " (config says " + c.torch_dtype + ")") << "\n";
  out << "files        " << ckpt.files().size() << ", " << human(static_cast<double>(ckpt.total_bytes())) << "B\n";
  for (const auto& f : ckpt.files()) out << "  " << f << "\n";
  return out.str();
}

}  // namespace carve::model
