/*
 * Decoding: the KV cache's buffers (reserved or grown, contents kept), and on a GPU the CUDA decode path against
 * the reference: the decode attention kernel (RoPE, cache write, split-KV attention) against float64 attention on
 * the same rounded inputs at many shapes, the inference RMSNorm and SwiGLU kernels, and whole models (the fixture
 * families and students of them) decoded through a captured CUDA graph against their full forward.
 * Also: prompts of different lengths in one batch decode as each would alone (reference path here; the kernels and
 * a graph on a GPU). Without a GPU (or in a build without CUDA) only the cache and ragged tests run; the rest skip.
 */
#include <gtest/gtest.h>

#include <limits>

#include "model/attention.h"
#include "model/causal_conv.h"
#include "model/checkpoint.h"
#include "model/decode_graph.h"
#include "model/gated_norm.h"
#include "model/hf_weights.h"
#include "model/inference_ops.h"
#include "model/kernel_ops.h"
#include "model/layers.h"
#include "model/mamba2_mixer.h"
#include "model/rope.h"
#include "model/safetensors.h"
#include "model/sampling.h"
#include "model/seeded_mixer.h"
#include "model/ssd.h"
#include "model/student.h"
#include "tests/test_util.h"
#include "trainer/generate.h"

namespace carve::model {
namespace {

using test::relative_error;
using test::relative_norm_error;
using torch::Tensor;

std::string teacher_dir(const std::string& family) { return test::fixture("teachers/" + family); }

Tensor fixture_ids(const std::string& family) {
  return SafetensorsFile(teacher_dir(family) + "/expected.safetensors").load("input_ids");
}

// Logits of a prefill of `prefill` tokens and then one token at a time, concatenated along the sequence.
Tensor decode_logits(CausalLMImpl& lm, const Tensor& ids, int64_t prefill, bool reserve) {
  auto state = lm.new_decode_state();
  if (reserve) state.reserve(ids.size(1));
  ForwardOptions step;
  step.state = &state;
  std::vector<Tensor> pieces = {lm.forward(ids.slice(1, 0, prefill), step).logits};
  for (int64_t t = prefill; t < ids.size(1); ++t) pieces.push_back(lm.forward(ids.slice(1, t, t + 1), step).logits);
  return torch::cat(pieces, 1);
}

TEST(KvCache, ReservedBuffersNeverMoveAndGrownOnesKeepTheirContents) {
  torch::NoGradGuard no_grad;
  auto lm = load_causal_lm(CheckpointReader(teacher_dir("llama")));
  auto ids = fixture_ids("llama");
  const auto full = lm->forward(ids).logits;

  auto state = lm->new_decode_state();
  state.reserve(ids.size(1));
  ForwardOptions step;
  step.state = &state;
  lm->forward(ids.slice(1, 0, 2), step);
  auto* cache = dynamic_cast<KvCache*>(state.layers[0].get());
  ASSERT_NE(cache, nullptr);
  EXPECT_EQ(cache->capacity(), ids.size(1));
  const void* address = cache->k.data_ptr();
  for (int64_t t = 2; t < ids.size(1); ++t) lm->forward(ids.slice(1, t, t + 1), step);
  EXPECT_EQ(cache->k.data_ptr(), address);
  EXPECT_EQ(cache->length, ids.size(1));

  // Without a reservation the buffers double as needed (2 -> 4 -> 8 -> ...) and decoding is unchanged.
  EXPECT_LT(relative_error(decode_logits(*lm, ids, 2, /*reserve=*/false), full), 1e-5);
  auto grown = lm->new_decode_state();
  ForwardOptions g;
  g.state = &grown;
  lm->forward(ids.slice(1, 0, 2), g);
  lm->forward(ids.slice(1, 2, 3), g);
  EXPECT_EQ(dynamic_cast<KvCache*>(grown.layers[0].get())->capacity(), 4);
}

TEST(KvCache, RefusesAnotherBatchSize) {
  torch::NoGradGuard no_grad;
  auto lm = load_causal_lm(CheckpointReader(teacher_dir("qwen2")));
  auto ids = fixture_ids("qwen2");
  auto state = lm->new_decode_state();
  ForwardOptions step;
  step.state = &state;
  lm->forward(ids.slice(1, 0, 3), step);
  const auto message = test::error_of([&] { lm->forward(ids.slice(0, 0, 1).slice(1, 3, 4), step); });
  EXPECT_NE(message.find("KV cache"), std::string::npos) << message;
}

TEST(DecodeGraph, SaysWhyItIsUnavailable) {
  auto lm = load_causal_lm(CheckpointReader(teacher_dir("llama")));
  EXPECT_FALSE(DecodeStepGraph::unavailable_reason(*lm).empty());  // a CPU model, in any build
}

// ------------------------------------------------------------------------------------------------------------
// Prompts of different lengths in one batch.

// A student of the llama fixture (3 layers) with this layout and mixer.
CausalLM llama_student(const std::string& layout, MixerKind mixer) {
  auto lm = load_causal_lm(CheckpointReader(teacher_dir("llama")), torch::kFloat);
  StudentSpec spec;
  spec.layout = Layout::parse(layout, 3);
  spec.mixer = mixer;
  spec.seeding = SeedMethod::Mimic;
  spec.chunk_size = 4;
  spec.init_seed = 5;
  carve_student(*lm, spec, true);
  return lm;
}

struct RaggedCase {
  std::vector<int64_t> lengths = {5, 2, 7, 2};  // two rows share a length (one batched prefill)
  int64_t steps = 3;                            // single-token steps, then one step of two tokens per row
  Tensor ids;                                   // [rows, 7 + steps + 2]
  std::vector<Tensor> prompts;
};

RaggedCase ragged_case(int64_t vocab) {
  RaggedCase c;
  c.ids = torch::randint(2, vocab,  // 1 is left for image tokens
                         {static_cast<int64_t>(c.lengths.size()), 7 + c.steps + 2},
                         torch::TensorOptions().dtype(torch::kInt64));
  for (size_t r = 0; r < c.lengths.size(); ++r) c.prompts.push_back(c.ids[r].narrow(0, 0, c.lengths[r]));
  return c;
}

// Prefilled together and continued (single tokens, then two at once), each row's logits equal its own full forward
// at the same positions.
void check_ragged_decode(CausalLMImpl& lm, const std::string& what, double tol = 1e-5) {
  torch::NoGradGuard no_grad;
  const auto device = lm.embed_tokens.device();
  auto c = ragged_case(lm.config.vocab_size);
  const int64_t rows = static_cast<int64_t>(c.lengths.size());
  auto p = trainer::prefill(lm, c.prompts, 7 + c.steps + 2, {});
  ASSERT_TRUE(p.state.row_offsets.defined()) << what;
  EXPECT_EQ(p.state.length, 7) << what;
  std::vector<Tensor> got = {p.logits.unsqueeze(1)};  // per step [rows, l, vocab]
  ForwardOptions o;
  o.state = &p.state;
  for (int64_t t = 0; t <= c.steps; ++t) {
    const int64_t l = t < c.steps ? 1 : 2;
    std::vector<Tensor> next;
    for (int64_t r = 0; r < rows; ++r) next.push_back(c.ids[r].narrow(0, c.lengths[r] + t, l));
    got.push_back(lm.forward(torch::stack(next).to(device), o).logits);
  }
  const Tensor ragged = torch::cat(got, 1).to(torch::kFloat).cpu();  // [rows, 1 + steps + 2, vocab]
  EXPECT_EQ(p.state.length, 7 + c.steps + 2) << what;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = c.lengths[r] + c.steps + 2;
    auto alone = lm.forward(c.ids[r].narrow(0, 0, n).unsqueeze(0).to(device)).logits[0].to(torch::kFloat).cpu();
    EXPECT_LT(relative_norm_error(ragged[r], alone.narrow(0, c.lengths[r] - 1, c.steps + 3)), tol)
        << what << ": row " << r << " of length " << c.lengths[r];
  }
}

TEST(RaggedDecode, RowsOfDifferentLengthsDecodeLikeEachAlone) {
  torch::manual_seed(11);
  for (const std::string family : {"llama", "qwen2"}) {
    auto lm = load_causal_lm(CheckpointReader(teacher_dir(family)));
    check_ragged_decode(*lm, family);
  }
  for (auto mixer : {MixerKind::Seeded, MixerKind::Mamba2})
    for (const std::string layout : {"MAM", "MMM"}) {
      auto lm = llama_student(layout, mixer);
      check_ragged_decode(*lm, mixer_kind_name(mixer) + " " + layout);
    }
}

// generate() on prompts of different lengths (with image rows spliced in) picks each row's tokens as it would alone.
TEST(RaggedDecode, GenerateMatchesEachPromptAlone) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(12);
  auto lm = llama_student("MAM", MixerKind::Seeded);
  const int64_t image_token = 1, hidden = lm->config.hidden_size;
  auto c = ragged_case(lm->config.vocab_size);
  c.prompts[0][1] = image_token, c.prompts[2][0] = image_token, c.prompts[2][4] = image_token;
  const std::vector<int64_t> images_per_row = {1, 0, 2, 0};
  trainer::GenerateOptions o;
  o.max_new_tokens = 6;
  o.image_token_id = image_token;
  o.image_rows = torch::randn({3, hidden});
  const auto together = trainer::generate(*lm, c.prompts, o);
  ASSERT_EQ(together.sizes(), torch::IntArrayRef({4, 6}));
  int64_t image = 0;
  for (size_t r = 0; r < c.prompts.size(); ++r) {
    auto alone_options = o;
    alone_options.image_rows = o.image_rows.narrow(0, image, images_per_row[r]);
    image += images_per_row[r];
    const auto alone = trainer::generate(*lm, std::vector<Tensor>{c.prompts[r]}, alone_options);
    EXPECT_TRUE(torch::equal(together[r], alone[0])) << "row " << r << ": " << together[r] << " vs " << alone[0];
  }
  // Image rows that do not match the image tokens are named.
  o.image_rows = torch::randn({2, hidden});
  const auto message = test::error_of([&] { trainer::generate(*lm, c.prompts, o); });
  EXPECT_NE(message.find("3 image tokens but 2 image rows"), std::string::npos) << message;
}

