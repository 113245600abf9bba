#include "base/progress.h"

#include <cerrno>

#include "base/error.h"
#include "base/log.h"

namespace carve {

ProgressMeter::ProgressMeter(std::string tag, std::string unit, int64_t total, double interval_seconds)
    : tag_(std::move(tag)), unit_(std::move(unit)), total_(total), interval_(interval_seconds) {
  start_ = last_print_ = std::chrono::steady_clock::now();
}

double ProgressMeter::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

double ProgressMeter::rate() const {
  const double t = elapsed_seconds();
  return t > 0 ? static_cast<double>(done_) / t : 0.0;
}

void ProgressMeter::advance(int64_t done, const std::string& detail, bool force) {
  done_ += done;
  const auto now = std::chrono::steady_clock::now();
  if (!force && std::chrono::duration<double>(now - last_print_).count() < interval_) return;
  last_print_ = now;
  std::ostringstream line;
  line << done_;
  if (total_ > 0) line << "/" << total_ << " " << unit_ << " (" << (100 * done_ / total_) << "%)";
  else line << " " << unit_;
  char rate_text[32];
  std::snprintf(rate_text, sizeof rate_text, "%.0f", rate());
  line << ", " << rate_text << " " << unit_ << "/s";
  if (total_ > 0 && done_ > 0 && done_ < total_)
    line << ", ETA " << format_duration(static_cast<double>(total_ - done_) / std::max(rate(), 1e-9));
  if (!detail.empty()) line << ", " << detail;
  log::info(tag_.c_str(), line.str());
}

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buffer[32];
  if (s >= 3600)
    std::snprintf(buffer, sizeof buffer, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60));
  else if (s >= 60)
    std::snprintf(buffer, sizeof buffer, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  else
    std::snprintf(buffer, sizeof buffer, "%llds", static_cast<long long>(s));
  return buffer;
}

JsonlWriter::JsonlWriter(const std::string& path, bool append) : path_(path) {
  file_ = std::fopen(path.c_str(), append ? "a" : "w");
  CARVE_CHECK(file_ != nullptr, "cannot open ", path, " for metrics: ", std::strerror(errno));
}

JsonlWriter::~JsonlWriter() {
  if (file_) std::fclose(file_);
}

void JsonlWriter::write(const nlohmann::json& record) {
  CARVE_CHECK(file_ != nullptr, "metrics writer is not open");
  const auto line = record.dump() + "\n";
  CARVE_CHECK(std::fwrite(line.data(), 1, line.size(), file_) == line.size() && std::fflush(file_) == 0,
              "cannot write metrics to ", path_, ": ", std::strerror(errno));
}

}  // namespace carve
