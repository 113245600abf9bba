// What every distillation run shares: the options of its training loop, stopping on signals, resuming only a
// checkpoint written under the same settings, the CPU random state a checkpoint carries, and fault injection for
// the crash tests.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <string>

#include "comm/mpi_communicator.h"
#include "model/student.h"
#include "trainer/optimizer.h"

namespace carve::trainer {

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

// For tests of crashed runs: CARVE_FAULT_KILL_AFTER_STEPS=N kills this process (SIGKILL, no cleanup) once step N is
// done (after its checkpoint, if one falls there), as a node failure would.
void die_if_fault_injected(int64_t steps_done);

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
// The schedule depends on the total: a checkpoint of a run of another length is refused.
void check_resume_total(const ResumePoint& resume, int64_t total);

// Whether every rank stops after this step: any rank got a stop signal, or this invocation has done `stop_after`
// steps (0: never). Collective over `world`, so all ranks stop at the same step.
bool agree_to_stop(comm::MpiCommunicator& world, const StopSignals& signals, int64_t steps_done_here,
                   int64_t stop_after);

}  // namespace carve::trainer
