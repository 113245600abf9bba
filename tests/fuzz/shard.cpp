// Target: a valid activation-cache shard (one hidden-state stream and one logits stream, written once by
// data::CacheShardWriter as `carve cache precompute` writes them) edited by the fuzz bytes through the HDF5 C API,
// then opened with data::CacheShardReader and read the way data::ActivationSource reads it (offsets, every sample's
// rows, the whole span). The first byte picks the file (and now and then asks the reader for the other stream); the
// rest is a list of edits: overwrite one value of `offsets`/`hidden`/`logprobs`/`indices`; set, delete or retype the
// `format`/`stream`/`version`/`shard`/`first_sample` attributes and `hidden`'s `dtype`; delete a dataset; replace one
// by another type, rank or shape (often the expected shape: then the storage is what differs: contiguous written or
// never written, chunked, compressed, compact, big-endian; up to 2^40 rows otherwise); link a name to another dataset,
// a group or nothing; truncate or extend the file. HDF5's own metadata is not byte-patched: that would fuzz libhdf5.
// Accepted shards are checked against a second read through HDF5 alone (the reader's pread fast path must return the
// same bytes), and rows outside the shard must be refused.
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "base/error.h"
#include "base/fs.h"
#include "data/cache_shard.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/hdf5_edits.h"

