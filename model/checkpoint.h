// A Hugging Face checkpoint folder: config.json plus model.safetensors or a sharded set described by
// model.safetensors.index.json. Tensors are read from memory-mapped shards by name.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"

namespace carve::model {

class CheckpointReader {
 public:
  // `weight_prefix` is prepended to every name looked up: "language_model." reads the language model out of a
  // VLM checkpoint whose other weights (vision tower, projector) are ignored.
  explicit CheckpointReader(const std::string& folder, std::string weight_prefix = "");

  const std::string& folder() const { return folder_; }
  const ModelConfig& config() const { return config_; }
  const std::string& weight_prefix() const { return prefix_; }

  // The tensor named `weight_prefix + name`, CPU, stored dtype. Errors name the folder and tensor.
  torch::Tensor load(const std::string& name) const;
  // As load(), checking the shape; `what` says where the expected shape came from ("config.json").
  torch::Tensor load(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  // File holding the named tensor.
  const SafetensorsFile& file_of(const std::string& name) const;
  // Names under the prefix (with the prefix removed).
  std::vector<std::string> names() const;
  std::vector<std::string> files() const;
  uint64_t total_bytes() const;

 private:
  std::string folder_;
  std::string prefix_;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, const SafetensorsFile*> index_;  // full tensor name -> shard
};

}  // namespace carve::model
