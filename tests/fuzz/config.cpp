// Target: config.json bytes, parsed with nlohmann::json and then model::parse_model_config.
#include "model/config.h"

#include "base/error.h"
#include "tests/fuzz/fuzz_targets.h"

int carve_fuzz_config(const uint8_t* data, size_t size) {
  using namespace carve;
  try {
    const auto json = nlohmann::json::parse(data, data + size);
    const auto c = model::parse_model_config(json, "config.json");
    volatile int64_t sink = c.rotary_dim() + c.kv_groups() + c.head_dim;
    (void)sink;
    (void)model::family_name(c.family);
    return fuzz::kAccepted;
  } catch (const std::exception&) {
    return fuzz::kRejected;
  }
}
