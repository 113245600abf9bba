// Small text parsing shared by option parsers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace carve {

// "4x4096x16" split at `separator` into integers; empty when any piece is not a whole integer.
std::vector<int64_t> split_integers(const std::string& text, char separator);

}  // namespace carve
