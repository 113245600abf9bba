#include "data/hdf5_file.h"

#include <mutex>

#include "base/error.h"

namespace carve::data {
namespace {

std::recursive_mutex& hdf5_mutex() {
  static std::recursive_mutex m;
  return m;
}
using Lock = std::lock_guard<std::recursive_mutex>;

FileLocking g_locking = FileLocking::Default;

// HDF5 prints its error stack to stderr by default; carve reports errors itself, once.
void silence_hdf5() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

herr_t innermost(unsigned n, const H5E_error2_t* err, void* out) {
  if (n == 0 && err->desc) *static_cast<std::string*>(out) = err->desc;
  return 0;
}

// HDF5's own description of the error just raised, for the end of our message.
std::string hdf5_reason() {
  std::string text;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, innermost, &text);
  H5Eclear2(H5E_DEFAULT);
  return text.empty() ? "" : " (HDF5: " + text + ")";
}

hid_t native(Elem e) {
  switch (e) {
    case Elem::U8: return H5T_NATIVE_UINT8;
    case Elem::I32: return H5T_NATIVE_INT32;
    case Elem::I64: return H5T_NATIVE_INT64;
    case Elem::U16: return H5T_NATIVE_UINT16;
    case Elem::F32: return H5T_NATIVE_FLOAT;
  }
  return -1;
}

Handle file_access() {
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  CARVE_CHECK(fapl.valid(), "H5Pcreate(H5P_FILE_ACCESS) failed", hdf5_reason());
  // Closing a file closes whatever is still open in it, so a closed shard is complete on disk before its rename.
  H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
#if H5_VERSION_GE(1, 10, 7)
  if (g_locking != FileLocking::Default)
    CARVE_CHECK(H5Pset_file_locking(fapl.get(), g_locking == FileLocking::On, true) >= 0,
                "cannot set HDF5 file locking", hdf5_reason());
#else
  // Older HDF5 reads only the environment variable, before the first file is opened.
  if (g_locking != FileLocking::Default) setenv("HDF5_USE_FILE_LOCKING", g_locking == FileLocking::On ? "TRUE" : "FALSE", 1);
#endif
  return fapl;
}

}  // namespace

FileLocking parse_file_locking(const std::string& text, const std::string& flag) {
  if (text == "default") return FileLocking::Default;
  if (text == "on" || text == "true") return FileLocking::On;
  if (text == "off" || text == "false") return FileLocking::Off;
  throw Error(flag + ": '" + text + "' is not a file-locking mode (default, on, off)");
}

void set_file_locking(FileLocking mode) { g_locking = mode; }

const char* elem_name(Elem e) {
  switch (e) {
    case Elem::U8: return "uint8";
    case Elem::I32: return "int32";
    case Elem::I64: return "int64";
    case Elem::U16: return "uint16";
    case Elem::F32: return "float32";
  }
  return "?";
}

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_;
    close_ = o.close_;
    o.id_ = -1;
  }
  return *this;
}

void Handle::reset() {
  if (id_ >= 0 && close_) {
    Lock lock(hdf5_mutex());
    close_(id_);
  }
  id_ = -1;
}

// ---- attributes

bool Attributes::has(const std::string& name) const {
  Lock lock(hdf5_mutex());
  htri_t r = H5Aexists(object_, name.c_str());
  CARVE_CHECK(r >= 0, where_, ": cannot look up attribute '", name, "'", hdf5_reason());
  return r > 0;
}

