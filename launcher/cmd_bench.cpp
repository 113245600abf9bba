// carve bench: benchmarks printed as a table and, with --json, written as JSON. Speed targets live here, never in
// tests. `carve bench ssd` times the LibTorch SSD reference at the shapes the CUDA kernels are measured at;
// `carve bench cache` is in bench_cache.cpp, `carve bench distill` in bench_distill.cpp.
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>

#include "base/fs.h"
#include "base/text.h"
#include "launcher/benches.h"
#include "launcher/model_options.h"
#include "launcher/subcommands.h"
#include "model/ssd.h"

namespace carve::launcher {
namespace {

struct SsdShape {
  std::string name;
  int64_t b, l, h, p, g, n, chunk;
};

// The shapes of the kernel issue (TARGETS.md) and a small one that a CPU finishes quickly.
const std::vector<SsdShape>& ssd_presets() {
  static const std::vector<SsdShape> presets = {
      {"hovle", 4, 4096, 16, 128, 16, 128, 128},      {"phi2", 4, 2048, 32, 80, 32, 80, 256},
      {"mamba2-2.7b", 8, 4096, 80, 64, 1, 128, 256}, {"long", 1, 32768, 16, 128, 16, 128, 128},
      {"tiny", 1, 512, 4, 32, 4, 32, 64},
  };
  return presets;
}

SsdShape parse_shape(const std::string& text) {
  for (const auto& s : ssd_presets())
    if (s.name == text) return s;
  // name=BxLxHxPxGxNxCHUNK
  const auto eq = text.find('=');
  std::vector<int64_t> v;
  if (eq != std::string::npos) v = split_integers(text.substr(eq + 1), 'x');
  std::string names;
  for (const auto& s : ssd_presets()) names += (names.empty() ? "" : ", ") + s.name;
  if (v.size() != 7 || *std::min_element(v.begin(), v.end()) <= 0 || v[2] % v[4] != 0)
    throw UsageError("--shapes: '" + text + "' is neither a preset (" + names +
                     ") nor name=BxLxHxPxGxNxCHUNK with positive sizes and H divisible by G");
  return {text.substr(0, eq), v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
}

void synchronize(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

// Median wall time of `fn` in milliseconds over `repeat` runs after `warmup` runs, synchronizing the device.
template <typename F>
double median_ms(F&& fn, int warmup, int repeat, torch::Device device) {
  for (int i = 0; i < warmup; ++i) fn();
  synchronize(device);
  std::vector<double> times;
  for (int i = 0; i < repeat; ++i) {
    auto start = std::chrono::steady_clock::now();
    fn();
    synchronize(device);
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

nlohmann::json bench_ssd_shape(const SsdShape& s, torch::ScalarType dtype, torch::Device device, int warmup,
                               int repeat) {
  torch::manual_seed(0);
  auto act = torch::TensorOptions().dtype(dtype).device(device);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  model::SsdInputs in;
  in.x = torch::randn({s.b, s.l, s.h, s.p}, act).requires_grad_();
  in.dt = (torch::randn({s.b, s.l, s.h}, act) - 2).requires_grad_();
  in.A = -torch::rand({s.h}, f32).mul(15).add(1).requires_grad_();
  in.B = (torch::randn({s.b, s.l, s.g, s.n}, act) / std::sqrt(static_cast<double>(s.n))).requires_grad_();
  in.C = (torch::randn({s.b, s.l, s.g, s.n}, act) / std::sqrt(static_cast<double>(s.n))).requires_grad_();
  in.D = torch::ones({s.h}, f32).requires_grad_();
  in.dt_bias = torch::zeros({s.h}, f32).requires_grad_();
  in.dt_softplus = true;
  in.chunk_size = s.chunk;
  auto grad_y = torch::randn({s.b, s.l, s.h, s.p}, act);

  double fwd = median_ms([&] {
    torch::NoGradGuard no_grad;
    model::ssd_chunked(in, false);
  }, warmup, repeat, device);
  double fwd_bwd = median_ms([&] {
    auto y = model::ssd_chunked(in, false).y;
    y.backward(grad_y);
  }, warmup, repeat, device);
  // Bytes floor of the forward: read x, dt, B, C and write y once.
  const double elem = static_cast<double>(torch::elementSize(dtype));
  const double bytes = elem * static_cast<double>(2 * s.b * s.l * s.h * s.p + s.b * s.l * s.h + 2 * s.b * s.l * s.g * s.n);
  return {{"shape", s.name}, {"b", s.b}, {"l", s.l}, {"h", s.h}, {"p", s.p}, {"g", s.g}, {"n", s.n},
          {"chunk", s.chunk}, {"dtype", c10::toString(dtype)}, {"device", device.str()}, {"forward_ms", fwd},
          {"forward_backward_ms", fwd_bwd}, {"forward_bytes", bytes},
          {"tokens_per_s_forward", static_cast<double>(s.b * s.l) / (fwd / 1e3)}};
}

}  // namespace

int bench_ssd(const std::vector<std::string>& args) {
  std::string shapes, dtype_text, device_text, json_path;
  int warmup = 0, repeat = 0;
  po::options_description desc("carve bench ssd");
  desc.add_options()("shapes", po::value<std::string>(&shapes)->default_value("hovle,phi2,mamba2-2.7b,long"),
                     "comma-separated presets (hovle, phi2, mamba2-2.7b, long, tiny) or name=BxLxHxPxGxNxCHUNK")(
      "dtype", po::value<std::string>(&dtype_text)->default_value("bfloat16"), "activation dtype")(
      "device", po::value<std::string>(&device_text)->default_value(torch::cuda::is_available() ? "cuda" : "cpu"),
      "cpu | cuda | cuda:N")("warmup", po::value<int>(&warmup)->default_value(2), "untimed runs first")(
      "repeat", po::value<int>(&repeat)->default_value(10), "timed runs (the median is reported)")(
      "json", po::value<std::string>(&json_path)->default_value(""), "also write the results to this JSON file");
  auto parsed = parse_options("bench ssd", desc, args);
  if (parsed.help) {
    std::cout << "usage: carve bench ssd [--shapes hovle,phi2] [--device cuda] [--json FILE]\n" << desc << "\n";
    return 0;
  }
  if (warmup < 0 || repeat < 1) throw UsageError("--warmup must be >= 0 and --repeat >= 1");
  const auto dtype = parse_dtype(dtype_text, "dtype");
  const auto device = parse_device(device_text, "device");
  std::vector<SsdShape> list;
  std::stringstream in(shapes);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) list.push_back(parse_shape(item));

  std::cout << "LibTorch SSD reference (ssd_chunked), " << c10::toString(dtype) << " on " << device.str()
            << ", median of " << repeat << "\n";
  std::cout << std::left << std::setw(14) << "shape" << std::setw(34) << "b l h p g n chunk" << std::right
            << std::setw(12) << "fwd ms" << std::setw(14) << "fwd+bwd ms" << std::setw(14) << "Mtok/s fwd" << "\n";
  nlohmann::json results = nlohmann::json::array();
  for (const auto& s : list) {
    auto r = bench_ssd_shape(s, dtype, device, warmup, repeat);
    std::ostringstream dims;
    dims << s.b << " " << s.l << " " << s.h << " " << s.p << " " << s.g << " " << s.n << " " << s.chunk;
    std::cout << std::left << std::setw(14) << s.name << std::setw(34) << dims.str() << std::right << std::fixed
              << std::setprecision(2) << std::setw(12) << r["forward_ms"].get<double>() << std::setw(14)
              << r["forward_backward_ms"].get<double>() << std::setw(14)
              << r["tokens_per_s_forward"].get<double>() / 1e6 << "\n"
              << std::flush;
    results.push_back(r);
  }
  if (!json_path.empty()) fs::write_file_atomic(json_path, results.dump(2) + "\n");
  return 0;
}

int bench_main(const std::vector<std::string>& args) {
  return run_action("bench", {{"ssd", "the LibTorch SSD reference at the kernel shapes", bench_ssd},
                              {"cache", "precompute, streaming vs plain reads, a consumer's wait", bench_cache},
                              {"distill", "stage-1 tokens/s per GPU for 1 and all processes, scaling, waits", bench_distill}},
                    args);
}

}  // namespace carve::launcher