TEST(RaggedDecode, MergingNamesAMissingRow) {
  torch::NoGradGuard no_grad;
  auto lm = load_causal_lm(CheckpointReader(teacher_dir("llama")));
  auto part = lm->new_decode_state();
  ForwardOptions o;
  o.state = &part;
  lm->forward(torch::tensor({{3, 4}}, torch::kInt64), o);
  auto merged = lm->new_decode_state();
  const auto message = test::error_of([&] { merged.merge_rows({&part}, {{0}}, 2, torch::kCPU); });
  EXPECT_NE(message.find("row 1 is missing"), std::string::npos) << message;
}

// ------------------------------------------------------------------------------------------------------------
// On a GPU.

bool have_kernels() { return torch::cuda::is_available() && fused_kernels_built(); }

#define REQUIRE_KERNELS()                                                          \
  do {                                                                             \
    if (!have_kernels()) GTEST_SKIP() << "needs a GPU and a CUDA build of carve";  \
  } while (0)

struct PoisonScope {
  KernelMode saved = kernel_mode();
  PoisonScope() {
    set_poison_kernel_outputs(true);
    set_kernel_mode(KernelMode::fused);
  }
  ~PoisonScope() {
    set_poison_kernel_outputs(false);
    set_kernel_mode(saved);
  }
};

