// Initialising a Mamba-2 mixer from a teacher attention layer (METHOD.md, "Seeding"):
//   mimic        mmMamba's full recipe: q/k/v/o copied; conv = identity (current-token tap 1, bias 0); W_gamma = 0;
//                dt_bias = softplus^-1(dt), dt = exp(U[log 1e-3, log 0.1]) clamped at 1e-3; A_log = 1;
//                W_G xavier_uniform with gain 2^-2.5; norm weight 1; D = 0 (attention has no skip)
//   inherit      q/k/v/o copied, everything else at Mamba-2 defaults (MaTVLM)
//   inherit-qkv  q/k/v copied, o and the rest at defaults (mmMamba's ablation)
//   random       everything at defaults (mmMamba's "from scratch")
// Mamba-2 defaults: linear layers and the conv as PyTorch initialises them (U(+-1/sqrt(fan_in))), A_log = log U(1, 16),
// dt_bias = softplus^-1(exp(U[log 1e-3, log 0.1])) with dt floored at 1e-4, D = 1, norm weight 1, W_gamma and W_G
// like any linear layer.
// For the mamba2 block "q/k/v" means the C/B/x rows of in_proj and "o" means out_proj; the teacher's q/k/v/o biases
// are dropped there (as MaTVLM does for Phi-2). The seeded mixer keeps and copies them.
#pragma once

#include <cstdint>
#include <string>

#include "model/attention.h"
#include "model/mixer.h"

namespace carve::model {

enum class SeedMethod { Mimic, Inherit, InheritQkv, Random };

SeedMethod parse_seed_method(const std::string& text, const std::string& source = "seeding");
std::string seed_method_name(SeedMethod m);

// Initialises every parameter of `mixer` (a seeded or mamba2 mixer) from `teacher` by `method`. Random draws come
// from a CPU generator seeded with `seed`, so a conversion is reproducible.
void seed_mixer(Mixer& mixer, const AttentionImpl& teacher, SeedMethod method, uint64_t seed);

}  // namespace carve::model
