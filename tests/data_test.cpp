// Sample files, the activation cache (precompute, verification) and streaming it.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "base/fs.h"
#include "base/xxhash64.h"
#include "data/activation_source.h"
#include "data/cache_layout.h"
#include "data/cache_shard.h"
#include "data/cache_verify.h"
#include "data/samples.h"
#include "model/checkpoint.h"
#include "model/hf_weights.h"
#include "test_util.h"
#include "trainer/precompute.h"
#include "trainer/vlm_inputs.h"

namespace carve {
namespace {

using test::error_of;

TEST(Xxh64, KnownDigestsAndStreaming) {
  // Digests of the reference implementation (xxhsum -H1).
  EXPECT_EQ(hex64(xxh64("", 0)), "ef46db3751d8e999");
  EXPECT_EQ(hex64(xxh64("a", 1)), "d24ec4f1a98c6e5b");
  EXPECT_EQ(hex64(xxh64("abc", 3)), "44bc2cf5ad770999");
  std::mt19937_64 rng(3);
  std::vector<unsigned char> bytes(1000);
  for (auto& b : bytes) b = static_cast<unsigned char>(rng());
  for (size_t split : {0, 1, 31, 32, 33, 500, 999}) {
    Xxh64 h(7);
    h.update(bytes.data(), split);
    h.update(bytes.data() + split, bytes.size() - split);
    EXPECT_EQ(h.digest(), xxh64(bytes.data(), bytes.size(), 7)) << "split at " << split;
  }
  EXPECT_NE(xxh64(bytes.data(), bytes.size(), 0), xxh64(bytes.data(), bytes.size(), 1));
}

// Random samples over the llama fixture's vocabulary (96 ids; 95 is the image token), some with image rows.

TEST(Samples, RoundTripAndValidate) {
  const auto dir = test::scratch_dir("samples_round_trip");
  auto s = test::random_samples(12, 1, /*images=*/true);
  const auto path = fs::join(dir, "train.h5");
  data::write_samples(path, s);
  data::SampleFile f(path);
  ASSERT_EQ(f.num_samples(), 12);
  EXPECT_EQ(f.offsets(), s.offsets);
  auto tokens = f.tokens(0, f.num_tokens());
  for (size_t i = 0; i < s.tokens.size(); ++i) ASSERT_EQ(tokens[i].item<int64_t>(), s.tokens[i]);
  auto mask = f.loss_mask(0, f.num_tokens());
  EXPECT_EQ(mask.sum().item<int64_t>(), std::accumulate(s.loss_mask.begin(), s.loss_mask.end(), int64_t{0}));
  ASSERT_TRUE(f.has_images());
  EXPECT_EQ(f.image_token_id(), 95);
  EXPECT_TRUE(torch::equal(f.image_rows(0, 12), s.image_embeds));
  EXPECT_TRUE(torch::equal(f.image_rows(3, 4), s.image_embeds.narrow(0, s.image_offsets[3], s.image_offsets[4] - s.image_offsets[3])));
  const auto summary = data::validate_samples(path, 96, 64);
  EXPECT_EQ(summary.tokens, static_cast<int64_t>(s.tokens.size()));
  EXPECT_EQ(summary.image_rows, s.image_embeds.size(0));
  // Against a teacher of another width, the image rows are refused by name.
  EXPECT_NE(error_of([&] { data::validate_samples(path, 96, 32); }).find("'image_embeds' rows have 64 values"),
            std::string::npos);
}

TEST(Samples, BadFilesAreRefusedByName) {
  const auto dir = test::scratch_dir("samples_bad");
  auto s = test::random_samples(6, 2, /*images=*/true);
  s.tokens[s.offsets[4] + 1] = 300;  // sample 4, position 1
  data::write_samples(fs::join(dir, "vocab.h5"), s);
  auto err = error_of([&] { data::validate_samples(fs::join(dir, "vocab.h5")); });
  EXPECT_NE(err.find("vocab.h5: dataset 'tokens': sample 4 holds token id 300 at position 1"), std::string::npos)
      << err;

  auto fewer = test::random_samples(6, 3, /*images=*/true);
  // Sample 3 loses its last image row: fewer rows than image tokens.
  const int64_t cut = fewer.image_offsets[4] - 1;
  const int64_t image_tokens = fewer.image_offsets[4] - fewer.image_offsets[3];
  fewer.image_embeds = torch::cat({fewer.image_embeds.narrow(0, 0, cut),
                                   fewer.image_embeds.narrow(0, cut + 1, fewer.image_embeds.size(0) - cut - 1)});
  for (size_t i = 4; i < fewer.image_offsets.size(); ++i) fewer.image_offsets[i] -= 1;
  data::write_samples(fs::join(dir, "images.h5"), fewer);
  err = error_of([&] { data::validate_samples(fs::join(dir, "images.h5")); });
  EXPECT_NE(err.find("images.h5: sample 3 has " + std::to_string(image_tokens) + " image tokens (id 95) but " +
                     std::to_string(image_tokens - 1) + " image rows"),
            std::string::npos)
      << err;

  std::ofstream(fs::join(dir, "text.h5")) << "not hdf5";
  err = error_of([&] { data::SampleFile(fs::join(dir, "text.h5")); });
  EXPECT_NE(err.find("text.h5: cannot open as an HDF5 file"), std::string::npos) << err;
}

// One cache of the llama fixture shared by the tests below (precompute is collective: MPI in this process).
struct CacheFixture {
  std::string dir, samples, cache, teacher;
  data::SampleSet set;
  CacheFixture() {
    test::ensure_mpi();
    dir = test::scratch_dir("cache_fixture");
    teacher = test::fixture("teachers/llama");
    set = test::random_samples(30, 5, /*images=*/true);
    samples = fs::join(dir, "train.h5");
    data::write_samples(samples, set);
    cache = fs::join(dir, "cache");
    trainer::PrecomputeOptions o;
    o.teacher_dir = teacher;
    o.samples_path = samples;
    o.cache_dir = cache;
    o.layers = {0, 1, 2, 3};
    o.top_k = 5;
    o.shard_tokens = 150;
    o.batch_tokens = 64;
    auto report = trainer::precompute_cache(o);
    EXPECT_GT(report.shards_written, 2);
  }
  static CacheFixture& get() {
    static CacheFixture f;
    return f;
  }
};

TEST(Cache, LayerInputsEqualTheTeachersForward) {
  auto& f = CacheFixture::get();
  auto manifest = data::read_manifest(f.cache);
  model::CheckpointReader ckpt(f.teacher);
  auto lm = model::load_causal_lm(ckpt);
  torch::NoGradGuard no_grad;
  data::SampleFile samples(f.samples);
  const auto streams = manifest.plan.streams();
  ASSERT_EQ(streams, (std::vector<std::string>{"layer_000", "layer_001", "layer_002", "layer_003", "final", "logits"}));
  int64_t checked = 0;
  for (const auto& span : manifest.plan.shards) {
    std::vector<std::unique_ptr<data::CacheShardReader>> readers;
    for (size_t s = 0; s < streams.size(); ++s)
      readers.push_back(std::make_unique<data::CacheShardReader>(fs::join(f.cache, manifest.files[span.index][s].path),
                                                                 manifest.plan, span, streams[s]));
    for (int64_t i = 0; i < span.num_samples; ++i) {
      // Each sample alone, unpacked: the cache was computed with samples packed together.
      const int64_t sample = span.first_sample + i;
      const int64_t len = samples.length(sample);
      auto tokens = samples.tokens(samples.offsets()[sample], samples.offsets()[sample + 1]).unsqueeze(0);
      auto embeds = trainer::embed_with_images(*lm, tokens, 95, samples.image_rows(sample, sample + 1));
      model::ForwardOptions fo;
      fo.want_layer_inputs = true;
      auto ref = lm->forward_embeds(embeds, fo);
      const int64_t row = readers[0]->offsets()[i];
      for (size_t s = 0; s < 5; ++s) {
        auto cached = torch::empty({len, 64}, torch::kBFloat16);
        readers[s]->read_hidden(row, len, cached.data_ptr());
        auto want = s < 3 ? ref.layer_inputs[s][0] : s == 3 ? ref.residual_out[0] : ref.final_hidden[0];
        // bf16 storage: a relative rounding of 2^-8 per value, plus float32 differences from packing.
        auto diff = (cached.to(torch::kFloat32) - want).abs();
        auto bound = want.abs() * (1.0 / 256) + 1e-5;
        EXPECT_TRUE((diff <= bound).all().item<bool>())
            << streams[s] << " sample " << sample << " max excess " << (diff - bound).max().item<float>();
      }
      auto logprobs = torch::empty({len, 5}, torch::kFloat32);
      auto indices = torch::empty({len, 5}, torch::kInt32);
      readers[5]->read_logits(row, len, logprobs.data_ptr<float>(), indices.data_ptr<int32_t>());
      auto top = torch::topk(torch::log_softmax(ref.logits[0], -1), 5, -1);
      EXPECT_LT((logprobs - std::get<0>(top)).abs().max().item<float>(), 1e-4);
      // The first index is certain unless two log-probabilities tie to float32 precision.
      EXPECT_TRUE(torch::equal(indices.select(1, 0).to(torch::kInt64), std::get<1>(top).select(1, 0)));
      ++checked;
    }
  }
  EXPECT_EQ(checked, 30);
}

TEST(Cache, RerunIsCompleteAndADifferentPlanIsRefused) {
  auto& f = CacheFixture::get();
  trainer::PrecomputeOptions o;
  o.teacher_dir = f.teacher;
  o.samples_path = f.samples;
  o.cache_dir = f.cache;
  o.layers = {0, 1, 2, 3};
  o.top_k = 5;
  o.shard_tokens = 150;
  o.batch_tokens = 64;
  EXPECT_TRUE(trainer::precompute_cache(o).already_complete);
  o.top_k = 7;
  auto err = error_of([&] { trainer::precompute_cache(o); });
  EXPECT_NE(err.find("already holds a different cache (top-k: the cache has 5, this run asks for 7)"),
            std::string::npos) << err;
  // Another teacher: the identity hash differs.
  o.top_k = 5;
  o.teacher_dir = test::fixture("teachers/llama_tied");
  err = error_of([&] { trainer::precompute_cache(o); });
  EXPECT_NE(err.find("teacher: the cache was made from another teacher"), std::string::npos) << err;
  EXPECT_EQ(data::verify_cache(f.cache).shards, static_cast<int64_t>(data::read_manifest(f.cache).plan.shards.size()));
  err = error_of([&] {
    data::check_cache_inputs(data::read_manifest(f.cache), f.cache, test::fixture("teachers/llama_tied"), "", "");
  });
  EXPECT_NE(err.find("made from another teacher"), std::string::npos) << err;
  EXPECT_EQ(error_of([&] { data::check_cache_inputs(data::read_manifest(f.cache), f.cache, f.teacher, "", f.samples); }),
            "");
}

// A copy of the fixture cache to damage.
std::string copy_cache(const std::string& name) {
  auto& f = CacheFixture::get();
  const auto dir = fs::join(test::scratch_dir(name), "cache");
  std::filesystem::copy(f.cache, dir, std::filesystem::copy_options::recursive);
  return dir;
}

TEST(Cache, DamageIsFoundAndNamed) {
  {
    const auto dir = copy_cache("flipped");
    const auto victim = fs::join(dir, "layer_001/shard_00001.h5");
    std::fstream file(victim, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(fs::file_size(victim) - 100);
    char byte = 0;
    file.read(&byte, 1);
    byte ^= 0x10;
    file.seekp(fs::file_size(victim) - 100);
    file.write(&byte, 1);
    file.close();
    auto err = error_of([&] { data::verify_cache(dir); });
    EXPECT_NE(err.find("layer_001/shard_00001.h5: checksum xxh64"), std::string::npos) << err;
    EXPECT_NE(err.find("corrupted"), std::string::npos) << err;
  }
  {
    const auto dir = copy_cache("truncated");
    const auto victim = fs::join(dir, "logits/shard_00002.h5");
    std::filesystem::resize_file(victim, fs::file_size(victim) / 2);
    auto err = error_of([&] { data::verify_cache(dir); });
    EXPECT_NE(err.find("logits/shard_00002.h5: "), std::string::npos) << err;
    EXPECT_NE(err.find("truncated or replaced"), std::string::npos) << err;
    // A source opening the cache refuses it as well, before any batch.
    data::ActivationSourceOptions o;
    o.cache_dir = dir;
    o.logits = true;
    err = error_of([&] { data::ActivationSource source(o); });
    EXPECT_NE(err.find("logits/shard_00002.h5: "), std::string::npos) << err;
  }
  {
    const auto dir = copy_cache("missing");
    std::filesystem::remove(fs::join(dir, "final/shard_00000.h5"));
    auto err = error_of([&] { data::verify_cache(dir); });
    EXPECT_NE(err.find("final/shard_00000.h5: missing"), std::string::npos) << err;
  }
  {
    const auto dir = copy_cache("unfinished");
    std::filesystem::remove(fs::join(dir, "manifest.json"));
    auto err = error_of([&] { data::verify_cache(dir); });
    EXPECT_NE(err.find("did not finish; rerun the same `carve precompute`"), std::string::npos) << err;
  }
}

// All batches of one epoch for each of `world` ranks.
std::vector<std::vector<data::ActivationBatch>> epoch_of(int world, uint64_t seed, int64_t epoch = 0) {
  auto& f = CacheFixture::get();
  std::vector<std::vector<data::ActivationBatch>> out(world);
  for (int r = 0; r < world; ++r) {
    data::ActivationSourceOptions o;
    o.cache_dir = f.cache;
    o.layers = {1};
    o.logits = true;
    o.samples_path = f.samples;
    o.batch_tokens = 96;
    o.rank = r;
    o.world = world;
    o.seed = seed;
    o.start = {epoch, 0};
    data::ActivationSource source(o);
    for (int64_t s = 0; s < source.steps_in_epoch(epoch); ++s) out[r].push_back(source.next());
    EXPECT_EQ(source.position(), (data::SourcePosition{epoch + 1, 0}));
  }
  return out;
}

TEST(ActivationSource, EveryTokenOncePerEpochAcrossRanks) {
  auto& f = CacheFixture::get();
  data::SampleFile samples(f.samples);
  auto ranks = epoch_of(2, 11);
  ASSERT_EQ(ranks[0].size(), ranks[1].size());
  std::multiset<int64_t> seen;
  int64_t tokens = 0;
  for (const auto& batches : ranks)
    for (const auto& b : batches) {
      seen.insert(b.sample_ids.begin(), b.sample_ids.end());
      tokens += b.tokens;
      EXPECT_EQ(b.valid.sum().item<int64_t>(), b.tokens);
      EXPECT_EQ(b.hidden.size(), 1u);
      // Token ids in the batch are the samples' own, in order, and the loss mask follows them.
      int64_t at = 0;
      for (auto s : b.sample_ids) {
        const auto len = samples.length(s);
        EXPECT_TRUE(torch::equal(b.token_ids.narrow(0, at, len),
                                 samples.tokens(samples.offsets()[s], samples.offsets()[s + 1])));
        EXPECT_TRUE((b.seq_idx[0].narrow(0, at, len) == b.seq_idx[0][at]).all().item<bool>());
        at += len;
      }
      EXPECT_EQ(b.loss_mask.narrow(0, b.tokens, 96 - b.tokens).sum().item<int64_t>(), 0);
    }
  EXPECT_EQ(tokens, samples.num_tokens());
  EXPECT_EQ(seen.size(), 30u);
  for (int64_t s = 0; s < 30; ++s) EXPECT_EQ(seen.count(s), 1u) << "sample " << s;
}

TEST(ActivationSource, BatchesHoldTheCachedRows) {
  auto& f = CacheFixture::get();
  auto manifest = data::read_manifest(f.cache);
  auto batches = epoch_of(1, 4)[0];
  const auto& b = batches[1];
  const int64_t s = b.sample_ids[0];
  int64_t shard = 0;
  while (s >= manifest.plan.shards[shard].first_sample + manifest.plan.shards[shard].num_samples) ++shard;
  const auto& span = manifest.plan.shards[shard];
  data::CacheShardReader reader(fs::join(f.cache, manifest.files[shard][1].path), manifest.plan, span, "layer_001");
  const int64_t row = reader.offsets()[s - span.first_sample];
  const int64_t len = reader.offsets()[s - span.first_sample + 1] - row;
  auto want = torch::empty({len, 64}, torch::kBFloat16);
  reader.read_hidden(row, len, want.data_ptr());
  EXPECT_TRUE(torch::equal(b.hidden[0].narrow(0, 0, len), want));
  EXPECT_EQ(b.hidden[0].narrow(0, b.tokens, 96 - b.tokens).abs().sum().item<float>(), 0.0f);
}

TEST(ActivationSource, ShuffleFollowsTheSeedAndResumeContinues) {
  auto order = [](const std::vector<std::vector<data::ActivationBatch>>& ranks) {
    std::vector<int64_t> ids;
    for (const auto& b : ranks[0]) ids.insert(ids.end(), b.sample_ids.begin(), b.sample_ids.end());
    return ids;
  };
  EXPECT_EQ(order(epoch_of(1, 11)), order(epoch_of(1, 11)));
  EXPECT_NE(order(epoch_of(1, 11)), order(epoch_of(1, 12)));
  EXPECT_NE(order(epoch_of(1, 11, 0)), order(epoch_of(1, 11, 1)));

  // Read 5 batches, save the position, reopen there: the next batches are those an uninterrupted source gives.
  auto& f = CacheFixture::get();
  data::ActivationSourceOptions o;
  o.cache_dir = f.cache;
  o.layers = {0};
  o.batch_tokens = 96;
  o.seed = 3;
  o.prefetch = 3;
  std::vector<std::vector<int64_t>> straight;
  data::SourcePosition saved;
  {
    data::ActivationSource source(o);
    for (int i = 0; i < 12; ++i) {
      straight.push_back(source.next().sample_ids);
      if (i == 4) saved = source.position();
    }
  }
  o.start = data::position_from_json(data::position_to_json(saved), "saved position");
  data::ActivationSource resumed(o);
  for (int i = 5; i < 12; ++i) EXPECT_EQ(resumed.next().sample_ids, straight[i]) << "batch " << i;
  EXPECT_GT(resumed.stats().bytes_read, 0);
}

TEST(ActivationSource, RefusesWhatTheCacheCannotGive) {
  auto& f = CacheFixture::get();
  data::ActivationSourceOptions o;
  o.cache_dir = f.cache;
  o.layers = {7};
  auto err = error_of([&] { data::ActivationSource source(o); });
  EXPECT_NE(err.find("does not hold the input of layer 7 (stream 'layer_007')"), std::string::npos) << err;
  o.layers = {0};
  o.batch_tokens = 16;  // shorter than the longest sample
  err = error_of([&] {
    data::ActivationSource source(o);
    source.next();
  });
  EXPECT_NE(err.find("more than the batch budget of 16"), std::string::npos) << err;
  o.batch_tokens = 96;
  o.samples_path = fs::join(test::scratch_dir("other_samples"), "other.h5");
  data::write_samples(o.samples_path, test::random_samples(30, 6, false));
  err = error_of([&] { data::ActivationSource source(o); });
  EXPECT_NE(err.find("made from other samples"), std::string::npos) << err;
}

}  // namespace
}  // namespace carve
