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

std::vector<std::string> split_list(const std::string& text, char separator) {
  std::vector<std::string> out;
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find(separator, begin);
    if (end == std::string::npos) end = text.size();
    auto piece = text.substr(begin, end - begin);
    const auto first = piece.find_first_not_of(" \t"), last = piece.find_last_not_of(" \t");
    if (first != std::string::npos) out.push_back(piece.substr(first, last - first + 1));
    begin = end + 1;
  }
  return out;
}

}  // namespace carve
