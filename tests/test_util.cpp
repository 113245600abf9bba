#include "tests/test_util.h"

#include <unistd.h>

#include <filesystem>

#include "comm/mpi_session.h"

namespace carve::test {

std::string fixture(const std::string& relative) { return std::string(CARVE_FIXTURES_DIR) + "/" + relative; }

std::string scratch_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("carve_test_" + std::to_string(::getpid())) / name;
  std::filesystem::remove_all(dir);
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

}  // namespace carve::test