namespace {

using carve::fuzz::Bytes;
using carve::fuzz::delete_attribute;
using carve::fuzz::set_int_attribute;
using carve::fuzz::set_string_attribute;

// The shard: shard 2 of a cache, samples 5..7 of 4, 0 and 6 tokens (an empty sample included).
constexpr int64_t kHidden = 4, kTopK = 3, kTokens = 10, kSamples = 3;
const std::vector<int64_t> kOffsets = {0, 4, 4, 10};
const char* const kStreams[] = {"layer_001", "logits"};

carve::data::CachePlan make_plan() {
  carve::data::CachePlan plan;
  plan.num_layers = 2;
  plan.hidden_size = kHidden;
  plan.vocab_size = 50;
  plan.dtype = "bfloat16";
  plan.layers = {1};
  plan.top_k = kTopK;
  plan.shard_tokens = 16;
  return plan;
}

carve::data::ShardSpan make_span() {
  carve::data::ShardSpan span;
  span.index = 2;
  span.first_sample = 5;
  span.num_samples = kSamples;
  span.first_token = 40;
  span.tokens = kTokens;
  return span;
}

// The two template files' bytes, written once with the project's writer.
const std::string& template_bytes(int which) {
  static const std::vector<std::string> bytes = [] {
    using namespace carve;
    const auto dir = fuzz::scratch_path("shard_template");
    const auto plan = make_plan();
    const auto span = make_span();
    std::vector<std::string> out;
    {
      data::CacheShardWriter hidden(dir, plan, span, kStreams[0], kOffsets);
      hidden.write_hidden(0, torch::arange(kTokens * kHidden, torch::kFloat32).reshape({kTokens, kHidden})
                                 .to(torch::kBFloat16).contiguous());
      data::CacheShardWriter logits(dir, plan, span, kStreams[1], kOffsets);
      logits.write_logits(0, -torch::arange(kTokens * kTopK, torch::kFloat32).reshape({kTokens, kTopK}) / 8,
                          torch::arange(kTokens * kTopK, torch::kInt32).reshape({kTokens, kTopK}) % 50);
      for (auto* w : {&hidden, &logits}) out.push_back(fs::read_file(fs::join(dir, w->finish().path)));
    }
    fs::remove_tree(dir);
    return out;
  }();
  return bytes[which];
}

const char* const kDatasets[] = {"offsets", "hidden", "logprobs", "indices"};
const char* const kIntAttrs[] = {"version", "shard", "first_sample"};
const char* const kStringAttrs[] = {"format", "stream"};

hid_t file_type(uint8_t pick) {
  switch (pick % 12) {
    case 0: return H5T_STD_I8LE;
    case 1: return H5T_STD_U8LE;
    case 2: return H5T_STD_U16LE;
    case 3: return H5T_STD_I32LE;
    case 4: return H5T_STD_I64LE;
    case 5: return H5T_STD_U64LE;
    case 6: return H5T_IEEE_F32LE;
    case 7: return H5T_IEEE_F64LE;
    case 8: return H5T_STD_U16BE;
    case 9: return H5T_STD_I32BE;
    case 10: return H5T_IEEE_F32BE;
    default: return H5T_STD_I16LE;
  }
}

// A string that is often one the reader expects, so that later checks are reached.
std::string string_value(Bytes& in) {
  switch (in.u8() % 6) {
    case 0: return carve::data::kShardFormat;
    case 1: return "layer_001";
    case 2: return "logits";
    case 3: return "bfloat16";
    case 4: return "float16";
    default: return in.text();
  }
}

// How a value is written into shards: hidden states and log-probabilities get raw bit patterns (NaN, inf);
// integers a converted value.
void write_shard_value(hid_t ds, hid_t mem, hid_t space, const std::string& name, int64_t value) {
  if (name == "hidden") {
    const uint16_t bits = static_cast<uint16_t>(value);
    H5Dwrite(ds, H5T_NATIVE_UINT16, mem, space, H5P_DEFAULT, &bits);
  } else if (name == "logprobs") {
    const uint32_t bits = static_cast<uint32_t>(value);
    float f;
    std::memcpy(&f, &bits, sizeof f);
    H5Dwrite(ds, H5T_NATIVE_FLOAT, mem, space, H5P_DEFAULT, &f);
  } else {
    H5Dwrite(ds, H5T_NATIVE_INT64, mem, space, H5P_DEFAULT, &value);
  }
}

// The shape the reader expects of `name`.
std::vector<hsize_t> expected_dims(const std::string& name) {
  if (name == "offsets") return {kSamples + 1};
  return {kTokens, static_cast<hsize_t>(name == "hidden" ? kHidden : kTopK)};
}

// Replaces `name` by a dataset of fuzz-chosen type, rank, dims and storage; its first values come from the bytes.
void replace_dataset(hid_t file, const char* name, Bytes& in) {
  if (H5Lexists(file, name, H5P_DEFAULT) > 0) H5Ldelete(file, name, H5P_DEFAULT);
  const uint8_t shape = in.u8();
  const uint8_t storage = in.u8();
  std::vector<hsize_t> dims;
  if (shape % 2 == 0) {  // the expected shape: the storage is what differs
    dims = expected_dims(name);
  } else {
    const int rank = (shape >> 1) % 4;  // 0 (scalar) to 3
    const bool huge = (shape & 0x80) != 0;
    for (int i = 0; i < rank; ++i) dims.push_back(huge && i == 0 ? in.u64() % (1ull << 40) : in.u8() % 16);
  }
  const int rank = static_cast<int>(dims.size());
  hid_t type = file_type(in.u8());
  hid_t space = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims.data(), nullptr);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  hsize_t total = 1;
  for (auto d : dims) total *= d;
  switch (storage % 5) {
    case 0:  // contiguous, as carve writes it
      H5Pset_layout(dcpl, H5D_CONTIGUOUS);
      H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
      if (total <= (1u << 16)) H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
      break;
    case 1:  // contiguous, allocated only when written
      H5Pset_layout(dcpl, H5D_CONTIGUOUS);
      H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_LATE);
      break;
    case 2:
    case 3: {  // chunked (compressed in case 3): chunks are allocated only where written
      bool ok = rank > 0;
      std::vector<hsize_t> chunk(dims.size());
      for (int i = 0; i < rank; ++i) {
        chunk[i] = std::max<hsize_t>(1, std::min<hsize_t>(dims[i], 1 + (storage >> 3) % 8));
        if (dims[i] == 0) ok = false;
      }
      if (ok) {
        H5Pset_chunk(dcpl, rank, chunk.data());
        if (storage % 5 == 3) H5Pset_deflate(dcpl, 1);
      }
      break;
    }
    default:  // compact: the data lives in the object header
      if (total * H5Tget_size(type) < 4096) H5Pset_layout(dcpl, H5D_COMPACT);
      break;
  }
  hid_t ds = H5Dcreate2(file, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  if (ds >= 0) {
    // Fill the dataset (at most 64 elements) when it is small, unless this edit leaves it unwritten.
    if (total > 0 && total <= 64 && !(storage & 0x80)) {
      std::vector<int64_t> values(total);
      if (std::string(name) == "offsets" && (storage & 0x40)) {
        values.assign(kOffsets.begin(), kOffsets.end());
        values.resize(total);
      } else {
        for (auto& v : values) v = in.more() ? in.value() : 0;
      }
      H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
    }
    if (std::string(name) == "hidden" && (storage & 0x20)) set_string_attribute(ds, "dtype", "bfloat16", false);
    H5Dclose(ds);
  }
  H5Pclose(dcpl);
  H5Sclose(space);
}

