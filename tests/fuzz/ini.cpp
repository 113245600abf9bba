// Target: a --config FILE.ini read by launcher::parse_options, against options shaped like `carve distill`'s
// (strings, integers, doubles, bools, a required option, dotted names, and [stageN] sections chosen by --stage).
#include "launcher/options.h"

#include "base/error.h"
#include "tests/fuzz/fuzz_targets.h"

int carve_fuzz_ini(const uint8_t* data, size_t size) {
  using namespace carve;
  namespace po = boost::program_options;
  static const std::string path = fuzz::scratch_path("ini") + ".ini";
  fuzz::write_bytes(path, data, size);

  std::string stage = "1", teacher, cache, out, schedule = "wsd", tokens;
  int threads = 0, layer_groups = 1;
  int64_t steps = 0, batch_tokens = 4096, seed = 0;
  uint64_t bucket = 25;
  double lr = 1e-3, clip = 1.0;
  bool shuffle = true, zero1 = false;
  po::options_description desc("Fuzz");
  desc.add_options()("stage", po::value<std::string>(&stage)->default_value(stage), "stage")(
      "teacher", po::value<std::string>(&teacher), "teacher folder")(
      "cache", po::value<std::string>(&cache), "cache")(
      "out", po::value<std::string>(&out)->required(), "run folder")(
      "schedule", po::value<std::string>(&schedule)->default_value(schedule), "schedule")(
      "tokens", po::value<std::string>(&tokens), "prompt tokens")(
      "threads", po::value<int>(&threads)->default_value(threads), "threads")(
      "layer-groups", po::value<int>(&layer_groups)->default_value(layer_groups), "groups")(
      "steps", po::value<int64_t>(&steps)->default_value(steps), "steps")(
      "batch-tokens", po::value<int64_t>(&batch_tokens)->default_value(batch_tokens), "tokens per batch")(
      "student.seed", po::value<int64_t>(&seed)->default_value(seed), "seed")(
      "bucket-mb", po::value<uint64_t>(&bucket)->default_value(bucket), "bucket")(
      "lr", po::value<double>(&lr)->default_value(lr), "learning rate")(
      "clip", po::value<double>(&clip)->default_value(clip), "clip")(
      "shuffle", po::value<bool>(&shuffle)->default_value(shuffle), "shuffle")(
      "zero1", po::value<bool>(&zero1)->default_value(zero1), "zero1");
  launcher::SectionSelector sections{"stage", "1", [](const std::string& v) -> std::string {
                                       if (v == "1" || v == "2" || v == "3") return "stage" + v;
                                       if (v == "one-stage") return v;
                                       throw Error("--stage: '" + v + "' is not 1, 2, 3 or one-stage");
                                     }};
  try {
    auto parsed = launcher::parse_options("fuzz", desc, {"--config", path}, nullptr, sections);
    (void)launcher::render_ini(desc, parsed.values);
    return fuzz::kAccepted;
  } catch (const std::exception&) {
    return fuzz::kRejected;
  }
}
