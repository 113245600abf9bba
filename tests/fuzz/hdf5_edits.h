// What the fuzz targets that edit valid HDF5 files (samples, shard) share: reading edits from the fuzz bytes,
// setting, retyping or deleting attributes, and overwriting dataset values through the HDF5 C API. Failures of these
// edits are ignored on purpose: an edit HDF5 refuses simply does not happen.
#pragma once

#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace carve::fuzz {

// Reads the fuzz bytes; past the end every read is 0.
struct Bytes {
  const uint8_t* p;
  size_t n;
  bool more() const { return n > 0; }
  uint8_t u8();
  uint64_t u64();
  int64_t value();     // small values more often than not: boundaries are where readers go wrong
  std::string text();  // up to 23 bytes
};

void delete_attribute(hid_t object, const char* name);
// `count` copies of `value` stored as `type` (a scalar when count is 1), replacing any attribute of that name.
void set_int_attribute(hid_t object, const char* name, int64_t value, hid_t type, hsize_t count);
// A fixed-length or variable-length string attribute, replacing any attribute of that name.
void set_string_attribute(hid_t object, const char* name, const std::string& value, bool variable);

// Writes `value` into the element of dataset `ds` selected in `space` (`mem` is a scalar space): each target decides
// how, e.g. as raw bit patterns for floating-point data.
using ValueWriter = void (*)(hid_t ds, hid_t mem, hid_t space, const std::string& name, int64_t value);
// One value of an existing dataset `name`, at a fuzz-chosen element, written by `write`.
void overwrite_value(hid_t file, const char* name, Bytes& in, ValueWriter write);

}  // namespace carve::fuzz
