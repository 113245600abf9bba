// carve data validate FILE: check a sample file completely (format, offsets, token ids, loss mask, images).
#include <iostream>

#include "data/hdf5_file.h"
#include "data/samples.h"
#include "launcher/subcommands.h"
#include "model/checkpoint.h"
#include "launcher/options.h"

namespace carve::launcher {

int data_main(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] != "validate") {
    if (!args.empty() && args[0] != "--help" && args[0] != "-h")
      throw UsageError("carve data: unknown action '" + args[0] + "' (expected: validate)");
    std::cout << "usage: carve data validate FILE [--teacher DIR]\n"
                 "  checks a sample file completely; with --teacher, also its vocabulary and image width\n";
    return args.empty() ? 2 : 0;
  }
  std::string samples, teacher, prefix, locking = "default";
  po::options_description desc("carve data validate");
  desc.add_options()("samples", po::value<std::string>(&samples)->required(), "sample file (also the first argument)")(
      "teacher", po::value<std::string>(&teacher), "teacher folder whose vocabulary and hidden size must match")(
      "teacher-prefix", po::value<std::string>(&prefix)->default_value(""), "weight prefix inside a VLM checkpoint")(
      "hdf5-locking", po::value<std::string>(&locking)->default_value(locking), "HDF5 file locking: default, on, off");
  po::positional_options_description positional;
  positional.add("samples", 1);
  auto parsed = parse_options("data validate", desc, {args.begin() + 1, args.end()}, &positional);
  if (parsed.help) {
    std::cout << "usage: carve data validate FILE [options]\n" << desc << "\n";
    return 0;
  }
  data::set_file_locking(data::parse_file_locking(locking, "--hdf5-locking"));
  int64_t vocab = 0, hidden = 0;
  if (!teacher.empty()) {
    model::CheckpointReader ckpt(teacher, prefix);
    vocab = ckpt.config().vocab_size;
    hidden = ckpt.config().hidden_size;
  }
  const auto s = data::validate_samples(samples, vocab, hidden);
  std::cout << samples << ": valid; " << s.samples << " samples, " << s.tokens << " tokens (" << s.target_tokens
            << " targets), longest " << s.longest << ", " << s.image_rows << " image rows\n";
  return 0;
}

}  // namespace carve::launcher
