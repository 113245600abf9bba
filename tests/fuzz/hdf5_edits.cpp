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

}  // namespace carve::fuzz
