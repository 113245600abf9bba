#include "model/checkpoint.h"

#include <set>
#include <sstream>

#include "base/error.h"
#include "base/fs.h"
#include "base/json.h"

namespace carve::model {

CheckpointReader::CheckpointReader(const std::string& folder, std::string weight_prefix)
    : folder_(folder), prefix_(std::move(weight_prefix)) {
  CARVE_CHECK(fs::is_directory(folder), folder, ": not a directory (expected a Hugging Face checkpoint folder)");
  config_ = load_model_config(fs::join(folder, "config.json"));

  const std::string single = fs::join(folder, "model.safetensors");
  const std::string index_path = fs::join(folder, "model.safetensors.index.json");
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> declared;  // tensor -> shard file name, from the index
  if (fs::exists(index_path)) {
    const auto index = read_json_file(index_path);
    CARVE_CHECK(index.contains("weight_map") && index["weight_map"].is_object(), index_path,
                ": missing object 'weight_map'");
    std::set<std::string> unique;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      CARVE_CHECK(it->is_string(), index_path, ": weight_map entry '", it.key(), "' is not a file name");
      const auto file = it->get<std::string>();
      CARVE_CHECK(file.find('/') == std::string::npos, index_path, ": shard name '", file,
                  "' must be a plain file name");
      declared[it.key()] = file;
      if (unique.insert(file).second) shard_names.push_back(file);
    }
    for (const auto& name : shard_names)
      CARVE_CHECK(fs::exists(fs::join(folder, name)), folder, ": shard '", name, "' named by ",
                  "model.safetensors.index.json is missing");
  } else {
    CARVE_CHECK(fs::exists(single), folder, ": has neither model.safetensors nor model.safetensors.index.json",
                fs::exists(fs::join(folder, "pytorch_model.bin")) ? " (pytorch_model.bin is not supported: convert "
                                                                    "it to safetensors)" : "");
    shard_names.push_back("model.safetensors");
  }
  for (const auto& name : shard_names) {
    shards_.push_back(std::make_unique<SafetensorsFile>(fs::join(folder, name)));
    const SafetensorsFile* shard = shards_.back().get();
    for (const auto& tensor : shard->names()) {
      auto [it, inserted] = index_.emplace(tensor, shard);
      CARVE_CHECK(inserted, folder, ": tensor '", tensor, "' appears in both ", it->second->path(), " and ",
                  shard->path());
    }
  }
  for (const auto& [tensor, file] : declared) {
    auto it = index_.find(tensor);
    CARVE_CHECK(it != index_.end() && fs::join(folder, file) == it->second->path(), index_path, ": tensor '",
                tensor, "' is declared in shard '", file, "' but is not stored there");
  }
}


const SafetensorsFile& CheckpointReader::file_of(const std::string& name) const {
  auto it = index_.find(prefix_ + name);
  CARVE_CHECK(it != index_.end(), folder_, ": checkpoint has no tensor '", prefix_ + name, "'",
              prefix_.empty() ? "" : " (weight prefix '" + prefix_ + "')");
  return *it->second;
}

torch::Tensor CheckpointReader::load(const std::string& name) const { return file_of(name).load(prefix_ + name); }

torch::Tensor CheckpointReader::load(const std::string& name, const std::vector<int64_t>& expected) const {
  const auto& file = file_of(name);
  const auto& entry = file.entry(prefix_ + name);
  if (entry.shape != expected) {
    std::ostringstream got, want;
    got << c10::IntArrayRef(entry.shape);
    want << c10::IntArrayRef(expected);
    fail(file.path(), ": tensor '", prefix_ + name, "' has shape ", got.str(), " but config.json implies ",
         want.str());
  }
  return file.load(prefix_ + name);
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  for (const auto& [name, shard] : index_)
    if (name.compare(0, prefix_.size(), prefix_) == 0) out.push_back(name.substr(prefix_.size()));
  return out;
}

std::vector<std::string> CheckpointReader::files() const {
  std::vector<std::string> out;
  for (const auto& s : shards_) out.push_back(s->path());
  return out;
}

uint64_t CheckpointReader::total_bytes() const {
  uint64_t total = 0;
  for (const auto& s : shards_) total += s->file_size();
  return total;
}

}  // namespace carve::model
