// Progress of long work: a line with the step, the rate and the ETA at most every few seconds, and metrics as
// one JSON object per line (JSONL) in the run folder, flushed per record so a killed run keeps what it reported.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <string>

namespace carve {

class ProgressMeter {
 public:
  // `unit` names what is counted ("tokens"); `total` 0 means unknown (no ETA).
  ProgressMeter(std::string tag, std::string unit, int64_t total, double interval_seconds = 5.0);
  // Adds `done` units of work; prints when the interval has passed or `force` is set.
  void advance(int64_t done, const std::string& detail = "", bool force = false);
  int64_t done() const { return done_; }
  double elapsed_seconds() const;
  double rate() const;  // units per second so far

 private:
  std::string tag_, unit_;
  int64_t total_, done_ = 0;
  double interval_;
  std::chrono::steady_clock::time_point start_, last_print_;
};

// "1h02m", "3m05s", "12s".
std::string format_duration(double seconds);

class JsonlWriter {
 public:
  JsonlWriter() = default;
  explicit JsonlWriter(const std::string& path, bool append = true);
  ~JsonlWriter();
  JsonlWriter(const JsonlWriter&) = delete;
  JsonlWriter& operator=(const JsonlWriter&) = delete;
  void write(const nlohmann::json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace carve
