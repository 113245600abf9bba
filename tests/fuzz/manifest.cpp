// Target: an activation cache's manifest.json made of the fuzz bytes, read with data::read_manifest; an accepted
// manifest is written back and read again (the round trip must agree).
#include <cstdlib>

#include "base/error.h"
#include "base/fs.h"
#include "data/cache_layout.h"
#include "tests/fuzz/fuzz_targets.h"

int carve_fuzz_manifest(const uint8_t* data, size_t size) {
  using namespace carve;
  static const std::string dir = [] {
    auto d = fuzz::scratch_path("manifest");
    fs::make_directories(d);
    return d;
  }();
  fuzz::write_bytes(fs::join(dir, "manifest.json"), data, size);
  try {
    const auto m = data::read_manifest(dir);
    const auto again = data::manifest_from_json(data::manifest_to_json(m), "round trip");
    // A manifest that reads back differently from what it wrote is a bug, not a rejection.
    if (!data::plan_difference(m.plan, again.plan).empty() || again.files.size() != m.files.size()) std::abort();
    for (size_t i = 0; i < m.plan.shards.size(); ++i) (void)data::progress_path(static_cast<int64_t>(i));
    return fuzz::kAccepted;
  } catch (const std::exception&) {
    return fuzz::kRejected;
  }
}
