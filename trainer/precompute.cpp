#include "trainer/precompute.h"

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>

#include "base/error.h"
#include "base/fs.h"
#include "base/json.h"
#include "base/log.h"
#include "base/progress.h"
#include "comm/mpi_session.h"
#include "data/cache_layout.h"
#include "data/cache_shard.h"
#include "data/samples.h"
#include "model/checkpoint.h"
#include "model/hf_weights.h"
#include "trainer/vlm_inputs.h"

namespace carve::trainer {
namespace {

using data::CachePlan;
using data::ShardFile;
using data::ShardSpan;

CachePlan wanted_plan(const PrecomputeOptions& o, const model::ModelConfig& config, const data::SampleFile& samples) {
  CachePlan p;
  p.teacher_hash = data::teacher_hash(o.teacher_dir, o.weight_prefix);
  p.teacher_model_type = config.model_type;
  p.teacher_path = std::filesystem::absolute(o.teacher_dir).lexically_normal().string();
  p.num_layers = config.num_layers;
  p.hidden_size = config.hidden_size;
  p.vocab_size = config.vocab_size;
  p.samples_hash = data::samples_hash(o.samples_path);
  p.samples_path = std::filesystem::absolute(o.samples_path).lexically_normal().string();
  p.num_samples = samples.num_samples();
  p.num_tokens = samples.num_tokens();
  p.dtype = data::half_dtype_name(o.storage);
  p.layers = o.layers;
  p.final_hidden = o.final_hidden;
  p.top_k = o.top_k;
  p.shard_tokens = o.shard_tokens;
  p.shards = data::plan_shards(samples.offsets(), o.shard_tokens);
  return p;
}

// The files of a finished shard: its progress record exists and every file it lists has the recorded size.
// Nothing when the shard must be (re)written.
std::optional<std::vector<ShardFile>> finished_shard(const std::string& cache_dir, int64_t shard,
                                                     const std::vector<std::string>& streams) {
  const auto record = fs::join(cache_dir, data::progress_path(shard));
  if (!fs::exists(record)) return std::nullopt;
  std::vector<ShardFile> files;
  try {
    files = data::shard_files_from_json(read_json_file(record).at("files"), record);
  } catch (const std::exception&) {
    return std::nullopt;  // unreadable record: redo the shard
  }
  if (files.size() != streams.size()) return std::nullopt;
  for (const auto& f : files) {
    const auto path = fs::join(cache_dir, f.path);
    if (!fs::exists(path) || fs::file_size(path) != f.bytes) return std::nullopt;
  }
  return files;
}

// For tests of interrupted runs: CARVE_FAULT_KILL_AFTER_BATCHES=N kills this process (SIGKILL, no cleanup) after
// its N-th batch, in the middle of a shard.
void maybe_die(int64_t batches_done) {
  static const int64_t limit = [] {
    const char* v = std::getenv("CARVE_FAULT_KILL_AFTER_BATCHES");
    return v ? std::atoll(v) : int64_t{0};
  }();
  if (limit > 0 && batches_done >= limit) std::raise(SIGKILL);
}

class ShardComputer {
 public:
  ShardComputer(const PrecomputeOptions& o, const CachePlan& plan, const data::SampleFile& samples,
                model::CausalLMImpl& lm)
      : o_(o), plan_(plan), samples_(samples), lm_(lm) {}

  int64_t batches_done() const { return batches_; }

  std::vector<ShardFile> write(const ShardSpan& span) {
    const auto streams = plan_.streams();
    const auto& offsets = samples_.offsets();
    std::vector<int64_t> local(static_cast<size_t>(span.num_samples + 1));
    for (int64_t i = 0; i <= span.num_samples; ++i) local[i] = offsets[span.first_sample + i] - span.first_token;
    std::vector<std::unique_ptr<data::CacheShardWriter>> writers;
    for (const auto& stream : streams) {
      const auto final_path = fs::join(o_.cache_dir, data::shard_path(stream, span.index));
      fs::remove_temporaries(final_path);
      writers.push_back(std::make_unique<data::CacheShardWriter>(o_.cache_dir, plan_, span, stream, local));
    }
    int64_t first = 0;
    while (first < span.num_samples) {
      int64_t last = first + 1;
      while (last < span.num_samples && local[last + 1] - local[first] <= o_.batch_tokens) ++last;
      compute_batch(span.first_sample + first, span.first_sample + last, local[first], writers);
      first = last;
      maybe_die(++batches_);
    }
    std::vector<ShardFile> files;
    for (auto& w : writers) files.push_back(w->finish());
    return files;
  }

