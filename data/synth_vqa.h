// The built-in example: a synthetic visual-question-answering set that a small teacher can learn on a CPU.
//
// A scene has three places (left, middle, right); each holds an object with probability 0.75 (at least one in
// all): one of three shapes, four colours and two sizes. The "image" is one feature vector per place: fixed random
// embeddings (drawn once from the set's seed) of the place, and of the object's shape, colour and size or of
// "empty", summed, plus Gaussian noise per scene. The vision tower of a real VLM is replaced by this embedding; the
// language model sees these rows at its image-token positions, as projected image features.
//
// Questions are byte-level text, each asked only when its answer is defined by the scene:
//   "what colour is the <shape>?"        (the shape occurs once)          -> red | green | blue | yellow
//   "how many <colour> things?"           (any colour)                     -> 0 | 1 | 2 | 3
//   "where is the <colour> <shape>?"      (that object occurs once)        -> left | middle | right
//   "what size is the <colour> <shape>?"  (that object occurs once)        -> small | large
// Sample tokens: BOS, three image tokens, the question's bytes, a space, the answer's bytes, EOS. The loss mask
// covers the answer and EOS. Vocabulary: bytes 0-255, BOS 256, EOS 257, IMAGE 258 (260 entries; 259 is unused).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "data/samples.h"

namespace carve::data {

struct SynthVqaVocab {
  static constexpr int64_t kBos = 256, kEos = 257, kImage = 258, kSize = 260, kImageTokens = 3;
};

struct SynthVqaOptions {
  int64_t samples = 1000;
  int64_t hidden = 64;      // image feature width: the teacher's hidden size
  double noise = 0.2;       // standard deviation of the per-scene noise on each feature
  uint64_t seed = 0;        // the embeddings come from this seed; scenes from (seed, split)
  uint64_t split = 0;       // 0 train, 1 eval, ...: different scenes, the same embeddings
};

SampleSet make_synth_vqa(const SynthVqaOptions& options);

// The question and answer text of one sample of a synthetic set (for reading results).
std::string synth_vqa_text(const SampleSet& set, int64_t sample);

}  // namespace carve::data