struct AttentionShape {
  int64_t b, heads, kv_heads, d, rotary, capacity;
  std::vector<int64_t> positions;  // per row
};

// The decode attention kernel against RoPE in the element type (model/rope, as the model computes it) and float64
// attention over the cache the kernel wrote. Also: the new keys and values land at each row's position and nothing
// else in the cache changes.
void check_decode_attention(const AttentionShape& s, torch::ScalarType dtype) {
  PoisonScope scope;
  torch::NoGradGuard no_grad;
  torch::manual_seed(s.d * 31 + s.heads + s.capacity);
  auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA);
  DecodeAttentionInputs in;
  in.heads = s.heads, in.kv_heads = s.kv_heads, in.head_dim = s.d, in.rotary_dim = s.rotary, in.rope_theta = 10000.0;
  // q, k, v as slices of one fused projection, as strided rows.
  Tensor qkv = torch::randn({s.b, (s.heads + 2 * s.kv_heads) * s.d}, opts);
  in.q = qkv.narrow(1, 0, s.heads * s.d);
  in.k = qkv.narrow(1, s.heads * s.d, s.kv_heads * s.d);
  in.v = qkv.narrow(1, (s.heads + s.kv_heads) * s.d, s.kv_heads * s.d);
  in.k_cache = torch::randn({s.b, s.kv_heads, s.capacity, s.d}, opts);
  in.v_cache = torch::randn({s.b, s.kv_heads, s.capacity, s.d}, opts);
  const Tensor k_before = in.k_cache.clone(), v_before = in.v_cache.clone();
  in.positions = torch::tensor(s.positions, torch::TensorOptions().dtype(torch::kInt64)).to(torch::kCUDA);
  const Tensor out = fused::decode_attention(in).cpu();
  const double tol = dtype == torch::kFloat ? 1e-4 : 1e-2;
  for (int64_t r = 0; r < s.b; ++r) {
    const int64_t pos = s.positions[r];
    auto positions = torch::full({1, 1}, pos, torch::TensorOptions().dtype(torch::kInt64).device(torch::kCUDA));
    auto rope = rope_tables(positions, s.rotary, in.rope_theta, dtype);
    auto q = apply_rope(in.q[r].view({1, s.heads, 1, s.d}), rope);     // [1, h, 1, d]
    auto k = apply_rope(in.k[r].view({1, s.kv_heads, 1, s.d}), rope);  // [1, kv, 1, d]
    auto keys = torch::cat({k_before[r].narrow(1, 0, pos), k[0]}, 1);  // [kv, pos + 1, d]
    auto values = torch::cat({v_before[r].narrow(1, 0, pos), in.v[r].view({s.kv_heads, 1, s.d})}, 1);
    EXPECT_LT(relative_error(in.k_cache[r].narrow(1, 0, pos + 1).cpu(), keys.cpu()), tol) << "row " << r;
    EXPECT_TRUE(torch::equal(in.v_cache[r].narrow(1, 0, pos + 1).cpu(), values.cpu())) << "row " << r;
    if (pos + 1 < s.capacity) {
      EXPECT_TRUE(torch::equal(in.k_cache[r].narrow(1, pos + 1, s.capacity - pos - 1),
                               k_before[r].narrow(1, pos + 1, s.capacity - pos - 1)));
    }
    const int64_t groups = s.heads / s.kv_heads;
    auto q64 = q[0].squeeze(1).to(torch::kFloat64).cpu();  // [h, d]
    auto k64 = keys.to(torch::kFloat64).cpu().repeat_interleave(groups, 0);
    auto v64 = values.to(torch::kFloat64).cpu().repeat_interleave(groups, 0);
    auto scores = torch::einsum("hd,htd->ht", {q64, k64}) / std::sqrt(static_cast<double>(s.d));
    auto want = torch::einsum("ht,htd->hd", {torch::softmax(scores, -1), v64}).reshape({-1});
    EXPECT_LT(relative_norm_error(out[r].to(torch::kFloat64), want), tol)
        << "row " << r << " at position " << pos << ", " << c10::toString(dtype);
  }
}

TEST(DecodeAttentionKernel, MatchesFloat64Reference) {
  REQUIRE_KERNELS();
  const std::vector<AttentionShape> shapes = {
      {1, 16, 8, 128, 128, 5000, {4321}},        // HoVLE's heads, many splits
      {2, 4, 4, 64, 64, 300, {0, 299}},          // only the new token; the last slot
      {3, 32, 32, 80, 32, 700, {650, 1, 64}},    // Phi-2's head dim, partial rotary, a split boundary
      {1, 8, 1, 128, 128, 70000, {65537}},       // 8 query heads per KV head, long
      {2, 12, 4, 96, 96, 200, {199, 130}},       // 3 query heads per KV head
      {1, 4, 2, 16, 16, 40, {17}},               // the fixtures' head dim
      {1, 4, 4, 256, 256, 129, {128}},
  };
  for (auto dtype : {torch::kBFloat16, torch::kFloat16, torch::kFloat}) {
    for (const auto& s : shapes) check_decode_attention(s, dtype);
  }
}

