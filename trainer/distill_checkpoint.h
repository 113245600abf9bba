// Checkpoints of a distillation run: RUN/checkpoints/step_NNNNNNNN/ holds one file per trained layer
// (layer_LLL.safetensors: the layer's mixer under "mixer.<name>" and its optimizer state under "adam.<name>")
// written by the replica that owns the layer, then state.json, written last by rank 0 once every layer file is in
// place: it records the step, the data position and the RNG, and the size and xxh64 of every file. A checkpoint
// without state.json, or whose files do not match it, is incomplete and never resumed from.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

namespace carve::trainer {

inline constexpr const char* kDistillCheckpointFormat = "carve-distill-checkpoint";

std::string checkpoint_dir(const std::string& run_dir, int64_t step);
std::string layer_file_name(int64_t layer);  // "layer_005.safetensors"

// Completes the checkpoint in `dir` (`state` holds its "step"): adds the size and xxh64 of each of `files` (names inside dir) to `state` and
// writes state.json atomically.
void complete_checkpoint(const std::string& dir, nlohmann::json state, const std::vector<std::string>& files);

struct FoundCheckpoint {
  std::string dir;
  int64_t step = 0;
  nlohmann::json state;
};

// The newest complete checkpoint under run_dir whose files verify (size and xxh64); newer incomplete or damaged ones
// are reported and skipped. Nothing when there is none.
std::optional<FoundCheckpoint> latest_checkpoint(const std::string& run_dir);

// Deletes all but the newest `keep` complete checkpoints (and incomplete ones older than the newest complete one).
void prune_checkpoints(const std::string& run_dir, int64_t keep);

}  // namespace carve::trainer
