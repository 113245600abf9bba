// What every distillation run shares: the options of its training loop, stopping on signals, resuming only a
// checkpoint written under the same settings, the CPU random state a checkpoint carries, and fault injection for
// the crash tests.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "data/activation_source.h"
#include "base/progress.h"
#include "model/student.h"
#include "trainer/optimizer.h"

namespace carve::trainer {

// What a step whose loss (or gradient norm) is NaN or infinite does: end the run with an error naming the step and
// the layer or loss term (the weights and the last checkpoint are left as they were), or skip the update and go on.
enum class NonFinitePolicy { Stop, Skip };
NonFinitePolicy parse_nonfinite_policy(const std::string& text, const std::string& flag);

// The training-loop options of any distillation stage.
struct TrainRunOptions {
  std::string teacher_dir, weight_prefix;
  std::string cache_dir;
  std::string run_dir;  // this stage's folder: checkpoints/, metrics.jsonl, student/
  model::StudentSpec spec;

  int64_t steps = 0;  // optimizer steps in all; 0: one epoch of the data
  int64_t batch_tokens = 2048;
  int64_t grad_accum = 1;
  uint64_t data_seed = 0;
  bool shuffle = true;

  LrSchedule lr;
  AdamWOptions adam;
  double clip = 2.0;  // 0: no clipping
  int64_t bucket_bytes = 25 << 20;

  int64_t checkpoint_every = 0;  // 0: only at the end (and on a stop)
  int64_t keep_checkpoints = 2;
  int64_t log_every = 10;
  double progress_seconds = 5.0;
  int64_t stop_after = 0;  // stop cleanly (with a checkpoint) after this many steps of this invocation; 0: never
  NonFinitePolicy on_nonfinite = NonFinitePolicy::Stop;  // a NaN or infinite loss or gradient norm

  torch::Device device = torch::kCPU;
  torch::ScalarType teacher_dtype = torch::kFloat32;  // frozen teacher weights on the device
  bool autocast = true;                               // bf16 autocast on CUDA
  bool profile_sync = false;  // synchronise the device around communication to measure its exposed time (bench)
  bool write_metrics = true;
  bool save_checkpoints = true;  // false: nothing is written (benchmarks)
};

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// While alive, SIGTERM (SLURM's warning before the time limit, scancel) and SIGUSR1 ask for a checkpoint and a
// clean stop instead of ending the process. One at a time.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  int received() const;  // the signal number, 0 when none came

 private:
  void (*previous_term_)(int);
  void (*previous_usr1_)(int);
};

// The CPU generator's state as hex text (stored in state.json) and back.
std::string cpu_rng_state_hex();
void restore_cpu_rng_state(const std::string& hex, const std::string& where);

// Refuses to resume a checkpoint whose `saved` state differs from `wanted` in any field of `wanted`, naming it.
void check_resumable(const nlohmann::json& saved, const nlohmann::json& wanted, const std::string& dir);

// Where a run resumes: the newest complete checkpoint under run_dir (rank 0 looks, every rank learns), checked
// against the run's `identity`; an empty dir when the run starts afresh. Collective over `world`.
struct ResumePoint {
  std::string dir;
  nlohmann::json state;
  int64_t step() const { return dir.empty() ? 0 : state.at("step").get<int64_t>(); }
};
ResumePoint find_resume_point(comm::MpiCommunicator& world, const std::string& run_dir, const nlohmann::json& identity);
// The data options every stage shares (batch budget, this replica's shard, seed, shuffle, pinned memory) and, when
// resuming, the checkpoint's data position; restores the checkpoint's CPU RNG state as well.
data::ActivationSourceOptions source_options(const TrainRunOptions& o, int64_t replica, int64_t replicas,
                                             bool pin_memory, const ResumePoint& resume);

// The schedule depends on the total: a checkpoint of a run of another length is refused.
void check_resume_total(const ResumePoint& resume, int64_t total);

// Whether every rank stops after this step: any rank got a stop signal, or this invocation has done `stop_after`
// steps (0: never). Collective over `world`, so all ranks stop at the same step.
bool agree_to_stop(comm::MpiCommunicator& world, const StopSignals& signals, int64_t steps_done_here,
                   int64_t stop_after);

