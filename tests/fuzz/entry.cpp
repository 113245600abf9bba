// The libFuzzer entry point of one target: scripts/fuzz.sh compiles this file once per target with
// -DCARVE_FUZZ_TARGET=carve_fuzz_<name>.
#include "tests/fuzz/fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CARVE_FUZZ_TARGET(data, size);
  return 0;
}
