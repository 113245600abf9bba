#include "tests/test_util.h"

#include <unistd.h>

#include <filesystem>
#include <random>

#include "base/fs.h"
#include "comm/mpi_session.h"
#include "data/samples.h"
#include "model/safetensors.h"

namespace carve::test {

std::string fixture(const std::string& relative) { return std::string(CARVE_FIXTURES_DIR) + "/" + relative; }

std::string scratch_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("carve_test_" + std::to_string(::getpid())) / name;
  fs::remove_tree(dir.string());
  std::filesystem::create_directories(dir);
  return dir.string();
}

void ensure_mpi() {
  static comm::MpiSession session;  // finalised at exit
}

double relative_norm_error(const torch::Tensor& a, const torch::Tensor& b) {
  auto a64 = a.detach().to(torch::kCPU, torch::kFloat64);
  auto b64 = b.detach().to(torch::kCPU, torch::kFloat64);
  return (a64 - b64).norm().item<double>() / b64.norm().item<double>();
}

double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  auto a64 = a.detach().to(torch::kCPU, torch::kFloat64);
  auto b64 = b.detach().to(torch::kCPU, torch::kFloat64);
  double scale = b64.abs().max().item<double>();
  return (a64 - b64).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

data::SampleSet random_samples(int n, uint64_t seed, bool images, int64_t hidden) {
  std::mt19937_64 rng(seed);
  torch::manual_seed(seed);  // the image rows below
  data::SampleSet s;
  s.vocab_size = 96;
  s.offsets = {0};
  s.image_offsets = {0};
  std::vector<torch::Tensor> rows;
  for (int i = 0; i < n; ++i) {
    const int len = 3 + static_cast<int>(rng() % 40);
    int image_tokens = 0;
    for (int t = 0; t < len; ++t) {
      int id = static_cast<int>(rng() % 95);
      if (images && i % 3 == 0 && t % 7 == 2) {
        id = 95;
        ++image_tokens;
      }
      s.tokens.push_back(id);
      s.loss_mask.push_back(t >= len / 2 ? 1 : 0);
    }
    s.offsets.push_back(static_cast<int64_t>(s.tokens.size()));
    if (images) {
      rows.push_back(torch::randn({image_tokens, hidden}, torch::TensorOptions().dtype(torch::kFloat32)) * 0.5);
      s.image_offsets.push_back(s.image_offsets.back() + image_tokens);
    }
  }
  if (images) {
    s.image_embeds = torch::cat(rows).to(torch::kBFloat16);
    s.image_token_id = 95;
  } else {
    s.image_offsets.clear();
  }
  return s;
}

comm::MpiCommunicator& world_communicator() {
  ensure_mpi();
  static comm::MpiCommunicator world(MPI_COMM_WORLD, "test world");
  return world;
}

std::string shared_scratch_dir(const std::string& name) {
  ensure_mpi();
  return comm::broadcast_text(comm::world_rank() == 0 ? scratch_dir(name) : std::string());
}

std::map<std::string, torch::Tensor> safetensors_map(const std::string& path, const std::string& prefix) {
  model::SafetensorsFile file(path);
  std::map<std::string, torch::Tensor> out;
  for (const auto& name : file.names())
    if (name.rfind(prefix, 0) == 0) out[name] = file.load(name);
  return out;
}

}  // namespace carve::test
