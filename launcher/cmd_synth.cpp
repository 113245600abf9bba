// carve synth: write the built-in example's synthetic visual-question-answering set (data/synth_vqa).
#include <iostream>

#include "base/error.h"
#include "base/fs.h"
#include "base/log.h"
#include "data/synth_vqa.h"
#include "launcher/options.h"
#include "launcher/subcommands.h"

namespace carve::launcher {

int synth_main(const std::vector<std::string>& args) {
  std::string out;
  int64_t train = 20000, eval = 1000, hidden = 64, seed = 0;
  double noise = 0.2;
  po::options_description desc("carve synth");
  desc.add_options()("out", po::value<std::string>(&out)->required(), "folder for train.h5 and eval.h5")(
      "train", po::value<int64_t>(&train)->default_value(train), "training samples")(
      "eval", po::value<int64_t>(&eval)->default_value(eval), "evaluation samples (other scenes)")(
      "hidden", po::value<int64_t>(&hidden)->default_value(hidden), "image feature width (the teacher's hidden size)")(
      "noise", po::value<double>(&noise)->default_value(noise), "standard deviation of the noise on image features")(
      "seed", po::value<int64_t>(&seed)->default_value(seed), "seed of the embeddings and scenes");
  auto parsed = parse_options("synth", desc, args);
  if (parsed.help) {
    std::cout << "usage: carve synth --out DIR [--train N] [--eval N] [--hidden D]\n" << desc << "\n";
    return 0;
  }
  if (train < 1 || eval < 1) throw UsageError("--train and --eval: at least one sample each");
  fs::make_directories(out);
  data::SynthVqaOptions o;
  o.hidden = hidden;
  o.noise = noise;
  o.seed = static_cast<uint64_t>(seed);
  for (auto [name, count, split] : {std::tuple<const char*, int64_t, uint64_t>{"train", train, 0},
                                   std::tuple<const char*, int64_t, uint64_t>{"eval", eval, 1}}) {
    o.samples = count;
    o.split = split;
    auto set = data::make_synth_vqa(o);
    const auto path = fs::join(out, std::string(name) + ".h5");
    data::write_samples(path, set);
    log::info("synth", path, ": ", count, " samples, ", set.tokens.size(), " tokens; first: ",
              data::synth_vqa_text(set, 0));
  }
  return 0;
}

}  // namespace carve::launcher
