#include "data/activation_source.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

#include "base/error.h"
#include "base/fs.h"
#include "data/cache_shard.h"
#include "data/cache_verify.h"
#include "data/samples.h"

namespace carve::data {

nlohmann::json position_to_json(const SourcePosition& p) { return {{"epoch", p.epoch}, {"step", p.step}}; }

SourcePosition position_from_json(const nlohmann::json& j, const std::string& where) {
  CARVE_CHECK(j.is_object() && j.contains("epoch") && j.contains("step"), where,
              ": a data position needs 'epoch' and 'step'");
  SourcePosition p{j.at("epoch").get<int64_t>(), j.at("step").get<int64_t>()};
  CARVE_CHECK(p.epoch >= 0 && p.step >= 0, where, ": data position must not be negative");
  return p;
}

namespace {

// SplitMix64: a small generator whose sequence is fixed by its seed on every platform (std::shuffle is not).
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::vector<std::vector<int64_t>> epoch_batches(const std::vector<int64_t>& offsets, int64_t batch_tokens,
                                                uint64_t seed, int64_t epoch, bool shuffle) {
  const int64_t n = static_cast<int64_t>(offsets.size()) - 1;
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  if (shuffle) {
    SplitMix64 rng{seed * 0x100000001B3ULL ^ (static_cast<uint64_t>(epoch) + 0x51ED270B27ULL)};
    for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng.next() % static_cast<uint64_t>(i + 1)]);
  }
  std::vector<std::vector<int64_t>> batches;
  int64_t used = 0;
  for (auto s : order) {
    const int64_t len = offsets[s + 1] - offsets[s];
    CARVE_CHECK(len <= batch_tokens, "sample ", s, " has ", len, " tokens, more than the batch budget of ",
                batch_tokens, " (raise --batch-tokens)");
    if (batches.empty() || used + len > batch_tokens) {
      batches.emplace_back();
      used = 0;
    }
    batches.back().push_back(s);
    used += len;
  }
  return batches;
}

struct ActivationSource::Impl {
  ActivationSourceOptions o;
  CacheManifest manifest;
  std::vector<std::string> streams;         // the streams read, in batch order: layers, final, logits
  std::vector<size_t> file_column;          // per read stream, its column in the manifest's per-shard file list
  torch::ScalarType storage = torch::kBFloat16;
  std::vector<int64_t> offsets;             // global sample offsets (from the shards)
  std::vector<int64_t> shard_of_sample;
  std::unique_ptr<SampleFile> samples;
  // The packing of the epoch being read and of the one being delivered (they differ only across an epoch
  // boundary); both threads ask, so it is guarded.
  std::mutex plans_mutex;
  std::map<int64_t, std::shared_ptr<const std::vector<std::vector<int64_t>>>> plans;
  int64_t hidden = 0, top_k = 0;

  // Reader state: only the reader thread touches the shard readers.
  std::map<std::pair<int64_t, size_t>, std::unique_ptr<CacheShardReader>> readers;

  mutable std::mutex mutex;
  std::condition_variable ready, space;
  std::deque<ActivationBatch> queue;
  std::exception_ptr failure;
  bool stopping = false;
  SourcePosition next_to_deliver;
  SourceStats stats;
  std::thread thread;

  std::shared_ptr<const std::vector<std::vector<int64_t>>> epoch_plan(int64_t epoch) {
    std::lock_guard<std::mutex> lock(plans_mutex);
    auto it = plans.find(epoch);
    if (it != plans.end()) return it->second;
    auto plan = std::make_shared<const std::vector<std::vector<int64_t>>>(
        epoch_batches(offsets, o.batch_tokens, o.seed, epoch, o.shuffle));
    while (plans.size() >= 2) plans.erase(plans.begin());  // epochs only move forward
    return plans[epoch] = plan;
  }

  // Steps of an epoch: the packing depends on the epoch's order, so the batch count can differ between epochs.
  int64_t steps_in(int64_t epoch) {
    const auto batches = static_cast<int64_t>(epoch_plan(epoch)->size());
    return (batches + o.world - 1) / o.world;
  }

  void advance(SourcePosition& p) {
    if (++p.step == steps_in(p.epoch)) {
      p.step = 0;
      ++p.epoch;
    }
  }

  const CacheShardReader& reader(int64_t shard, size_t stream) {
    auto key = std::make_pair(shard, stream);
    auto it = readers.find(key);
    if (it != readers.end()) return *it->second;
    if (readers.size() >= 256) readers.clear();  // bound the open files on caches of thousands of shards
    const auto path = fs::join(o.cache_dir, manifest.files[shard][file_column[stream]].path);
    auto r = std::make_unique<CacheShardReader>(path, manifest.plan, manifest.plan.shards[shard], streams[stream]);
    return *readers.emplace(key, std::move(r)).first->second;
  }

