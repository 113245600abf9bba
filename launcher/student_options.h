// Options that describe a student to carve out of a teacher: the layout (one of four ways to give it), the mixer,
// the seeding. Shared by `carve convert` and the trainer subcommands.
#pragma once

#include <string>

#include "launcher/options.h"
#include "model/student.h"

namespace carve::launcher {

struct StudentOptions {
  std::string layout;             // "AMMM..."
  int64_t attention_count = -1;   // with placement
  int64_t mamba_count = -1;       // with placement
  std::string placement = "head-interleaved";
  std::string attention_layers;   // "0,4,8"
  std::string mamba_layers;       // "0,6,12,18"
  std::string mixer = "seeded";
  std::string seeding = "mimic";
  int64_t init_seed = 0;
  int64_t chunk_size = 0;
  int64_t conv_kernel = 0;
};

// Declares --layout, --attention-count, --mamba-count, --placement, --attention-layers, --mamba-layers, --mixer,
// --seed, --init-seed, --chunk-size, --conv-kernel.
po::options_description student_options(StudentOptions& o);

// Resolves the options against a teacher of `num_layers` layers. Exactly one layout source must be given; every
// error names its flag.
model::StudentSpec resolve_student(const StudentOptions& o, int64_t num_layers);

}  // namespace carve::launcher