// RoPE and the cache append in the qkv product's epilogue (gemv_qkv_rope) against the product, then the attention's
// own RoPE launch: the same keys, values and output, bit for bit (both rotate with kernels/rope.cuh). Shapes: HoVLE's
// heads (k split over warps), partial rotary at Phi-2's head dim, 3 query heads per KV head, the fixtures' head dim;
// with the input norm in the prologue and without; one row and three at different positions.
TEST(DecodeAttentionKernel, RopeInTheQkvProductMatchesItsOwnRope) {
  REQUIRE_KERNELS();
  PoisonScope scope;
  torch::NoGradGuard no_grad;
  torch::manual_seed(12);
  struct Shape {
    int64_t heads, kv_heads, d, rotary, k;
  };
  const std::vector<Shape> shapes = {{16, 8, 128, 128, 2048}, {8, 8, 80, 32, 264}, {12, 4, 96, 96, 1032},
                                     {4, 2, 16, 16, 264}};
  for (auto dtype : {torch::kBFloat16, torch::kHalf})
  for (const auto& s : shapes)
  for (const bool with_norm : {false, true})
  for (const std::vector<int64_t>& positions : {std::vector<int64_t>{5}, std::vector<int64_t>{37, 1, 63}}) {
    const auto rows = static_cast<int64_t>(positions.size());
    const std::string what = std::string(c10::toString(dtype)) + ", head dim " + std::to_string(s.d) + ", rotary " +
                             std::to_string(s.rotary) + ", k " + std::to_string(s.k) + ", " + std::to_string(rows) +
                             " rows" + (with_norm ? ", norm" : "");
    auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA);
    const std::vector<GemvWeight> qkv = {
        {torch::randn({s.heads * s.d, s.k}, opts) * 0.05, torch::randn({s.heads * s.d}, opts)},
        {torch::randn({s.kv_heads * s.d, s.k}, opts) * 0.05, Tensor()},
        {torch::randn({s.kv_heads * s.d, s.k}, opts) * 0.05, torch::randn({s.kv_heads * s.d}, opts)}};
    const Tensor x = torch::randn({rows, 1, s.k}, opts) * 3;
    GemvNormStep norm;
    norm.weight = torch::empty({s.k}, opts).uniform_(0.5, 1.5);
    const GemvNormStep* norm_ptr = with_norm ? &norm : nullptr;
    const int64_t capacity = 64, q_size = s.heads * s.d, kv_size = s.kv_heads * s.d;

    DecodeAttentionInputs own;
    own.heads = s.heads, own.kv_heads = s.kv_heads, own.head_dim = s.d, own.rotary_dim = s.rotary;
    own.rope_theta = 10000.0;
    own.positions = torch::tensor(positions, torch::TensorOptions().dtype(torch::kInt64)).to(torch::kCUDA);
    own.k_cache = torch::randn({rows, s.kv_heads, capacity, s.d}, opts);
    own.v_cache = torch::randn({rows, s.kv_heads, capacity, s.d}, opts);
    DecodeAttentionInputs fused_in = own;
    fused_in.k_cache = own.k_cache.clone(), fused_in.v_cache = own.v_cache.clone();

    const Tensor proj = fused::gemv_parts(x, qkv, nullptr, {}, norm_ptr).view({rows, -1});
    own.q = proj.narrow(1, 0, q_size);
    own.k = proj.narrow(1, q_size, kv_size);
    own.v = proj.narrow(1, q_size + kv_size, kv_size);
    const Tensor want = fused::decode_attention(own);

    const Tensor rotated = fused::gemv_qkv_rope(x, qkv, fused_in, norm_ptr).view({rows, -1});
    fused_in.q = rotated.narrow(1, 0, q_size);
    fused_in.k = rotated.narrow(1, q_size, kv_size);
    fused_in.v = rotated.narrow(1, q_size + kv_size, kv_size);
    fused_in.rope_done = true;
    const Tensor got = fused::decode_attention(fused_in);

    EXPECT_TRUE(torch::equal(got, want)) << what << ": output";
    EXPECT_TRUE(torch::equal(fused_in.k_cache, own.k_cache)) << what << ": keys";
    EXPECT_TRUE(torch::equal(fused_in.v_cache, own.v_cache)) << what << ": values";
    EXPECT_TRUE(torch::equal(fused_in.v, own.v)) << what << ": v columns";
    // The q columns are rotated (no position here is 0, where RoPE is the identity); the k columns are the keys
    // written at each row's position.
    EXPECT_FALSE(torch::equal(fused_in.q, own.q)) << what << ": q columns";
    for (int64_t r = 0; r < rows; ++r)
      EXPECT_TRUE(torch::equal(fused_in.k[r], fused_in.k_cache[r].select(1, positions[r]).reshape({-1})))
          << what << ": k columns of row " << r;
  }
  // Heads that do not match the weights' rows are refused by name.
  auto opts = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  DecodeAttentionInputs in;
  in.heads = 4, in.kv_heads = 2, in.head_dim = 16, in.rotary_dim = 16;
  in.positions = torch::zeros({1}, torch::TensorOptions().dtype(torch::kInt64).device(torch::kCUDA));
  in.k_cache = torch::zeros({1, 2, 8, 16}, opts), in.v_cache = torch::zeros({1, 2, 8, 16}, opts);
  const std::vector<GemvWeight> wrong = {{torch::randn({48, 64}, opts), Tensor()},
                                         {torch::randn({32, 64}, opts), Tensor()},
                                         {torch::randn({32, 64}, opts), Tensor()}};
  const auto message = test::error_of([&] { fused::gemv_qkv_rope(torch::randn({1, 64}, opts), wrong, in); });
  EXPECT_NE(message.find("gemv_qkv_rope: q, k and v must have 64, 32 and 32 rows"), std::string::npos) << message;
  // So are caches of different capacities.
  const std::vector<GemvWeight> right = {{torch::randn({64, 64}, opts), Tensor()},
                                         {torch::randn({32, 64}, opts), Tensor()},
                                         {torch::randn({32, 64}, opts), Tensor()}};
  in.v_cache = torch::zeros({1, 2, 4, 16}, opts);
  const auto capacities = test::error_of([&] { fused::gemv_qkv_rope(torch::randn({1, 64}, opts), right, in); });
  EXPECT_NE(capacities.find("gemv_qkv_rope: the key and value caches must hold as many positions"), std::string::npos)
      << capacities;
}

