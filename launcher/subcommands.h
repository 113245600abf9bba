// The table of `carve` subcommands. Each one parses its options into a typed struct, validates them and calls
// into trainer/ or model/; none holds logic of its own beyond that.
#pragma once

#include <string>
#include <vector>

namespace carve::launcher {

using SubcommandMain = int (*)(const std::vector<std::string>& args);

struct Subcommand {
  const char* name;
  const char* summary;
  SubcommandMain main;
};

const std::vector<Subcommand>& subcommands();

// `carve <sub> <action> [options]`: runs the named action (a Subcommand of its own) on the remaining arguments.
// No action prints the list and exits 2, --help prints it and exits 0, an unknown one is a usage error naming
// the closest.
int run_action(const std::string& sub, const std::vector<Subcommand>& actions, const std::vector<std::string>& args);

int inspect_main(const std::vector<std::string>& args);
int generate_main(const std::vector<std::string>& args);
int convert_main(const std::vector<std::string>& args);
int bench_main(const std::vector<std::string>& args);
int data_main(const std::vector<std::string>& args);
int precompute_main(const std::vector<std::string>& args);
int cache_main(const std::vector<std::string>& args);
int distill_main(const std::vector<std::string>& args);
int eval_main(const std::vector<std::string>& args);
int synth_main(const std::vector<std::string>& args);
int pretrain_main(const std::vector<std::string>& args);

}  // namespace carve::launcher
