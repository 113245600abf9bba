// Safetensors reading and writing, and the rejection of malformed files with messages naming file and tensor.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "base/fs.h"
#include "model/safetensors.h"
#include "tests/test_util.h"

namespace carve::model {
namespace {

std::string write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::string bytes;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  bytes += header + data;
  fs::write_file_atomic(path, bytes);
  return path;
}

using test::error_of;

TEST(Safetensors, RoundTripsEveryFloatDtype) {
  auto dir = test::scratch_dir("st_roundtrip");
  torch::manual_seed(1);
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"a.f32", torch::randn({3, 5})},
      {"b.f16", torch::randn({7}).to(torch::kFloat16)},
      {"c.bf16", torch::randn({2, 2, 3}).to(torch::kBFloat16)},
      {"d.i64", torch::arange(11)},
      {"e.empty", torch::randn({0, 4})},
  };
  const auto path = dir + "/x.safetensors";
  save_safetensors(path, tensors, {{"format", "pt"}});
  SafetensorsFile f(path);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    auto back = f.load(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(back, t)) << name;
  }
}

TEST(Safetensors, RejectsMalformedFiles) {
  auto dir = test::scratch_dir("st_bad");
  const std::string good = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data(8, '\1');

  auto short_file = dir + "/short.safetensors";
  fs::write_file_atomic(short_file, "abc");
  EXPECT_NE(error_of([&] { SafetensorsFile f(short_file); }).find("too short"), std::string::npos);

  auto past_end = dir + "/past_end.safetensors";
  std::string bytes(8, '\0');
  bytes[0] = '\xff';
  bytes[1] = '\x01';  // header length 511 in a 10-byte file
  fs::write_file_atomic(past_end, bytes + "{}");
  auto msg = error_of([&] { SafetensorsFile f(past_end); });
  EXPECT_NE(msg.find("runs past the end"), std::string::npos) << msg;
  EXPECT_NE(msg.find(past_end), std::string::npos) << msg;

  auto truncated = write_raw(dir + "/truncated.safetensors", good, data.substr(0, 5));
  msg = error_of([&] { SafetensorsFile f(truncated); });
  EXPECT_NE(msg.find("tensor 'w'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("past the data buffer"), std::string::npos) << msg;

  auto overlap = write_raw(dir + "/overlap.safetensors",
                           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           std::string(12, '\2'));
  msg = error_of([&] { SafetensorsFile f(overlap); });
  EXPECT_NE(msg.find("overlap"), std::string::npos) << msg;

  auto wrong_size = write_raw(dir + "/size.safetensors", R"({"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}})",
                              data);
  msg = error_of([&] { SafetensorsFile f(wrong_size); });
  EXPECT_NE(msg.find("need 6"), std::string::npos) << msg;

  auto bad_dtype = write_raw(dir + "/dtype.safetensors", R"({"w":{"dtype":"F8","shape":[8],"data_offsets":[0,8]}})",
                             data);
  msg = error_of([&] { SafetensorsFile f(bad_dtype); });
  EXPECT_NE(msg.find("unsupported dtype 'F8'"), std::string::npos) << msg;

  auto not_json = write_raw(dir + "/json.safetensors", "{not json", data);
  msg = error_of([&] { SafetensorsFile f(not_json); });
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
}

TEST(Safetensors, FailedWriteKeepsTheOldFile) {
  auto dir = test::scratch_dir("st_atomic");
  const auto path = dir + "/m.safetensors";
  save_safetensors(path, {{"w", torch::ones({4})}});
  // An undefined tensor aborts the write after the temporary exists: the old file must survive untouched.
  EXPECT_THROW(save_safetensors(path, {{"w", torch::zeros({4})}, {"bad", torch::Tensor()}}), Error);
  SafetensorsFile f(path);
  EXPECT_TRUE(torch::equal(f.load("w"), torch::ones({4})));
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(entry.path().filename(), "m.safetensors") << "temporary left behind";
}

}  // namespace
}  // namespace carve::model
