#include "trainer/run_control.h"

#include <atomic>
#include <csignal>
#include <cstdlib>

#include "base/error.h"
#include "base/fs.h"
#include "base/json.h"
#include "trainer/distill_checkpoint.h"

namespace carve::trainer {
namespace {

std::atomic<int> stop_signal{0};
extern "C" void on_stop_signal(int sig) { stop_signal.store(sig); }

}  // namespace

StopSignals::StopSignals() {
  stop_signal.store(0);
  previous_term_ = std::signal(SIGTERM, on_stop_signal);
  previous_usr1_ = std::signal(SIGUSR1, on_stop_signal);
}

StopSignals::~StopSignals() {
  std::signal(SIGTERM, previous_term_);
  std::signal(SIGUSR1, previous_usr1_);
}

int StopSignals::received() const { return stop_signal.load(); }

void die_if_fault_injected(int64_t steps_done) {
  static const int64_t limit = [] {
    const char* v = std::getenv("CARVE_FAULT_KILL_AFTER_STEPS");
    return v ? std::atoll(v) : int64_t{0};
  }();
  if (limit > 0 && steps_done >= limit) std::raise(SIGKILL);
}

std::string cpu_rng_state_hex() {
  auto b = at::detail::getDefaultCPUGenerator().get_state().contiguous();
  const auto* p = b.data_ptr<uint8_t>();
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(static_cast<size_t>(b.numel()) * 2);
  for (int64_t i = 0; i < b.numel(); ++i) {
    out.push_back(digits[p[i] >> 4]);
    out.push_back(digits[p[i] & 15]);
  }
  return out;
}

void restore_cpu_rng_state(const std::string& text, const std::string& where) {
  CARVE_CHECK(text.size() % 2 == 0, where, ": the RNG state is not an even number of hex digits");
  auto bytes = torch::empty({static_cast<int64_t>(text.size() / 2)}, torch::kUInt8);
  auto* p = bytes.data_ptr<uint8_t>();
  for (size_t i = 0; i < text.size() / 2; ++i) {
    const auto pair = text.substr(2 * i, 2);
    CARVE_CHECK(std::isxdigit(static_cast<unsigned char>(pair[0])) && std::isxdigit(static_cast<unsigned char>(pair[1])),
                where, ": the RNG state holds a non-hex character");
    p[i] = static_cast<uint8_t>(std::stoi(pair, nullptr, 16));
  }
  auto generator = at::detail::getDefaultCPUGenerator();  // a handle: setting its state sets the default's
  generator.set_state(bytes);
}

void check_resumable(const nlohmann::json& saved, const nlohmann::json& wanted, const std::string& dir) {
  for (auto it = wanted.begin(); it != wanted.end(); ++it) {
    CARVE_CHECK(saved.contains(it.key()), dir, "/state.json: no field '", it.key(), "'");
    CARVE_CHECK(saved.at(it.key()) == it.value(), "cannot resume from ", dir, ": it was written with ", it.key(), " = ",
                saved.at(it.key()).dump(), ", this run has ", it.value().dump(),
                " (use a new --out folder, or the original settings)");
  }
}

ResumePoint find_resume_point(comm::MpiCommunicator& world, const std::string& run_dir, const nlohmann::json& identity) {
  ResumePoint r;
  r.dir = world.broadcast_text(world.rank() == 0 ? [&] {
    auto found = latest_checkpoint(run_dir);
    return found ? found->dir : std::string();
  }() : std::string());
  if (!r.dir.empty()) {
    r.state = read_json_file(fs::join(r.dir, "state.json"));
    world.rank0_decides([&] { check_resumable(r.state, identity, r.dir); });
  }
  return r;
}

void check_resume_total(const ResumePoint& resume, int64_t total) {
  if (resume.dir.empty()) return;
  CARVE_CHECK(resume.state.at("total_steps").get<int64_t>() == total, "cannot resume from ", resume.dir,
              ": it belongs to a run of ", resume.state.at("total_steps").dump(), " steps, this one asks for ", total,
              " (the schedule depends on it)");
}

bool agree_to_stop(comm::MpiCommunicator& world, const StopSignals& signals, int64_t steps_done_here,
                   int64_t stop_after) {
  int64_t stop = signals.received() != 0 || (stop_after > 0 && steps_done_here >= stop_after) ? 1 : 0;
  return world.all_reduce_value(stop, comm::ReduceOp::Max) != 0;
}

}  // namespace carve::trainer
