// carve bench decode: generation at a real VLM's language-model dimensions (HoVLE-2.6B by default, random bf16
// weights) for the teacher, the hybrid student (attention kept in one layer of four) and the linear student,
// against context length: per-token decode latency at batch 1 next to its bytes floor (weights plus KV cache or
// recurrent state, read once per token, over the copy bandwidth measured in the same run), peak memory, decode
// throughput at the largest batch that fits, and mmMamba's short-prompt case (768 prompt tokens, 256 generated).
// With --hf-json (scripts/bench_hf_decode.py, run in the same session) it prints the ratio to Hugging Face
// transformers' eager decode. The plot is scripts/plot_decode.py over --json. docs/performance.md has the results.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/fs.h"
#include "base/text.h"
#include "launcher/benches.h"
#include "launcher/model_options.h"
#include "launcher/options.h"
#include "model/attention.h"
#include "model/config.h"
#include "model/decode_graph.h"
#include "model/sampling.h"
#include "model/student.h"
#include "trainer/device_memory.h"
#include "trainer/generate.h"

namespace carve::launcher {
namespace {

using torch::Tensor;
using Clock = std::chrono::steady_clock;

bool is_out_of_memory(const std::exception& e) {
  const std::string what = e.what();
  return what.find("out of memory") != std::string::npos || what.find("OutOfMemory") != std::string::npos;
}

struct BenchModel {
  std::string name;
  std::string layout;  // "" for the teacher
};

std::vector<BenchModel> parse_models(const std::string& text, int64_t layers) {
  std::vector<BenchModel> out;
  for (const auto& name : split_list(text, ',')) {
    if (name == "teacher") out.push_back({name, ""});
    else if (name == "hybrid")  // mmMamba-hybrid: attention in the first layer of each block of four
      out.push_back({name, model::Layout::generate(layers, std::max<int64_t>(1, layers / 4), 'A',
                                                   model::Placement::HeadInterleaved).str()});
    else if (name == "linear") out.push_back({name, std::string(layers, 'M')});
    else throw UsageError("--models: '" + name + "' is not teacher, hybrid or linear");
  }
  return out;
}

// The model with random weights on `device`: matrices N(0, 0.02), norm weights and D 1, decay rates
// A = -exp(U(0, log 16)), other vectors 0. Students are the teacher's structure with their 'M' layers carved
// (seeded mixers, mmMamba's); only speed and memory are measured, which do not depend on the values.
model::CausalLM build_model(const model::RandomTeacherDims& dims, const BenchModel& which, torch::ScalarType dtype,
                            torch::Device device, uint64_t seed) {
  model::CausalLM lm(model::parse_model_config(model::random_teacher_config(dims, dtype, seed), "bench decode"));
  if (!which.layout.empty()) {
    model::StudentSpec spec;
    spec.layout = model::Layout::parse(which.layout, dims.layers, "--models");
    spec.mixer = model::MixerKind::Seeded;
    model::carve_student(*lm, spec, /*seed=*/false);
  }
  lm->to(device, dtype);
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  for (auto& p : lm->named_parameters()) {
    Tensor t = p.value();
    const std::string& name = p.key();
    auto ends_with = [&](const std::string& tail) {
      return name.size() >= tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
    };
    if (t.dim() >= 2) t.normal_(0.0, 0.02);
    else if (ends_with("A_log")) t.uniform_(0.0, std::log(16.0));
    else if (name.find("norm") != std::string::npos || ends_with(".D")) t.fill_(1.0);
    else t.zero_();
  }
  lm->eval();
  return lm;
}

// What a decoding state costs in bytes: what one step moves (every weight but the embedding table, of which it
// reads `batch` rows; the cached keys and values it attends over; the SSM and conv states it reads and writes) and
// what one row holds (its buffers at their capacity: what limits the batch).
struct StateBytes {
  double moved_per_step = 0, held_per_row = 0;
};
StateBytes state_bytes(model::CausalLMImpl& lm, const model::DecodeState& state, int64_t batch) {
  auto bytes = [](const Tensor& t) { return t.defined() ? static_cast<double>(t.numel() * t.element_size()) : 0.0; };
  StateBytes r;
  for (const auto& p : lm.parameters()) r.moved_per_step += bytes(p);
  r.moved_per_step -= bytes(lm.embed_tokens);
  r.moved_per_step += static_cast<double>(batch * lm.embed_tokens.size(1) * lm.embed_tokens.element_size());
  double held = 0;
  for (const auto& layer : state.layers) {
    if (auto* kv = dynamic_cast<const model::KvCache*>(layer.get())) {
      r.moved_per_step += bytes(kv->keys()) + bytes(kv->values());
      held += bytes(kv->k) + bytes(kv->v);
    } else if (auto* s = dynamic_cast<const model::SsmState*>(layer.get())) {
      r.moved_per_step += 2.0 * (bytes(s->ssm) + bytes(s->conv));
      held += bytes(s->ssm) + bytes(s->conv);
    }
  }
  r.held_per_row = held / static_cast<double>(batch);
  return r;
}

// A decoding state of `batch` rows that has seen `context` tokens, with room for `max_positions`: one real token
// creates every layer's buffers, then the caches are filled with random keys and values up to `context` and the
// recurrent states with random values, in place of a prefill of `context` tokens (a step's cost does not depend on
// what the state holds).
model::DecodeState context_state(model::CausalLMImpl& lm, int64_t batch, int64_t context, int64_t max_positions) {
  auto state = lm.new_decode_state();
  state.reserve(max_positions);
  model::ForwardOptions o;
  o.state = &state;
  o.want_logits = false;
  const auto device = lm.embed_tokens.device();
  lm.forward(torch::randint(lm.config.vocab_size, {batch, 1}, torch::TensorOptions().dtype(torch::kInt64).device(device)),
             o);
  for (auto& layer : state.layers) {
    if (auto* kv = dynamic_cast<model::KvCache*>(layer.get())) {
      kv->k.narrow(2, 0, context).normal_();
      kv->v.narrow(2, 0, context).normal_();
      kv->length = context;
    } else if (auto* s = dynamic_cast<model::SsmState*>(layer.get())) {
      s->ssm.normal_(0.0, 0.1);
      if (s->conv.defined()) s->conv.normal_();
    }
  }
  state.length = context;
  return state;
}

struct DecodeRun {
  double ms_per_token = NAN;  // steady state, after the warm-up steps
  StateBytes bytes;
  int64_t peak_bytes = 0;
  bool graph = false;
};

// `steps` timed greedy decode steps at `batch` x `context` after `warmup` untimed ones (through a CUDA graph when
// `graphs` and the model allows; otherwise one forward per token).
DecodeRun time_decode(model::CausalLMImpl& lm, int64_t batch, int64_t context, int warmup, int steps, bool graphs) {
  torch::NoGradGuard no_grad;
  const auto device = lm.embed_tokens.device();
  trainer::release_cached_device_memory(device);
  trainer::reset_peak_device_bytes(device);
  const int64_t max_positions = context + warmup + steps + 1;
  auto state = context_state(lm, batch, context, max_positions);
  DecodeRun r;
  r.bytes = state_bytes(lm, state, batch);
  model::DecodeStepper stepper(lm, state, batch, max_positions, graphs);
  r.graph = stepper.graphed();
  Tensor next = torch::randint(lm.config.vocab_size, {batch}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  for (int i = 0; i < warmup; ++i) next = model::greedy_tokens(stepper.step(next));
  synchronize(device);
  const auto start = Clock::now();
  for (int i = 0; i < steps; ++i) next = model::greedy_tokens(stepper.step(next));
  synchronize(device);
  r.ms_per_token = seconds_since(start) * 1e3 / steps;
  r.peak_bytes = trainer::peak_device_bytes(device);
  return r;
}

// The largest batch that fits: first estimated from the free memory over one row's state (a batch-1 state),
// then lowered by 15% at each out-of-memory until a run succeeds.
struct MaxBatchRun {
  int64_t batch = 0;
  DecodeRun run;
};
MaxBatchRun time_max_batch(model::CausalLMImpl& lm, int64_t context, int64_t cap, int steps) {
  const auto device = lm.embed_tokens.device();
  double row_bytes = 0;
  {
    torch::NoGradGuard no_grad;
    auto one_row = context_state(lm, 1, context, context + steps + 3);
    row_bytes = state_bytes(lm, one_row, 1).held_per_row;
  }
  trainer::release_cached_device_memory(device);
  const double total = static_cast<double>(trainer::total_device_bytes(device));
  const double used = static_cast<double>(trainer::allocated_device_bytes(device));
  // Per row beyond its state: logits, the MLP's and the projections' activations; plus a fixed reserve.
  const double activation_row = 4.0 * (lm.config.vocab_size + 4 * lm.config.intermediate_size) * 2.0;
  const double free = total * 0.96 - used - 2e9;
  int64_t batch = std::min<int64_t>(cap, static_cast<int64_t>(free / (row_bytes + activation_row)));
  MaxBatchRun r;
  while (batch >= 1) {
    try {
      r.run = time_decode(lm, batch, context, 2, steps, true);
      r.batch = batch;
      return r;
    } catch (const std::exception& e) {
      if (!is_out_of_memory(e)) throw;
      trainer::release_cached_device_memory(device);
      batch = static_cast<int64_t>(static_cast<double>(batch) * 0.85);
    }
  }
  return r;
}

// mmMamba's short-prompt case at batch 1: prefill `prompt` tokens, then generate `generate` tokens greedily.
struct ShortPromptRun {
  double prefill_ms = 0, first_steps_ms = 0, steady_ms_per_token = 0, tokens_per_s = 0, tokens_per_s_with_capture = 0;
};
ShortPromptRun time_short_prompt(model::CausalLMImpl& lm, int64_t prompt, int64_t generate, bool graphs) {
  torch::NoGradGuard no_grad;
  const auto device = lm.embed_tokens.device();
  const int64_t max_positions = prompt + generate;
  const std::vector<Tensor> tokens = {
      torch::randint(lm.config.vocab_size, {prompt}, torch::TensorOptions().dtype(torch::kInt64).device(device))};
  ShortPromptRun r;
  // An untimed prefill of the same shape first: the libraries pick and load their kernels for it.
  trainer::prefill(lm, tokens, prompt, {});
  synchronize(device);
  auto start = Clock::now();
  auto filled = trainer::prefill(lm, tokens, max_positions, {});
  Tensor next = model::greedy_tokens(filled.logits);  // the last prompt position's greedy token
  synchronize(device);
  r.prefill_ms = seconds_since(start) * 1e3;
  model::DecodeStepper stepper(lm, filled.state, 1, max_positions, graphs);
  auto step = [&] { next = model::greedy_tokens(stepper.step(next)); };
  const int64_t first = std::min<int64_t>(2, generate - 1);  // the eager step and the captured one
  start = Clock::now();
  for (int64_t i = 0; i < first; ++i) step();
  synchronize(device);
  r.first_steps_ms = seconds_since(start) * 1e3;
  start = Clock::now();
  for (int64_t i = first; i < generate - 1; ++i) step();
  synchronize(device);
  const double rest_ms = seconds_since(start) * 1e3;
  r.steady_ms_per_token = rest_ms / static_cast<double>(std::max<int64_t>(1, generate - 1 - first));
  // The first token comes from the prefill; each later one from a step.
  r.tokens_per_s = static_cast<double>(generate) /
                   ((r.prefill_ms + r.steady_ms_per_token * static_cast<double>(generate - 1)) / 1e3);
  r.tokens_per_s_with_capture = static_cast<double>(generate) / ((r.prefill_ms + r.first_steps_ms + rest_ms) / 1e3);
  return r;
}

// scripts/bench_hf_decode.py's JSON: {"results": [{"context": N, "ms_per_token": X}, ...]}.
std::map<int64_t, double> read_hf_json(const std::string& path) {
  std::map<int64_t, double> out;
  if (path.empty()) return out;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(fs::read_file(path));
    for (const auto& r : j.at("results")) out[r.at("context").get<int64_t>()] = r.at("ms_per_token").get<double>();
  } catch (const nlohmann::json::exception& e) {
    throw Error("--hf-json " + path + ": expected {\"results\": [{\"context\": N, \"ms_per_token\": X}, ...]}: " +
                e.what());
  }
  return out;
}

std::string gb(double bytes) { return fmt(bytes / 1e9, 2); }

}  // namespace

int bench_decode(const std::vector<std::string>& args) {
  std::string dims_text, models_text, contexts_text, batch_contexts_text, dtype_text, device_text, json_path, hf_json;
  int64_t layers = 0, max_batch = 0, prompt = 0, generate = 0;
  int warmup = 0, steps = 0;
  bool graphs = true;
  po::options_description desc("carve bench decode");
  desc.add_options()("dims", po::value<std::string>(&dims_text)->default_value("hovle"),
                     "'hovle' (hidden 2048, 16/8 heads, MLP 8192, vocab 92553) or HIDDENxLAYERSxHEADSxKVxMLPxVOCAB")(
      "layers", po::value<int64_t>(&layers)->default_value(32), "decoder layers (with --dims hovle)")(
      "models", po::value<std::string>(&models_text)->default_value("teacher,hybrid,linear"),
      "comma-separated: teacher, hybrid (attention in one layer of four), linear (all Mamba-2)")(
      "contexts", po::value<std::string>(&contexts_text)->default_value("1024,2048,4096,8192,16384,32768,65536,103000,131072"),
      "context lengths (tokens already in the state) for batch-1 latency and memory")(
      "batch-contexts", po::value<std::string>(&batch_contexts_text)->default_value("1024,8192,32768,103000"),
      "context lengths at which to find the largest batch and its throughput ('' for none)")(
      "max-batch", po::value<int64_t>(&max_batch)->default_value(4096), "upper bound of the batch search")(
      "steps", po::value<int>(&steps)->default_value(24), "timed decode steps per measurement")(
      "warmup", po::value<int>(&warmup)->default_value(4), "untimed steps first (the first two capture the graph)")(
      "prompt", po::value<int64_t>(&prompt)->default_value(768), "short-prompt case: prompt tokens (0: skip)")(
      "generate", po::value<int64_t>(&generate)->default_value(256), "short-prompt case: generated tokens")(
      "cuda-graphs", po::value<bool>(&graphs)->default_value(true), "decode through CUDA graphs where possible")(
      "dtype", po::value<std::string>(&dtype_text)->default_value("bfloat16"), "weights and activations")(
      "device", po::value<std::string>(&device_text)->default_value(torch::cuda::is_available() ? "cuda" : "cpu"),
      "cpu | cuda | cuda:N")(
      "hf-json", po::value<std::string>(&hf_json)->default_value(""),
      "scripts/bench_hf_decode.py's --json output from the same session: print the ratio to transformers' decode")(
      "json", po::value<std::string>(&json_path)->default_value(""), "also write the results to this JSON file");
  auto parsed = parse_options("bench decode", desc, args);
  if (parsed.help) {
    std::cout << "usage: carve bench decode [--models teacher,hybrid,linear] [--contexts 1024,...] [--json FILE]\n"
              << desc << "\n";
    return 0;
  }
  if (warmup < 2 || steps < 1) throw UsageError("--warmup must be >= 2 (eager step, capture) and --steps >= 1");
  if (prompt < 0 || (prompt > 0 && generate < 4)) throw UsageError("--prompt must be >= 0 and --generate >= 4");
  if (max_batch < 1) throw UsageError("--max-batch must be positive");
  auto dims = model::parse_random_teacher_dims(dims_text, "--dims");
  if (dims_text == "hovle") dims.layers = layers;
  const auto models = parse_models(models_text, dims.layers);
  std::vector<int64_t> contexts = split_integers(contexts_text, ',');
  std::vector<int64_t> batch_contexts =
      batch_contexts_text.empty() ? std::vector<int64_t>{} : split_integers(batch_contexts_text, ',');
  for (auto c : contexts)
    if (c < 1) throw UsageError("--contexts: lengths must be positive");
  for (auto c : batch_contexts)
    if (c < 1) throw UsageError("--batch-contexts: lengths must be positive");
  const auto dtype = parse_dtype(dtype_text, "dtype");
  const auto device = parse_device(device_text, "device");
  const auto hf = read_hf_json(hf_json);

  const double bandwidth = copy_bandwidth(device, 2, 10);
  std::cout << "decode at " << dims.layers << " layers, hidden " << dims.hidden << ", " << dims.heads << "/"
            << dims.kv_heads << " heads, MLP " << dims.intermediate << ", vocab " << dims.vocab << ", "
            << c10::toString(dtype) << " on " << device.str() << "; copy bandwidth " << fmt(bandwidth / 1e9, 0)
            << " GB/s\nms per token at batch 1 (mean of " << steps << " greedy steps after " << warmup
            << "); floor = bytes per step / copy bandwidth; memory = allocator peak\n";
  nlohmann::json results = {{"device", device.str()},
                            {"dtype", c10::toString(dtype)},
                            {"copy_bandwidth_bytes_per_s", bandwidth},
                            {"dims",
                             {{"layers", dims.layers}, {"hidden", dims.hidden}, {"heads", dims.heads},
                              {"kv_heads", dims.kv_heads}, {"intermediate", dims.intermediate}, {"vocab", dims.vocab}}},
                            {"models", nlohmann::json::array()}};
  for (const auto& which : models) {
    const auto build_start = Clock::now();
    auto lm = build_model(dims, which, dtype, device, 1);
    std::cout << "\n" << which.name << (which.layout.empty() ? "" : " " + which.layout) << " (built in "
              << fmt(seconds_since(build_start), 1) << " s)\n";
    std::cout << std::setw(9) << "context" << std::setw(11) << "ms/token" << std::setw(10) << "floor" << std::setw(9)
              << "x floor" << std::setw(12) << "no graph" << std::setw(11) << "memory GB";
    if (which.layout.empty() && !hf.empty()) std::cout << std::setw(16) << "transformers";
    std::cout << "\n";
    nlohmann::json m = {{"name", which.name}, {"layout", which.layout}, {"batch1", nlohmann::json::array()},
                        {"max_batch", nlohmann::json::array()}};
    for (auto context : contexts) {
      nlohmann::json point = {{"context", context}};
      try {
        const DecodeRun run = time_decode(*lm, 1, context, warmup, steps, graphs);
        const DecodeRun eager = graphs ? time_decode(*lm, 1, context, 1, std::max(4, steps / 4), false) : run;
        const double floor_ms = run.bytes.moved_per_step / bandwidth * 1e3;
        point.update({{"ms_per_token", run.ms_per_token}, {"no_graph_ms_per_token", eager.ms_per_token},
                      {"floor_ms", floor_ms}, {"bytes_per_step", run.bytes.moved_per_step}, {"peak_bytes", run.peak_bytes},
                      {"cuda_graph", run.graph}, {"state_bytes", run.bytes.held_per_row}});
        std::cout << std::setw(9) << context << std::setw(11) << fmt(run.ms_per_token, 3) << std::setw(10)
                  << fmt(floor_ms, 3) << std::setw(9) << fmt(run.ms_per_token / floor_ms, 2) << std::setw(12)
                  << fmt(eager.ms_per_token, 3) << std::setw(11) << gb(static_cast<double>(run.peak_bytes));
        if (which.layout.empty() && hf.count(context)) {
          point["transformers_ms_per_token"] = hf.at(context);
          std::cout << std::setw(9) << fmt(hf.at(context), 1) << " (" << fmt(hf.at(context) / run.ms_per_token, 0)
                    << "x)";
        }
        std::cout << std::endl;
      } catch (const std::exception& e) {
        if (!is_out_of_memory(e)) throw;
        trainer::release_cached_device_memory(device);
        point["oom"] = true;
        std::cout << std::setw(9) << context << "  out of memory at batch 1" << std::endl;
      }
      m["batch1"].push_back(point);
    }
    if (!batch_contexts.empty() && device.is_cuda()) {
      std::cout << std::setw(9) << "context" << std::setw(11) << "max batch" << std::setw(11) << "ms/step"
                << std::setw(13) << "tokens/s" << std::setw(11) << "memory GB" << "\n";
      for (auto context : batch_contexts) {
        const auto r = time_max_batch(*lm, context, max_batch, std::max(4, steps / 3));
        nlohmann::json point = {{"context", context}, {"batch", r.batch}};
        if (r.batch > 0) {
          const double tps = static_cast<double>(r.batch) / (r.run.ms_per_token / 1e3);
          point.update({{"ms_per_step", r.run.ms_per_token}, {"tokens_per_s", tps}, {"peak_bytes", r.run.peak_bytes},
                        {"capped", r.batch == max_batch}});
          std::cout << std::setw(9) << context << std::setw(11) << r.batch << std::setw(11) << fmt(r.run.ms_per_token, 2)
                    << std::setw(13) << fmt(tps, 0) << std::setw(11) << gb(static_cast<double>(r.run.peak_bytes))
                    << (r.batch == max_batch ? "  (the --max-batch cap)" : "") << std::endl;
        } else {
          std::cout << std::setw(9) << context << "  no batch fits" << std::endl;
        }
        m["max_batch"].push_back(point);
      }
    }
    if (prompt > 0) {
      const auto sp = time_short_prompt(*lm, prompt, generate, graphs);
      m["short_prompt"] = {{"prompt", prompt},
                           {"generate", generate},
                           {"prefill_ms", sp.prefill_ms},
                           {"steady_ms_per_token", sp.steady_ms_per_token},
                           {"capture_ms", sp.first_steps_ms},
                           {"tokens_per_s", sp.tokens_per_s},
                           {"tokens_per_s_with_capture", sp.tokens_per_s_with_capture}};
      std::cout << "short prompt (" << prompt << " + " << generate << " generated, batch 1): prefill "
                << fmt(sp.prefill_ms, 1) << " ms, " << fmt(sp.steady_ms_per_token, 3) << " ms/token, "
                << fmt(sp.tokens_per_s, 0) << " tokens/s (" << fmt(sp.tokens_per_s_with_capture, 0)
                << " counting the eager step and the capture, " << fmt(sp.first_steps_ms, 1) << " ms)" << std::endl;
    }
    results["models"].push_back(m);
    lm = nullptr;
    trainer::release_cached_device_memory(device);
  }

  // Side by side at each context both the teacher and a student ran: memory saved and throughput ratios.
  const nlohmann::json* teacher = nullptr;
  for (const auto& m : results["models"])
    if (m["name"] == "teacher") teacher = &m;
  if (teacher) {
    nlohmann::json summary = nlohmann::json::array();
    std::cout << "\nagainst the teacher" << (device.is_cuda() ? ":\n" : ": measured on CUDA devices only\n");
    for (const auto& m : results["models"]) {
      if (&m == teacher) continue;
      for (size_t i = 0; i < m["batch1"].size() && i < (*teacher)["batch1"].size(); ++i) {
        const auto& s = m["batch1"][i];
        const auto& t = (*teacher)["batch1"][i];
        if (s.contains("oom") || t.contains("oom") || !device.is_cuda()) continue;
        const double saved = 1.0 - s["peak_bytes"].get<double>() / t["peak_bytes"].get<double>();
        const double speed = t["ms_per_token"].get<double>() / s["ms_per_token"].get<double>();
        summary.push_back({{"model", m["name"]}, {"context", s["context"]}, {"memory_saved", saved},
                           {"batch1_speedup", speed}});
        std::cout << "  " << m["name"].get<std::string>() << " at " << s["context"].get<int64_t>()
                  << ": memory " << fmt(100 * saved, 1) << "% lower, batch-1 decode " << fmt(speed, 2) << "x";
        for (const auto& sb : m["max_batch"])
          for (const auto& tb : (*teacher)["max_batch"])
            if (sb["context"] == s["context"] && tb["context"] == s["context"] && sb.contains("tokens_per_s") &&
                tb.contains("tokens_per_s")) {
              const double ratio = sb["tokens_per_s"].get<double>() / tb["tokens_per_s"].get<double>();
              summary.back()["max_batch_throughput_ratio"] = ratio;
              std::cout << ", max-batch throughput " << fmt(ratio, 1) << "x";
            }
        std::cout << "\n";
      }
    }
    results["against_teacher"] = summary;
  }
  if (!json_path.empty()) fs::write_file_atomic(json_path, results.dump(2) + "\n");
  return 0;
}

}  // namespace carve::launcher
