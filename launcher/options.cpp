#include "launcher/options.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>

#include "base/error.h"
#include "base/fs.h"
#include "base/log.h"
#include "model/kernel_ops.h"
#include "data/hdf5_file.h"

namespace carve::launcher {
namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string strip_dashes(std::string s) {
  while (!s.empty() && s[0] == '-') s.erase(0, 1);
  auto eq = s.find('=');
  return eq == std::string::npos ? s : s.substr(0, eq);
}

std::string suggestion(const po::options_description& desc, const std::string& key, const std::string& dashes) {
  auto best = closest_option(desc, key);
  return best.empty() ? "" : " (did you mean '" + dashes + best + "'?)";
}

// Renders a bound value; every option type used by carve is listed here.
std::string value_text(const boost::any& v) {
  if (v.empty()) return "";
  if (auto p = boost::any_cast<std::string>(&v)) return *p;
  if (auto p = boost::any_cast<int>(&v)) return std::to_string(*p);
  if (auto p = boost::any_cast<int64_t>(&v)) return std::to_string(*p);
  if (auto p = boost::any_cast<uint64_t>(&v)) return std::to_string(*p);
  if (auto p = boost::any_cast<bool>(&v)) return *p ? "true" : "false";
  if (auto p = boost::any_cast<double>(&v)) {
    std::ostringstream out;
    out.precision(17);
    out << *p;
    return out.str();
  }
  return "<unprintable>";
}

}  // namespace

std::string closest_name(const std::vector<std::string>& names, const std::string& key) {
  std::string best;
  size_t best_distance = SIZE_MAX;
  for (const auto& name : names) {
    size_t d = edit_distance(key, name);
    if (d < best_distance) best_distance = d, best = name;
  }
  // Beyond a third of the name, the nearest option is more likely noise than a typo.
  return best_distance <= std::max<size_t>(2, key.size() / 3) ? best : "";
}

std::string closest_option(const po::options_description& desc, const std::string& key) {
  std::vector<std::string> names;
  for (const auto& opt : desc.options()) names.push_back(opt->long_name());
  return closest_name(names, key);
}

namespace {

// The INI text with the lines of `keep` sections only: the top level ("") and, when `section` is not empty, the
// [section] block, whose header is dropped so its keys read as top-level options. Other sections are left out.
std::string select_ini_section(std::istream& in, const std::string& section) {
  std::string line, out, current;
  while (std::getline(in, line)) {
    const auto first = line.find_first_not_of(" \t");
    if (first != std::string::npos && line[first] == '[') {
      const auto close = line.find(']', first);
      current = close == std::string::npos ? line.substr(first + 1) : line.substr(first + 1, close - first - 1);
      out += "\n";  // keep line numbers in messages
      continue;
    }
    out += (current.empty() || current == section) ? line + "\n" : "\n";
  }
  return out;
}

// The value `key = value` at the top level of INI text, or "".
std::string top_level_value(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#' || line[first] == ';') continue;
    if (line[first] == '[') return "";
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    auto name = line.substr(first, eq - first);
    name = name.substr(0, name.find_last_not_of(" \t") + 1);
    if (name != key) continue;
    auto value = line.substr(eq + 1);
    const auto a = value.find_first_not_of(" \t"), b = value.find_last_not_of(" \t\r");
    return a == std::string::npos ? "" : value.substr(a, b - a + 1);
  }
  return "";
}

}  // namespace

