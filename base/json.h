// Reading JSON files carve or Hugging Face wrote (config.json, indexes, manifests, records): one wording for the
// errors, which name the file and the field.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "base/error.h"

namespace carve {

// The parsed file; a missing or malformed file is an error naming it.
nlohmann::json read_json_file(const std::string& path);

// j[key] as T; `where` names the object in errors ("manifest.json shard 3").
template <typename T>
T json_field(const nlohmann::json& j, const char* key, const std::string& where) {
  CARVE_CHECK(j.is_object() && j.contains(key), where, ": field '", key, "' is missing");
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(where + ": field '" + key + "' has the wrong type (" + j.at(key).dump() + ")");
  }
}

}  // namespace carve
