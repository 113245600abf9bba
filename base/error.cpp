#include "base/error.h"

#include <cerrno>
#include <cstring>

namespace carve::detail {

void throw_check_failure(const char* expr, const char* file, int line, const std::string& message) {
  std::ostringstream where;
  where << "`" << expr << "` at " << file << ":" << line;
  throw Error(message.empty() ? "check " + where.str() + " failed" : message, where.str());
}

std::string errno_text() { return std::strerror(errno); }

}  // namespace carve::detail
