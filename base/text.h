// Small text parsing shared by option parsers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace carve {

// "4x4096x16" split at `separator` into integers; empty when any piece is not a whole integer.
std::vector<int64_t> split_integers(const std::string& text, char separator);
// "a, b,c" -> {"a", "b", "c"}: pieces between separators, spaces trimmed, empty pieces dropped.
std::vector<std::string> split_list(const std::string& text, char separator = ',');
// {0, 4, 8} -> "0,4,8" (for messages).
template <typename Int>
std::string join_integers(const std::vector<Int>& values, char separator = ',') {
  std::string out;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) out += separator;
    out += std::to_string(values[i]);
  }
  return out;
}

}  // namespace carve