namespace {

// An open single-valued attribute of the expected class, and its stored type.
struct OpenAttribute {
  Handle attr, type;
};

OpenAttribute open_scalar(hid_t object, const std::string& where, const std::string& name, H5T_class_t cls,
                          const char* what) {
  htri_t exists = H5Aexists(object, name.c_str());
  CARVE_CHECK(exists >= 0, where, ": cannot look up attribute '", name, "'", hdf5_reason());
  CARVE_CHECK(exists > 0, where, ": attribute '", name, "' is missing");
  OpenAttribute a{Handle(H5Aopen(object, name.c_str(), H5P_DEFAULT), H5Aclose), {}};
  CARVE_CHECK(a.attr.valid(), where, ": cannot open attribute '", name, "'", hdf5_reason());
  a.type = Handle(H5Aget_type(a.attr.get()), H5Tclose);
  CARVE_CHECK(H5Tget_class(a.type.get()) == cls, where, ": attribute '", name, "' must be ", what);
  Handle space(H5Aget_space(a.attr.get()), H5Sclose);
  CARVE_CHECK(H5Sget_simple_extent_npoints(space.get()) == 1, where, ": attribute '", name, "' must be a single ",
              "value (", what, ")");
  return a;
}

}  // namespace

std::string Attributes::read_string(const std::string& name) const {
  Lock lock(hdf5_mutex());
  auto a = open_scalar(object_, where_, name, H5T_STRING, "a string");
  Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
  if (H5Tis_variable_str(a.type.get()) > 0) {
    H5Tset_size(mem.get(), H5T_VARIABLE);
    H5Tset_cset(mem.get(), H5Tget_cset(a.type.get()));
    char* value = nullptr;
    CARVE_CHECK(H5Aread(a.attr.get(), mem.get(), &value) >= 0, where_, ": cannot read attribute '", name, "'",
                hdf5_reason());
    std::string out = value ? value : "";
    H5free_memory(value);
    return out;
  }
  // One byte more than stored: a null-padded stored string converts to a null-terminated one without losing its
  // last character.
  const size_t size = H5Tget_size(a.type.get()) + 1;
  H5Tset_size(mem.get(), size);
  H5Tset_strpad(mem.get(), H5T_STR_NULLTERM);
  std::string out(size, '\0');
  CARVE_CHECK(H5Aread(a.attr.get(), mem.get(), out.data()) >= 0, where_, ": cannot read attribute '", name, "'",
              hdf5_reason());
  out.resize(out.find('\0') == std::string::npos ? size : out.find('\0'));
  return out;
}

int64_t Attributes::read_int(const std::string& name) const {
  Lock lock(hdf5_mutex());
  auto a = open_scalar(object_, where_, name, H5T_INTEGER, "an integer");
  int64_t value = 0;
  CARVE_CHECK(H5Aread(a.attr.get(), H5T_NATIVE_INT64, &value) >= 0, where_, ": cannot read attribute '", name, "'",
              hdf5_reason());
  return value;
}

void Attributes::write_string(const std::string& name, const std::string& value) {
  Lock lock(hdf5_mutex());
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), value.empty() ? 1 : value.size());
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(object_, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  CARVE_CHECK(attr.valid(), where_, ": cannot create attribute '", name, "'", hdf5_reason());
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  CARVE_CHECK(H5Awrite(attr.get(), type.get(), padded.data()) >= 0, where_, ": cannot write attribute '", name, "'",
              hdf5_reason());
}

void Attributes::write_int(const std::string& name, int64_t value) {
  Lock lock(hdf5_mutex());
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(object_, name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  CARVE_CHECK(attr.valid(), where_, ": cannot create attribute '", name, "'", hdf5_reason());
  CARVE_CHECK(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value) >= 0, where_, ": cannot write attribute '", name, "'",
              hdf5_reason());
}

// ---- datasets

Dataset::Dataset(Handle handle, std::string where) : handle_(std::move(handle)), where_(std::move(where)) {
  Lock lock(hdf5_mutex());
  Handle space(H5Dget_space(handle_.get()), H5Sclose);
  CARVE_CHECK(space.valid(), where_, ": cannot read its shape", hdf5_reason());
  const int rank = H5Sget_simple_extent_ndims(space.get());
  CARVE_CHECK(rank >= 0 && rank <= 2, where_, ": expected 1 or 2 dimensions, found ", rank);
  hsize_t d[2] = {0, 0};
  H5Sget_simple_extent_dims(space.get(), d, nullptr);
  for (int i = 0; i < rank; ++i) dims_.push_back(static_cast<int64_t>(d[i]));
}