TEST(InferenceKernels, RmsNormAndSiluMulMatchTheReference) {
  REQUIRE_KERNELS();
  PoisonScope scope;
  torch::manual_seed(3);
  for (auto dtype : {torch::kBFloat16, torch::kFloat}) {
    auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA);
    Norm norm(NormKind::RMSNorm, 2048, 1e-6);
    norm->to(torch::kCUDA, dtype);
    {
      torch::NoGradGuard no_grad;
      norm->weight.uniform_(0.5, 1.5);
    }
    Tensor x = torch::randn({3, 5, 2048}, opts) * 3;
    Tensor want = norm(x);  // gradients recorded: the reference path
    Tensor got;
    {
      torch::NoGradGuard no_grad;
      ASSERT_TRUE(uses_inference_kernels(x));
      got = norm(x);
    }
    EXPECT_LT(relative_error(got, want.detach()), dtype == torch::kFloat ? 1e-6 : 1e-2) << c10::toString(dtype);
    Tensor gate = torch::randn({7, 8192}, opts), up = torch::randn({7, 8192}, opts);
    torch::NoGradGuard no_grad;
    EXPECT_LT(relative_error(fused::silu_mul(gate, up), torch::silu(gate) * up), dtype == torch::kFloat ? 1e-6 : 1e-2)
        << c10::toString(dtype);
  }
}

// Greedy decoding's argmax against LibTorch's on the CPU: a vocabulary of HoVLE's odd size, values from a small set
// (ties: the first index wins), a NaN (it wins), rows starting off a 16-byte boundary, a row stride above the length.
TEST(InferenceKernels, ArgmaxMatchesTorch) {
  REQUIRE_KERNELS();
  torch::manual_seed(5);
  torch::NoGradGuard no_grad;
  for (auto dtype : {torch::kBFloat16, torch::kHalf, torch::kFloat}) {
    auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA);
    const Tensor dense = torch::randn({4, 92553}, opts) * 4;
    const Tensor ties = torch::randint(-3, 4, {3, 1001}, opts);  // every value many times over
    Tensor with_nan = torch::randn({2, 777}, opts);
    with_nan.index_put_({1, 500}, std::numeric_limits<float>::quiet_NaN());
    with_nan.index_put_({1, 600}, std::numeric_limits<float>::quiet_NaN());
    const Tensor wide = torch::randn({3, 4099}, opts);
    const Tensor column = torch::randn({300, 1}, opts);
    for (const Tensor& logits : {dense, ties, with_nan, wide.narrow(1, 3, 4000), wide.narrow(1, 1, 7), column.t(),
                                 column.t().expand({2, 300})}) {
      const Tensor want = logits.to(torch::kCPU).to(torch::kFloat).argmax(-1);
      const Tensor got = greedy_tokens(logits);
      ASSERT_EQ(got.scalar_type(), torch::kInt64);
      EXPECT_TRUE(torch::equal(got.to(torch::kCPU), want))
          << c10::toString(dtype) << " " << logits.sizes() << ": " << got.to(torch::kCPU) << " vs " << want;
    }
    EXPECT_EQ(greedy_tokens(with_nan)[1].item<int64_t>(), 500);
  }
}

