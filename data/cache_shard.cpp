#include "data/cache_shard.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include <cstdio>

#include "base/error.h"
#include "base/fs.h"
#include "base/xxhash64.h"
#include "data/samples.h"

namespace carve::data {

CacheShardWriter::CacheShardWriter(const std::string& cache_dir, const CachePlan& plan, const ShardSpan& span,
                                   const std::string& stream, const std::vector<int64_t>& local_offsets)
    : cache_dir_(cache_dir), relative_(shard_path(stream, span.index)) {
  final_path_ = fs::join(cache_dir, relative_);
  tmp_path_ = fs::temporary_path(final_path_);
  fs::make_directories(fs::parent_directory(final_path_));
  CARVE_CHECK(static_cast<int64_t>(local_offsets.size()) == span.num_samples + 1 &&
                  local_offsets.back() == span.tokens,
              "shard ", span.index, ": offsets do not match its ", span.num_samples, " samples");
  file_.emplace(File::create(tmp_path_));
  auto attrs = file_->attributes();
  attrs.write_string("format", kShardFormat);
  attrs.write_int("version", kCacheVersion);
  attrs.write_string("stream", stream);
  attrs.write_int("shard", span.index);
  attrs.write_int("first_sample", span.first_sample);
  file_->create_dataset("offsets", Elem::I64, {span.num_samples + 1})
      .write_rows(0, span.num_samples + 1, Elem::I64, local_offsets.data());
  if (stream == "logits") {
    datasets_.push_back(file_->create_dataset("logprobs", Elem::F32, {span.tokens, plan.top_k}));
    datasets_.push_back(file_->create_dataset("indices", Elem::I32, {span.tokens, plan.top_k}));
  } else {
    datasets_.push_back(file_->create_dataset("hidden", Elem::U16, {span.tokens, plan.hidden_size}));
    datasets_.back().attributes().write_string("dtype", plan.dtype);
  }
}

CacheShardWriter::~CacheShardWriter() {
  if (finished_) return;
  datasets_.clear();
  file_.reset();
  std::remove(tmp_path_.c_str());
}

void CacheShardWriter::write_hidden(int64_t row, const torch::Tensor& rows) {
  CARVE_CHECK(datasets_.size() == 1, relative_, ": not a hidden-state stream");
  CARVE_CHECK(rows.dim() == 2 && rows.element_size() == 2 && rows.device().is_cpu() && rows.is_contiguous(),
              relative_, ": hidden rows must be contiguous 16-bit CPU [n, hidden]");
  datasets_[0].write_rows(row, rows.size(0), Elem::U16, rows.data_ptr());
}

void CacheShardWriter::write_logits(int64_t row, const torch::Tensor& logprobs, const torch::Tensor& indices) {
  CARVE_CHECK(datasets_.size() == 2, relative_, ": not the logits stream");
  CARVE_CHECK(logprobs.scalar_type() == torch::kFloat32 && indices.scalar_type() == torch::kInt32 &&
                  logprobs.is_contiguous() && indices.is_contiguous() && logprobs.device().is_cpu(),
              relative_, ": logits rows must be contiguous CPU float32 and int32");
  datasets_[0].write_rows(row, logprobs.size(0), Elem::F32, logprobs.data_ptr());
  datasets_[1].write_rows(row, indices.size(0), Elem::I32, indices.data_ptr());
}

ShardFile CacheShardWriter::finish() {
  datasets_.clear();
  file_->close();
  file_.reset();
  fs::commit_file(tmp_path_, final_path_);
  finished_ = true;
  ShardFile out;
  out.path = relative_;
  out.bytes = fs::file_size(final_path_);
  out.xxh64 = hex64(xxh64_file(final_path_));
  return out;
}

CacheShardReader::CacheShardReader(const std::string& path, const CachePlan& plan, const ShardSpan& span,
                                   const std::string& stream)
    : path_(path) {
  file_.emplace(File::open_read(path));
  auto attrs = file_->attributes();
  const auto format = attrs.read_string("format");
  CARVE_CHECK(format == kShardFormat, path, ": attribute 'format' is '", format, "', expected '", kShardFormat, "'");
  const auto stored_stream = attrs.read_string("stream");
  CARVE_CHECK(stored_stream == stream, path, ": holds stream '", stored_stream, "', expected '", stream, "'");
  CARVE_CHECK(attrs.read_int("shard") == span.index && attrs.read_int("first_sample") == span.first_sample, path,
              ": is shard ", attrs.read_int("shard"), " starting at sample ", attrs.read_int("first_sample"),
              ", expected shard ", span.index, " starting at sample ", span.first_sample);
  auto offsets = file_->dataset("offsets");
  CARVE_CHECK(offsets.dims() == std::vector<int64_t>{span.num_samples + 1}, offsets.where(), ": expected ",
              span.num_samples + 1, " entries");
  offsets_.resize(static_cast<size_t>(span.num_samples + 1));
  offsets.read_rows(0, span.num_samples + 1, Elem::I64, offsets_.data());
  CARVE_CHECK(offsets_.front() == 0 && offsets_.back() == span.tokens, offsets.where(), ": must run from 0 to ",
              span.tokens);
  for (size_t i = 1; i < offsets_.size(); ++i)
    CARVE_CHECK(offsets_[i] >= offsets_[i - 1], offsets.where(), ": decreases at sample ", i - 1);
  auto expect = [&](const char* name, Elem type, int64_t width) {
    auto ds = file_->dataset(name);
    CARVE_CHECK(ds.dims() == (std::vector<int64_t>{span.tokens, width}) && ds.stored_is(type), ds.where(),
                ": expected ", elem_name(type), " [", span.tokens, ", ", width, "]");
    datasets_.push_back(std::move(ds));
  };
  if (stream == "logits") {
    expect("logprobs", Elem::F32, plan.top_k);
    expect("indices", Elem::I32, plan.top_k);
  } else {
    expect("hidden", Elem::U16, plan.hidden_size);
    const auto dtype = datasets_[0].attributes().read_string("dtype");
    CARVE_CHECK(dtype == plan.dtype, datasets_[0].where(), ": dtype '", dtype, "', the manifest says '", plan.dtype,
                "'");
  }
  // Direct reads where the layout allows (carve writes contiguous little-endian datasets; x86-64 and aarch64 are
  // little-endian too).
  const int64_t file_bytes = fs::file_size(path);
  for (const auto& ds : datasets_) {
    const int64_t width = ds.dims().size() > 1 ? ds.dims()[1] : 1;
    const int64_t elem = ds.stored_is(Elem::U16) ? 2 : 4;
    int64_t offset = ds.contiguous_offset();
    if (offset >= 0 && offset + span.tokens * width * elem > file_bytes) offset = -1;
    raw_offset_.push_back(offset);
    row_bytes_.push_back(width * elem);
  }
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  CARVE_CHECK_SYS(fd_, "cannot open ", path);
}

CacheShardReader::~CacheShardReader() {
  if (fd_ >= 0) ::close(fd_);
}

void CacheShardReader::read_rows(size_t dataset, int64_t row, int64_t count, Elem type, void* out) const {
  if (raw_offset_[dataset] < 0) {
    datasets_[dataset].read_rows(row, count, type, out);
    return;
  }
  CARVE_CHECK(row >= 0 && count >= 0 && row + count <= datasets_[dataset].rows(), datasets_[dataset].where(),
              ": rows [", row, ", ", row + count, ") are outside its ", datasets_[dataset].rows(), " rows");
  char* dst = static_cast<char*>(out);
  size_t left = static_cast<size_t>(count * row_bytes_[dataset]);
  off_t at = static_cast<off_t>(raw_offset_[dataset] + row * row_bytes_[dataset]);
  while (left > 0) {
    ssize_t n = ::pread(fd_, dst, left, at);
    if (n < 0 && errno == EINTR) continue;
    CARVE_CHECK_SYS(n, "cannot read ", path_);
    CARVE_CHECK(n > 0, path_, ": ended early (truncated?) reading ", datasets_[dataset].where());
    dst += n;
    at += n;
    left -= static_cast<size_t>(n);
  }
}

void CacheShardReader::read_hidden(int64_t row, int64_t count, void* out) const {
  CARVE_CHECK(datasets_.size() == 1, path_, ": not a hidden-state stream");
  read_rows(0, row, count, Elem::U16, out);
}

void CacheShardReader::read_logits(int64_t row, int64_t count, float* logprobs, int32_t* indices) const {
  CARVE_CHECK(datasets_.size() == 2, path_, ": not the logits stream");
  read_rows(0, row, count, Elem::F32, logprobs);
  read_rows(1, row, count, Elem::I32, indices);
}

}  // namespace carve::data
