// A small RAII layer over the HDF5 C API for carve's sample files and cache shards.
// Every call is checked; errors name the file, the dataset or attribute and what was expected, with HDF5's own
// innermost message. HDF5 (as packaged: not built thread-safe) is entered under one process-wide lock, and carve
// keeps its HDF5 work on one I/O thread per process anyway.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace carve::data {

// HDF5 file locking. Network file systems (Lustre, some NFS) reject the locks HDF5 1.10+ takes by default.
enum class FileLocking { Default, On, Off };
FileLocking parse_file_locking(const std::string& text, const std::string& flag);
void set_file_locking(FileLocking mode);  // applies to files opened afterwards, process-wide

// Element types carve stores. Half-precision floats are stored as U16 with a "dtype" attribute naming them.
enum class Elem { U8, I32, I64, U16, F32 };
const char* elem_name(Elem e);

// An owned HDF5 identifier, closed with the matching H5?close.
class Handle {
 public:
  Handle() = default;
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset();
  // Gives up ownership (the caller closes it).
  hid_t release() {
    hid_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

// Attributes of a file's root group or of a dataset; `where` names the object in errors.
class Attributes {
 public:
  Attributes(hid_t object, std::string where) : object_(object), where_(std::move(where)) {}
  bool has(const std::string& name) const;
  // Fixed- or variable-length strings (h5py writes Python str as variable-length UTF-8).
  std::string read_string(const std::string& name) const;
  int64_t read_int(const std::string& name) const;  // any integer type
  void write_string(const std::string& name, const std::string& value);
  void write_int(const std::string& name, int64_t value);

 private:
  hid_t object_;
  std::string where_;
};

class Dataset {
 public:
  Dataset(Handle handle, std::string where);
  const std::string& where() const { return where_; }  // "file.h5: dataset 'tokens'"
  const std::vector<int64_t>& dims() const { return dims_; }
  int64_t rows() const { return dims_.empty() ? 1 : dims_[0]; }
  int64_t row_elements() const;  // product of the dimensions after the first
  // Stored type checks: integer of any width (converted on read), or exactly this type.
  bool stored_is_integer() const;
  bool stored_is(Elem e) const;
  std::string stored_type_text() const;
  // Throws unless the file stores every byte of an unfiltered dataset: a tiny crafted or truncated file can
  // declare a dataset of terabytes that was never written, and reading it whole would exhaust memory.
  void check_stored() const;
  // Rows [begin, begin + count) of a 1-D or 2-D dataset into/out of contiguous memory of type `mem`.
  void read_rows(int64_t begin, int64_t count, Elem mem, void* out) const;
  void write_rows(int64_t begin, int64_t count, Elem mem, const void* in);
  Attributes attributes() { return Attributes(handle_.get(), where_); }
  // Byte offset of the data in the file when it is stored contiguously, unfiltered and allocated (so rows can be
  // read with pread, bypassing HDF5); -1 otherwise.
  int64_t contiguous_offset() const;

 private:
  Handle handle_;
  std::string where_;
  std::vector<int64_t> dims_;
};

class File {
 public:
  static File open_read(const std::string& path);
  // Creates (truncating) a file. Object modification times are not recorded, so the same content gives the same
  // bytes (shards of one cache made by different numbers of ranks are identical files).
  static File create(const std::string& path);
  const std::string& path() const { return path_; }
  bool has(const std::string& name) const;
  Dataset dataset(const std::string& name) const;
  // A contiguous dataset (one sample or one batch is one contiguous byte range: one read) of fixed dims.
  Dataset create_dataset(const std::string& name, Elem type, const std::vector<int64_t>& dims);
  Attributes attributes() { return Attributes(handle_.get(), path_); }
  // Flushes and closes; errors are reported (a destructor cannot).
  void close();

 private:
  File(Handle handle, std::string path) : handle_(std::move(handle)), path_(std::move(path)) {}
  Handle handle_;
  std::string path_;
};

}  // namespace carve::data
