// What `carve inspect` prints about a checkpoint: architecture, parameter counts by component, dtypes, files.
#pragma once

#include <string>

#include "model/checkpoint.h"

namespace carve::model {

// Parameter counts come from the stored tensor shapes, so no model is built (cheap for multi-GB teachers).
std::string describe_checkpoint(const CheckpointReader& checkpoint);

// For a carve student folder: layout, mixer, seeding, where its teacher is, and trainable parameters per stage
// (from a skeleton model: shapes only, no weights read).
std::string describe_student(const CheckpointReader& checkpoint);

}  // namespace carve::model
