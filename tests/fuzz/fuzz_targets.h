// Fuzz targets for carve's readers of untrusted files (docs/reliability.md, "Fuzzing").
// Each takes arbitrary bytes and returns 0 when carve accepted the input, 1 when it rejected it cleanly with
// carve::Error or another std::exception; anything else (a crash, a sanitizer report, a hang, a huge
// allocation) is a bug. scripts/fuzz.sh links each into a libFuzzer binary (entry.cpp); the GoogleTest
// FuzzRegressions replays tests/fuzz/corpus/ and tests/fuzz/regressions/ through them in the normal build.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace carve::fuzz {

inline constexpr int kAccepted = 0;
inline constexpr int kRejected = 1;

// A file path private to this process for target `name` (under $TMPDIR, else /tmp).
std::string scratch_path(const std::string& name);
void write_bytes(const std::string& path, const uint8_t* data, size_t size);

}  // namespace carve::fuzz

// The targets: names match tests/fuzz/<name>.cpp, tests/fuzz/corpus/<name>/ and tests/fuzz/regressions/<name>/.
int carve_fuzz_safetensors(const uint8_t* data, size_t size);   // a .safetensors file
int carve_fuzz_config(const uint8_t* data, size_t size);        // a Hugging Face config.json
int carve_fuzz_ini(const uint8_t* data, size_t size);           // a --config FILE.ini
int carve_fuzz_samples(const uint8_t* data, size_t size);       // edits applied to a valid sample file
int carve_fuzz_manifest(const uint8_t* data, size_t size);      // an activation cache's manifest.json
int carve_fuzz_shard(const uint8_t* data, size_t size);         // edits applied to a valid cache shard