int64_t Dataset::row_elements() const {
  int64_t n = 1;
  for (size_t i = 1; i < dims_.size(); ++i) n *= dims_[i];
  return n;
}

int64_t Dataset::contiguous_offset() const {
  Lock lock(hdf5_mutex());
  Handle dcpl(H5Dget_create_plist(handle_.get()), H5Pclose);
  if (!dcpl.valid() || H5Pget_layout(dcpl.get()) != H5D_CONTIGUOUS || H5Pget_nfilters(dcpl.get()) != 0) return -1;
  Handle type(H5Dget_type(handle_.get()), H5Tclose);
  if (H5Tget_order(type.get()) != H5T_ORDER_LE) return -1;  // raw bytes are only usable in this machine's order
  const haddr_t offset = H5Dget_offset(handle_.get());
  H5Eclear2(H5E_DEFAULT);
  return offset == HADDR_UNDEF ? -1 : static_cast<int64_t>(offset);
}

bool Dataset::stored_is_integer() const {
  Lock lock(hdf5_mutex());
  Handle type(H5Dget_type(handle_.get()), H5Tclose);
  return H5Tget_class(type.get()) == H5T_INTEGER;
}

bool Dataset::stored_is(Elem e) const {
  Lock lock(hdf5_mutex());
  Handle type(H5Dget_type(handle_.get()), H5Tclose);
  Handle want(H5Tget_native_type(type.get(), H5T_DIR_ASCEND), H5Tclose);
  return H5Tequal(want.get(), native(e)) > 0;
}

std::string Dataset::stored_type_text() const {
  Lock lock(hdf5_mutex());
  Handle type(H5Dget_type(handle_.get()), H5Tclose);
  const auto cls = H5Tget_class(type.get());
  const size_t bits = 8 * H5Tget_size(type.get());
  if (cls == H5T_INTEGER)
    return std::string(H5Tget_sign(type.get()) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
  if (cls == H5T_FLOAT) return "float" + std::to_string(bits);
  return "a non-numeric type";
}

void Dataset::check_stored() const {
  Lock lock(hdf5_mutex());
  Handle dcpl(H5Dget_create_plist(handle_.get()), H5Pclose);
  CARVE_CHECK(dcpl.valid(), where_, ": cannot read its storage properties", hdf5_reason());
  if (H5Pget_nfilters(dcpl.get()) != 0) return;  // compressed: the stored size says nothing about the data's
  Handle type(H5Dget_type(handle_.get()), H5Tclose);
  uint64_t declared = H5Tget_size(type.get());
  bool overflow = false;
  for (auto d : dims_) overflow |= __builtin_mul_overflow(declared, static_cast<uint64_t>(d), &declared);
  const uint64_t stored = H5Dget_storage_size(handle_.get());
  CARVE_CHECK(!overflow && stored >= declared, where_, ": declares ", rows(), " rows (", declared, " bytes) but the file stores ",
              stored, " bytes of it (truncated or never written)");
}

namespace {

// The file-space selection of rows [begin, begin + count) and the matching memory space.
std::pair<Handle, Handle> row_spaces(hid_t dataset, const std::vector<int64_t>& dims, int64_t begin, int64_t count,
                                     const std::string& where) {
  CARVE_CHECK(begin >= 0 && count >= 0 && begin + count <= (dims.empty() ? 1 : dims[0]), where, ": rows [", begin,
              ", ", begin + count, ") are outside its ", dims.empty() ? 1 : dims[0], " rows");
  Handle file_space(H5Dget_space(dataset), H5Sclose);
  hsize_t start[2] = {static_cast<hsize_t>(begin), 0};
  hsize_t extent[2] = {static_cast<hsize_t>(count), dims.size() > 1 ? static_cast<hsize_t>(dims[1]) : 1};
  const int rank = static_cast<int>(std::max<size_t>(dims.size(), 1));
  if (!dims.empty())
    CARVE_CHECK(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, extent, nullptr) >= 0, where,
                ": cannot select rows", hdf5_reason());
  Handle mem_space(H5Screate_simple(rank, extent, nullptr), H5Sclose);
  return {std::move(file_space), std::move(mem_space)};
}

}  // namespace

