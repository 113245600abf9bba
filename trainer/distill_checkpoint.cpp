#include "trainer/distill_checkpoint.h"

#include <csignal>
#include <cstdlib>

#include <cstdio>
#include <filesystem>
#include <map>

#include "base/error.h"
#include "base/fs.h"
#include "base/json.h"
#include "base/log.h"
#include "base/xxhash64.h"

namespace carve::trainer {
namespace {

namespace stdfs = std::filesystem;

// step -> folder, for every step_NNNNNNNN folder under RUN/checkpoints.
std::map<int64_t, std::string> checkpoint_folders(const std::string& run_dir) {
  std::map<int64_t, std::string> out;
  const auto root = fs::join(run_dir, "checkpoints");
  if (!fs::is_directory(root)) return out;
  for (const auto& entry : stdfs::directory_iterator(root)) {
    const auto name = entry.path().filename().string();
    if (!entry.is_directory() || name.rfind("step_", 0) != 0) continue;
    char* end = nullptr;
    const long long step = std::strtoll(name.c_str() + 5, &end, 10);
    if (end && *end == '\0') out[step] = entry.path().string();
  }
  return out;
}

// "" when the checkpoint in dir is complete and its files match state.json, else why not.
std::string check_checkpoint(const std::string& dir, nlohmann::json* state_out) {
  const auto state_path = fs::join(dir, "state.json");
  if (!fs::exists(state_path)) return "no state.json (the run stopped while writing it)";
  nlohmann::json state;
  try {
    state = read_json_file(state_path);
    if (state.at("format") != kDistillCheckpointFormat) return "state.json is not a " + std::string(kDistillCheckpointFormat);
    for (const auto& f : state.at("files")) {
      const auto path = fs::join(dir, f.at("path").get<std::string>());
      if (!fs::exists(path)) return f.at("path").get<std::string>() + " is missing";
      if (fs::file_size(path) != f.at("bytes").get<int64_t>())
        return f.at("path").get<std::string>() + " has " + std::to_string(fs::file_size(path)) + " bytes, state.json says " +
               std::to_string(f.at("bytes").get<int64_t>());
      if (hex64(xxh64_file(path)) != f.at("xxh64").get<std::string>())
        return f.at("path").get<std::string>() + " does not match its xxh64 in state.json";
    }
  } catch (const std::exception& e) {
    return std::string("state.json is unreadable: ") + e.what();
  }
  if (state_out) *state_out = std::move(state);
  return "";
}

}  // namespace

std::string checkpoint_dir(const std::string& run_dir, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%08lld", static_cast<long long>(step));
  return fs::join(fs::join(run_dir, "checkpoints"), name);
}

std::string layer_file_name(int64_t layer) {
  char name[32];
  std::snprintf(name, sizeof(name), "layer_%03lld.safetensors", static_cast<long long>(layer));
  return name;
}

void complete_checkpoint(const std::string& dir, nlohmann::json state, const std::vector<std::string>& files) {
  // Crash tests: CARVE_FAULT_KILL_IN_CHECKPOINT=N dies (SIGKILL, as a node failure would) once step N's layer files
  // are written and before its state.json: a checkpoint write cut off midway.
  if (const char* v = std::getenv("CARVE_FAULT_KILL_IN_CHECKPOINT"); v && state.value("step", int64_t{-1}) == std::atoll(v))
    std::raise(SIGKILL);
  state["format"] = kDistillCheckpointFormat;
  state["files"] = nlohmann::json::array();
  for (const auto& name : files) {
    const auto path = fs::join(dir, name);
    CARVE_CHECK(fs::exists(path), "checkpoint ", dir, ": ", name, " was not written");
    state["files"].push_back({{"path", name}, {"bytes", fs::file_size(path)}, {"xxh64", hex64(xxh64_file(path))}});
  }
  fs::write_file_atomic(fs::join(dir, "state.json"), state.dump(2) + "\n");
}

std::optional<FoundCheckpoint> latest_checkpoint(const std::string& run_dir) {
  const auto folders = checkpoint_folders(run_dir);
  for (auto it = folders.rbegin(); it != folders.rend(); ++it) {
    nlohmann::json state;
    const auto why = check_checkpoint(it->second, &state);
    if (why.empty()) return FoundCheckpoint{it->second, it->first, std::move(state)};
    log::info("checkpoint", "skipping ", it->second, ": ", why);
  }
  return std::nullopt;
}

void prune_checkpoints(const std::string& run_dir, int64_t keep) {
  if (keep <= 0) return;
  const auto folders = checkpoint_folders(run_dir);
  std::vector<int64_t> complete;
  for (const auto& [step, dir] : folders)
    if (fs::exists(fs::join(dir, "state.json"))) complete.push_back(step);
  if (static_cast<int64_t>(complete.size()) <= keep) return;
  const int64_t oldest_kept = complete[complete.size() - static_cast<size_t>(keep)];
  for (const auto& [step, dir] : folders)
    if (step < oldest_kept) fs::remove_tree(dir);
}

}  // namespace carve::trainer
