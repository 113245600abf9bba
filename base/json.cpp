#include "base/json.h"

#include "base/fs.h"

namespace carve {

nlohmann::json read_json_file(const std::string& path) {
  const auto text = fs::read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
}

}  // namespace carve
