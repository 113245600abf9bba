// End-to-end distillation of the whole student against the teacher's logits: mmMamba's stage 3, and MaTVLM's one
// stage (METHOD.md, "Distillation recipes").
//
// Stage 3 starts from a student folder (normally stage 2's export) and trains, by default, every Mamba mixer
// parameter except dt_bias, A_log and the output projection (mmMamba's code); kept attention layers, MLPs, norms
// and embeddings stay the teacher's, frozen. Loss: kl_weight x KL(teacher || student) at temperature T (times T^2),
// averaged over the real tokens of the global batch (trainer/logit_losses says how this differs from mmMamba's
// "batchmean"), plus optionally ce_weight x cross-entropy on the labelled tokens, averaged over the global batch's
// labelled tokens.
//
// The one-stage recipe (MaTVLM) starts from the seeded student and adds, for every Mamba layer, the un-squared
// Frobenius norm of (student layer on the teacher's input to that layer - the teacher layer's output), summed over
// the layers, times layer_weight. The norm is taken per micro-batch over its real tokens, as MaTVLM takes it per
// GPU batch, and averaged over the global batch's micro-batches; trains every Mamba mixer parameter.
//
// Teacher signals come from the teacher run in the same process without gradients ("online"), or from the
// activation cache ("cache": top-k log-probabilities for the KL, and for the one-stage recipe the cached residual
// streams around each Mamba layer).
//
// Data parallel over every rank: each reads its own batches, gradients are summed in buckets overlapped with
// backward (comm/grad_reducer). With zero1, each replica keeps the AdamW state of only its share of the parameters
// (ZeRO stage 1), updates that share, and broadcasts it. 1 process with accumulation A and R processes with A/R
// see the same batches and reach the same weights up to float rounding (within an epoch, as for stages 1-2).
#pragma once

#include <map>
#include <utility>
#include <set>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "model/student.h"
#include "trainer/run_control.h"

namespace carve::trainer {

enum class TeacherSignal { Online, Cache };
TeacherSignal parse_teacher_signal(const std::string& text, const std::string& source);
std::string teacher_signal_name(TeacherSignal s);

struct E2eDistillOptions : TrainRunOptions {
  model::Stage stage = model::Stage::Stage3;  // Stage3 or OneStage
  std::string samples_path;  // token ids, loss masks and image features (default: the cache's sample file)
  std::string init_student;  // stage 3: the student folder to start from; empty: seed the student by `spec`
  TeacherSignal teacher_signal = TeacherSignal::Online;
  double temperature = 1.0;
  double kl_weight = 1.0, ce_weight = 0.0, layer_weight = 1.0;
  std::set<model::ParamRole> trainable_roles;  // empty: what the stage trains
  bool zero1 = false;
};

struct E2eDistillReport {
  int64_t start_step = 0, end_step = 0, total_steps = 0;
  bool stopped = false;
  double seconds = 0;  // of the training loop
  double first_loss = 0, last_loss = 0;  // of the first and last logged interval
  std::vector<std::pair<int64_t, double>> logged_loss;  // (step, mean loss per step since the previous log line)
  int64_t trainable_parameters = 0, student_parameters = 0, teacher_parameters = 0;
  StepTimings steps;  // per step of this invocation (trainer/run_control)
};

// Collective over `world` (every member calls it with the same options).
E2eDistillReport run_e2e_distill(const E2eDistillOptions& options, comm::MpiCommunicator& world);

// Writes the student of the run's newest complete checkpoint as a student folder (model/student_checkpoint):
// student-only (the frozen parameters stay in the teacher folder, which it records) or, with `full`, everything.
void export_e2e_student(const E2eDistillOptions& options, const std::string& out_dir, bool full);

}  // namespace carve::trainer
