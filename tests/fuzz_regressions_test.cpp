// Replays the fuzz corpora through the same functions scripts/fuzz.sh fuzzes (tests/fuzz/): every seed in
// tests/fuzz/corpus/<target>/ must be handled without a crash, and every input in tests/fuzz/regressions/<target>/
// (inputs that once crashed, hung or exhausted memory) must now be rejected cleanly.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "tests/fuzz/fuzz_targets.h"

namespace {

namespace stdfs = std::filesystem;
using Target = int (*)(const uint8_t*, size_t);

struct NamedTarget {
  const char* name;
  Target run;
};
const NamedTarget kTargets[] = {{"safetensors", carve_fuzz_safetensors},
                                {"config", carve_fuzz_config},
                                {"ini", carve_fuzz_ini},
                                {"samples", carve_fuzz_samples},
                                {"manifest", carve_fuzz_manifest},
                                {"shard", carve_fuzz_shard}};

std::vector<stdfs::path> files_in(const stdfs::path& dir) {
  std::vector<stdfs::path> out;
  if (stdfs::is_directory(dir))
    for (const auto& e : stdfs::directory_iterator(dir))
      if (e.is_regular_file()) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

int replay(Target run, const stdfs::path& file) {
  std::ifstream in(file, std::ios::binary);
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return run(bytes.data(), bytes.size());
}

const stdfs::path kFuzzDir = stdfs::path(CARVE_SOURCE_DIR) / "tests" / "fuzz";

TEST(FuzzRegressions, SeedCorporaAreHandled) {
  for (const auto& t : kTargets) {
    const auto seeds = files_in(kFuzzDir / "corpus" / t.name);
    EXPECT_FALSE(seeds.empty()) << "no seeds for fuzz target " << t.name;
    for (const auto& file : seeds) {
      SCOPED_TRACE(file.string());
      const int rc = replay(t.run, file);
      EXPECT_TRUE(rc == carve::fuzz::kAccepted || rc == carve::fuzz::kRejected);
    }
  }
}

TEST(FuzzRegressions, FoundInputsAreRejectedCleanly) {
  for (const auto& t : kTargets)
    for (const auto& file : files_in(kFuzzDir / "regressions" / t.name)) {
      SCOPED_TRACE(file.string());
      EXPECT_EQ(replay(t.run, file), carve::fuzz::kRejected);
    }
}

// The seeds that are valid inputs stay accepted (the targets are not rejecting everything).
TEST(FuzzRegressions, ValidSeedsAreAccepted) {
  const std::pair<const char*, const char*> valid[] = {{"safetensors", "two_tensors.safetensors"},
                                                       {"config", "llama.json"},
                                                       {"ini", "sections.ini"},
                                                       {"samples", "unchanged.bin"},
                                                       {"manifest", "two_shards.json"},
                                                       {"shard", "unchanged_hidden.bin"},
                                                       {"shard", "unchanged_logits.bin"}};
  for (const auto& [target, name] : valid) {
    for (const auto& t : kTargets) {
      if (std::string(t.name) != target) continue;
      EXPECT_EQ(replay(t.run, kFuzzDir / "corpus" / target / name), carve::fuzz::kAccepted) << target << "/" << name;
    }
  }
}

}  // namespace
