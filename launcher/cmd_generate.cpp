// carve generate: greedy or sampled continuation of token-id prompts with a teacher or student checkpoint.
#include <iostream>
#include <sstream>

#include "base/log.h"
#include "launcher/model_options.h"
#include "launcher/options.h"
#include "launcher/subcommands.h"
#include "model/checkpoint.h"
#include "model/hf_weights.h"
#include "model/student_checkpoint.h"
#include "trainer/generate.h"

namespace carve::launcher {
namespace {

// "1,2,3;4,5" -> [1,2,3], [4,5]: one prompt per row, of any lengths.
std::vector<torch::Tensor> parse_token_rows(const std::string& text, int64_t vocab) {
  std::vector<std::vector<int64_t>> rows(1);
  std::string item;
  std::istringstream in(text);
  auto flush = [&] {
    if (item.empty()) return;
    int64_t id;
    try {
      size_t used = 0;
      id = std::stoll(item, &used);
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw UsageError("--tokens: '" + item + "' is not a token id");
    }
    if (id < 0 || id >= vocab)
      throw UsageError("--tokens: id " + item + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    rows.back().push_back(id);
    item.clear();
  };
  for (char ch; in.get(ch);) {
    if (ch == ',' || ch == ' ') flush();
    else if (ch == ';') flush(), rows.emplace_back();
    else item.push_back(ch);
  }
  flush();
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].empty()) throw UsageError("--tokens: prompt row " + std::to_string(i) + " has no ids");
    out.push_back(torch::tensor(rows[i], torch::kInt64));
  }
  return out;
}

}  // namespace

int generate_main(const std::vector<std::string>& args) {
  ModelOptions model_opts;
  trainer::GenerateOptions gen;
  std::string tokens, out_dir, kernels;
  int64_t seed = 0;
  po::options_description run("Generation");
  run.add_options()("tokens", po::value<std::string>(&tokens)->required(),
                    "prompt token ids, comma-separated; ';' separates batch rows (of any lengths)")(
      "max-new-tokens", po::value<int64_t>(&gen.max_new_tokens)->default_value(32), "tokens to generate per row")(
      "temperature", po::value<double>(&gen.sampling.temperature)->default_value(0.0), "0 = greedy")(
      "top-k", po::value<int64_t>(&gen.sampling.top_k)->default_value(0), "0 = off")(
      "top-p", po::value<double>(&gen.sampling.top_p)->default_value(1.0), "1 = off")(
      "stop-token", po::value<int64_t>(&gen.stop_token)->default_value(-1), "end a row at this id (-1: never)")(
      "seed", po::value<int64_t>(&seed)->default_value(0), "sampling seed")(
      "cuda-graphs", po::value<bool>(&gen.cuda_graphs)->default_value(true),
      "on CUDA, replay the decode step as a captured graph (false: launch every kernel per token)")(
      "out", po::value<std::string>(&out_dir)->default_value(""), "run folder for config.ini (optional)");
  po::options_description desc("carve generate");
  desc.add(model_options(model_opts, "model", "checkpoint folder of a teacher or student")).add(run).add(kernel_options(kernels));
  auto parsed = parse_options("generate", desc, args);
  if (parsed.help) {
    std::cout << "usage: carve generate --model DIR --tokens 1,2,3 [options]\n" << desc << "\n";
    return 0;
  }
  apply_kernels(kernels);
  if (gen.max_new_tokens <= 0) throw UsageError("--max-new-tokens must be positive");
  gen.seed = static_cast<uint64_t>(seed);
  const auto dtype = parse_dtype(model_opts.dtype, "dtype");
  const auto device = parse_device(model_opts.device, "device");
  record_config("generate", desc, parsed.values, out_dir);

  model::CheckpointReader ckpt(model_opts.path, model_opts.weight_prefix);
  auto prompt = parse_token_rows(tokens, ckpt.config().vocab_size);
  const bool student = ckpt.config().raw.contains("carve");  // a student's config.json has a carve section
  std::string what = model::family_name(ckpt.config().family);
  model::CausalLM lm{nullptr};
  if (student) {
    auto loaded = model::load_student(model_opts.path, "", dtype, device);
    lm = loaded.model;
    what += " student " + loaded.spec.layout.str();
  } else {
    lm = model::load_causal_lm(ckpt, dtype, device);
  }
  log::info("generate", "loaded ", what, " with ", ckpt.config().num_layers, " layers on ", device.str(), " as ",
            c10::toString(dtype));
  auto generated = trainer::generate(*lm, prompt, gen);
  for (int64_t i = 0; i < generated.size(0); ++i) {
    std::cout << "row " << i << ":";
    for (int64_t j = 0; j < generated.size(1); ++j) std::cout << " " << generated[i][j].item<int64_t>();
    std::cout << "\n";
  }
  return 0;
}

}  // namespace carve::launcher
