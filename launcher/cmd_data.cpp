// carve data validate FILE: check a sample file completely (format, offsets, token ids, loss mask, images).
#include <iostream>

#include "base/fs.h"
#include "data/samples.h"
#include "launcher/options.h"
#include "launcher/subcommands.h"
#include "model/config.h"

namespace carve::launcher {

namespace {

int data_validate(const std::vector<std::string>& args) {
  std::string samples, teacher, locking;
  po::options_description desc("carve data validate");
  desc.add_options()("samples", po::value<std::string>(&samples)->required(), "sample file (also the first argument)")(
      "teacher", po::value<std::string>(&teacher), "teacher folder whose vocabulary and hidden size must match");
  desc.add(hdf5_options(locking));
  po::positional_options_description positional;
  positional.add("samples", 1);
  auto parsed = parse_options("data validate", desc, args, &positional);
  if (parsed.help) {
    std::cout << "usage: carve data validate FILE [options]\n" << desc << "\n";
    return 0;
  }
  apply_hdf5_locking(locking);
  int64_t vocab = 0, hidden = 0;
  if (!teacher.empty()) {
    const auto config = model::load_model_config(fs::join(teacher, "config.json"));
    vocab = config.vocab_size;
    hidden = config.hidden_size;
  }
  const auto s = data::validate_samples(samples, vocab, hidden);
  std::cout << samples << ": valid; " << s.samples << " samples, " << s.tokens << " tokens (" << s.target_tokens
            << " targets), longest " << s.longest << ", " << s.image_rows << " image rows\n";
  return 0;
}

}  // namespace

int data_main(const std::vector<std::string>& args) {
  return run_action("data", {{"validate", "check a sample file completely", data_validate}}, args);
}

}  // namespace carve::launcher
