#include "launcher/student_options.h"

#include "base/error.h"

namespace carve::launcher {

po::options_description student_options(StudentOptions& o) {
  po::options_description d("Student");
  d.add_options()("layout", po::value<std::string>(&o.layout)->default_value(""),
                  "one character per teacher layer: A keeps attention, M becomes Mamba-2 (e.g. AMMMAMMM...)")(
      "attention-count", po::value<int64_t>(&o.attention_count)->default_value(-1),
      "keep this many attention layers, placed by --placement (0: all Mamba-2)")(
      "mamba-count", po::value<int64_t>(&o.mamba_count)->default_value(-1),
      "convert this many layers to Mamba-2, placed by --placement")(
      "placement", po::value<std::string>(&o.placement)->default_value("head-interleaved"),
      "head-interleaved | head-stacked | tail-interleaved | tail-stacked")(
      "attention-layers", po::value<std::string>(&o.attention_layers)->default_value(""),
      "comma-separated layers that keep attention")(
      "mamba-layers", po::value<std::string>(&o.mamba_layers)->default_value(""),
      "comma-separated layers that become Mamba-2 (MaTVLM)")(
      "mixer", po::value<std::string>(&o.mixer)->default_value("seeded"), "seeded (mmMamba) | mamba2 (MaTVLM)")(
      "seed", po::value<std::string>(&o.seeding)->default_value("mimic"),
      "initialisation from attention: mimic | inherit | inherit-qkv | random")(
      "init-seed", po::value<int64_t>(&o.init_seed)->default_value(0), "random seed of the initialisation")(
      "chunk-size", po::value<int64_t>(&o.chunk_size)->default_value(0), "SSD chunk (0: seeded 128, mamba2 256)")(
      "conv-kernel", po::value<int64_t>(&o.conv_kernel)->default_value(0), "conv taps (0: seeded 2, mamba2 4)");
  return d;
}

model::StudentSpec resolve_student(const StudentOptions& o, int64_t num_layers) {
  int sources = 0;
  sources += !o.layout.empty();
  sources += o.attention_count >= 0;
  sources += o.mamba_count >= 0;
  sources += !o.attention_layers.empty();
  sources += !o.mamba_layers.empty();
  if (sources != 1)
    throw UsageError("give the layout exactly one way: --layout, --attention-count, --mamba-count, "
                     "--attention-layers or --mamba-layers (got " + std::to_string(sources) + ")");
  model::StudentSpec spec;
  try {
    if (!o.layout.empty()) {
      spec.layout = model::Layout::parse(o.layout, num_layers, "--layout");
    } else if (o.attention_count >= 0 || o.mamba_count >= 0) {
      const auto placement = model::parse_placement(o.placement, "--placement");
      const bool attention = o.attention_count >= 0;
      spec.layout = model::Layout::generate(num_layers, attention ? o.attention_count : o.mamba_count,
                                            attention ? 'A' : 'M', placement);
    } else if (!o.attention_layers.empty()) {
      spec.layout = model::Layout::from_list(
          num_layers, model::parse_index_list(o.attention_layers, "--attention-layers"), 'A', "--attention-layers");
    } else {
      spec.layout = model::Layout::from_list(num_layers, model::parse_index_list(o.mamba_layers, "--mamba-layers"),
                                             'M', "--mamba-layers");
    }
    spec.mixer = model::parse_mixer_kind(o.mixer, "--mixer");
    spec.seeding = model::parse_seed_method(o.seeding, "--seed");
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
  if (o.init_seed < 0) throw UsageError("--init-seed must be non-negative");
  if (o.chunk_size < 0) throw UsageError("--chunk-size must be positive (or 0 for the default)");
  if (o.conv_kernel < 0 || o.conv_kernel > 8) throw UsageError("--conv-kernel must be in 1..8 (or 0 for the default)");
  spec.init_seed = static_cast<uint64_t>(o.init_seed);
  spec.chunk_size = o.chunk_size;
  spec.conv_kernel = o.conv_kernel;
  return spec;
}

}  // namespace carve::launcher
