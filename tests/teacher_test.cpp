// Teacher models against the Hugging Face transformers fixtures (tools/make_fixtures.py): logits, every layer's
// input, every attention's output before o_proj, decoding with the KV cache, packed samples, VLM prefixes, and the
// rejection of malformed checkpoints.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "base/fs.h"
#include "model/checkpoint.h"
#include "model/hf_weights.h"
#include "model/safetensors.h"
#include "trainer/generate.h"
#include "tests/test_util.h"

namespace carve::model {
namespace {

using test::error_of;
using test::fixture;
using test::relative_error;

const std::vector<std::string> kFamilies = {"llama", "llama_tied", "llama_sharded", "qwen2", "phi", "internlm2"};

std::string teacher_dir(const std::string& family) { return fixture("teachers/" + family); }

struct Expected {
  explicit Expected(const std::string& family) : file(teacher_dir(family) + "/expected.safetensors") {}
  torch::Tensor operator[](const std::string& name) const { return file.load(name); }
  SafetensorsFile file;
};

class TeacherFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(TeacherFixture, MatchesTransformersLayerByLayer) {
  torch::NoGradGuard no_grad;
  CheckpointReader ckpt(teacher_dir(GetParam()));
  auto model = load_causal_lm(ckpt);
  Expected expected(GetParam());
  ForwardOptions options;
  options.want_layer_inputs = true;
  options.want_pre_outputs = true;
  auto out = model->forward(expected["input_ids"], options);
  const auto layers = ckpt.config().num_layers;
  ASSERT_EQ(static_cast<int64_t>(out.layer_inputs.size()), layers);
  ASSERT_EQ(static_cast<int64_t>(out.pre_outputs.size()), layers);
  for (int64_t i = 0; i < layers; ++i) {
    auto li = expected["layer_input." + std::to_string(i)];
    ASSERT_EQ(out.layer_inputs[i].sizes(), li.sizes());
    EXPECT_LT(relative_error(out.layer_inputs[i], li), 1e-4) << "layer_input." << i;
    auto po = expected["pre_o." + std::to_string(i)];
    ASSERT_EQ(out.pre_outputs[i].sizes(), po.sizes());
    EXPECT_LT(relative_error(out.pre_outputs[i], po), 1e-4) << "pre_o." << i;
  }
  EXPECT_LT(relative_error(out.final_hidden, expected["final_hidden"]), 1e-4);
  EXPECT_LT(relative_error(out.logits, expected["logits"]), 1e-4);
}

TEST_P(TeacherFixture, InputEmbeddingsGiveTheSameLogits) {
  torch::NoGradGuard no_grad;
  auto model = load_causal_lm(CheckpointReader(teacher_dir(GetParam())));
  Expected expected(GetParam());
  auto out = model->forward_embeds(model->embed(expected["input_ids"]));
  EXPECT_LT(relative_error(out.logits, expected["logits"]), 1e-4);
}

// Prefill part of the prompt, then feed the rest one token at a time through the KV cache: the logits must be
// those of one full forward.
TEST_P(TeacherFixture, KvCacheDecodingEqualsFullForward) {
  torch::NoGradGuard no_grad;
  auto model = load_causal_lm(CheckpointReader(teacher_dir(GetParam())));
  auto ids = Expected(GetParam())["input_ids"];
  auto full = model->forward(ids).logits;
  auto state = model->new_decode_state();
  ForwardOptions step;
  step.state = &state;
  std::vector<torch::Tensor> pieces = {model->forward(ids.slice(1, 0, 5), step).logits};
  for (int64_t t = 5; t < ids.size(1); ++t) pieces.push_back(model->forward(ids.slice(1, t, t + 1), step).logits);
  EXPECT_EQ(state.length, ids.size(1));
  EXPECT_LT(relative_error(torch::cat(pieces, 1), full), 1e-5);
}

TEST_P(TeacherFixture, GreedyContinuationMatchesTransformersGenerate) {
  torch::NoGradGuard no_grad;
  auto model = load_causal_lm(CheckpointReader(teacher_dir(GetParam())));
  Expected expected(GetParam());
  trainer::GenerateOptions options;
  options.max_new_tokens = 6;
  auto tokens = trainer::generate(*model, expected["input_ids"], options);
  EXPECT_TRUE(torch::equal(tokens, expected["greedy"])) << tokens << "\nvs\n" << expected["greedy"];
}

INSTANTIATE_TEST_SUITE_P(Families, TeacherFixture, ::testing::ValuesIn(kFamilies),
                         [](const auto& info) { return info.param; });

// Two samples packed into one row with a sequence index behave as two separate rows: positions restart and no
// token attends across the boundary.
TEST(Teacher, PackedSamplesAreIndependent) {
  torch::NoGradGuard no_grad;
  auto model = load_causal_lm(CheckpointReader(teacher_dir("qwen2")));
  auto ids = Expected("qwen2")["input_ids"];
  auto a = ids[0].slice(0, 0, 7), b = ids[1].slice(0, 0, 9);
  auto packed = torch::cat({a, b}).unsqueeze(0);
  ForwardOptions options;
  options.seq_idx = torch::cat({torch::zeros({7}, torch::kInt32), torch::ones({9}, torch::kInt32)}).unsqueeze(0);
  auto got = model->forward(packed, options).logits[0];
  EXPECT_LT(relative_error(got.slice(0, 0, 7), model->forward(a.unsqueeze(0)).logits[0]), 1e-5);
  EXPECT_LT(relative_error(got.slice(0, 7), model->forward(b.unsqueeze(0)).logits[0]), 1e-5);
}

// A VLM checkpoint nests the language model's config (text_config) and prefixes its weight names.
TEST(Teacher, LoadsTheLanguageModelOutOfAVlmCheckpoint) {
  torch::NoGradGuard no_grad;
  auto dir = test::scratch_dir("vlm_prefix");
  auto text_config = nlohmann::json::parse(fs::read_file(teacher_dir("llama") + "/config.json"));
  nlohmann::json config = {{"model_type", "llava"}, {"text_config", text_config}, {"image_token_index", 95}};
  fs::write_file_atomic(dir + "/config.json", config.dump(2));
  SafetensorsFile original(teacher_dir("llama") + "/model.safetensors");
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& name : original.names()) tensors.emplace_back("language_model." + name, original.load(name));
  tensors.emplace_back("vision_tower.patch_embed.weight", torch::randn({8, 3}));
  save_safetensors(dir + "/model.safetensors", tensors);

