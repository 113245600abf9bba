// File-system helpers used by every writer: atomic replacement and checked reads.
#pragma once

#include <cstdint>
#include <string>

namespace carve::fs {

// Writes a file so that readers see either the old file or the complete new one: the bytes go to
// `path.tmp.<pid>`, which commit() fsyncs and renames over `path` (then fsyncs the directory). Destroyed without
// commit(), the temporary is removed and `path` is untouched.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  void write(const void* data, size_t size);
  void commit();

 private:
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
};

void write_file_atomic(const std::string& path, const std::string& bytes);
// Makes a complete temporary file (written by a library, e.g. HDF5) durable under its final name: fsync, rename
// over `path`, fsync the directory. The temporary is removed if the rename fails.
void commit_file(const std::string& tmp_path, const std::string& path);
// Size in bytes; the error names the path.
int64_t file_size(const std::string& path);
// The name a writer of `path` uses until the file is complete: `path.tmp.<pid>`.
std::string temporary_path(const std::string& path);
// Removes the temporaries of `path` (any pid) left by a killed writer.
void remove_temporaries(const std::string& path);
// rm -rf: removes `path` and everything under it (nothing when it does not exist); the error names what could not
// be removed. Not std::filesystem::remove_all: the pip wheels of torch export their own copy of it from
// libtorch.so, which the dynamic linker binds in place of libstdc++'s and which crashes on non-empty folders.
void remove_tree(const std::string& path);
// Reads a whole (small) file; the error names the path.
std::string read_file(const std::string& path);
bool exists(const std::string& path);
bool is_directory(const std::string& path);
// mkdir -p; the error names the path.
void make_directories(const std::string& path);
// fsync a directory so a rename inside it is durable.
void sync_directory(const std::string& path);
std::string parent_directory(const std::string& path);
std::string join(const std::string& a, const std::string& b);

}  // namespace carve::fs
