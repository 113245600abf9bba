// What `carve inspect` prints about a checkpoint: architecture, parameter counts by component, dtypes, files.
#pragma once

#include <string>

#include "model/checkpoint.h"

namespace carve::model {

// Parameter counts come from the stored tensor shapes, so no model is built (cheap for multi-GB teachers).
std::string describe_checkpoint(const CheckpointReader& checkpoint);

}  // namespace carve::model
