// carve precompute: run the teacher over a sample file once and write the activation cache (see trainer/precompute).
#include <iostream>
#include <tuple>
#include <utility>

#include "base/error.h"
#include "base/log.h"
#include "comm/mpi_session.h"
#include "launcher/model_options.h"
#include "launcher/subcommands.h"
#include "base/fs.h"
#include "model/config.h"
#include "trainer/precompute.h"

namespace carve::launcher {
namespace {

// "all" (every layer's input), "none", or a list of indices and ranges "0-3,8"; num_layers itself means the
// residual stream leaving the last layer.
std::vector<int64_t> parse_layers(const std::string& text, int64_t num_layers) {
  std::vector<int64_t> out;
  if (text == "none") return out;
  if (text == "all") {
    for (int64_t i = 0; i < num_layers; ++i) out.push_back(i);
    return out;
  }
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t dash = item.find('-', 1);
    try {
      size_t used = 0;
      int64_t a = std::stoll(item, &used), b = a;
      if (dash != std::string::npos) b = std::stoll(item.substr(dash + 1));
      else if (used != item.size()) throw std::invalid_argument(item);
      for (int64_t i = a; i <= b; ++i) out.push_back(i);
    } catch (const std::exception&) {
      throw UsageError("--layers: '" + item + "' is not a layer index or range (e.g. all, 0-3,8)");
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  for (auto l : out)
    if (l < 0 || l > num_layers)
      throw UsageError("--layers: " + std::to_string(l) + " is outside [0, " + std::to_string(num_layers) + "] (" +
                       std::to_string(num_layers) + " = the output of the last layer)");
  return out;
}

// "I/N" with 0 <= I < N.
std::pair<int64_t, int64_t> parse_part(const std::string& text) {
  const auto slash = text.find('/');
  try {
    if (slash != std::string::npos) {
      size_t used_i = 0, used_n = 0;
      const int64_t i = std::stoll(text.substr(0, slash), &used_i);
      const int64_t n = std::stoll(text.substr(slash + 1), &used_n);
      if (used_i == slash && used_n == text.size() - slash - 1 && n >= 1 && i >= 0 && i < n) return {i, n};
    }
  } catch (const std::exception&) {
  }
  throw UsageError("--part: '" + text + "' is not I/N with 0 <= I < N (this job's share of the shards)");
}

}  // namespace

int precompute_main(const std::vector<std::string>& args) {
  ModelOptions teacher;
  std::string samples, out, layers = "all", storage = "bfloat16", locking, part = "0/1";
  int64_t top_k = 16, shard_tokens = 1 << 20, batch_tokens = 8192;
  bool final_hidden = true;
  int threads = 0;
  po::options_description cache("Cache");
  cache.add_options()("samples", po::value<std::string>(&samples)->required(), "sample file (HDF5, see docs/formats.md)")(
      "out", po::value<std::string>(&out)->required(), "cache folder (a rerun completes an interrupted cache)")(
      "layers", po::value<std::string>(&layers)->default_value(layers),
      "layers whose input to store: all, none or a list like 0-3,8 (N = the output of the last layer)")(
      "final-hidden", po::value<bool>(&final_hidden)->default_value(final_hidden),
      "store the final hidden state (after the final norm)")(
      "top-k", po::value<int64_t>(&top_k)->default_value(top_k), "teacher log-probabilities kept per token (0: none)")(
      "storage-dtype", po::value<std::string>(&storage)->default_value(storage), "hidden states as bfloat16 or float16")(
      "shard-tokens", po::value<int64_t>(&shard_tokens)->default_value(shard_tokens), "tokens per shard file")(
      "batch-tokens", po::value<int64_t>(&batch_tokens)->default_value(batch_tokens),
      "tokens per teacher forward (whole samples packed)")(
      "part", po::value<std::string>(&part)->default_value(part),
      "I/N: compute only the shards whose index mod N is I (job I of N independent jobs, e.g. a SLURM job array); "
      "the job that finds every shard finished writes the manifest")(
      "threads", po::value<int>(&threads)->default_value(threads), "CPU threads for LibTorch (0: its default)");
  po::options_description desc("carve precompute");
  desc.add(model_options(teacher, "teacher", "teacher checkpoint folder")).add(cache).add(hdf5_options(locking));
  auto parsed = parse_options("precompute", desc, args);
  if (parsed.help) {
    std::cout << "usage: [mpirun -np N] carve precompute --teacher DIR --samples FILE --out CACHE [options]\n"
              << desc << "\n";
    return 0;
  }
  comm::MpiSession mpi;
  apply_hdf5_locking(locking);
  comm::default_cpu_threads(threads);
  trainer::PrecomputeOptions o;
  o.teacher_dir = teacher.path;
  o.weight_prefix = teacher.weight_prefix;
  o.samples_path = samples;
  o.cache_dir = out;
  o.compute = parse_dtype(teacher.dtype, "dtype");
  o.storage = parse_dtype(storage, "storage-dtype");
  if (o.storage != torch::kBFloat16 && o.storage != torch::kFloat16)
    throw UsageError("--storage-dtype: '" + storage + "' must be bfloat16 or float16");
  o.device = rank_device(parse_device(teacher.device, "device"), teacher.device);
  o.top_k = top_k;
  o.final_hidden = final_hidden;
  o.shard_tokens = shard_tokens;
  o.batch_tokens = batch_tokens;
  std::tie(o.part, o.parts) = parse_part(part);
  // Only the layer count is needed here: config.json, not the weights (precompute opens those).
  o.layers = parse_layers(layers, model::load_model_config(fs::join(teacher.path, "config.json")).num_layers);
  if (mpi.rank() == 0) record_config("precompute", desc, parsed.values, "");
  auto report = trainer::precompute_cache(o);
  if (!report.already_complete)
    log::info("precompute", "rank done", o.parts > 1 ? " (part " + part + ")" : std::string(), ": ", report.shards_written, " shards written, ", report.shards_skipped,
              " already present, ", report.tokens_written, " tokens in ", report.seconds, " s");
  return 0;
}

}  // namespace carve::launcher
