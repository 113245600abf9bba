#include "tests/fuzz/hdf5_edits.h"

#include <algorithm>
#include <vector>

namespace carve::fuzz {

uint8_t Bytes::u8() {
  if (!n) return 0;
  --n;
  return *p++;
}

uint64_t Bytes::u64() {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(u8()) << (8 * i);
  return v;
}

int64_t Bytes::value() {
  switch (u8() % 4) {
    case 0: return static_cast<int8_t>(u8());
    case 1: return static_cast<int16_t>(u8() | (u8() << 8));
    case 2: return static_cast<int64_t>(u64());
    default: return u8();
  }
}

std::string Bytes::text() {
  std::string s;
  for (size_t len = u8() % 24; len-- && n;) s.push_back(static_cast<char>(u8()));
  return s;
}

void delete_attribute(hid_t object, const char* name) {
  if (H5Aexists(object, name) > 0) H5Adelete(object, name);
}

void set_int_attribute(hid_t object, const char* name, int64_t value, hid_t type, hsize_t count) {
  delete_attribute(object, name);
  hid_t space = count == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &count, nullptr);
  hid_t attr = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  if (attr >= 0) {
    std::vector<int64_t> values(count, value);
    H5Awrite(attr, H5T_NATIVE_INT64, values.data());
    H5Aclose(attr);
  }
  H5Sclose(space);
}

void set_string_attribute(hid_t object, const char* name, const std::string& value, bool variable) {
  delete_attribute(object, name);
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, variable ? H5T_VARIABLE : std::max<size_t>(value.size(), 1));
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  if (attr >= 0) {
    std::string padded = value.empty() ? std::string(1, '\0') : value;
    const char* ptr = padded.c_str();
    H5Awrite(attr, type, variable ? static_cast<const void*>(&ptr) : padded.data());
    H5Aclose(attr);
  }
  H5Sclose(space);
  H5Tclose(type);
}

void overwrite_value(hid_t file, const char* name, Bytes& in, ValueWriter write) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) return;
  hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
  if (ds < 0) return;
  hid_t space = H5Dget_space(ds);
  const int rank = H5Sget_simple_extent_ndims(space);
  hsize_t dims[H5S_MAX_RANK] = {0};
  H5Sget_simple_extent_dims(space, dims, nullptr);
  hsize_t start[H5S_MAX_RANK] = {0}, count[H5S_MAX_RANK];
  // A write into a huge contiguous dataset would allocate all of it in the scratch file: skip those.
  hsize_t total = 1;
  for (int i = 0; i < rank; ++i) total *= dims[i];
  hid_t dcpl = H5Dget_create_plist(ds);
  bool empty = total > (1u << 20) && H5Pget_layout(dcpl) != H5D_CHUNKED;
  H5Pclose(dcpl);
  for (int i = 0; i < rank; ++i) {
    count[i] = 1;
    if (dims[i] == 0) empty = true;
    else start[i] = in.u8() % std::min<hsize_t>(dims[i], 256);
  }
  const int64_t value = in.value();
  if (!empty) {
    if (rank > 0) H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr);
    hid_t mem = H5Screate(H5S_SCALAR);
    write(ds, mem, space, name, value);
    H5Sclose(mem);
  }
  H5Sclose(space);
  H5Dclose(ds);
}

}  // namespace carve::fuzz
