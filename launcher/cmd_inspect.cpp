// carve inspect: architecture, parameter counts, dtypes and files of a checkpoint folder.
#include <iostream>

#include "launcher/options.h"
#include "launcher/subcommands.h"
#include "model/checkpoint.h"
#include "model/summary.h"

namespace carve::launcher {

int inspect_main(const std::vector<std::string>& args) {
  std::string path, prefix;
  po::options_description desc("carve inspect");
  desc.add_options()("model", po::value<std::string>(&path)->required(), "checkpoint folder (config.json + safetensors)")(
      "model-prefix", po::value<std::string>(&prefix)->default_value(""),
      "weight-name prefix of the language model inside a VLM checkpoint");
  auto parsed = parse_options("inspect", desc, args);
  if (parsed.help) {
    std::cout << "usage: carve inspect --model DIR\n" << desc << "\n";
    return 0;
  }
  model::CheckpointReader ckpt(path, prefix);
  std::cout << model::describe_checkpoint(ckpt);
  if (ckpt.config().raw.contains("carve")) std::cout << model::describe_student(ckpt);
  return 0;
}

}  // namespace carve::launcher
