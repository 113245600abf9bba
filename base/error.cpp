#include "base/error.h"

#include <cerrno>
#include <cstring>

namespace carve::detail {

void throw_check_failure(const char* expr, const char* file, int line, const std::string& message) {
  // The user-facing message comes first; the expression and location help when it is our bug.
  std::ostringstream out;
  if (!message.empty()) out << message << " ";
  out << "[check `" << expr << "` failed at " << file << ":" << line << "]";
  throw Error(out.str());
}

std::string errno_text() { return std::strerror(errno); }

}  // namespace carve::detail
