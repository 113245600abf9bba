#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/fs.h"

namespace carve::model {
namespace {

// Headers larger than this are refused before parsing: real ones are a few MB at most.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeName {
  const char* name;
  torch::ScalarType type;
};
constexpr DtypeName kDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
    {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
    {"U8", torch::kUInt8},    {"BOOL", torch::kBool},
};

torch::ScalarType parse_dtype(const std::string& name, const std::string& path, const std::string& tensor) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.type;
  fail(path, ": tensor '", tensor, "' has unsupported dtype '", name,
       "' (expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
}

SafetensorsEntry parse_entry(const std::string& name, const nlohmann::json& spec, uint64_t data_size,
                             const std::string& path) {
  auto where = [&] { return path + ": tensor '" + name + "'"; };
  CARVE_CHECK(spec.is_object(), where(), " is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    CARVE_CHECK(spec.contains(key), where(), " has no '", key, "' field");
  CARVE_CHECK(spec["dtype"].is_string(), where(), ": 'dtype' must be a string");
  CARVE_CHECK(spec["shape"].is_array(), where(), ": 'shape' must be an array");
  CARVE_CHECK(spec["data_offsets"].is_array() && spec["data_offsets"].size() == 2, where(),
              ": 'data_offsets' must be [begin, end]");
  SafetensorsEntry e;
  e.name = name;
  e.dtype = parse_dtype(spec["dtype"].get<std::string>(), path, name);
  uint64_t numel = 1;
  for (const auto& d : spec["shape"]) {
    CARVE_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), where(),
                ": shape entries must be non-negative integers");
    uint64_t v = d.get<uint64_t>();
    CARVE_CHECK(v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), where(), ": shape entry ", v,
                " is too large");
    CARVE_CHECK(v == 0 || numel <= std::numeric_limits<uint64_t>::max() / v, where(), ": shape overflows");
    numel *= v;
    e.shape.push_back(static_cast<int64_t>(v));
  }
  for (const auto& o : spec["data_offsets"])
    CARVE_CHECK(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0), where(),
                ": data_offsets must be non-negative integers");
  e.begin = spec["data_offsets"][0].get<uint64_t>();
  e.end = spec["data_offsets"][1].get<uint64_t>();
  CARVE_CHECK(e.begin <= e.end, where(), ": data_offsets begin ", e.begin, " is after end ", e.end);
  CARVE_CHECK(e.end <= data_size, where(), ": data_offsets end ", e.end, " is past the data buffer of ", data_size,
              " bytes (file truncated?)");
  // The byte size must not wrap around either: [2^61] F64 would otherwise "fit" in 0 bytes.
  CARVE_CHECK(numel <= std::numeric_limits<uint64_t>::max() / c10::elementSize(e.dtype), where(), ": shape of ",
              numel, " elements of ", spec["dtype"].get<std::string>(), " overflows the byte size");
  const uint64_t expected = numel * c10::elementSize(e.dtype);
  CARVE_CHECK(e.end - e.begin == expected, where(), ": holds ", e.end - e.begin, " bytes but dtype ",
              spec["dtype"].get<std::string>(), " and shape need ", expected);
  return e;
}

}  // namespace

std::string safetensors_dtype_name(torch::ScalarType dtype) {
  for (const auto& d : kDtypes)
    if (d.type == dtype) return d.name;
  fail("dtype ", c10::toString(dtype), " cannot be stored in safetensors");
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  CARVE_CHECK_SYS(fd, "cannot open ", path);
  struct stat st {};
  if (::fstat(fd, &st) < 0) {
    ::close(fd);
    CARVE_CHECK_SYS(-1, "cannot stat ", path);
  }
  file_size_ = static_cast<uint64_t>(st.st_size);
  if (file_size_ < 8) {
    ::close(fd);
    fail(path, ": file of ", file_size_, " bytes is too short for a safetensors header (truncated?)");
  }
  void* map = ::mmap(nullptr, file_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);  // the mapping keeps the file open
  CARVE_CHECK(map != MAP_FAILED, "cannot mmap ", path, ": ", detail::errno_text());
  mapping_ = static_cast<const uint8_t*>(map);

  try {
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | mapping_[i];  // little-endian on any host
    CARVE_CHECK(header_len <= kMaxHeaderBytes, path, ": header length ", header_len, " is implausible");
    CARVE_CHECK(header_len <= file_size_ - 8, path, ": header length ", header_len, " runs past the end of the ",
                file_size_, "-byte file (truncated?)");
    data_start_ = 8 + header_len;
    const uint64_t data_size = file_size_ - data_start_;
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(mapping_ + 8, mapping_ + 8 + header_len);
    } catch (const nlohmann::json::exception& e) {
      fail(path, ": header is not valid JSON: ", e.what());
    }
    CARVE_CHECK(header.is_object(), path, ": header must be a JSON object");
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        CARVE_CHECK(it->is_object(), path, ": __metadata__ must be an object of strings");
        for (auto m = it->begin(); m != it->end(); ++m) {
          CARVE_CHECK(m->is_string(), path, ": __metadata__ entry '", m.key(), "' is not a string");
          metadata_[m.key()] = m->get<std::string>();
        }
        continue;
      }
      entries_.emplace(it.key(), parse_entry(it.key(), *it, data_size, path));
    }
    // Overlapping tensors would alias each other's bytes: the file is corrupt or crafted.
    std::vector<const SafetensorsEntry*> by_offset;
    for (const auto& [name, e] : entries_)
      if (e.end > e.begin) by_offset.push_back(&e);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const auto* a, const auto* b) { return a->begin < b->begin; });
    for (size_t i = 1; i < by_offset.size(); ++i)
      CARVE_CHECK(by_offset[i]->begin >= by_offset[i - 1]->end, path, ": tensors '", by_offset[i - 1]->name,
                  "' and '", by_offset[i]->name, "' overlap in the data buffer");
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(mapping_), file_size_);
    mapping_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_) ::munmap(const_cast<uint8_t*>(mapping_), file_size_);
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  CARVE_CHECK(it != entries_.end(), path_, ": no tensor named '", name, "'");
  return it->second;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

torch::Tensor SafetensorsFile::load(const std::string& name) const {
  const auto& e = entry(name);
  auto out = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
  if (e.end > e.begin) std::memcpy(out.data_ptr(), mapping_ + data_start_ + e.begin, e.end - e.begin);
  return out;
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    CARVE_CHECK(!header.contains(name), path, ": tensor name '", name, "' given twice");
    CARVE_CHECK(t.defined(), path, ": tensor '", name, "' is undefined");
    auto c = t.detach().to(torch::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(c.numel()) * c.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(c.scalar_type())},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(c);
  }
  std::string text = header.dump();
  // Pad with spaces so the data buffer starts 8-byte aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<uint8_t>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xff);

  fs::AtomicFileWriter writer(path);
  writer.write(len_bytes, 8);
  writer.write(text.data(), text.size());
  for (const auto& c : contiguous) writer.write(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
  writer.commit();
}

}  // namespace carve::model
