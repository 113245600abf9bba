// Command-line and INI option handling shared by every subcommand.
// Options are declared with Boost.Program_options bound to typed structs, so values are parsed once. A key may
// come from `--config FILE.ini` (`[section]` + `key = value` means `--section.key`) or the command line, which
// wins. Unknown keys, bad values and missing required options stop with an error naming them.
#pragma once

#include <boost/program_options.hpp>

#include <string>
#include <vector>

namespace carve::launcher {

namespace po = boost::program_options;

// Thrown for a user error in the options; main prints it with the subcommand's usage hint.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ParsedOptions {
  po::variables_map values;
  bool help = false;
};

// INI sections that apply only to some runs: with `key` set, the value of that option (from the command line, else
// the file's top level, else default_value) is turned by `name` into the one [section] whose keys are read;
// other sections are skipped. `carve distill` reads [stage1] ... [stage3] this way.
struct SectionSelector {
  std::string key;
  std::string default_value;
  std::string (*name)(const std::string& value) = nullptr;
};

// Parses argv (after the subcommand) against `desc`, adding --help and --config. Calls notify(), which fills
// the bound structs; on --help it does not notify and `help` is set.
// `positional` maps bare arguments to options (`carve cache verify CACHE` means --cache CACHE).
ParsedOptions parse_options(const std::string& subcommand, const po::options_description& desc,
                            const std::vector<std::string>& args,
                            const po::positional_options_description* positional = nullptr,
                            const SectionSelector& sections = {});

// The name closest to `key` (edit distance within a third of its length), or "" when nothing is close.
std::string closest_name(const std::vector<std::string>& names, const std::string& key);
// The option in `desc` closest to `key` (edit distance), or "" when nothing is close.
std::string closest_option(const po::options_description& desc, const std::string& key);

// The effective configuration as INI text: every option with its value (defaults included), grouped by section.
std::string render_ini(const po::options_description& desc, const po::variables_map& values);

// --kernels (fused | reference): carve's CUDA kernels or the LibTorch reference for the Mamba-2 numerics on CUDA
// tensors (default: the environment variable CARVE_KERNELS, else fused); apply_kernels sets it process-wide.
po::options_description kernel_options(std::string& kernels);
void apply_kernels(const std::string& kernels);

// --hdf5-locking (default | on | off) for subcommands that open HDF5 files; apply_hdf5_locking sets it process-wide.
po::options_description hdf5_options(std::string& locking);
void apply_hdf5_locking(const std::string& locking);

// Prints the configuration under a [config] tag and, when run_dir is not empty, writes it to run_dir/config.ini.
void record_config(const std::string& subcommand, const po::options_description& desc,
                   const po::variables_map& values, const std::string& run_dir);

}  // namespace carve::launcher
