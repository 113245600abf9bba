// Target: a valid sample file (written once by data::write_samples) edited by the fuzz bytes through the HDF5 C
// API, then opened with SampleFile and checked with validate_samples. The bytes are a list of edits: overwrite one
// value of a dataset, set / delete / retype an attribute, delete a dataset, or replace a dataset by one of another
// type, rank or shape (up to 2^40 rows, storage allocated or not). HDF5's own metadata is not byte-patched: that
// would fuzz libhdf5, not carve.
#include <hdf5.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "base/error.h"
#include "base/fs.h"
#include "data/samples.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/hdf5_edits.h"

namespace {

using carve::fuzz::Bytes;
using carve::fuzz::delete_attribute;
using carve::fuzz::set_int_attribute;
using carve::fuzz::set_string_attribute;

const char* const kDatasets[] = {"tokens", "offsets", "loss_mask", "image_embeds", "image_offsets"};
const char* const kIntAttrs[] = {"version", "vocab_size", "image_token_id", "format"};

const std::string& template_bytes() {
  static const std::string bytes = [] {
    using namespace carve::data;
    SampleSet s;
    s.vocab_size = 50;
    s.image_token_id = 7;
    s.tokens = {1, 7, 7, 3, 4, 9, 2, 7, 11, 49};
    s.offsets = {0, 5, 6, 10};
    s.loss_mask = {0, 0, 0, 1, 1, 1, 0, 0, 1, 1};
    s.image_embeds = torch::arange(12, torch::kFloat32).reshape({3, 4}).to(torch::kBFloat16);
    s.image_offsets = {0, 2, 2, 3};
    const auto path = carve::fuzz::scratch_path("samples_template") + ".h5";
    write_samples(path, s);
    std::ifstream in(path, std::ios::binary);
    std::stringstream all;
    all << in.rdbuf();
    std::remove(path.c_str());
    return all.str();
  }();
  return bytes;
}

hid_t file_type(uint8_t pick) {
  switch (pick % 8) {
    case 0: return H5T_STD_I8LE;
    case 1: return H5T_STD_U8LE;
    case 2: return H5T_STD_U16LE;
    case 3: return H5T_STD_I32LE;
    case 4: return H5T_STD_I64LE;
    case 5: return H5T_STD_U64LE;
    case 6: return H5T_IEEE_F32LE;
    default: return H5T_STD_I64BE;
  }
}

// How a value is written into sample files: U16 image features get raw bit patterns (NaN, inf); everything else a
// converted integer.
void write_sample_value(hid_t ds, hid_t mem, hid_t space, const std::string& name, int64_t value) {
  if (name == "image_embeds") {
    const uint16_t bits = static_cast<uint16_t>(value);
    H5Dwrite(ds, H5T_NATIVE_UINT16, mem, space, H5P_DEFAULT, &bits);
  } else {
    H5Dwrite(ds, H5T_NATIVE_INT64, mem, space, H5P_DEFAULT, &value);
  }
}

// Replaces `name` by a dataset of fuzz-chosen type, rank and dims; its first values come from the fuzz bytes.
void replace_dataset(hid_t file, const char* name, Bytes& in) {
  if (H5Lexists(file, name, H5P_DEFAULT) > 0) H5Ldelete(file, name, H5P_DEFAULT);
  const uint8_t shape = in.u8();
  const int rank = shape % 4;  // 0 (scalar) to 3
  hsize_t dims[3] = {1, 1, 1};
  const bool huge = (shape & 0x80) != 0;
  for (int i = 0; i < rank; ++i) dims[i] = huge && i == 0 ? in.u64() % (1ull << 40) : in.u8() % 16;
  hid_t type = file_type(in.u8());
  hid_t space = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims, nullptr);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  if (shape & 0x40) {  // chunked: chunks are allocated only where written
    hsize_t chunk[3];
    bool ok = rank > 0;
    for (int i = 0; i < rank; ++i) {
      chunk[i] = std::max<hsize_t>(1, std::min<hsize_t>(dims[i], 64));
      if (dims[i] == 0) ok = false;
    }
    if (ok) H5Pset_chunk(dcpl, rank, chunk);
  }
  hid_t ds = H5Dcreate2(file, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  if (ds >= 0) {
    // Fill the first row-major elements (at most 64) when the dataset is small.
    hsize_t total = 1;
    for (int i = 0; i < rank; ++i) total *= dims[i];
    if (total > 0 && total <= 64 && !(shape & 0x20)) {
      std::vector<int64_t> values(total);
      for (auto& v : values) v = in.more() ? in.value() : 0;
      H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
    }
    H5Dclose(ds);
  }
  H5Pclose(dcpl);
  H5Sclose(space);
}

void apply_edits(const std::string& path, Bytes in) {
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (file < 0) return;
  for (int edits = 0; in.more() && edits < 24; ++edits) {
    const uint8_t op = in.u8();
    const char* dataset = kDatasets[in.u8() % 5];
    switch (op % 9) {
      case 0:
      case 1:
      case 2:
        overwrite_value(file, dataset, in, write_sample_value);
        break;
      case 3:
        set_int_attribute(file, kIntAttrs[in.u8() % 4], in.value(), file_type(in.u8() % 6), 1);
        break;
      case 4:  // an attribute holding several values, or the wrong class
        if (in.u8() % 2) set_int_attribute(file, kIntAttrs[in.u8() % 4], in.value(), H5T_STD_I64LE, 2 + in.u8() % 3);
        else set_string_attribute(file, kIntAttrs[in.u8() % 4], in.text(), in.u8() % 2);
        break;
      case 5: {  // the format string, or image_embeds' dtype
        const bool format = in.u8() % 2;
        const std::string value = in.text();
        if (format) {
          set_string_attribute(file, "format", value, in.u8() % 2);
        } else if (H5Lexists(file, "image_embeds", H5P_DEFAULT) > 0) {
          hid_t ds = H5Dopen2(file, "image_embeds", H5P_DEFAULT);
          if (ds >= 0) {
            set_string_attribute(ds, "dtype", value, in.u8() % 2);
            H5Dclose(ds);
          }
        }
        break;
      }
      case 6: {
        const uint8_t which = in.u8() % 5;
        if (which < 4) {
          delete_attribute(file, kIntAttrs[which]);
        } else if (H5Lexists(file, "image_embeds", H5P_DEFAULT) > 0) {
          hid_t ds = H5Dopen2(file, "image_embeds", H5P_DEFAULT);
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
      default:
        replace_dataset(file, dataset, in);
        break;
    }
  }
  H5Fclose(file);
}

}  // namespace

int carve_fuzz_samples(const uint8_t* data, size_t size) {
  using namespace carve;
  static const std::string path = fuzz::scratch_path("samples") + ".h5";
  const auto& base = template_bytes();
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // the edits may fail; HDF5 need not print why
  fuzz::write_bytes(path, reinterpret_cast<const uint8_t*>(base.data()), base.size());
  apply_edits(path, Bytes{data, size});
  try {
    data::SampleFile file(path);
    if (file.num_samples() > 0) {
      const int64_t end = std::min<int64_t>(file.offsets()[1], 1 << 16);
      (void)file.tokens(0, end);
      (void)file.loss_mask(0, end);
    }
    data::validate_samples(path, 50, 4);
    return fuzz::kAccepted;
  } catch (const std::exception&) {
    return fuzz::kRejected;
  }
}