// The fused small-batch products against the unfused LibTorch ops on the same inputs: parts side by side (n odd
// and even), with a conv step over a column range (outputs and the shifted state), SwiGLU and the residual add;
// and the residual add + RMSNorm.
TEST(InferenceKernels, FusedProductsMatchTheUnfusedOps) {
  REQUIRE_KERNELS();
  PoisonScope scope;
  torch::manual_seed(4);
  torch::NoGradGuard no_grad;
  // k = 264: each warp reads all of k; 1032 (129 chunks of 8): few output rows split k over 4 warps per row pair,
  // unevenly.
  for (auto dtype : {torch::kBFloat16, torch::kHalf})
  for (const int64_t k : {264, 1032}) {
    auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA);
    std::vector<GemvWeight> parts = {{torch::randn({96, k}, opts) * 0.1, torch::randn({96}, opts)},
                                     {torch::randn({41, k}, opts) * 0.1, Tensor()},
                                     {torch::randn({200, k}, opts) * 0.1, torch::randn({200}, opts)}};
    const GemvWeight gate{torch::randn({300, k}, opts) * 0.1, torch::randn({300}, opts)};
    const GemvWeight up{torch::randn({300, k}, opts) * 0.1, Tensor()};
    for (int64_t rows : {1, 3, 8}) {
      const std::string what =
          std::string(c10::toString(dtype)) + ", k=" + std::to_string(k) + ", " + std::to_string(rows) + " rows";
      const Tensor x = torch::randn({rows, 1, k}, opts);
      std::vector<Tensor> pieces;
      for (const auto& p : parts) pieces.push_back(torch::linear(x, p.weight, p.bias));
      const Tensor want = torch::cat(pieces, -1);
      ASSERT_TRUE(fused::gemv_applies(x, parts)) << what;
      const Tensor products = fused::gemv_parts(x, parts);
      EXPECT_LT(relative_error(products, want), 1e-2) << what << ": parts";

      // Columns 20..149 (across all three parts) through the conv step, against the reference step on the same
      // (bit-identical) products.
      GemvConvStep conv;
      conv.begin = 20, conv.end = 150;
      conv.state = torch::randn({rows, 130, 3}, opts);
      conv.weight = torch::randn({130, 4}, opts) * 0.5;
      conv.bias = torch::randn({130}, opts);
      Tensor state_ref = conv.state.clone();
      Tensor want_conv = products.view({rows, -1}).clone();
      want_conv.narrow(1, 20, 130).copy_(
          causal_conv1d_step(want_conv.narrow(1, 20, 130).contiguous(), state_ref, conv.weight, conv.bias, true));
      const Tensor got_conv = fused::gemv_parts(x, parts, &conv).view({rows, -1});
      EXPECT_LT(relative_error(got_conv, want_conv), 1e-2) << what << ": conv columns";
      EXPECT_LT(relative_error(conv.state, state_ref), 1e-2) << what << ": conv state";

      const Tensor swiglu = torch::silu(torch::linear(x, gate.weight, gate.bias)) * torch::linear(x, up.weight);
      EXPECT_LT(relative_error(fused::gemv_swiglu(x, gate, up), swiglu), 1e-2) << what << ": swiglu";
      const Tensor residual = torch::randn({rows, 1, 96}, opts);
      EXPECT_LT(relative_error(fused::gemv_residual(x, parts[0], residual),
                               residual + torch::linear(x, parts[0].weight, parts[0].bias)),
                1e-2)
          << what << ": residual";
    }
    if (k != 264) continue;
    for (int64_t d : {2048, 5000}) {  // 5000: beyond the channels a thread keeps in registers (read back)
      Norm norm(NormKind::RMSNorm, d, 1e-6);
      norm->to(torch::kCUDA, dtype);
      norm->weight.uniform_(0.5, 1.5);
      const Tensor a = torch::randn({3, 1, d}, opts) * 3, delta = torch::randn({3, 1, d}, opts);
      const auto [sum, normed] = fused::add_rms_norm(a, delta, norm->weight, 1e-6);
      Tensor want_normed;
      {
        torch::AutoGradMode grad(true);  // the reference path
        want_normed = norm(a + delta).detach();
      }
      EXPECT_TRUE(torch::equal(sum, a + delta)) << c10::toString(dtype) << " d=" << d;
      EXPECT_LT(relative_error(normed, want_normed), 1e-2) << c10::toString(dtype) << " d=" << d;
    }
  }
}

// A norm in the products' prologue (the layer's input norm before the mixer's products, the residual add and post
// norm before the MLP's gate and up) against the norm kernel and then the product. The normed x is rounded the
// same way; only rstd's summation order differs, so a rare element may round the other way. k: 264 (33 chunks of 8,
// one per thread or none), 2048 (two per thread), 2504 (313: a second round for some threads, with and without its
// second chunk).
TEST(InferenceKernels, NormInTheProductsPrologueMatchesNormThenProduct) {
  REQUIRE_KERNELS();
  PoisonScope scope;
  torch::manual_seed(9);
  torch::NoGradGuard no_grad;
  for (auto dtype : {torch::kBFloat16, torch::kHalf})
  for (const int64_t k : {264, 2048, 2504}) {
    auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA);
    const std::vector<GemvWeight> parts = {{torch::randn({96, k}, opts) * 0.05, torch::randn({96}, opts)},
                                           {torch::randn({1000, k}, opts) * 0.05, Tensor()}};
    const GemvWeight gate{torch::randn({300, k}, opts) * 0.05, Tensor()};
    const GemvWeight up{torch::randn({300, k}, opts) * 0.05, torch::randn({300}, opts)};
    const Tensor weight = torch::empty({k}, opts).uniform_(0.5, 1.5);
    for (int64_t rows : {1, 3, 8}) {
      const std::string what =
          std::string(c10::toString(dtype)) + ", k=" + std::to_string(k) + ", " + std::to_string(rows) + " rows";
      const Tensor x = torch::randn({rows, 1, k}, opts) * 3, delta = torch::randn({rows, 1, k}, opts);
      GemvNormStep norm;
      norm.weight = weight, norm.eps = 1e-6;
      ASSERT_TRUE(fused::gemv_applies(x, parts, &norm)) << what;
      const Tensor want = fused::gemv_parts(fused::rms_norm(x, weight, 1e-6), parts);
      const Tensor got = fused::gemv_parts(x, parts, nullptr, {}, &norm);
      EXPECT_LT(relative_error(got, want), 1e-2) << what << ": norm, then the parts";

      Tensor sum;
      GemvNormStep add_norm = norm;
      add_norm.delta = delta, add_norm.sum = &sum;
      const auto [want_sum, normed] = fused::add_rms_norm(x, delta, weight, 1e-6);
      const Tensor got_swiglu = fused::gemv_swiglu(x, gate, up, &add_norm);
      EXPECT_TRUE(torch::equal(sum, want_sum)) << what << ": x + delta";
      EXPECT_LT(relative_error(got_swiglu, fused::gemv_swiglu(normed, gate, up)), 1e-2)
          << what << ": add, norm, swiglu";
      // A mutation check of the test itself: without the norm the products differ by far more than rounding.
      EXPECT_GT(relative_error(fused::gemv_parts(x, parts), want), 0.5) << what;
    }
  }
  // Rows of x that do not fit the kernel's shared memory (8 x 8192 x 2 bytes) are not taken.
  auto opts = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  GemvNormStep wide;
  wide.weight = torch::ones({8192}, opts);
  EXPECT_FALSE(fused::gemv_applies(torch::randn({8, 8192}, opts), {{torch::randn({16, 8192}, opts), Tensor()}}, &wide));
  // A decoder layer then keeps its norm as a launch of its own, so the products after it still take the kernels.
  Norm norm(NormKind::RMSNorm, 8192, 1e-6);
  norm->to(torch::kCUDA, torch::kBFloat16);
  EXPECT_FALSE(norm->fuses_into_products(torch::randn({8, 1, 8192}, opts)));
  EXPECT_TRUE(norm->fuses_into_products(torch::randn({2, 1, 8192}, opts)));
}