// The non-finite check of one step, the same in every stage. Each rank marks which of the step's `sources` (layers
// or loss terms, the same list on every rank) it saw non-finite; `agree` combines the marks of all ranks
// (collective over `world`) and applies the policy: under Stop it throws naming the step and the sources, under Skip
// it logs them (lead rank) and returns true: the caller leaves the weights and optimizer state untouched and leaves
// the step's losses out of its logged averages.
class NonFiniteCheck {
 public:
  NonFiniteCheck(NonFinitePolicy policy, std::vector<std::string> sources);
  void mark(size_t source, const torch::Tensor& value);  // non-finite if any element of `value` is
  bool agree(comm::MpiCommunicator& world, int64_t step_done, bool lead);
  int64_t skipped() const { return skipped_; }

 private:
  NonFinitePolicy policy_;
  std::vector<std::string> sources_;
  // (source, "all finite" as a bool tensor on the value's device): read together in agree(), one device sync a step.
  std::vector<std::pair<size_t, torch::Tensor>> pending_;
  int64_t skipped_ = 0;
};

// Fault injection for the tests: CARVE_FAULT_NAN_LOSS=STEP[:SOURCE] makes the loss of step STEP (1-based) NaN, for
// the one source index SOURCE (a layer number in stages 1-2) or for all. Returns NaN or 1.
double injected_loss_factor(int64_t step_done, int64_t source);

// Per-step timings of one trainer invocation (what the benchmarks read).
struct StepTimings {
  std::vector<double> seconds, data_wait, comm_wait;  // wall time; blocked on data; in reduction (see profile_sync)
  std::vector<int64_t> tokens;                        // real tokens of the step's global batch
  struct Totals {
    double seconds = 0, data_wait = 0, comm_wait = 0;
    int64_t tokens = 0;
  };
  Totals totals(size_t first_step = 0) const;  // summed over steps [first_step, end)
};

// The bookkeeping of a training loop that is the same in every stage: step timings, progress with ETA, when to log
// and checkpoint, and each log interval's throughput and waits.
class StepLedger {
 public:
  // `lead`: this rank prints progress. `slots_per_step`: token slots of one global step (for the ETA).
  StepLedger(const TrainRunOptions& options, int64_t start_step, int64_t total, int64_t slots_per_step, bool lead,
             Clock::time_point run_start);
  void record(int64_t done, double seconds, double data_wait, double comm_wait, int64_t tokens);
  int64_t steps_done_here() const { return static_cast<int64_t>(timings_.seconds.size()); }
  bool log_due(int64_t done, bool stop) const;
  bool checkpoint_due(int64_t done, bool stop) const;
  // The end of step `done` after logging: `save(done)` when a checkpoint is due (and the run saves them), then the
  // crash tests' hook (CARVE_FAULT_KILL_AFTER_STEPS=N: SIGKILL once step N is done, as a node failure would), and on
  // an agreed stop before the last step a message. True when the loop stops here.
  bool end_step(int64_t done, bool stop, bool by_signal, const std::function<void(int64_t)>& save);

  // What happened since the previous call (the log interval); starts the next one.
  struct Interval {
    int64_t steps = 0, tokens = 0;
    double tokens_per_s = 0, data_wait = 0, comm_wait = 0;
  };
  Interval close_interval();
  std::string eta(int64_t done) const;
  // Appends one record to RUN_DIR/metrics.jsonl (opened by the constructor on the lead rank when the options ask
  // for metrics; a no-op elsewhere): the fields every record has (step, total_steps, tokens, tokens_per_s, waits,
  // elapsed_s) and the stage's own `fields`.
  void write_metrics(int64_t done, const Interval& interval, const nlohmann::json& fields);
  const StepTimings& timings() const { return timings_; }
  double loop_seconds() const { return seconds_since(loop_start_); }

 private:
  const TrainRunOptions& o_;
  int64_t total_, slots_per_step_;
  bool lead_;
  Clock::time_point run_start_, loop_start_, interval_start_;
  ProgressMeter progress_;
  std::unique_ptr<JsonlWriter> metrics_;
  StepTimings timings_;
  Interval open_;
};

}  // namespace carve::trainer
