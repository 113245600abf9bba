#include "model/seeding.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "base/error.h"
#include "model/mamba2_mixer.h"
#include "model/seeded_mixer.h"

namespace carve::model {
namespace {

// Draws on CPU in float32 and copies into the parameter, whatever its device and dtype.
class Initializer {
 public:
  explicit Initializer(uint64_t seed) : gen_(at::detail::createCPUGenerator(seed)) {}

  torch::Tensor uniform(at::IntArrayRef shape, double lo, double hi) {
    return torch::empty(shape, torch::kFloat32).uniform_(lo, hi, gen_);
  }
  // nn.Linear / nn.Conv1d default: kaiming_uniform(a = sqrt(5)) = U(+-1/sqrt(fan_in)); the bias likewise.
  torch::Tensor pytorch_default(at::IntArrayRef shape, int64_t fan_in) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    return uniform(shape, -bound, bound);
  }
  torch::Tensor xavier(at::IntArrayRef shape, double gain) {  // shape [out, in]
    const double bound = gain * std::sqrt(6.0 / static_cast<double>(shape[0] + shape[1]));
    return uniform(shape, -bound, bound);
  }
  // softplus^-1(dt) with dt = exp(U[log 1e-3, log 0.1]) floored at `floor`.
  torch::Tensor dt_bias(int64_t heads, double floor) {
    auto dt = torch::exp(uniform({heads}, std::log(1e-3), std::log(0.1))).clamp_min(floor);
    return dt + torch::log(-torch::expm1(-dt));
  }
  torch::Tensor a_log_default(int64_t heads) { return torch::log(uniform({heads}, 1.0, 16.0)); }

