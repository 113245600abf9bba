// Teacher pretraining for the built-in example: a small llama-family model trained from random weights with
// cross-entropy on the labelled (loss-masked) tokens of a sample file, then written as a Hugging Face folder that
// carve loads like any teacher. One process; it exists to make the example's teacher, not to pretrain real models.
#pragma once

#include <string>

#include "model/random_teacher.h"
#include "trainer/optimizer.h"

namespace carve::trainer {

struct PretrainOptions {
  std::string samples_path, eval_path, out_dir;
  model::RandomTeacherDims dims;
  uint64_t seed = 0;
  int64_t steps = 2000;
  int64_t batch_tokens = 2048;
  LrSchedule lr;
  AdamWOptions adam;
  double clip = 1.0;
  int64_t eval_every = 500;
  int64_t eval_samples = 500;
  std::string command;  // recorded in config.json: how the folder was made
};

struct PretrainReport {
  double final_loss = 0, eval_exact_match = 0;
};

PretrainReport pretrain_teacher(const PretrainOptions& options);

}  // namespace carve::trainer
