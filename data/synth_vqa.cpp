#include "data/synth_vqa.h"

#include <array>
#include <random>
#include <vector>

#include "base/error.h"

namespace carve::data {
namespace {

const std::array<const char*, 3> kPlaces = {"left", "middle", "right"};
const std::array<const char*, 3> kShapes = {"circle", "square", "triangle"};
const std::array<const char*, 4> kColours = {"red", "green", "blue", "yellow"};
const std::array<const char*, 2> kSizes = {"small", "large"};

struct Object {
  bool present = false;
  int shape = 0, colour = 0, size = 0;
};

// Fixed feature embeddings: a row per place, shape, colour, size and one for an empty place, N(0, 1).
struct Embeddings {
  std::vector<std::vector<float>> place, shape, colour, size;
  std::vector<float> empty;
};

std::vector<float> gaussian_row(int64_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> row(static_cast<size_t>(n));
  for (auto& v : row) v = normal(rng);
  return row;
}

Embeddings make_embeddings(int64_t hidden, uint64_t seed) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + 1);
  Embeddings e;
  for (size_t i = 0; i < kPlaces.size(); ++i) e.place.push_back(gaussian_row(hidden, rng));
  for (size_t i = 0; i < kShapes.size(); ++i) e.shape.push_back(gaussian_row(hidden, rng));
  for (size_t i = 0; i < kColours.size(); ++i) e.colour.push_back(gaussian_row(hidden, rng));
  for (size_t i = 0; i < kSizes.size(); ++i) e.size.push_back(gaussian_row(hidden, rng));
  e.empty = gaussian_row(hidden, rng);
  return e;
}

void append_text(std::vector<int32_t>& tokens, const std::string& text) {
  for (unsigned char c : text) tokens.push_back(static_cast<int32_t>(c));
}

// One (question, answer) pair the scene defines, chosen uniformly among the feasible question kinds.
std::pair<std::string, std::string> ask(const std::array<Object, 3>& scene, std::mt19937_64& rng) {
  auto count = [&](auto pred) {
    int n = 0;
    for (const auto& o : scene) n += o.present && pred(o) ? 1 : 0;
    return n;
  };
  // Objects unique by shape, and by (colour, shape).
  std::vector<int> unique_shape, unique_object;
  for (int p = 0; p < 3; ++p) {
    const auto& o = scene[static_cast<size_t>(p)];
    if (!o.present) continue;
    if (count([&](const Object& x) { return x.shape == o.shape; }) == 1) unique_shape.push_back(p);
    if (count([&](const Object& x) { return x.shape == o.shape && x.colour == o.colour; }) == 1)
      unique_object.push_back(p);
  }
  std::vector<int> kinds = {1};  // counting is always defined
  if (!unique_shape.empty()) kinds.push_back(0);
  if (!unique_object.empty()) {
    kinds.push_back(2);
    kinds.push_back(3);
  }
  auto pick = [&](size_t n) { return static_cast<size_t>(std::uniform_int_distribution<size_t>(0, n - 1)(rng)); };
  const int kind = kinds[pick(kinds.size())];
  if (kind == 0) {
    const auto& o = scene[static_cast<size_t>(unique_shape[pick(unique_shape.size())])];
    return {std::string("what colour is the ") + kShapes[o.shape] + "?", kColours[o.colour]};
  }
  if (kind == 1) {
    const int colour = static_cast<int>(pick(kColours.size()));
    const int n = count([&](const Object& x) { return x.colour == colour; });
    return {std::string("how many ") + kColours[colour] + " things?", std::to_string(n)};
  }
  const int p = unique_object[pick(unique_object.size())];
  const auto& o = scene[static_cast<size_t>(p)];
  const std::string what = std::string(kColours[o.colour]) + " " + kShapes[o.shape];
  if (kind == 2) return {"where is the " + what + "?", kPlaces[p]};
  return {"what size is the " + what + "?", kSizes[o.size]};
}

}  // namespace

SampleSet make_synth_vqa(const SynthVqaOptions& o) {
  CARVE_CHECK(o.samples >= 1, "synthetic set: --samples must be at least 1, not ", o.samples);
  CARVE_CHECK(o.hidden >= 1, "synthetic set: --hidden must be at least 1, not ", o.hidden);
  CARVE_CHECK(o.noise >= 0, "synthetic set: --noise must be at least 0, not ", o.noise);
  const auto emb = make_embeddings(o.hidden, o.seed);
  std::mt19937_64 rng(o.seed * 0xD1B54A32D192ED03ULL + o.split * 0x8CB92BA72F3D8DD7ULL + 7);
  std::bernoulli_distribution occupied(0.75);
  std::normal_distribution<float> noise(0.0f, static_cast<float>(o.noise));

  SampleSet set;
  set.vocab_size = SynthVqaVocab::kSize;
  set.image_token_id = SynthVqaVocab::kImage;
  set.offsets.push_back(0);
  set.image_offsets.push_back(0);
  std::vector<float> features;
  features.reserve(static_cast<size_t>(o.samples * 3 * o.hidden));
  for (int64_t s = 0; s < o.samples; ++s) {
    std::array<Object, 3> scene;
    do {
      for (auto& obj : scene) {
        obj.present = occupied(rng);
        obj.shape = static_cast<int>(rng() % kShapes.size());
        obj.colour = static_cast<int>(rng() % kColours.size());
        obj.size = static_cast<int>(rng() % kSizes.size());
      }
    } while (!scene[0].present && !scene[1].present && !scene[2].present);
    for (size_t p = 0; p < 3; ++p) {
      const auto& obj = scene[p];
      for (int64_t i = 0; i < o.hidden; ++i) {
        const auto k = static_cast<size_t>(i);
        float v = emb.place[p][k];
        v += obj.present ? emb.shape[static_cast<size_t>(obj.shape)][k] + emb.colour[static_cast<size_t>(obj.colour)][k] +
                               emb.size[static_cast<size_t>(obj.size)][k]
                         : emb.empty[k];
        features.push_back(0.5f * v + noise(rng));  // four unit-variance terms: RMS about 1
      }
    }
    const auto [question, answer] = ask(scene, rng);
    set.tokens.push_back(SynthVqaVocab::kBos);
    for (int i = 0; i < SynthVqaVocab::kImageTokens; ++i) set.tokens.push_back(SynthVqaVocab::kImage);
    append_text(set.tokens, question + " ");
    set.loss_mask.resize(set.tokens.size(), 0);
    append_text(set.tokens, answer);
    set.tokens.push_back(SynthVqaVocab::kEos);
    set.loss_mask.resize(set.tokens.size(), 1);
    set.offsets.push_back(static_cast<int64_t>(set.tokens.size()));
    set.image_offsets.push_back(set.image_offsets.back() + SynthVqaVocab::kImageTokens);
  }
  set.image_embeds = torch::from_blob(features.data(), {o.samples * 3, o.hidden}, torch::kFloat32).to(torch::kBFloat16);
  return set;
}

std::string synth_vqa_text(const SampleSet& set, int64_t sample) {
  std::string text;
  for (int64_t t = set.offsets[static_cast<size_t>(sample)]; t < set.offsets[static_cast<size_t>(sample) + 1]; ++t) {
    const int32_t id = set.tokens[static_cast<size_t>(t)];
    if (id < 256) text.push_back(static_cast<char>(id));
    else if (id == SynthVqaVocab::kImage) text += "<img>";
    else if (id == SynthVqaVocab::kEos) text += "</s>";
    else if (id == SynthVqaVocab::kBos) text += "<s>";
  }
  return text;
}

}  // namespace carve::data