ParsedOptions parse_options(const std::string& sub, const po::options_description& user_desc,
                            const std::vector<std::string>& args, const po::positional_options_description* positional,
                            const SectionSelector& sections) {
  po::options_description desc;
  std::string config_file;
  po::options_description common("Common");
  common.add_options()("help,h", "print the options of this subcommand")(
      "config", po::value<std::string>(&config_file), "INI file with options (command-line values take precedence)");
  desc.add(common).add(user_desc);

  ParsedOptions out;
  try {
    // The command line is stored first: Program_options keeps the first value stored for a key.
    // No guessing of abbreviated names: `--max-new-token` is a typo to report, not a prefix to complete.
    const int style = po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
    auto parser = po::command_line_parser(args).options(desc).style(style);
    if (positional) parser.positional(*positional);
    po::store(parser.run(), out.values);
    if (out.values.count("help")) {
      out.help = true;
      return out;
    }
    if (out.values.count("config")) {
      const auto path = out.values["config"].as<std::string>();
      std::ifstream file(path);
      if (!file) throw UsageError("--config: cannot read " + path);
      std::stringstream raw;
      raw << file.rdbuf();
      std::string section;
      if (sections.key.size()) {
        const auto value = out.values.count(sections.key) ? out.values[sections.key].as<std::string>()
                                                           : top_level_value(raw.str(), sections.key);
        section = sections.name(value.empty() ? sections.default_value : value);
      }
      std::istringstream in(sections.key.size() ? select_ini_section(raw, section) : raw.str());
      try {
        po::store(po::parse_config_file(in, desc, /*allow_unregistered=*/false), out.values);
      } catch (const po::unknown_option& e) {
        const auto key = strip_dashes(e.get_option_name());
        throw UsageError(path + ": unknown key '" + key + "'" + suggestion(desc, key, ""));
      } catch (const po::error& e) {
        throw UsageError(path + ": " + e.what());
      }
    }
    po::notify(out.values);
  } catch (const po::unknown_option& e) {
    const auto key = strip_dashes(e.get_option_name());
    throw UsageError("carve " + sub + ": unknown option '--" + key + "'" + suggestion(desc, key, "--"));
  } catch (const po::error& e) {
    throw UsageError("carve " + sub + ": " + e.what());
  }
  return out;
}

std::string render_ini(const po::options_description& desc, const po::variables_map& values) {
  std::map<std::string, std::vector<std::string>> sections;  // "" is the top level
  for (const auto& opt : desc.options()) {
    const auto& name = opt->long_name();
    if (name == "help" || name == "config") continue;
    auto it = values.find(name);
    if (it == values.end()) continue;
    auto dot = name.find('.');
    std::string section = dot == std::string::npos ? "" : name.substr(0, dot);
    std::string key = dot == std::string::npos ? name : name.substr(dot + 1);
    sections[section].push_back(key + " = " + value_text(it->second.value()));
  }
  std::ostringstream out;
  for (const auto& [section, lines] : sections) {
    if (!section.empty()) out << "\n[" << section << "]\n";
    for (const auto& line : lines) out << line << "\n";
  }
  return out.str();
}

void record_config(const std::string& sub, const po::options_description& desc, const po::variables_map& values,
                   const std::string& run_dir) {
  const auto ini = render_ini(desc, values);
  std::istringstream lines(ini);
  for (std::string line; std::getline(lines, line);)
    if (!line.empty()) log::info("config", line);
  if (!run_dir.empty()) {
    fs::make_directories(run_dir);
    fs::write_file_atomic(fs::join(run_dir, "config.ini"), "# carve " + sub + "\n" + ini);
  }
}

po::options_description kernel_options(std::string& kernels) {
  po::options_description d("Kernels");
  d.add_options()("kernels", po::value<std::string>(&kernels)->default_value(model::kernel_mode_name(model::kernel_mode())),
                  "fused: carve's CUDA kernels for the SSD scan, conv and gated norm on CUDA tensors; reference: the "
                  "LibTorch ops everywhere (for comparisons)");
  return d;
}

void apply_kernels(const std::string& kernels) {
  try {
    model::set_kernel_mode(model::parse_kernel_mode(kernels, "--kernels"));
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
}

po::options_description hdf5_options(std::string& locking) {
  po::options_description d("HDF5");
  d.add_options()("hdf5-locking", po::value<std::string>(&locking)->default_value("default"),
                  "HDF5 file locking: default, on, off (off for file systems that reject locks)");
  return d;
}

void apply_hdf5_locking(const std::string& locking) {
  try {
    data::set_file_locking(data::parse_file_locking(locking, "--hdf5-locking"));
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
}

}  // namespace carve::launcher
