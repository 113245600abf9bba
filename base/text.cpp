#include "base/text.h"

#include <sstream>

namespace carve {

std::vector<int64_t> split_integers(const std::string& text, char separator) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, separator);) {
    try {
      size_t used = 0;
      out.push_back(std::stoll(item, &used));
      if (used != item.size()) return {};
    } catch (const std::exception&) {
      return {};
    }
  }
  return out;
}

}  // namespace carve
