#include "base/fs.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "base/error.h"

namespace carve::fs {

std::string parent_directory(const std::string& path) {
  auto parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

std::string join(const std::string& a, const std::string& b) { return (std::filesystem::path(a) / b).string(); }

bool exists(const std::string& path) { return std::filesystem::exists(path); }
bool is_directory(const std::string& path) { return std::filesystem::is_directory(path); }

void make_directories(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  CARVE_CHECK(!ec, "cannot create directory ", path, ": ", ec.message());
}

void sync_directory(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY);
  CARVE_CHECK_SYS(fd, "cannot open directory ", path);
  int rc = ::fsync(fd);
  ::close(fd);
  CARVE_CHECK_SYS(rc, "cannot fsync directory ", path);
}

std::string temporary_path(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

namespace {

// The complete, synced temporary takes the final name; the directory entry is made durable.
void rename_into_place(const std::string& tmp_path, const std::string& path) {
  int rc = ::rename(tmp_path.c_str(), path.c_str());
  if (rc < 0) ::unlink(tmp_path.c_str());
  CARVE_CHECK_SYS(rc, "cannot rename ", tmp_path, " to ", path);
  sync_directory(parent_directory(path));
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path)
    : path_(std::move(path)), tmp_path_(temporary_path(path_)) {
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CARVE_CHECK_SYS(fd_, "cannot create ", tmp_path_);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_path_.c_str());
  }
}

void AtomicFileWriter::write(const void* data, size_t size) {
  CARVE_CHECK(fd_ >= 0, "write to ", path_, " after commit");
  const char* bytes = static_cast<const char*>(data);
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::write(fd_, bytes + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    CARVE_CHECK_SYS(n, "cannot write ", tmp_path_);
    done += static_cast<size_t>(n);
  }
}

void AtomicFileWriter::commit() {
  CARVE_CHECK(fd_ >= 0, "commit of ", path_, " twice");
  CARVE_CHECK_SYS(::fsync(fd_), "cannot fsync ", tmp_path_);
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc < 0) ::unlink(tmp_path_.c_str());
  CARVE_CHECK_SYS(rc, "cannot close ", tmp_path_);
  rename_into_place(tmp_path_, path_);
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFileWriter writer(path);
  writer.write(bytes.data(), bytes.size());
  writer.commit();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  CARVE_CHECK(in.good(), "cannot open ", path);
  std::ostringstream out;
  out << in.rdbuf();
  CARVE_CHECK(!in.bad(), "cannot read ", path);
  return out.str();
}


void commit_file(const std::string& tmp_path, const std::string& path) {
  int fd = ::open(tmp_path.c_str(), O_RDONLY);
  CARVE_CHECK_SYS(fd, "cannot open ", tmp_path);
  int rc = ::fsync(fd);
  ::close(fd);
  CARVE_CHECK_SYS(rc, "cannot fsync ", tmp_path);
  rename_into_place(tmp_path, path);
}

int64_t file_size(const std::string& path) {
  struct stat st {};
  CARVE_CHECK_SYS(::stat(path.c_str(), &st), "cannot stat ", path);
  return static_cast<int64_t>(st.st_size);
}

void remove_temporaries(const std::string& path) {
  std::error_code ec;
  const auto dir = parent_directory(path);
  if (!std::filesystem::is_directory(dir, ec)) return;
  const std::string prefix = std::filesystem::path(path).filename().string() + ".tmp.";
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const auto name = entry.path().filename().string();
    if (name.compare(0, prefix.size(), prefix) == 0) std::filesystem::remove(entry.path(), ec);
  }
}

namespace {
extern "C" int remove_entry(const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }
}  // namespace

void remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    CARVE_CHECK(errno == ENOENT, "cannot remove ", path, ": ", detail::errno_text());
    return;
  }
  // Depth first (contents before their folder), not following symbolic links.
  CARVE_CHECK(::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0, "cannot remove ", path, ": ",
              detail::errno_text());
}

}  // namespace carve::fs