 private:
  void compute_batch(int64_t first_sample, int64_t last_sample, int64_t row,
                     std::vector<std::unique_ptr<data::CacheShardWriter>>& writers) {
    const auto& offsets = samples_.offsets();
    const int64_t begin = offsets[first_sample], end = offsets[last_sample];
    auto tokens = samples_.tokens(begin, end).unsqueeze(0).to(o_.device);
    auto seq_idx = torch::empty({1, end - begin}, torch::kInt32);
    for (int64_t s = first_sample; s < last_sample; ++s)
      seq_idx.narrow(1, offsets[s] - begin, offsets[s + 1] - offsets[s]).fill_(static_cast<int>(s - first_sample));
    torch::Tensor images;
    if (samples_.has_images()) images = samples_.image_rows(first_sample, last_sample);
    torch::NoGradGuard no_grad;
    model::ForwardOptions fo;
    fo.want_logits = false;
    fo.want_layer_inputs = !plan_.layers.empty() && plan_.layers.front() < plan_.num_layers;
    fo.seq_idx = seq_idx.to(o_.device);
    auto embeds = embed_with_images(lm_, tokens, samples_.image_token_id(), images);
    auto result = lm_.forward_embeds(embeds, fo);
    size_t w = 0;
    auto store = [&](const torch::Tensor& hidden) {
      writers[w++]->write_hidden(row, hidden[0].to(o_.storage).to(torch::kCPU).contiguous());
    };
    for (auto layer : plan_.layers) store(layer < plan_.num_layers ? result.layer_inputs[layer] : result.residual_out);
    if (plan_.final_hidden) store(result.final_hidden);
    if (plan_.top_k > 0) {
      // Logits over the vocabulary are large (tokens x vocab): take the top k a block of tokens at a time.
      const int64_t n = end - begin, block = 2048;
      for (int64_t at = 0; at < n; at += block) {
        const int64_t count = std::min(block, n - at);
        auto logits = lm_.logits(result.final_hidden.narrow(1, at, count))[0].to(torch::kFloat32);
        auto top = torch::topk(torch::log_softmax(logits, -1), plan_.top_k, -1);
        writers[w]->write_logits(row + at, std::get<0>(top).to(torch::kCPU).contiguous(),
                                 std::get<1>(top).to(torch::kInt32).to(torch::kCPU).contiguous());
      }
    }
  }

