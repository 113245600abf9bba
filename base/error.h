// Errors and checks shared by every module.
// carve reports bad input as carve::Error with a message naming the file, field or flag and what was expected;
// CARVE_CHECK records the failing expression and the source location in Error::where() so internal faults are
// traceable too (the launcher prints it with CARVE_DEBUG=1); what() stays the message the user reads.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace carve {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, std::string where = "")
      : std::runtime_error(what), where_(std::move(where)) {}
  // "`expr` at file:line" for a failed CARVE_CHECK, empty otherwise.
  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

namespace detail {
// Joins any streamable arguments into one string.
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}
[[noreturn]] void throw_check_failure(const char* expr, const char* file, int line, const std::string& message);
}  // namespace detail

// Throws carve::Error built from the streamed arguments.
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(detail::concat(args...));
}

}  // namespace carve

// Check a condition that depends on input; the message is what the user reads.
#define CARVE_CHECK(cond, ...)                                                                  \
  do {                                                                                          \
    if (!(cond)) ::carve::detail::throw_check_failure(#cond, __FILE__, __LINE__,                \
                                                      ::carve::detail::concat(__VA_ARGS__));    \
  } while (0)

// Check the return value of a POSIX call (negative means failure, errno says why).
#define CARVE_CHECK_SYS(call, ...)                                                               \
  do {                                                                                           \
    if ((call) < 0) ::carve::detail::throw_check_failure(#call, __FILE__, __LINE__,              \
                                                         ::carve::detail::concat(__VA_ARGS__, ": ", \
                                                         ::carve::detail::errno_text()));        \
  } while (0)

namespace carve::detail {
std::string errno_text();
}