// The fused Mamba-2 step (SSD recurrence, D, gated norm) against float64 on the same inputs, y rounded to the
// element type between the step and the norm as the unfused path rounds it. Shapes: both mixers' layouts (norm
// before or after the gate, with or without D, a shared or per-channel norm weight), grouped and ungrouped x and B,
// head dims 64, 80 and 128, inputs as strided columns of one buffer.
TEST(MambaStepKernel, MatchesFloat64) {
  REQUIRE_KERNELS();
  PoisonScope scope;
  torch::manual_seed(21);
  torch::NoGradGuard no_grad;
  struct Shape {
    int64_t b, h, kv, p, n;
    bool shared_weight, norm_before_gate, with_D;
  };
  // p = 200 and 256 give blocks of more than one pass of state rows (25 and 32 rows in 8 blocks).
  const std::vector<Shape> shapes = {{1, 16, 8, 128, 128, true, true, false}, {3, 4, 2, 80, 80, false, false, true},
                                     {2, 6, 6, 64, 64, true, false, true},    {1, 8, 1, 128, 128, false, true, false},
                                     {2, 4, 2, 64, 160, true, true, true},    {1, 2, 1, 96, 256, false, false, false},
                                     {1, 3, 3, 200, 64, false, true, true},   {2, 2, 1, 256, 32, true, false, false}};
  for (const auto& sh : shapes) {
    for (auto dtype : {torch::kFloat, torch::kBFloat16, torch::kHalf}) {
      const std::string what = std::string(c10::toString(dtype)) + " b=" + std::to_string(sh.b) +
                               " h=" + std::to_string(sh.h) + " kv=" + std::to_string(sh.kv) +
                               " p=" + std::to_string(sh.p) + " n=" + std::to_string(sh.n);
      auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA);
      const int64_t b = sh.b, h = sh.h, kv = sh.kv, p = sh.p, n = sh.n;
      const Tensor buf = torch::randn({b, kv * p + kv * n + h * n + h + h * p + 3}, opts);
      MambaStepInputs in;
      in.heads = h, in.head_dim = p, in.state_size = n, in.x_heads = kv, in.b_heads = kv, in.c_heads = h;
      int64_t col = 0;
      auto take = [&](int64_t width) {
        auto t = buf.narrow(1, col, width);
        col += width;
        return t;
      };
      in.x = take(kv * p), in.B = take(kv * n), in.C = take(h * n), in.dt = take(h), in.z = take(h * p);
      in.A_log = (torch::rand({h}, opts) * 2 - 1);
      in.dt_bias = torch::randn({h}, opts) * 0.5;
      if (sh.with_D) in.D = torch::randn({h}, opts);
      in.norm_weight = torch::rand({sh.shared_weight ? p : h * p}, opts) + 0.5;
      in.norm_before_gate = sh.norm_before_gate;
      in.eps = 1e-5;
      in.state = torch::randn({b, h, p, n}, opts.dtype(torch::kFloat));
      ASSERT_TRUE(fused::mamba_step_applies(in)) << what;

      auto f64 = [](const Tensor& t) { return t.to(torch::kDouble); };
      SsdStepInputs ref;
      ref.x = f64(in.x).view({b, kv, p}).repeat_interleave(h / kv, 1);
      ref.B = f64(in.B).view({b, kv, n}).repeat_interleave(h / kv, 1);
      ref.C = f64(in.C).view({b, h, n});
      ref.dt = f64(in.dt);
      ref.A = -torch::exp(f64(in.A_log));
      ref.dt_bias = f64(in.dt_bias);
      ref.dt_softplus = true;
      if (sh.with_D) ref.D = f64(in.D);
      Tensor state64 = f64(in.state);
      const Tensor y = ssd_step(ref, state64).to(dtype).to(torch::kDouble).reshape({b, h * p});
      const Tensor want = gated_rmsnorm(y, f64(in.z), f64(in.norm_weight), p, in.eps, sh.norm_before_gate);

      // Both of the kernel's layouts: a cluster of blocks per head where clusters run, one block per head (the
      // path below compute capability 9.0).
      const Tensor state0 = in.state.clone();
      for (bool clusters : {true, false}) {
        in.state = state0.clone();
        in.allow_clusters = clusters;
        const std::string how = what + (clusters ? " (clusters where they run)" : " (one block per head)");
        const Tensor got = fused::mamba_step(in);
        EXPECT_LT(relative_error(got, want), dtype == torch::kFloat ? 1e-4 : 2e-2) << how << ": output";
        EXPECT_LT(relative_error(in.state, state64), 1e-5) << how << ": state";
      }
    }
  }
}