  const PrecomputeOptions& o_;
  const CachePlan& plan_;
  const data::SampleFile& samples_;
  model::CausalLMImpl& lm_;
  int64_t batches_ = 0;
};

}  // namespace

PrecomputeReport precompute_cache(const PrecomputeOptions& o) {
  const int rank = comm::world_rank(), world = comm::world_size();
  PrecomputeReport report;
  model::CheckpointReader ckpt(o.teacher_dir, o.weight_prefix);
  const auto& config = ckpt.config();
  for (auto layer : o.layers)
    CARVE_CHECK(layer >= 0 && layer <= config.num_layers, "--layers: layer ", layer, " is outside [0, ",
                config.num_layers, "] (", config.num_layers, " = the output of the last layer)");
  CARVE_CHECK(o.top_k >= 0 && o.top_k <= config.vocab_size, "--top-k: ", o.top_k, " is outside [0, ",
              config.vocab_size, "]");
  CARVE_CHECK(!o.layers.empty() || o.final_hidden || o.top_k > 0, "nothing to store: give --layers, --final-hidden ",
              "or --top-k");
  CARVE_CHECK(o.batch_tokens > 0 && o.shard_tokens > 0, "--batch-tokens and --shard-tokens must be positive");
  data::SampleFile samples(o.samples_path);

  // Rank 0 checks the samples against the teacher, fixes the plan (or finds the one an earlier run wrote) and
  // sends it to the others; an empty plan means the cache is already complete.
  std::string plan_text;
  comm::rank0_decides([&] {
    data::validate_samples(o.samples_path, config.vocab_size, config.hidden_size);
    const auto plan = wanted_plan(o, config, samples);
    const auto manifest_path = fs::join(o.cache_dir, "manifest.json");
    const auto plan_path = fs::join(o.cache_dir, "plan.json");
    if (fs::exists(manifest_path)) {
      const auto diff = data::plan_difference(data::read_manifest(o.cache_dir).plan, plan);
      CARVE_CHECK(diff.empty(), o.cache_dir, " already holds a different cache (", diff,
                  "); choose another --out");
      return;
    }
    fs::make_directories(fs::join(o.cache_dir, "progress"));
    fs::make_directories(fs::join(o.cache_dir, "logs"));
    if (fs::exists(plan_path)) {
      const auto earlier = data::plan_from_json(read_json_file(plan_path), plan_path);
      const auto diff = data::plan_difference(earlier, plan);
      CARVE_CHECK(diff.empty(), o.cache_dir, " holds an unfinished cache with another plan (", diff,
                  "); rerun with the same options or choose another --out");
      log::info("precompute", "completing the unfinished cache in ", o.cache_dir);
    }
    plan_text = data::plan_to_json(plan).dump(2) + "\n";
    if (!fs::exists(plan_path)) fs::write_file_atomic(plan_path, plan_text);
  });
  plan_text = comm::broadcast_text(plan_text);
  if (plan_text.empty()) {
    if (rank == 0) log::info("precompute", o.cache_dir, " is already complete; nothing to do");
    report.already_complete = true;
    return report;
  }
  const auto plan = data::plan_from_json(nlohmann::json::parse(plan_text), "the plan from rank 0");
  const auto streams = plan.streams();

  // This rank's shards (this part's, round-robin over the ranks) that are not finished yet.
  CARVE_CHECK(o.parts >= 1 && o.part >= 0 && o.part < o.parts, "--part: ", o.part, "/", o.parts,
              " is not a part of the shards (expected I/N with 0 <= I < N)");
  std::vector<ShardSpan> todo;
  int64_t todo_tokens = 0;
  for (const auto& span : plan.shards) {
    if (span.index % o.parts != o.part || (span.index / o.parts) % world != rank) continue;
    if (finished_shard(o.cache_dir, span.index, streams)) {
      ++report.shards_skipped;
    } else {
      todo.push_back(span);
      todo_tokens += span.tokens;
    }
  }
  if (!todo.empty()) {
    auto lm = model::load_causal_lm(ckpt, o.compute, o.device);
    lm->eval();
    JsonlWriter metrics(fs::join(o.cache_dir, "logs/precompute.r" + std::to_string(rank) + ".jsonl"));
    ProgressMeter meter("precompute", "tokens", todo_tokens);
    ShardComputer computer(o, plan, samples, *lm);
    log::info("precompute", todo.size(), " shards to write (", report.shards_skipped, " already done), ",
              todo_tokens, " tokens, teacher on ", o.device.str());
    for (const auto& span : todo) {
      const double t0 = meter.elapsed_seconds();
      auto files = computer.write(span);
      const auto record = fs::join(o.cache_dir, data::progress_path(span.index));
      fs::remove_temporaries(record);
      fs::write_file_atomic(record, nlohmann::json{{"shard", span.index}, {"files", data::shard_files_to_json(files)}}
                                        .dump(2) + "\n");
      const double seconds = meter.elapsed_seconds() - t0;
      int64_t bytes = 0;
      for (const auto& f : files) bytes += f.bytes;
      metrics.write({{"shard", span.index}, {"tokens", span.tokens}, {"bytes", bytes}, {"seconds", seconds},
                     {"tokens_per_s", seconds > 0 ? span.tokens / seconds : 0.0}});
      ++report.shards_written;
      report.tokens_written += span.tokens;
      meter.advance(span.tokens, "shard " + std::to_string(span.index), true);
    }
    report.seconds = meter.elapsed_seconds();
  }
  comm::barrier();

  // Every shard is finished: rank 0 assembles the manifest from the progress records. With parts, the shards of
  // the other parts may still be in progress; the part that finishes last (or any rerun) writes it.
  bool written = false;
  comm::rank0_decides([&] {
    data::CacheManifest manifest;
    manifest.plan = plan;
    int64_t outstanding = 0;
    for (const auto& span : plan.shards) {
      auto files = finished_shard(o.cache_dir, span.index, streams);
      if (!files && o.parts > 1 && span.index % o.parts != o.part) {
        ++outstanding;
        continue;
      }
      CARVE_CHECK(files, fs::join(o.cache_dir, data::progress_path(span.index)), ": shard ", span.index,
                  " is not complete after every rank finished");
      manifest.files.push_back(std::move(*files));
    }
    if (outstanding > 0) {
      log::info("precompute", "part ", o.part, "/", o.parts, " done; ", outstanding, " shards of other parts are not ",
                "finished yet: the part that finishes last writes the manifest");
      return;
    }
    written = true;
    fs::write_file_atomic(fs::join(o.cache_dir, "manifest.json"), data::manifest_to_json(manifest).dump(2) + "\n");
    log::info("precompute", "wrote ", fs::join(o.cache_dir, "manifest.json"), ": ", plan.shards.size(), " shards, ",
              plan.num_tokens, " tokens, streams ", streams.size());
  });
  report.manifest_written = comm::broadcast_text(written ? "1" : "") == "1";
  return report;
}

}  // namespace carve::trainer
