#include "launcher/model_options.h"

#include "comm/mpi_session.h"

namespace carve::launcher {

po::options_description model_options(ModelOptions& o, const std::string& flag, const std::string& what) {
  po::options_description d("Model");
  d.add_options()(flag.c_str(), po::value<std::string>(&o.path)->required(), what.c_str())(
      (flag + "-prefix").c_str(), po::value<std::string>(&o.weight_prefix)->default_value(""),
      "weight-name prefix of the language model inside a VLM checkpoint (e.g. language_model.)")(
      "dtype", po::value<std::string>(&o.dtype)->default_value("float32"), "float32 | bfloat16 | float16")(
      "device", po::value<std::string>(&o.device)->default_value("cpu"), "cpu | cuda | cuda:N");
  return d;
}

torch::ScalarType parse_dtype(const std::string& text, const std::string& flag) {
  if (text == "float32" || text == "fp32") return torch::kFloat32;
  if (text == "bfloat16" || text == "bf16") return torch::kBFloat16;
  if (text == "float16" || text == "fp16") return torch::kFloat16;
  throw UsageError("--" + flag + ": '" + text + "' is not a dtype (expected float32, bfloat16 or float16)");
}

torch::Device parse_device(const std::string& text, const std::string& flag) {
  if (text == "cpu") return torch::kCPU;
  if (text == "cuda" || text.rfind("cuda:", 0) == 0) {
    if (!torch::cuda::is_available())
      throw UsageError("--" + flag + ": '" + text + "' asked for, but no CUDA device is available to this build");
    int index = 0;
    if (text.size() > 5) {
      try {
        index = std::stoi(text.substr(5));
      } catch (const std::exception&) {
        throw UsageError("--" + flag + ": '" + text + "' is not cuda:N");
      }
    }
    if (index < 0 || index >= static_cast<int>(torch::cuda::device_count()))
      throw UsageError("--" + flag + ": '" + text + "' but there are " + std::to_string(torch::cuda::device_count()) +
                       " CUDA devices");
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  throw UsageError("--" + flag + ": '" + text + "' is not a device (expected cpu, cuda or cuda:N)");
}

torch::Device rank_device(torch::Device device, const std::string& text) {
  if (!device.is_cuda() || text != "cuda") return device;
  const int count = static_cast<int>(torch::cuda::device_count());
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(comm::local_rank() % count));
}

}  // namespace carve::launcher