// `name` becomes a hard or soft link to another dataset, a dangling soft link, or a group.
void relink(hid_t file, const char* name, Bytes& in) {
  if (H5Lexists(file, name, H5P_DEFAULT) > 0) H5Ldelete(file, name, H5P_DEFAULT);
  const char* other = kDatasets[in.u8() % 4];
  switch (in.u8() % 4) {
    case 0:
      if (H5Lexists(file, other, H5P_DEFAULT) > 0) H5Lcreate_hard(file, other, file, name, H5P_DEFAULT, H5P_DEFAULT);
      break;
    case 1: H5Lcreate_soft(other, file, name, H5P_DEFAULT, H5P_DEFAULT); break;
    case 2: H5Lcreate_soft("/nowhere", file, name, H5P_DEFAULT, H5P_DEFAULT); break;
    default: {
      hid_t g = H5Gcreate2(file, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      if (g >= 0) H5Gclose(g);
      break;
    }
  }
}

// Returns the length to truncate the file to afterwards (-1: leave it), or extends it.
void apply_edits(const std::string& path, Bytes& in, int64_t& truncate_to, int64_t& extend_by) {
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (file < 0) return;
  for (int edits = 0; in.more() && edits < 24; ++edits) {
    const uint8_t op = in.u8();
    const char* dataset = kDatasets[in.u8() % 4];
    switch (op % 12) {
      case 0:
      case 1:
      case 2:
        overwrite_value(file, dataset, in, write_shard_value);
        break;
      case 3:
        set_int_attribute(file, kIntAttrs[in.u8() % 3], in.value(), file_type(in.u8() % 6), 1);
        break;
      case 4:  // an attribute holding several values, or the wrong class
        if (in.u8() % 2) {
          set_int_attribute(file, kIntAttrs[in.u8() % 3], in.value(), H5T_STD_I64LE, 2 + in.u8() % 3);
        } else {
          const uint8_t pick = in.u8() % 5;
          const char* attr = pick < 3 ? kIntAttrs[pick] : kStringAttrs[pick - 3];
          set_string_attribute(file, attr, string_value(in), in.u8() % 2);
        }
        break;
      case 5: {  // `format` / `stream`, or hidden's `dtype`; as a string, or as an integer
        const uint8_t pick = in.u8();
        const std::string value = string_value(in);
        const bool variable = in.u8() % 2;
        hid_t object = file;
        hid_t ds = -1;
        const char* attr = kStringAttrs[pick % 2];
        if (pick % 3 == 2) {
          if (H5Lexists(file, "hidden", H5P_DEFAULT) <= 0) break;
          ds = H5Dopen2(file, "hidden", H5P_DEFAULT);
          if (ds < 0) break;
          object = ds;
          attr = "dtype";
        }
        if (pick & 0x80) set_int_attribute(object, attr, static_cast<int64_t>(value.size()), H5T_STD_I32LE, 1);
        else set_string_attribute(object, attr, value, variable);
        if (ds >= 0) H5Dclose(ds);
        break;
      }
      case 6: {
        const uint8_t which = in.u8() % 6;
        if (which < 3) {
          delete_attribute(file, kIntAttrs[which]);
        } else if (which < 5) {
          delete_attribute(file, kStringAttrs[which - 3]);
        } else if (H5Lexists(file, "hidden", H5P_DEFAULT) > 0) {
          hid_t ds = H5Dopen2(file, "hidden", H5P_DEFAULT);
          if (ds >= 0) {
            delete_attribute(ds, "dtype");
            H5Dclose(ds);
          }
        }
        break;
      }
      case 7:
        if (H5Lexists(file, dataset, H5P_DEFAULT) > 0) H5Ldelete(file, dataset, H5P_DEFAULT);
        break;
      case 8:
        relink(file, dataset, in);
        break;
      case 9: {  // cut or extend the file once the edits are done
        const uint8_t how = in.u8();
        if (how % 2) truncate_to = static_cast<int64_t>(in.u8() | (in.u8() << 8));  // from the end
        else extend_by = 1 + in.u8() * 64;
        break;
      }
      default:
        replace_dataset(file, dataset, in);
        break;
    }
  }
  H5Fclose(file);
}

template <typename T>
std::vector<T> rows_buffer(int64_t rows, int64_t width) {
  return std::vector<T>(static_cast<size_t>(std::max<int64_t>(rows, 0) * width) + 1);
}

// The rows as HDF5 converts them, bypassing the reader's pread path.
template <typename T>
std::vector<T> rows_through_hdf5(const std::string& path, const char* name, int64_t row, int64_t count,
                                 carve::data::Elem type, int64_t width) {
  auto file = carve::data::File::open_read(path);
  auto out = rows_buffer<T>(count, width);
  file.dataset(name).read_rows(row, count, type, out.data());
  return out;
}

// A read of rows outside the shard that does not throw is a bug, not a rejection.
template <typename Read>
void expect_refused(Read read) {
  try {
    read();
  } catch (const std::exception&) {
    return;
  }
  std::fprintf(stderr, "shard fuzz: a read outside the shard's rows was not refused\n");
  std::abort();
}

}  // namespace