  // Batch tensors are recycled: allocating (and, pinned, registering) megabytes per batch costs more than reading
  // them. A pooled tensor is free again once the pool holds its only reference (the consumer dropped the batch).
  std::vector<torch::Tensor> pool;
  torch::Tensor buffer(std::vector<int64_t> shape, torch::ScalarType dtype) {
    for (auto& t : pool)
      if (t.use_count() == 1 && t.storage().use_count() == 1 && t.scalar_type() == dtype && t.sizes() == c10::IntArrayRef(shape)) return t;
    auto t = torch::empty(shape, torch::TensorOptions().dtype(dtype).pinned_memory(o.pin_memory));
    if (pool.size() < static_cast<size_t>(16 * (o.prefetch + 2))) pool.push_back(t);
    return t;
  }

  ActivationBatch read(const SourcePosition& pos) {
    const auto plan = epoch_plan(pos.epoch);
    ActivationBatch b;
    b.position = pos;
    const int64_t budget = o.batch_tokens;
    const size_t n_hidden = o.layers.size() + (o.final_hidden ? 1 : 0);
    std::vector<torch::Tensor> hidden_out;
    for (size_t i = 0; i < n_hidden; ++i) hidden_out.push_back(buffer({budget, hidden}, storage));
    if (o.logits) {
      b.topk_logprobs = buffer({budget, top_k}, torch::kFloat32);
      b.topk_indices = buffer({budget, top_k}, torch::kInt32);
    }
    if (samples) {
      b.token_ids = buffer({budget}, torch::kInt64);
      b.loss_mask = buffer({budget}, torch::kUInt8);
    }
    auto seq_idx = buffer({1, budget}, torch::kInt32);
    auto valid = buffer({budget}, torch::kBool);
    const int64_t batch_index = pos.step * o.world + o.rank;
    int64_t at = 0;
    std::vector<torch::Tensor> images;
    if (batch_index < static_cast<int64_t>(plan->size())) {
      b.sample_ids = (*plan)[batch_index];
      const auto t0 = std::chrono::steady_clock::now();
      int64_t bytes = 0;
      for (size_t k = 0; k < b.sample_ids.size(); ++k) {
        const int64_t s = b.sample_ids[k];
        const int64_t len = offsets[s + 1] - offsets[s];
        for (size_t i = 0; i < streams.size(); ++i) {
          const int64_t shard = shard_of_sample[s];
          const int64_t row = offsets[s] - offsets[manifest.plan.shards[shard].first_sample];
          const auto& r = reader(shard, i);
          if (i < n_hidden) {
            r.read_hidden(row, len, hidden_out[i][at].data_ptr());
            bytes += len * hidden * 2;
          } else {
            r.read_logits(row, len, b.topk_logprobs[at].data_ptr<float>(), b.topk_indices[at].data_ptr<int32_t>());
            bytes += len * top_k * 8;
          }
        }
        if (samples) {
          b.token_ids.narrow(0, at, len).copy_(samples->tokens(offsets[s], offsets[s + 1]));
          b.loss_mask.narrow(0, at, len).copy_(samples->loss_mask(offsets[s], offsets[s + 1]));
          if (samples->has_images()) images.push_back(samples->image_rows(s, s + 1));
        }
        seq_idx.narrow(1, at, len).fill_(static_cast<int>(k));
        valid.narrow(0, at, len).fill_(true);
        at += len;
      }
      std::lock_guard<std::mutex> lock(mutex);
      stats.bytes_read += bytes;
      stats.read_seconds += seconds_since(t0);
    }
    // Padding is one more segment, so no real token attends to (or carries state into) it; its rows are zero.
    if (at < budget) {
      seq_idx.narrow(1, at, budget - at).fill_(static_cast<int>(b.sample_ids.size()));
      valid.narrow(0, at, budget - at).fill_(false);
      for (auto& t : hidden_out) t.narrow(0, at, budget - at).zero_();
      for (auto* t : {&b.topk_logprobs, &b.topk_indices, &b.token_ids, &b.loss_mask})
        if (t->defined()) t->narrow(0, at, budget - at).zero_();
    }
    b.tokens = at;
    if (!images.empty()) b.image_rows = torch::cat(images, 0);
    b.seq_idx = seq_idx;
    b.valid = valid;
    for (size_t i = 0; i < o.layers.size(); ++i) b.hidden.push_back(hidden_out[i]);
    if (o.final_hidden) b.final_hidden = hidden_out.back();
    return b;
  }

