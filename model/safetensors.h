// Safetensors files: read by memory-mapping (no copy of the file), write atomically.
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]},
// "__metadata__": {str: str}}, then the data buffer; offsets are relative to the buffer's start.
// Every header field is validated against the file size and the tensor's dtype and shape before any read.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace carve::model {

struct SafetensorsEntry {
  std::string name;
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offset into the data buffer
  uint64_t end = 0;
};

// A read-only view of one .safetensors file. The mapping lives as long as the object.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const SafetensorsEntry& entry(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t file_size() const { return file_size_; }

  // A new tensor holding a copy of the stored bytes (CPU, the stored dtype).
  torch::Tensor load(const std::string& name) const;

 private:
  std::string path_;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  uint64_t file_size_ = 0;
  uint64_t data_start_ = 0;
  const uint8_t* mapping_ = nullptr;
};

// Writes tensors (any device, F32/F16/BF16/F64/I64/I32/U8/BOOL) to `path` through a temporary file that is
// fsynced and renamed, so a reader never sees a partial file and an existing file survives a crash mid-write.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Names used in headers ("F32", "BF16", ...).
std::string safetensors_dtype_name(torch::ScalarType dtype);

}  // namespace carve::model