// A model on the GPU decoded through a CUDA graph: prefill + steps equal its full forward, and the graph's logits
// equal the kernel path without a graph.
void check_graph_decode(CausalLMImpl& lm, const Tensor& ids_cpu, double tol, const std::string& what) {
  PoisonScope scope;
  torch::NoGradGuard no_grad;
  ASSERT_EQ(DecodeStepGraph::unavailable_reason(lm), "") << what;
  const Tensor ids = ids_cpu.to(torch::kCUDA);
  const int64_t b = ids.size(0), prefill = 3;
  const Tensor full = lm.forward(ids).logits.to(torch::kFloat);
  const Tensor eager = decode_logits(lm, ids, prefill, /*reserve=*/true).to(torch::kFloat);

  auto state = lm.new_decode_state();
  ForwardOptions o;
  o.state = &state;
  std::vector<Tensor> pieces = {lm.forward(ids.slice(1, 0, prefill), o).logits.to(torch::kFloat)};
  DecodeStepGraph graph(lm, state, b, ids.size(1));
  for (int64_t t = prefill; t < ids.size(1); ++t)
    pieces.push_back(graph.step(ids.select(1, t)).to(torch::kFloat).clone().unsqueeze(1));
  const Tensor graphed = torch::cat(pieces, 1);
  EXPECT_EQ(state.length, ids.size(1)) << what;
  EXPECT_LT(relative_norm_error(graphed, full), tol) << what << ": graph decode vs full forward";
  EXPECT_LT(relative_norm_error(eager, full), tol) << what << ": kernel decode vs full forward";
  EXPECT_LT(relative_norm_error(graphed, eager), 1e-6) << what << ": graph vs the same kernels launched one by one";
}

TEST(DecodeGraph, TeachersDecodeLikeTheirFullForward) {
  REQUIRE_KERNELS();
  for (const std::string family : {"llama", "qwen2", "phi", "internlm2"}) {
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      auto lm = load_causal_lm(CheckpointReader(teacher_dir(family)), dtype, torch::kCUDA);
      check_graph_decode(*lm, fixture_ids(family), dtype == torch::kFloat ? 1e-5 : 2e-2,
                         family + " " + c10::toString(dtype));
    }
  }
}

TEST(DecodeGraph, StudentsDecodeLikeTheirFullForward) {
  REQUIRE_KERNELS();
  for (auto mixer : {MixerKind::Seeded, MixerKind::Mamba2}) {
    for (const std::string layout : {"MAM", "MMM"}) {
      for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
        auto lm = llama_student(layout, mixer);
        lm->to(torch::kCUDA, dtype);
        check_graph_decode(*lm, fixture_ids("llama"), dtype == torch::kFloat ? 1e-4 : 3e-2,
                           mixer_kind_name(mixer) + " " + layout + " " + c10::toString(dtype));
      }
    }
  }
}

// generate() through the graph picks the same tokens as without it.
TEST(DecodeGraph, GenerateGivesTheSameTokensWithAndWithoutGraphs) {
  REQUIRE_KERNELS();
  torch::NoGradGuard no_grad;
  auto lm = load_causal_lm(CheckpointReader(teacher_dir("qwen2")), torch::kFloat, torch::kCUDA);
  trainer::GenerateOptions o;
  o.max_new_tokens = 12;
  const auto ids = fixture_ids("qwen2");
  auto with_graph = trainer::generate(*lm, ids, o);
  o.cuda_graphs = false;
  auto without = trainer::generate(*lm, ids, o);
  EXPECT_TRUE(torch::equal(with_graph, without)) << with_graph << "\nvs\n" << without;
}

// Prompts of different lengths decoded on the GPU: through the kernels (each row's position from device memory) and
// through a graph, each row equals its own full forward.
TEST(DecodeGraph, RaggedRowsDecodeLikeEachAlone) {
  REQUIRE_KERNELS();
  PoisonScope scope;
  torch::manual_seed(13);
  auto teacher = load_causal_lm(CheckpointReader(teacher_dir("llama")), torch::kFloat, torch::kCUDA);
  check_ragged_decode(*teacher, "llama on CUDA");
  auto student = llama_student("MAM", MixerKind::Seeded);
  student->to(torch::kCUDA);
  check_ragged_decode(*student, "seeded MAM on CUDA", 1e-4);
  for (auto* lm : {teacher.get(), student.get()}) {
    torch::NoGradGuard no_grad;
    auto c = ragged_case(lm->config.vocab_size);
    trainer::GenerateOptions o;
    o.max_new_tokens = 8;
    const auto graphed = trainer::generate(*lm, c.prompts, o);
    for (size_t r = 0; r < c.prompts.size(); ++r) {
      o.cuda_graphs = false;
      const auto alone = trainer::generate(*lm, std::vector<Tensor>{c.prompts[r]}, o);
      o.cuda_graphs = true;
      EXPECT_TRUE(torch::equal(graphed[r], alone[0])) << "row " << r << ": " << graphed[r] << " vs " << alone[0];
    }
  }
}

// On CUDA in bf16 the students' Mamba-2 layers decode through the fused step (one product launch with the conv,
// one step kernel), not silently through the unfused path.
TEST(DecodeGraph, StudentsTakeTheFusedMambaStep) {
  REQUIRE_KERNELS();
  PoisonScope scope;
  torch::NoGradGuard no_grad;
  for (auto mixer : {MixerKind::Seeded, MixerKind::Mamba2}) {
    auto lm = llama_student("MMM", mixer);
    lm->to(torch::kCUDA, torch::kBFloat16);
    auto state = lm->new_decode_state();
    ForwardOptions o;
    o.state = &state;
    const Tensor ids = fixture_ids("llama");
    lm->forward(ids.slice(1, 0, 3).to(torch::kCUDA), o);
    MixerContext ctx;
    ctx.state = state.layers[0].get();
    ctx.positions = state.next_positions(ids.size(0), 1, torch::kCUDA);
    const auto u = torch::randn({ids.size(0), 1, lm->config.hidden_size},
                                torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA));
    Tensor y;
    if (auto* seeded = dynamic_cast<SeededMixerImpl*>(lm->layers[0]->mixer.get())) y = seeded->fused_step(u, ctx);
    if (auto* mamba2 = dynamic_cast<Mamba2MixerImpl*>(lm->layers[0]->mixer.get())) y = mamba2->fused_step(u, ctx);
    EXPECT_TRUE(y.defined()) << mixer_kind_name(mixer);
  }
}

}  // namespace
}  // namespace carve::model