  void run() {
    SourcePosition pos = o.start;
    try {
      while (true) {
        {
          std::unique_lock<std::mutex> lock(mutex);
          space.wait(lock, [&] { return stopping || static_cast<int>(queue.size()) < o.prefetch; });
          if (stopping) return;
        }
        auto batch = read(pos);
        {
          std::lock_guard<std::mutex> lock(mutex);
          queue.push_back(std::move(batch));
        }
        ready.notify_one();
        advance(pos);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      failure = std::current_exception();
      ready.notify_all();
    }
  }
};

ActivationSource::ActivationSource(ActivationSourceOptions options) : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.o = std::move(options);
  const auto& o = m.o;
  CARVE_CHECK(o.world >= 1 && o.rank >= 0 && o.rank < o.world, "data-parallel rank ", o.rank, " of ", o.world);
  CARVE_CHECK(o.batch_tokens > 0, "--batch-tokens must be positive");
  CARVE_CHECK(o.prefetch >= 1, "--prefetch must be at least 1");
  if (o.cache_dir.empty()) {
    // Samples alone: token ids, loss masks and images for a trainer that runs the teacher itself.
    CARVE_CHECK(!o.samples_path.empty(), "an activation source needs a cache folder or a sample file");
    CARVE_CHECK(o.layers.empty() && !o.final_hidden && !o.logits,
                "hidden states and logits come from an activation cache: give its folder");
    m.samples = std::make_unique<SampleFile>(o.samples_path);
    m.offsets = m.samples->offsets();
  } else {
    m.manifest = read_manifest(o.cache_dir);
    const auto& plan = m.manifest.plan;
    const auto all = plan.streams();
    auto require = [&](const std::string& stream, const std::string& what) {
      const auto at = std::find(all.begin(), all.end(), stream);
      CARVE_CHECK(at != all.end(), o.cache_dir, ": the cache does not hold ", what, " (stream '", stream,
                  "'); precompute it with the stream included");
      m.streams.push_back(stream);
      m.file_column.push_back(static_cast<size_t>(at - all.begin()));
    };
    for (auto layer : o.layers) require(stream_name_of_layer(layer), "the input of layer " + std::to_string(layer));
    if (o.final_hidden) require("final", "the final hidden state");
    if (o.logits) require("logits", "the teacher's top-k log-probabilities");
    CARVE_CHECK(!m.streams.empty() || !o.samples_path.empty(),
                "an activation source needs at least one stream or a sample file");
    m.hidden = plan.hidden_size;
    m.storage = half_dtype_from_name(plan.dtype, fs::join(o.cache_dir, "manifest.json"));
    m.top_k = plan.top_k;
    if (!o.samples_path.empty()) {
      check_cache_inputs(m.manifest, o.cache_dir, "", "", o.samples_path);
      m.samples = std::make_unique<SampleFile>(o.samples_path);
    }
    // Sample boundaries from the shards' own offsets (each file's sizes are checked against the manifest).
    m.offsets.assign(1, 0);
    for (const auto& span : plan.shards) {
      for (size_t i = 0; i < m.streams.size(); ++i) {
        const auto& f = m.manifest.files[span.index][m.file_column[i]];
        const auto path = fs::join(o.cache_dir, f.path);
        CARVE_CHECK(fs::exists(path), path, ": missing (listed in the manifest)");
        CARVE_CHECK(fs::file_size(path) == f.bytes, path, ": ", fs::file_size(path), " bytes, the manifest says ",
                    f.bytes, " (truncated or replaced; run `carve cache verify`)");
      }
      if (m.streams.empty()) {
        for (int64_t k = 0; k < span.num_samples; ++k) m.shard_of_sample.push_back(span.index);
        continue;
      }
      const auto& local = m.reader(span.index, 0).offsets();
      for (size_t i = 1; i < local.size(); ++i) {
        m.offsets.push_back(m.offsets.back() + local[i] - local[i - 1]);
        m.shard_of_sample.push_back(span.index);
      }
    }
    if (m.streams.empty()) m.offsets = m.samples->offsets();
    if (m.samples)
      CARVE_CHECK(m.samples->offsets() == m.offsets, o.samples_path, ": sample boundaries differ from the cache's");
  }
  CARVE_CHECK(o.start.step < m.steps_in(o.start.epoch), "data position step ", o.start.step,
              " is past the end of epoch ", o.start.epoch, " (", m.steps_in(o.start.epoch), " steps)");
  m.next_to_deliver = o.start;
  m.thread = std::thread([&m] { m.run(); });
}

ActivationSource::~ActivationSource() {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->space.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

ActivationBatch ActivationSource::next() {
  auto& m = *impl_;
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(m.mutex);
  m.ready.wait(lock, [&] { return !m.queue.empty() || m.failure; });
  if (m.queue.empty()) std::rethrow_exception(m.failure);
  auto batch = std::move(m.queue.front());
  m.queue.pop_front();
  m.stats.wait_seconds += seconds_since(t0);
  m.stats.batches += 1;
  m.next_to_deliver = batch.position;
  m.advance(m.next_to_deliver);  // takes only plans_mutex, which is never held while waiting for `mutex`
  lock.unlock();
  m.space.notify_one();
  return batch;
}

SourcePosition ActivationSource::position() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->next_to_deliver;
}

int64_t ActivationSource::steps_in_epoch(int64_t epoch) const { return impl_->steps_in(epoch); }
const CachePlan& ActivationSource::plan() const { return impl_->manifest.plan; }
const SampleFile* ActivationSource::samples() const { return impl_->samples.get(); }

SourceStats ActivationSource::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->stats;
}

}  // namespace carve::data
