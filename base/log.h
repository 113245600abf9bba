// Logging: every line carries the process rank (once known) and a subsystem tag, e.g. "[r1][data] ...".
#pragma once

#include <sstream>
#include <string>

namespace carve::log {

// Set once by the launcher after MPI starts; -1 (the default) omits the rank.
void set_rank(int rank);
int rank();

void write(const char* tag, const std::string& line);

template <typename... Args>
void info(const char* tag, const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  write(tag, out.str());
}

}  // namespace carve::log
