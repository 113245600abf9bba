#include "data/samples.h"

#include <algorithm>

#include "base/error.h"
#include "base/fs.h"

namespace carve::data {

torch::ScalarType half_dtype_from_name(const std::string& name, const std::string& where) {
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kFloat16;
  throw Error(where + ": dtype attribute '" + name + "' must be 'bfloat16' or 'float16'");
}

std::string half_dtype_name(torch::ScalarType dtype) {
  CARVE_CHECK(dtype == torch::kBFloat16 || dtype == torch::kFloat16, "half-precision storage must be bfloat16 or ",
              "float16, not ", c10::toString(dtype));
  return dtype == torch::kBFloat16 ? "bfloat16" : "float16";
}

namespace {

void check_offsets(const std::vector<int64_t>& offsets, int64_t total, const std::string& where,
                   const std::string& total_name) {
  CARVE_CHECK(offsets.size() >= 2, where, ": needs at least 2 entries (one sample), found ", offsets.size());
  CARVE_CHECK(offsets.front() == 0, where, ": must start at 0, found ", offsets.front());
  for (size_t i = 1; i < offsets.size(); ++i)
    CARVE_CHECK(offsets[i] >= offsets[i - 1], where, ": decreases at sample ", i - 1, " (", offsets[i - 1], " then ",
                offsets[i], ")");
  CARVE_CHECK(offsets.back() == total, where, ": ends at ", offsets.back(), " but ", total_name, " has ", total,
              " rows");
}

std::vector<int64_t> read_offsets(const File& file, const std::string& name) {
  auto ds = file.dataset(name);
  CARVE_CHECK(ds.dims().size() == 1, ds.where(), ": must be 1-D");
  CARVE_CHECK(ds.stored_is_integer(), ds.where(), ": must hold integers, found ", ds.stored_type_text());
  ds.check_stored();
  std::vector<int64_t> out(static_cast<size_t>(ds.rows()));
  ds.read_rows(0, ds.rows(), Elem::I64, out.data());
  return out;
}

}  // namespace

void write_samples(const std::string& path, const SampleSet& s) {
  const int64_t n = static_cast<int64_t>(s.offsets.size()) - 1;
  const int64_t t = static_cast<int64_t>(s.tokens.size());
  check_offsets(s.offsets, t, "samples offsets", "tokens");
  CARVE_CHECK(s.loss_mask.empty() || static_cast<int64_t>(s.loss_mask.size()) == t, "loss_mask has ",
              s.loss_mask.size(), " entries for ", t, " tokens");
  CARVE_CHECK(s.vocab_size > 0, "vocab_size must be positive");
  const std::string tmp = fs::temporary_path(path);
  {
    auto file = File::create(tmp);
    auto attrs = file.attributes();
    attrs.write_string("format", kSamplesFormat);
    attrs.write_int("version", kSamplesVersion);
    attrs.write_int("vocab_size", s.vocab_size);
    file.create_dataset("tokens", Elem::I32, {t}).write_rows(0, t, Elem::I32, s.tokens.data());
    file.create_dataset("offsets", Elem::I64, {n + 1}).write_rows(0, n + 1, Elem::I64, s.offsets.data());
    if (!s.loss_mask.empty())
      file.create_dataset("loss_mask", Elem::U8, {t}).write_rows(0, t, Elem::U8, s.loss_mask.data());
    if (s.image_embeds.defined()) {
      CARVE_CHECK(s.image_embeds.dim() == 2, "image_embeds must be [rows, hidden]");
      CARVE_CHECK(static_cast<int64_t>(s.image_offsets.size()) == n + 1, "image_offsets needs ", n + 1, " entries");
      attrs.write_int("image_token_id", s.image_token_id);
      auto rows = s.image_embeds.contiguous().cpu();
      auto ds = file.create_dataset("image_embeds", Elem::U16, {rows.size(0), rows.size(1)});
      ds.attributes().write_string("dtype", half_dtype_name(rows.scalar_type()));
      ds.write_rows(0, rows.size(0), Elem::U16, rows.data_ptr());
      file.create_dataset("image_offsets", Elem::I64, {n + 1})
          .write_rows(0, n + 1, Elem::I64, s.image_offsets.data());
    }
    file.close();
  }
  fs::commit_file(tmp, path);
}

SampleFile::SampleFile(const std::string& path) : path_(path), file_(File::open_read(path)) {
  auto attrs = file_.attributes();
  const auto format = attrs.has("format") ? attrs.read_string("format") : std::string("(none)");
  CARVE_CHECK(format == kSamplesFormat, path, ": attribute 'format' is '", format, "', expected '", kSamplesFormat,
              "' (write sample files with tools/pack_samples.py)");
  const auto version = attrs.read_int("version");
  CARVE_CHECK(version == kSamplesVersion, path, ": version ", version, " is not supported (this carve reads ",
              kSamplesVersion, ")");
  vocab_size_ = attrs.read_int("vocab_size");
  CARVE_CHECK(vocab_size_ > 0, path, ": attribute 'vocab_size' must be positive, found ", vocab_size_);
  const auto& tokens = tokens_.emplace(file_.dataset("tokens"));
  CARVE_CHECK(tokens.dims().size() == 1 && tokens.stored_is_integer(), tokens.where(),
              ": must be a 1-D integer array, found ", tokens.stored_type_text(), " with ", tokens.dims().size(),
              " dimensions");
  tokens.check_stored();
  offsets_ = read_offsets(file_, "offsets");
  check_offsets(offsets_, tokens.rows(), path + ": dataset 'offsets'", "'tokens'");
  has_loss_mask_ = file_.has("loss_mask");
  if (has_loss_mask_) {
    const auto& mask = loss_mask_.emplace(file_.dataset("loss_mask"));
    CARVE_CHECK(mask.dims().size() == 1 && mask.rows() == tokens.rows() && mask.stored_is_integer(), mask.where(),
                ": must be 1-D integers with one entry per token (", tokens.rows(), ")");
    mask.check_stored();
  }
  has_images_ = file_.has("image_embeds");
  if (has_images_) {
    auto& images = image_embeds_.emplace(file_.dataset("image_embeds"));
    CARVE_CHECK(images.dims().size() == 2 && images.stored_is(Elem::U16), images.where(),
                ": must be [rows, hidden] uint16 (bfloat16 or float16 bits), found ", images.stored_type_text());
    images.check_stored();
    image_hidden_ = images.dims()[1];
    image_dtype_ = half_dtype_from_name(images.attributes().read_string("dtype"), images.where());
    image_offsets_ = read_offsets(file_, "image_offsets");
    CARVE_CHECK(image_offsets_.size() == offsets_.size(), path, ": dataset 'image_offsets' has ",
                image_offsets_.size(), " entries, 'offsets' ", offsets_.size());
    check_offsets(image_offsets_, images.rows(), path + ": dataset 'image_offsets'", "'image_embeds'");
    image_token_id_ = attrs.read_int("image_token_id");
    CARVE_CHECK(image_token_id_ >= 0 && image_token_id_ < vocab_size_, path, ": attribute 'image_token_id' ",
                image_token_id_, " is outside the vocabulary [0, ", vocab_size_, ")");
  }
}

torch::Tensor SampleFile::tokens(int64_t begin, int64_t end) const {
  auto out = torch::empty({end - begin}, torch::kInt64);
  tokens_->read_rows(begin, end - begin, Elem::I64, out.data_ptr());
  return out;
}

torch::Tensor SampleFile::loss_mask(int64_t begin, int64_t end) const {
  if (!has_loss_mask_) return torch::ones({end - begin}, torch::kUInt8);
  auto out = torch::empty({end - begin}, torch::kUInt8);
  loss_mask_->read_rows(begin, end - begin, Elem::U8, out.data_ptr());
  return out;
}

torch::Tensor SampleFile::image_rows(int64_t first_sample, int64_t last_sample) const {
  CARVE_CHECK(has_images_, path_, ": has no image_embeds");
  const int64_t begin = image_offsets_[first_sample], end = image_offsets_[last_sample];
  auto out = torch::empty({end - begin, image_hidden_}, image_dtype_);
  image_embeds_->read_rows(begin, end - begin, Elem::U16, out.data_ptr());
  return out;
}

SampleSummary validate_samples(const std::string& path, int64_t expected_vocab, int64_t expected_hidden) {
  SampleFile file(path);
  SampleSummary summary;
  summary.samples = file.num_samples();
  summary.tokens = file.num_tokens();
  if (expected_vocab > 0)
    CARVE_CHECK(file.vocab_size() == expected_vocab, path, ": vocab_size ", file.vocab_size(),
                " differs from the teacher's ", expected_vocab);
  if (expected_hidden > 0 && file.has_images())
    CARVE_CHECK(file.image_hidden() == expected_hidden, path, ": dataset 'image_embeds' rows have ",
                file.image_hidden(), " values, the teacher's hidden size is ", expected_hidden);
  // Blocks of whole samples, so each error can name its sample.
  const auto& offsets = file.offsets();
  const int64_t block_tokens = 1 << 22;
  int64_t first = 0;
  while (first < summary.samples) {
    int64_t last = first + 1;
    while (last < summary.samples && offsets[last + 1] - offsets[first] <= block_tokens) ++last;
    auto tokens = file.tokens(offsets[first], offsets[last]);
    auto mask = file.loss_mask(offsets[first], offsets[last]);
    auto bad = ((tokens < 0) | (tokens >= file.vocab_size())).nonzero();
    if (bad.numel() > 0) {
      const int64_t at = offsets[first] + bad[0][0].item<int64_t>();
      const int64_t sample = std::upper_bound(offsets.begin(), offsets.end(), at) - offsets.begin() - 1;
      throw Error(path + ": dataset 'tokens': sample " + std::to_string(sample) + " holds token id " +
                  std::to_string(tokens[at - offsets[first]].item<int64_t>()) + " at position " +
                  std::to_string(at - offsets[sample]) + ", outside the vocabulary [0, " +
                  std::to_string(file.vocab_size()) + ")");
    }
    auto bad_mask = (mask > 1).nonzero();
    if (bad_mask.numel() > 0) {
      const int64_t at = offsets[first] + bad_mask[0][0].item<int64_t>();
      throw Error(path + ": dataset 'loss_mask': token " + std::to_string(at) + " is " +
                  std::to_string(mask[at - offsets[first]].item<int64_t>()) + ", expected 0 or 1");
    }
    summary.target_tokens += mask.sum().item<int64_t>();
    if (file.has_images()) {
      // Image tokens per sample from one cumulative sum, compared with each sample's image rows.
      auto seen = torch::cat({torch::zeros({1}, torch::kInt64),
                              (tokens == file.image_token_id()).to(torch::kInt64).cumsum(0)});
      auto* cum = seen.data_ptr<int64_t>();
      for (int64_t s = first; s < last; ++s) {
        const int64_t want = cum[offsets[s + 1] - offsets[first]] - cum[offsets[s] - offsets[first]];
        const int64_t have = file.image_row_begin(s + 1) - file.image_row_begin(s);
        CARVE_CHECK(want == have, path, ": sample ", s, " has ", want, " image tokens (id ", file.image_token_id(),
                    ") but ", have, " image rows in 'image_embeds' (image_offsets ", file.image_row_begin(s), "..",
                    file.image_row_begin(s + 1), ")");
      }
      auto rows = file.image_rows(first, last);
      if (rows.numel() > 0 && !torch::isfinite(rows.to(torch::kFloat32)).all().item<bool>())
        throw Error(path + ": dataset 'image_embeds' holds a non-finite value in the rows of samples " +
                    std::to_string(first) + ".." + std::to_string(last - 1));
      summary.image_rows += rows.size(0);
    }
    for (int64_t s = first; s < last; ++s) summary.longest = std::max(summary.longest, file.length(s));
    first = last;
  }
  return summary;
}

}  // namespace carve::data