int carve_fuzz_shard(const uint8_t* data, size_t size) {
  using namespace carve;
  static const std::string path = fuzz::scratch_path("shard") + ".h5";
  Bytes in{data, size};
  const uint8_t pick = in.u8();
  const int which = pick % 2;
  // Now and then the reader is asked for the other stream than the file holds.
  const std::string stream = kStreams[((pick >> 1) % 8 == 7) ? 1 - which : which];
  const auto& base = template_bytes(which);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // the edits may fail; HDF5 need not print why
  fuzz::write_bytes(path, reinterpret_cast<const uint8_t*>(base.data()), base.size());
  int64_t truncate_to = -1, extend_by = 0;
  apply_edits(path, in, truncate_to, extend_by);
  if (truncate_to >= 0 || extend_by > 0) {
    const int64_t bytes = fs::file_size(path);
    const int64_t length = truncate_to >= 0 ? std::max<int64_t>(0, bytes - truncate_to) : bytes + extend_by;
    if (::truncate(path.c_str(), static_cast<off_t>(length)) != 0) std::abort();
  }
  const auto plan = make_plan();
  const auto span = make_span();
  try {
    // What the reader returned for each read: (row, count, hidden or logprobs bytes, indices).
    struct Read {
      int64_t row, count;
      std::vector<uint16_t> hidden;
      std::vector<float> logprobs;
      std::vector<int32_t> indices;
    };
    std::vector<Read> reads;
    const bool logits = stream == "logits";
    const int64_t width = logits ? kTopK : kHidden;
    {
      data::CacheShardReader reader(path, plan, span, stream);
      const auto& offsets = reader.offsets();
      if (static_cast<int64_t>(offsets.size()) != kSamples + 1 || offsets.front() != 0 || offsets.back() != kTokens)
        std::abort();  // the reader promised these
      // Every sample's rows as ActivationSource reads them, then the whole shard.
      for (int64_t s = 0; s <= kSamples; ++s) {
        Read r;
        r.row = s < kSamples ? offsets[s] : 0;
        r.count = s < kSamples ? offsets[s + 1] - offsets[s] : kTokens;
        if (logits) {
          r.logprobs = rows_buffer<float>(r.count, width);
          r.indices = rows_buffer<int32_t>(r.count, width);
          reader.read_logits(r.row, r.count, r.logprobs.data(), r.indices.data());
        } else {
          r.hidden = rows_buffer<uint16_t>(r.count, width);
          reader.read_hidden(r.row, r.count, r.hidden.data());
        }
        reads.push_back(std::move(r));
      }
      auto h = rows_buffer<uint16_t>(2, kHidden);
      auto lp = rows_buffer<float>(2, kTopK);
      auto idx = rows_buffer<int32_t>(2, kTopK);
      const std::pair<int64_t, int64_t> outside[] = {{kTokens - 1, 2}, {kTokens, 1}, {-1, 1}, {0, -1}};
      for (const auto& bad : outside) {
        const int64_t row = bad.first, count = bad.second;  // C++17 lambdas cannot capture structured bindings
        if (logits) expect_refused([&] { reader.read_logits(row, count, lp.data(), idx.data()); });
        else expect_refused([&] { reader.read_hidden(row, count, h.data()); });
      }
      // The other stream's read is refused.
      if (logits) expect_refused([&] { reader.read_hidden(0, 1, h.data()); });
      else expect_refused([&] { reader.read_logits(0, 1, lp.data(), idx.data()); });
    }
    // The reader's pread fast path must give the bytes HDF5 gives (read once the reader has closed the file).
    for (const auto& r : reads) {
      if (logits) {
        const auto lp = rows_through_hdf5<float>(path, "logprobs", r.row, r.count, data::Elem::F32, width);
        const auto idx = rows_through_hdf5<int32_t>(path, "indices", r.row, r.count, data::Elem::I32, width);
        if (std::memcmp(lp.data(), r.logprobs.data(), lp.size() * sizeof(float)) != 0 || idx != r.indices)
          std::abort();
      } else if (r.hidden != rows_through_hdf5<uint16_t>(path, "hidden", r.row, r.count, data::Elem::U16, width)) {
        std::abort();
      }
    }
    return fuzz::kAccepted;
  } catch (const std::exception&) {
    return fuzz::kRejected;
  }
}