 private:
  at::Generator gen_;
};

void set(torch::Tensor& param, const torch::Tensor& value, const char* what) {
  CARVE_CHECK(param.sizes() == value.sizes(), "seeding ", what, ": shape ", value.sizes(), " does not fit ",
              param.sizes());
  param.copy_(value);
}

torch::Tensor identity_conv(const torch::Tensor& weight) {
  auto w = torch::zeros(weight.sizes(), torch::kFloat32);
  w.select(1, weight.size(1) - 1).fill_(1.0);  // the current-token tap
  return w;
}

void linear_default(Linear& lin, Initializer& init) {
  auto w = lin->weight;
  set(w, init.pytorch_default(w.sizes(), w.size(1)), "linear weight");
  if (lin->bias.defined()) {
    auto b = lin->bias;
    set(b, init.pytorch_default(b.sizes(), w.size(1)), "linear bias");
  }
}

void copy_linear(Linear& to, const Linear& from, const char* what) {
  set(to->weight, from->weight.detach(), what);
  if (to->bias.defined()) {
    CARVE_CHECK(from->bias.defined(), "seeding ", what, ": the teacher has no bias to copy");
    set(to->bias, from->bias.detach(), what);
  }
}

void seed_seeded(SeededMixerImpl& m, const AttentionImpl& t, SeedMethod method, Initializer& init) {
  const bool copy_qkv = method != SeedMethod::Random, copy_o = copy_qkv && method != SeedMethod::InheritQkv;
  if (copy_qkv) {
    copy_linear(m.q_proj, t.q_proj, "q_proj");
    copy_linear(m.k_proj, t.k_proj, "k_proj");
    copy_linear(m.v_proj, t.v_proj, "v_proj");
  } else {
    linear_default(m.q_proj, init);
    linear_default(m.k_proj, init);
    linear_default(m.v_proj, init);
  }
  if (copy_o) copy_linear(m.o_proj, t.o_proj, "o_proj");
  else linear_default(m.o_proj, init);

  const int64_t h = m.config.num_heads, k = m.config.conv_kernel;
  if (method == SeedMethod::Mimic) {
    set(m.conv_weight, identity_conv(m.conv_weight), "conv_weight");
    m.conv_bias.zero_();
    m.dt_proj->weight.zero_();
    set(m.dt_bias, init.dt_bias(h, 1e-3), "dt_bias");
    m.A_log.fill_(1.0);
    set(m.gate_proj->weight, init.xavier(m.gate_proj->weight.sizes(), std::pow(2.0, -2.5)), "gate_proj");
  } else {
    set(m.conv_weight, init.pytorch_default(m.conv_weight.sizes(), k), "conv_weight");
    set(m.conv_bias, init.pytorch_default(m.conv_bias.sizes(), k), "conv_bias");
    linear_default(m.dt_proj, init);
    set(m.dt_bias, init.dt_bias(h, 1e-4), "dt_bias");
    set(m.A_log, init.a_log_default(h), "A_log");
    linear_default(m.gate_proj, init);
  }
  m.norm_weight.fill_(1.0);
}

void seed_mamba2(Mamba2MixerImpl& m, const AttentionImpl& t, SeedMethod method, Initializer& init) {
  const bool copy_qkv = method != SeedMethod::Random, copy_o = copy_qkv && method != SeedMethod::InheritQkv;
  const int64_t h = m.config.num_heads, k = m.config.conv_kernel, d = m.config.hidden_size;
  auto w = init.pytorch_default(m.in_proj->weight.sizes(), d);  // every row at its default first
  auto rows = w.split_with_sizes(m.in_proj_sizes(), 0);         // views: [z, x, B, C, dt]
  if (copy_qkv) {
    rows[1].copy_(t.v_proj->weight.detach());
    rows[2].copy_(t.k_proj->weight.detach());
    rows[3].copy_(t.q_proj->weight.detach());
  }
  if (method == SeedMethod::Mimic) {
    rows[0].copy_(init.xavier(rows[0].sizes(), std::pow(2.0, -2.5)));  // z plays W_G
    rows[4].zero_();                                                  // dt plays W_gamma
  }
  set(m.in_proj->weight, w, "in_proj");
  if (copy_o) set(m.out_proj->weight, t.o_proj->weight.detach(), "out_proj");
  else linear_default(m.out_proj, init);

  if (method == SeedMethod::Mimic) {
    set(m.conv_weight, identity_conv(m.conv_weight), "conv_weight");
    m.conv_bias.zero_();
    set(m.dt_bias, init.dt_bias(h, 1e-3), "dt_bias");
    m.A_log.fill_(1.0);
    m.D.zero_();
  } else {
    set(m.conv_weight, init.pytorch_default(m.conv_weight.sizes(), k), "conv_weight");
    set(m.conv_bias, init.pytorch_default(m.conv_bias.sizes(), k), "conv_bias");
    set(m.dt_bias, init.dt_bias(h, 1e-4), "dt_bias");
    set(m.A_log, init.a_log_default(h), "A_log");
    m.D.fill_(1.0);
  }
  m.norm_weight.fill_(1.0);
}

}  // namespace

SeedMethod parse_seed_method(const std::string& text, const std::string& source) {
  if (text == "mimic") return SeedMethod::Mimic;
  if (text == "inherit") return SeedMethod::Inherit;
  if (text == "inherit-qkv") return SeedMethod::InheritQkv;
  if (text == "random") return SeedMethod::Random;
  fail(source, ": '", text, "' is not a seeding method (mimic, inherit, inherit-qkv, random)");
}

std::string seed_method_name(SeedMethod m) {
  switch (m) {
    case SeedMethod::Mimic: return "mimic";
    case SeedMethod::Inherit: return "inherit";
    case SeedMethod::InheritQkv: return "inherit-qkv";
    case SeedMethod::Random: return "random";
  }
  return "?";
}

void seed_mixer(Mixer& mixer, const AttentionImpl& teacher, SeedMethod method, uint64_t seed) {
  torch::NoGradGuard no_grad;
  Initializer init(seed);
  if (auto* s = dynamic_cast<SeededMixerImpl*>(&mixer)) return seed_seeded(*s, teacher, method, init);
  if (auto* m = dynamic_cast<Mamba2MixerImpl*>(&mixer)) return seed_mamba2(*m, teacher, method, init);
  fail("cannot seed a mixer of kind '", mixer.kind(), "' from attention");
}

}  // namespace carve::model
