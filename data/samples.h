// The sample file: one HDF5 file per split holding token ids, sample boundaries, an optional loss mask and
// optional projected image features (the vision tower runs outside carve). docs/formats.md specifies it.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/hdf5_file.h"

namespace carve::data {

inline constexpr const char* kSamplesFormat = "carve-samples";
inline constexpr int64_t kSamplesVersion = 1;

// A whole sample set in memory: what tools and tests write.
struct SampleSet {
  std::vector<int32_t> tokens;        // [T]
  std::vector<int64_t> offsets;       // [n + 1], offsets[0] = 0, offsets[n] = T
  std::vector<uint8_t> loss_mask;     // [T] or empty
  torch::Tensor image_embeds;         // [I, hidden] bfloat16 or float16, or undefined
  std::vector<int64_t> image_offsets;  // [n + 1] when image_embeds is defined
  int64_t image_token_id = -1;
  int64_t vocab_size = 0;
};

// Writes atomically (a temporary file renamed when complete).
void write_samples(const std::string& path, const SampleSet& samples);

// Reads a sample file. Opening checks the format, version, dataset shapes and the offsets; `validate_samples`
// checks every value.
class SampleFile {
 public:
  explicit SampleFile(const std::string& path);
  const std::string& path() const { return path_; }
  int64_t num_samples() const { return static_cast<int64_t>(offsets_.size()) - 1; }
  int64_t num_tokens() const { return offsets_.back(); }
  int64_t vocab_size() const { return vocab_size_; }
  const std::vector<int64_t>& offsets() const { return offsets_; }
  int64_t length(int64_t sample) const { return offsets_[sample + 1] - offsets_[sample]; }
  bool has_loss_mask() const { return has_loss_mask_; }
  bool has_images() const { return has_images_; }
  int64_t image_token_id() const { return image_token_id_; }
  int64_t image_hidden() const { return image_hidden_; }
  torch::ScalarType image_dtype() const { return image_dtype_; }

  // Tokens [begin, end) of the whole token stream as int64 (samples are contiguous, so a run of consecutive
  // samples is one read).
  torch::Tensor tokens(int64_t begin, int64_t end) const;
  torch::Tensor loss_mask(int64_t begin, int64_t end) const;  // uint8; all ones when the file has none
  // Image rows of samples [first, last) as [rows, hidden] in the stored dtype.
  torch::Tensor image_rows(int64_t first_sample, int64_t last_sample) const;
  int64_t image_row_begin(int64_t sample) const { return image_offsets_[sample]; }

 private:
  std::string path_;
  File file_;
  // Opened once: the streaming reader asks for a few rows of these per sample.
  std::optional<Dataset> tokens_, loss_mask_, image_embeds_;
  std::vector<int64_t> offsets_;
  std::vector<int64_t> image_offsets_;
  int64_t vocab_size_ = 0;
  bool has_loss_mask_ = false;
  bool has_images_ = false;
  int64_t image_token_id_ = -1;
  int64_t image_hidden_ = 0;
  torch::ScalarType image_dtype_ = torch::kBFloat16;
};

struct SampleSummary {
  int64_t samples = 0, tokens = 0, target_tokens = 0, image_rows = 0, longest = 0;
};
// Checks every value: token ids inside the vocabulary, loss mask 0/1, image-token counts equal to each sample's
// image rows, finite image features; with expected_hidden > 0, the image width. Throws naming the file, dataset
// and sample; returns counts.
SampleSummary validate_samples(const std::string& path, int64_t expected_vocab = 0, int64_t expected_hidden = 0);

// "bfloat16" / "float16" as stored in the dtype attribute.
torch::ScalarType half_dtype_from_name(const std::string& name, const std::string& where);
std::string half_dtype_name(torch::ScalarType dtype);

}  // namespace carve::data