  auto model = load_causal_lm(CheckpointReader(dir, "language_model."));
  Expected expected("llama");
  EXPECT_LT(relative_error(model->forward(expected["input_ids"]).logits, expected["logits"]), 1e-4);
  // Without the prefix the names do not resolve, and the message says which one is missing.
  auto msg = error_of([&] { load_causal_lm(CheckpointReader(dir)); });
  EXPECT_NE(msg.find("has no tensor 'model.embed_tokens.weight'"), std::string::npos) << msg;
}

// The teacher on CUDA in bfloat16 stays within bf16 tolerance of the float32 fixtures (runs on the GPU host).
TEST(Teacher, CudaBfloat16StaysCloseToFixtures) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::NoGradGuard no_grad;
  for (const auto& family : kFamilies) {
    auto model = load_causal_lm(CheckpointReader(teacher_dir(family)), torch::kBFloat16, torch::kCUDA);
    Expected expected(family);
    auto out = model->forward(expected["input_ids"].to(torch::kCUDA));
    EXPECT_EQ(out.logits.scalar_type(), torch::kBFloat16);
    EXPECT_LT(relative_error(out.logits, expected["logits"]), 3e-2) << family;
  }
}

// ---- malformed checkpoints ----

std::string copy_teacher(const std::string& family, const std::string& name) {
  auto dir = test::scratch_dir(name);
  for (const auto& entry : std::filesystem::directory_iterator(teacher_dir(family)))
    std::filesystem::copy_file(entry.path(), dir + "/" + entry.path().filename().string());
  return dir;
}

TEST(TeacherErrors, MissingConfigJson) {
  auto dir = copy_teacher("llama", "no_config");
  std::filesystem::remove(dir + "/config.json");
  auto msg = error_of([&] { CheckpointReader r(dir); });
  EXPECT_NE(msg.find(dir + "/config.json: missing"), std::string::npos) << msg;
}

TEST(TeacherErrors, UnsupportedModelTypeListsSupportedOnes) {
  auto dir = copy_teacher("llama", "bad_type");
  auto config = nlohmann::json::parse(fs::read_file(dir + "/config.json"));
  config["model_type"] = "gpt_neox";
  fs::write_file_atomic(dir + "/config.json", config.dump());
  auto msg = error_of([&] { CheckpointReader r(dir); });
  EXPECT_NE(msg.find("unsupported model_type 'gpt_neox'"), std::string::npos) << msg;
  for (const char* family : {"llama", "qwen2", "internlm2", "phi"}) EXPECT_NE(msg.find(family), std::string::npos);
}

TEST(TeacherErrors, ShapeDisagreeingWithConfigJson) {
  auto dir = copy_teacher("llama", "bad_shape");
  auto config = nlohmann::json::parse(fs::read_file(dir + "/config.json"));
  config["intermediate_size"] = 120;  // the checkpoint's MLP has 112
  fs::write_file_atomic(dir + "/config.json", config.dump());
  auto msg = error_of([&] { load_causal_lm(CheckpointReader(dir)); });
  EXPECT_NE(msg.find("model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' has shape [112, 64]"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("[120, 64]"), std::string::npos) << msg;
}

TEST(TeacherErrors, MissingShardNamedByTheIndex) {
  auto dir = copy_teacher("llama_sharded", "missing_shard");
  std::filesystem::remove(dir + "/model-00003-of-00006.safetensors");
  auto msg = error_of([&] { CheckpointReader r(dir); });
  EXPECT_NE(msg.find("model-00003-of-00006.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
}

TEST(TeacherErrors, TruncatedShard) {
  auto dir = copy_teacher("llama", "truncated");
  std::filesystem::resize_file(dir + "/model.safetensors", 50000);
  auto msg = error_of([&] { CheckpointReader r(dir); });
  EXPECT_NE(msg.find(dir + "/model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("file truncated?"), std::string::npos) << msg;
}

}  // namespace
}  // namespace carve::model
