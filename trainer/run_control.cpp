#include "trainer/run_control.h"

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <limits>

#include "base/error.h"
#include "base/fs.h"
#include "base/json.h"
#include "base/log.h"
#include "trainer/distill_checkpoint.h"

namespace carve::trainer {
namespace {

std::atomic<int> stop_signal{0};
extern "C" void on_stop_signal(int sig) { stop_signal.store(sig); }

void die_if_fault_injected(int64_t steps_done) {
  static const int64_t limit = [] {
    const char* v = std::getenv("CARVE_FAULT_KILL_AFTER_STEPS");
    return v ? std::atoll(v) : int64_t{0};
  }();
  if (limit > 0 && steps_done >= limit) std::raise(SIGKILL);
}

}  // namespace

NonFinitePolicy parse_nonfinite_policy(const std::string& text, const std::string& flag) {
  if (text == "stop") return NonFinitePolicy::Stop;
  if (text == "skip") return NonFinitePolicy::Skip;
  throw Error(flag + ": '" + text + "' is not a policy: expected stop or skip");
}

NonFiniteCheck::NonFiniteCheck(NonFinitePolicy policy, std::vector<std::string> sources)
    : policy_(policy), sources_(std::move(sources)) {}

void NonFiniteCheck::mark(size_t source, const torch::Tensor& value) {
  CARVE_CHECK(source < sources_.size(), "non-finite check: source ", source, " of ", sources_.size());
  pending_.emplace_back(source, torch::isfinite(value.detach()).all());
}

bool NonFiniteCheck::agree(comm::MpiCommunicator& world, int64_t step_done, bool lead) {
  auto marks = torch::zeros({static_cast<int64_t>(sources_.size())}, torch::kFloat32);
  if (!pending_.empty()) {
    std::vector<torch::Tensor> flags;
    for (auto& [source, finite] : pending_) flags.push_back(finite.view({1}));
    const auto finite = torch::cat(flags).cpu();
    for (size_t i = 0; i < pending_.size(); ++i)
      if (!finite[static_cast<int64_t>(i)].item<bool>()) marks[static_cast<int64_t>(pending_[i].first)] = 1.f;
    pending_.clear();
  }
  if (world.size() > 1) world.all_reduce(marks, comm::ReduceOp::Sum);
  std::string bad;
  for (size_t i = 0; i < sources_.size(); ++i)
    if (marks[static_cast<int64_t>(i)].item<float>() > 0) bad += (bad.empty() ? "" : ", ") + sources_[i];
  if (bad.empty()) return false;
  if (policy_ == NonFinitePolicy::Stop)
    throw Error("step " + std::to_string(step_done) + ": the loss is NaN or infinite (" + bad +
                "); stopped with the weights and checkpoints as they were before this step (--on-nonfinite skip "
                "would skip such steps)");
  ++skipped_;
  if (lead)
    log::info("distill", "warning: step ", step_done, " skipped: the loss is NaN or infinite (", bad, "); ", skipped_,
              " step(s) skipped so far");
  return true;
}

double injected_loss_factor(int64_t step_done, int64_t source) {
  static const std::pair<int64_t, int64_t> fault = [] {
    const char* v = std::getenv("CARVE_FAULT_NAN_LOSS");
    if (!v) return std::pair<int64_t, int64_t>{0, -1};
    const std::string text(v);
    const auto colon = text.find(':');
    return std::pair<int64_t, int64_t>{std::atoll(text.substr(0, colon).c_str()),
                                       colon == std::string::npos ? -1 : std::atoll(text.c_str() + colon + 1)};
  }();
  const bool hit = fault.first > 0 && step_done == fault.first && (fault.second < 0 || fault.second == source);
  return hit ? std::numeric_limits<double>::quiet_NaN() : 1.0;
}

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

data::ActivationSourceOptions source_options(const TrainRunOptions& o, int64_t replica, int64_t replicas,
                                             bool pin_memory, const ResumePoint& resume) {
  data::ActivationSourceOptions so;
  so.batch_tokens = o.batch_tokens;
  so.rank = replica;
  so.world = replicas;
  so.seed = o.data_seed;
  so.shuffle = o.shuffle;
  so.pin_memory = pin_memory;
  if (!resume.dir.empty()) {
    const std::string state_path = resume.dir + "/state.json";
    so.start = data::position_from_json(resume.state.at("position"), state_path);
    restore_cpu_rng_state(resume.state.at("rng").get<std::string>(), state_path);
  }
  return so;
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

StepTimings::Totals StepTimings::totals(size_t first_step) const {
  Totals t;
  for (size_t s = first_step; s < seconds.size(); ++s) {
    t.seconds += seconds[s];
    t.data_wait += data_wait[s];
    t.comm_wait += comm_wait[s];
    t.tokens += tokens[s];
  }
  return t;
}

StepLedger::StepLedger(const TrainRunOptions& o, int64_t start_step, int64_t total, int64_t slots_per_step, bool lead,
                       Clock::time_point run_start)
    : o_(o),
      total_(total),
      slots_per_step_(slots_per_step),
      lead_(lead),
      run_start_(run_start),
      loop_start_(Clock::now()),
      interval_start_(loop_start_),
      progress_("distill", "tokens", (total - start_step) * slots_per_step, lead ? o.progress_seconds : 1e30) {
  if (lead && o.write_metrics) {
    fs::make_directories(o.run_dir);
    metrics_ = std::make_unique<JsonlWriter>(fs::join(o.run_dir, "metrics.jsonl"));
  }
}

void StepLedger::record(int64_t done, double seconds, double data_wait, double comm_wait, int64_t tokens) {
  timings_.seconds.push_back(seconds);
  timings_.data_wait.push_back(data_wait);
  timings_.comm_wait.push_back(comm_wait);
  timings_.tokens.push_back(tokens);
  open_.steps += 1;
  open_.tokens += tokens;
  open_.data_wait += data_wait;
  open_.comm_wait += comm_wait;
  progress_.advance(slots_per_step_, "step " + std::to_string(done) + "/" + std::to_string(total_));
}

bool StepLedger::log_due(int64_t done, bool stop) const {
  return done % std::max<int64_t>(1, o_.log_every) == 0 || done == total_ || stop || steps_done_here() == 1;
}

bool StepLedger::checkpoint_due(int64_t done, bool stop) const {
  return done == total_ || stop || (o_.checkpoint_every > 0 && done % o_.checkpoint_every == 0);
}

bool StepLedger::end_step(int64_t done, bool stop, bool by_signal, const std::function<void(int64_t)>& save) {
  if (checkpoint_due(done, stop) && o_.save_checkpoints) save(done);
  die_if_fault_injected(done);
  if (!stop || done >= total_) return false;
  if (lead_)
    log::info("distill", "stopped at step ", done, " of ", total_, by_signal ? " on a signal" : " (--stop-after)",
              "; rerun the same command to resume");
  return true;
}

StepLedger::Interval StepLedger::close_interval() {
  auto closed = open_;
  closed.tokens_per_s = static_cast<double>(closed.tokens) / std::max(seconds_since(interval_start_), 1e-9);
  open_ = Interval{};
  interval_start_ = Clock::now();
  return closed;
}

std::string StepLedger::eta(int64_t done) const {
  return format_duration(progress_.rate() > 0 ? static_cast<double>((total_ - done) * slots_per_step_) / progress_.rate()
                                              : 0);
}

void StepLedger::write_metrics(int64_t done, const Interval& i, const nlohmann::json& fields) {
  if (!metrics_) return;
  nlohmann::json record = {{"step", done},
                           {"total_steps", total_},
                           {"tokens", i.tokens},
                           {"tokens_per_s", i.tokens_per_s},
                           {"data_wait_s", i.data_wait},
                           {"comm_wait_s", i.comm_wait},
                           {"elapsed_s", seconds_since(run_start_)}};
  record.update(fields);
  metrics_->write(record);
}

}  // namespace carve::trainer
