// carve bench kernels: the SSD scan (forward, forward+backward) of carve's CUDA kernels beside the LibTorch reference
// and, when given a Python with triton, mamba_ssm's Triton `mamba_chunk_scan_combined` timed in the same run
// (scripts/bench_triton_ssd.py), next to the bytes floor over the copy bandwidth measured in the run. Then the
// causal conv and the gated norm at each shape's mixer sizes. Ratios are quoted against the other columns of the
// same run; docs/kernels.md records results.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/error.h"
#include "base/fs.h"
#include "base/text.h"
#include "launcher/benches.h"
#include "launcher/model_options.h"
#include "launcher/subcommands.h"
#include "model/gated_norm.h"
#include "model/kernel_ops.h"

namespace carve::launcher {
namespace {

using torch::Tensor;

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
  const auto eq = text.find('=');  // name=BxLxHxPxGxNxCHUNK
  std::vector<int64_t> v;
  if (eq != std::string::npos) v = split_integers(text.substr(eq + 1), 'x');
  std::string names;
  for (const auto& s : ssd_presets()) names += (names.empty() ? "" : ", ") + s.name;
  if (v.size() != 7 || *std::min_element(v.begin(), v.end()) <= 0 || v[2] % v[4] != 0)
    throw UsageError("--shapes: '" + text + "' is neither a preset (" + names +
                     ") nor name=BxLxHxPxGxNxCHUNK with positive sizes and H divisible by G");
  return {text.substr(0, eq), v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
}

std::string shape_spec(const SsdShape& s) {
  std::ostringstream o;
  o << s.name << "=" << s.b << "x" << s.l << "x" << s.h << "x" << s.p << "x" << s.g << "x" << s.n << "x" << s.chunk;
  return o.str();
}

// Median wall time of `fn` in ms over `repeat` runs after `warmup`, each run synchronized and preceded by `flush`
// (outside the timing), as triton.testing.do_bench clears the L2 cache between runs.
template <typename F, typename G>
double median_ms(F&& fn, G&& flush, int warmup, int repeat, torch::Device device) {
  for (int i = 0; i < warmup; ++i) fn();
  synchronize(device);
  std::vector<double> times;
  for (int i = 0; i < repeat; ++i) {
    flush();
    synchronize(device);
    const auto start = std::chrono::steady_clock::now();
    fn();
    synchronize(device);
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

struct Bench {
  torch::Device device;
  int warmup, repeat;
  Tensor l2_flush;  // 256 MB written before each timed run on CUDA
  void flush() {
    if (l2_flush.defined()) l2_flush.zero_();
  }
  template <typename F>
  double time(F&& fn) {
    return median_ms(fn, [&] { flush(); }, warmup, repeat, device);
  }
};

model::SsdInputs random_scan_inputs(const SsdShape& s, torch::ScalarType dtype, torch::Device device) {
  torch::manual_seed(0);
  auto act = torch::TensorOptions().dtype(dtype).device(device);
  auto f32 = act.dtype(torch::kFloat32);
  model::SsdInputs in;
  in.x = torch::randn({s.b, s.l, s.h, s.p}, act).requires_grad_();
  in.dt = (torch::randn({s.b, s.l, s.h}, act) - 2).requires_grad_();
  in.A = (-(torch::rand({s.h}, f32) * 15 + 1)).requires_grad_();
  in.B = (torch::randn({s.b, s.l, s.g, s.n}, act) / std::sqrt(static_cast<double>(s.n))).requires_grad_();
  in.C = (torch::randn({s.b, s.l, s.g, s.n}, act) / std::sqrt(static_cast<double>(s.n))).requires_grad_();
  in.D = torch::ones({s.h}, f32).requires_grad_();
  in.dt_bias = torch::zeros({s.h}, f32).requires_grad_();
  in.dt_softplus = true;
  in.chunk_size = s.chunk;
  return in;
}

void clear_grads(std::initializer_list<Tensor> ts) {
  for (Tensor t : ts)  // a copy shares the tensor, and with it the gradient slot
    if (t.defined()) t.mutable_grad().reset();
}

// Runs the enclosed code in one kernel mode and restores the mode found before (--kernels / CARVE_KERNELS).
class KernelModeScope {
 public:
  explicit KernelModeScope(model::KernelMode mode) : saved_(model::kernel_mode()) { model::set_kernel_mode(mode); }
  ~KernelModeScope() { model::set_kernel_mode(saved_); }

 private:
  model::KernelMode saved_;
};

struct Pair {
  double fwd = NAN, fwd_bwd = NAN;
};

Pair time_scan(Bench& bench, const model::SsdInputs& in, const Tensor& gy, model::KernelMode mode) {
  const KernelModeScope scope(mode);
  Pair t;
  t.fwd = bench.time([&] {
    torch::NoGradGuard no_grad;
    model::ssd_scan(in, false);
  });
  t.fwd_bwd = bench.time([&] {
    clear_grads({in.x, in.dt, in.A, in.B, in.C, in.D, in.dt_bias});
    model::ssd_scan(in, false).y.backward(gy);
  });
  return t;
}

// Bytes the scan must move at least (elements of x, dt, B, C read and y written once; the backward reads them and
// the output gradient and writes the four input gradients), and its useful FLOPs (causal halves counted once).
struct ScanCost {
  double fwd_bytes, fwd_bwd_bytes, fwd_flops;
};

ScanCost scan_cost(const SsdShape& s, double elem) {
  const double x = static_cast<double>(s.b * s.l * s.h * s.p), dt = static_cast<double>(s.b * s.l * s.h);
  const double bc = static_cast<double>(s.b * s.l * s.g * s.n);
  const double q = static_cast<double>(std::min(s.chunk, s.l)), c = std::ceil(static_cast<double>(s.l) / q);
  const double heads = static_cast<double>(s.b) * c * static_cast<double>(s.h);
  const double groups = static_cast<double>(s.b) * c * static_cast<double>(s.g);
  const double p = static_cast<double>(s.p), n = static_cast<double>(s.n);
  const double flops = heads * (2 * q * p * n + q * q * p + 2 * q * n * p) + groups * q * q * n;
  return {elem * (2 * x + dt + 2 * bc), elem * (5 * x + 3 * dt + 6 * bc), flops};
}

// The script's results by shape name.
std::map<std::string, Pair> read_triton_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("--triton-json: cannot open '" + path + "'");
  std::map<std::string, Pair> out;
  try {
    for (const auto& r : nlohmann::json::parse(in))
      out[r.at("shape").get<std::string>()] = {r.at("forward_ms"), r.at("forward_backward_ms")};
  } catch (const nlohmann::json::exception& e) {
    throw Error("--triton-json: '" + path + "' is not the output of scripts/bench_triton_ssd.py: " + e.what());
  }
  return out;
}

// Runs scripts/bench_triton_ssd.py in a child process; returns its results by shape name (empty on failure, with
// the reason printed).
std::map<std::string, Pair> run_triton(const std::string& python, const std::string& triton_path,
                                       const std::vector<SsdShape>& shapes, int repeat, const std::string& json_tmp) {
  std::string specs;
  for (const auto& s : shapes) specs += (specs.empty() ? "" : ",") + shape_spec(s);
  const std::string script = std::string(CARVE_SOURCE_DIR) + "/scripts/bench_triton_ssd.py";
  const std::string cmd = "PYTHONPATH='" + triton_path + "'${PYTHONPATH:+:$PYTHONPATH} '" + python + "' '" + script +
                          "' --shapes '" + specs + "' --rep-ms " + std::to_string(std::max(100, repeat * 10)) +
                          " --json '" + json_tmp + "'";
  std::cout << "triton: " << cmd << "\n" << std::flush;
  const int rc = std::system(cmd.c_str());
  std::map<std::string, Pair> out;
  if (rc != 0) {
    std::cout << "triton: the script failed (status " << rc << "); its columns stay empty\n";
    return out;
  }
  return read_triton_json(json_tmp);
}

std::string sci(double v) {
  if (std::isnan(v)) return "-";
  std::ostringstream o;
  o << std::scientific << std::setprecision(1) << v;
  return o.str();
}

// The conv and the gated norm of the shape's mixer: xBC channels h*p + 2*g*n with 4 taps, the norm over h*p.
nlohmann::json bench_mixer_ops(Bench& bench, const SsdShape& s, torch::ScalarType dtype, double bandwidth) {
  torch::manual_seed(1);
  auto act = torch::TensorOptions().dtype(dtype).device(bench.device);
  auto f32 = act.dtype(torch::kFloat);
  const int64_t channels = s.h * s.p + 2 * s.g * s.n, inner = s.h * s.p;
  Tensor x = torch::randn({s.b, s.l, channels}, act).requires_grad_();
  Tensor w = torch::randn({channels, 4}, f32).requires_grad_(), bias = torch::randn({channels}, f32).requires_grad_();
  Tensor y = torch::randn({s.b, s.l, inner}, act).requires_grad_(), z = torch::randn({s.b, s.l, inner}, act).requires_grad_();
  Tensor nw = torch::ones({inner}, f32).requires_grad_();
  Tensor gc = torch::randn({s.b, s.l, channels}, act), gn = torch::randn({s.b, s.l, inner}, act);
  const double elem = static_cast<double>(torch::elementSize(dtype));
  nlohmann::json rows = nlohmann::json::array();
  auto row = [&](const std::string& op, double fwd_bytes, double bwd_bytes, auto&& fwd, auto&& fwd_bwd) {
    nlohmann::json r = {{"shape", s.name}, {"op", op}};
    for (auto mode : {model::KernelMode::fused, model::KernelMode::reference}) {
      const KernelModeScope scope(mode);
      const double tf = bench.time([&] {
        torch::NoGradGuard no_grad;
        fwd();
      });
      const double tb = bench.time(fwd_bwd);
      r[std::string(model::kernel_mode_name(mode)) + "_forward_ms"] = tf;
      r[std::string(model::kernel_mode_name(mode)) + "_forward_backward_ms"] = tb;
    }
    r["floor_forward_ms"] = fwd_bytes / bandwidth * 1e3;
    r["floor_forward_backward_ms"] = (fwd_bytes + bwd_bytes) / bandwidth * 1e3;
    rows.push_back(r);
  };
  const double xs = static_cast<double>(x.numel()), ys = static_cast<double>(y.numel());
  row("conv1d+silu k4", 2 * elem * xs, 3 * elem * xs, [&] { model::causal_conv(x, w, bias, true); },
      [&] {
        clear_grads({x, w, bias});
        model::causal_conv(x, w, bias, true).y.backward(gc);
      });
  row("gated norm", 3 * elem * ys, 5 * elem * ys, [&] { model::gated_norm(y, z, nw, s.p, 1e-5, true); },
      [&] {
        clear_grads({y, z, nw});
        model::gated_norm(y, z, nw, s.p, 1e-5, true).backward(gn);
      });
  return rows;
}

}  // namespace

int bench_kernels(const std::vector<std::string>& args) {
  std::string shapes, dtype_text, device_text, json_path, triton_python, triton_path, triton_json;
  int warmup = 0, repeat = 0;
  bool reference = true;
  po::options_description desc("carve bench kernels");
  desc.add_options()("shapes", po::value<std::string>(&shapes)->default_value("hovle,phi2,mamba2-2.7b,long"),
                     "comma-separated presets (hovle, phi2, mamba2-2.7b, long, tiny) or name=BxLxHxPxGxNxCHUNK")(
      "dtype", po::value<std::string>(&dtype_text)->default_value("bfloat16"), "activation dtype")(
      "device", po::value<std::string>(&device_text)->default_value(torch::cuda::is_available() ? "cuda" : "cpu"),
      "cpu | cuda | cuda:N (on CPU only the reference runs)")(
      "warmup", po::value<int>(&warmup)->default_value(3), "untimed runs first")(
      "repeat", po::value<int>(&repeat)->default_value(20), "timed runs (the median is reported)")(
      "reference", po::value<bool>(&reference)->default_value(true), "also time the LibTorch reference")(
      "triton-python", po::value<std::string>(&triton_python)->default_value(""),
      "a python3 with torch and triton: also time mamba_ssm's Triton kernel (scripts/bench_triton_ssd.py)")(
      "triton-path", po::value<std::string>(&triton_path)->default_value(std::string(CARVE_SOURCE_DIR) +
                                                                          "/.third_party/mamba"),
      "folder holding the mamba_ssm package (a fetched copy; never committed)")(
      "triton-json", po::value<std::string>(&triton_json)->default_value(""),
      "instead of running the script: its --json output from the same session (its autotuning takes minutes)")(
      "json", po::value<std::string>(&json_path)->default_value(""), "also write the results to this JSON file");
  auto parsed = parse_options("bench kernels", desc, args);
  if (parsed.help) {
    std::cout << "usage: carve bench kernels [--shapes hovle,phi2] [--triton-python python3] [--json FILE]\n"
              << desc << "\n";
    return 0;
  }
  if (warmup < 0 || repeat < 1) throw UsageError("--warmup must be >= 0 and --repeat >= 1");
  const auto dtype = parse_dtype(dtype_text, "dtype");
  const auto device = parse_device(device_text, "device");
  std::vector<SsdShape> list;
  for (const auto& item : split_list(shapes, ',')) list.push_back(parse_shape(item));
  const bool fused = model::uses_fused_kernels(torch::empty({1}, torch::TensorOptions().dtype(dtype).device(device)));

  std::map<std::string, Pair> triton;
  if (!triton_json.empty()) triton = read_triton_json(triton_json);
  else if (!triton_python.empty()) {
    triton = run_triton(triton_python, triton_path, list, repeat,
                        json_path.empty() ? "/tmp/carve_triton_ssd.json" : json_path + ".triton.json");
  }

  Bench bench{device, warmup, repeat, {}};
  if (device.is_cuda()) bench.l2_flush = torch::empty({256 << 20}, torch::TensorOptions().dtype(torch::kUInt8).device(device));
  const double bandwidth = copy_bandwidth(device, warmup, repeat);
  std::cout << "SSD scan, " << c10::toString(dtype) << " on " << device.str() << ", median of " << repeat
            << " (L2 flushed before each run); copy bandwidth " << fmt(bandwidth / 1e9, 0) << " GB/s\n"
            << "times in ms; 'x triton' = Triton time / carve time (above 1: carve faster)\n";
  std::cout << std::left << std::setw(12) << "shape" << std::right << std::setw(15) << "floor f / fb" << std::setw(17)
            << "carve f / fb" << std::setw(17) << "reference f / fb" << std::setw(17) << "triton f / fb"
            << std::setw(17) << "x triton f / fb" << std::setw(9) << "TFLOP/s" << std::setw(10) << "rel err" << "\n";
  nlohmann::json results = {{"device", device.str()}, {"dtype", c10::toString(dtype)},
                            {"copy_bandwidth_bytes_per_s", bandwidth}, {"ssd", nlohmann::json::array()},
                            {"mixer_ops", nlohmann::json::array()}};
  const double elem = static_cast<double>(torch::elementSize(dtype));
  for (const auto& s : list) {
    const auto in = random_scan_inputs(s, dtype, device);
    const Tensor gy = torch::randn({s.b, s.l, s.h, s.p}, in.x.options().requires_grad(false));
    const ScanCost cost = scan_cost(s, elem);
    Pair carve_t, ref_t;
    double rel_err = NAN;
    if (fused) {
      carve_t = time_scan(bench, in, gy, model::KernelMode::fused);
      torch::NoGradGuard no_grad;
      const Tensor y_fused = model::ssd_scan(in, false).y;
      const Tensor y_ref = model::ssd_chunked(in, false).y;
      rel_err = ((y_fused.to(torch::kFloat) - y_ref.to(torch::kFloat)).norm() / y_ref.to(torch::kFloat).norm())
                    .item<double>();
    }
    if (reference) ref_t = time_scan(bench, in, gy, model::KernelMode::reference);
    const Pair tri = triton.count(s.name) ? triton[s.name] : Pair{};
    const Pair floor{cost.fwd_bytes / bandwidth * 1e3, cost.fwd_bwd_bytes / bandwidth * 1e3};
    std::cout << std::left << std::setw(12) << s.name << std::right << std::setw(15)
              << fmt(floor.fwd, 3) + " / " + fmt(floor.fwd_bwd, 3) << std::setw(17)
              << fmt(carve_t.fwd) + " / " + fmt(carve_t.fwd_bwd) << std::setw(17)
              << fmt(ref_t.fwd) + " / " + fmt(ref_t.fwd_bwd) << std::setw(17)
              << fmt(tri.fwd) + " / " + fmt(tri.fwd_bwd) << std::setw(17)
              << fmt(tri.fwd / carve_t.fwd) + " / " + fmt(tri.fwd_bwd / carve_t.fwd_bwd) << std::setw(9)
              << fmt(cost.fwd_flops / (carve_t.fwd / 1e3) / 1e12, 1) << std::setw(10) << sci(rel_err) << "\n"
              << std::flush;
    auto num = [](double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
    results["ssd"].push_back({{"shape", s.name}, {"b", s.b}, {"l", s.l}, {"h", s.h}, {"p", s.p}, {"g", s.g},
                              {"n", s.n}, {"chunk", s.chunk}, {"forward_bytes", cost.fwd_bytes},
                              {"forward_backward_bytes", cost.fwd_bwd_bytes}, {"forward_flops", cost.fwd_flops},
                              {"floor_forward_ms", floor.fwd}, {"floor_forward_backward_ms", floor.fwd_bwd},
                              {"carve_forward_ms", num(carve_t.fwd)}, {"carve_forward_backward_ms", num(carve_t.fwd_bwd)},
                              {"reference_forward_ms", num(ref_t.fwd)},
                              {"reference_forward_backward_ms", num(ref_t.fwd_bwd)},
                              {"triton_forward_ms", num(tri.fwd)}, {"triton_forward_backward_ms", num(tri.fwd_bwd)},
                              {"output_rel_error_vs_reference", num(rel_err)}});
  }
  if (fused) {
    std::cout << "\nmixer ops at each shape's sizes (ms): fused f / fb, reference f / fb, floor f / fb\n";
    for (const auto& s : list)
      for (const auto& r : bench_mixer_ops(bench, s, dtype, bandwidth)) {
        std::cout << std::left << std::setw(12) << s.name << std::setw(16) << r["op"].get<std::string>() << std::right
                  << std::setw(17)
                  << fmt(r["fused_forward_ms"].get<double>(), 3) + " / " +
                         fmt(r["fused_forward_backward_ms"].get<double>(), 3)
                  << std::setw(17)
                  << fmt(r["reference_forward_ms"].get<double>(), 3) + " / " +
                         fmt(r["reference_forward_backward_ms"].get<double>(), 3)
                  << std::setw(17)
                  << fmt(r["floor_forward_ms"].get<double>(), 3) + " / " +
                         fmt(r["floor_forward_backward_ms"].get<double>(), 3)
                  << "\n";
        results["mixer_ops"].push_back(r);
      }
  }
  if (!json_path.empty()) fs::write_file_atomic(json_path, results.dump(2) + "\n");
  return 0;
}

}  // namespace carve::launcher