void Dataset::read_rows(int64_t begin, int64_t count, Elem mem, void* out) const {
  Lock lock(hdf5_mutex());
  if (count == 0) return;
  auto [file_space, mem_space] = row_spaces(handle_.get(), dims_, begin, count, where_);
  CARVE_CHECK(H5Dread(handle_.get(), native(mem), mem_space.get(), file_space.get(), H5P_DEFAULT, out) >= 0, where_,
              ": cannot read rows [", begin, ", ", begin + count, ")", hdf5_reason());
}

void Dataset::write_rows(int64_t begin, int64_t count, Elem mem, const void* in) {
  Lock lock(hdf5_mutex());
  if (count == 0) return;
  auto [file_space, mem_space] = row_spaces(handle_.get(), dims_, begin, count, where_);
  CARVE_CHECK(H5Dwrite(handle_.get(), native(mem), mem_space.get(), file_space.get(), H5P_DEFAULT, in) >= 0, where_,
              ": cannot write rows [", begin, ", ", begin + count, ")", hdf5_reason());
}

// ---- files

File File::open_read(const std::string& path) {
  Lock lock(hdf5_mutex());
  silence_hdf5();
  auto fapl = file_access();
  Handle h(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose);
  CARVE_CHECK(h.valid(), path, ": cannot open as an HDF5 file", hdf5_reason());
  return File(std::move(h), path);
}

File File::create(const std::string& path) {
  Lock lock(hdf5_mutex());
  silence_hdf5();
  auto fapl = file_access();
  Handle fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  H5Pset_obj_track_times(fcpl.get(), false);
  Handle h(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()), H5Fclose);
  CARVE_CHECK(h.valid(), path, ": cannot create an HDF5 file", hdf5_reason());
  return File(std::move(h), path);
}

bool File::has(const std::string& name) const {
  Lock lock(hdf5_mutex());
  htri_t r = H5Lexists(handle_.get(), name.c_str(), H5P_DEFAULT);
  return r > 0;
}

Dataset File::dataset(const std::string& name) const {
  Lock lock(hdf5_mutex());
  const std::string where = path_ + ": dataset '" + name + "'";
  CARVE_CHECK(has(name), where, " is missing");
  Handle h(H5Dopen2(handle_.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
  CARVE_CHECK(h.valid(), where, ": cannot open", hdf5_reason());
  return Dataset(std::move(h), where);
}

Dataset File::create_dataset(const std::string& name, Elem type, const std::vector<int64_t>& dims) {
  Lock lock(hdf5_mutex());
  const std::string where = path_ + ": dataset '" + name + "'";
  std::vector<hsize_t> d(dims.begin(), dims.end());
  Handle space(H5Screate_simple(static_cast<int>(d.size()), d.data(), nullptr), H5Sclose);
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_obj_track_times(dcpl.get(), false);
  H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS);
  // Every byte is written by carve, so HDF5 need not write fill values first.
  H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER);
  H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY);
  hid_t file_type = type == Elem::F32 ? H5T_IEEE_F32LE
                    : type == Elem::I32 ? H5T_STD_I32LE
                    : type == Elem::I64 ? H5T_STD_I64LE
                    : type == Elem::U16 ? H5T_STD_U16LE
                                        : H5T_STD_U8LE;
  Handle h(H5Dcreate2(handle_.get(), name.c_str(), file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
           H5Dclose);
  CARVE_CHECK(h.valid(), where, ": cannot create", hdf5_reason());
  return Dataset(std::move(h), where);
}

void File::close() {
  Lock lock(hdf5_mutex());
  if (!handle_.valid()) return;
  CARVE_CHECK(H5Fflush(handle_.get(), H5F_SCOPE_LOCAL) >= 0, path_, ": cannot flush", hdf5_reason());
  // Close through HDF5 directly so that a failure is reported.
  herr_t rc = H5Fclose(handle_.release());
  CARVE_CHECK(rc >= 0, path_, ": cannot close", hdf5_reason());
}

}  // namespace carve::data
