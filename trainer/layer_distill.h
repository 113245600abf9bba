// Stages 1 and 2 of mmMamba (METHOD.md, "Distillation recipes"): layer-wise distillation of each Mamba-2 mixer.
//
// Every student mixer reads its layer's input from the activation cache (the teacher's residual stream), applies the
// teacher's input norm, and is trained against the teacher attention's output before o_proj, computed on the fly
// from the same normed input with the frozen teacher weights. Loss: MSE per head x 1000, averaged over the layers;
// the mean runs over the real tokens of the whole global batch (padding excluded), so every token weighs the same
// however batches and replicas split them. Stage 1 trains the new parameters, stage 2 also q/k/v (model/student).
//
// Distributed over a process grid (comm/process_grid): each layer group trains its layers, each replica of a group
// reads its own batches, and replicas sum gradients in buckets overlapped with backward. Gradient clipping uses the
// norm over every trained layer of the whole world (one scalar all-reduce), as a single process would.
// Consequently 1 process with gradient accumulation A and R processes x A/R accumulation see the same batches and
// reach the same weights up to float rounding.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>

#include "comm/mpi_communicator.h"
#include "model/student.h"
#include "trainer/optimizer.h"
#include "trainer/run_control.h"

namespace carve::trainer {

struct LayerDistillOptions : TrainRunOptions {
  model::Stage stage = model::Stage::Stage1;
  std::string init_dir;  // stage 2: the stage-1 folder whose latest checkpoint gives the mixers
  int layer_groups = 1;
};

struct LayerDistillReport {
  int64_t start_step = 0, end_step = 0, total_steps = 0;
  bool stopped = false;  // ended early (a signal or stop_after) with a checkpoint to resume from
  double seconds = 0;    // of the training loop
  std::map<int64_t, double> first_loss, last_loss;  // per layer (x1000 MSE): first and last logged step
  // Per step of this invocation: wall time, time blocked on the data source, time in gradient and norm reduction
  // (with profile_sync, the communication time the step could not hide), real tokens of the global batch.
  StepTimings steps;
};

// Collective over `world` (every member calls it with the same options).
LayerDistillReport run_layer_distill(const LayerDistillOptions& options, comm::MpiCommunicator& world);

// Writes the student of the run's newest complete checkpoint as a student folder (model/student_checkpoint): the
// teacher's parameters stay in the teacher folder, which the folder records.
void export_layer_student(const LayerDistillOptions& options, const std::string& out_dir);

// The Mamba layers a stage-1/2 run trains under `spec`.
std::vector<int64_t> trained_layers(const model::StudentSpec& spec);

}  // namespace carve::trainer
