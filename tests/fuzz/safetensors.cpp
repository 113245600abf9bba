// Target: a .safetensors file made of the fuzz bytes, opened with SafetensorsFile; tensors of at most 1 MiB are
// loaded too.
#include "model/safetensors.h"

#include "base/error.h"
#include "tests/fuzz/fuzz_targets.h"

int carve_fuzz_safetensors(const uint8_t* data, size_t size) {
  using namespace carve;
  static const std::string path = fuzz::scratch_path("safetensors") + ".safetensors";
  fuzz::write_bytes(path, data, size);
  try {
    model::SafetensorsFile file(path);
    for (const auto& name : file.names()) {
      const auto& e = file.entry(name);
      if (e.end - e.begin > (1u << 20)) continue;
      auto t = file.load(name);
      if (t.numel() > 0 && t.numel() <= 64) (void)t.sum();  // touch the copied bytes
    }
    (void)file.metadata();
    return fuzz::kAccepted;
  } catch (const std::exception&) {
    return fuzz::kRejected;
  }
}
