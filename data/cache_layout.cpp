#include "data/cache_layout.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "base/error.h"
#include "base/fs.h"
#include "base/json.h"
#include "base/xxhash64.h"

namespace carve::data {
namespace {

std::string padded(int64_t value, int width) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%0*lld", width, static_cast<long long>(value));
  return buffer;
}

}  // namespace

std::vector<std::string> CachePlan::streams() const {
  std::vector<std::string> out;
  for (auto layer : layers) out.push_back(stream_name_of_layer(layer));
  if (final_hidden) out.push_back("final");
  if (top_k > 0) out.push_back("logits");
  return out;
}

std::vector<ShardSpan> plan_shards(const std::vector<int64_t>& offsets, int64_t shard_tokens) {
  CARVE_CHECK(shard_tokens > 0, "shard size must be positive");
  std::vector<ShardSpan> shards;
  const int64_t n = static_cast<int64_t>(offsets.size()) - 1;
  int64_t first = 0;
  while (first < n) {
    int64_t last = first + 1;
    while (last < n && offsets[last + 1] - offsets[first] <= shard_tokens) ++last;
    ShardSpan s;
    s.index = static_cast<int64_t>(shards.size());
    s.first_sample = first;
    s.num_samples = last - first;
    s.first_token = offsets[first];
    s.tokens = offsets[last] - offsets[first];
    shards.push_back(s);
    first = last;
  }
  return shards;
}

std::string stream_name_of_layer(int64_t layer) { return "layer_" + padded(layer, 3); }
std::string shard_path(const std::string& stream, int64_t shard) {
  return stream + "/shard_" + padded(shard, 5) + ".h5";
}
std::string progress_path(int64_t shard) { return "progress/shard_" + padded(shard, 5) + ".json"; }

nlohmann::json plan_to_json(const CachePlan& p) {
  nlohmann::json shards = nlohmann::json::array();
  for (const auto& s : p.shards)
    shards.push_back({{"index", s.index},
                      {"first_sample", s.first_sample},
                      {"num_samples", s.num_samples},
                      {"first_token", s.first_token},
                      {"tokens", s.tokens}});
  return {{"format", kCacheFormat},
          {"version", kCacheVersion},
          {"teacher",
           {{"hash", p.teacher_hash},
            {"model_type", p.teacher_model_type},
            {"path", p.teacher_path},
            {"num_layers", p.num_layers},
            {"hidden_size", p.hidden_size},
            {"vocab_size", p.vocab_size}}},
          {"samples",
           {{"hash", p.samples_hash},
            {"path", p.samples_path},
            {"num_samples", p.num_samples},
            {"num_tokens", p.num_tokens}}},
          {"dtype", p.dtype},
          {"layers", p.layers},
          {"final_hidden", p.final_hidden},
          {"top_k", p.top_k},
          {"shard_tokens", p.shard_tokens},
          {"shards", shards}};
}

CachePlan plan_from_json(const nlohmann::json& j, const std::string& where) {
  const auto format = json_field<std::string>(j, "format", where);
  CARVE_CHECK(format == kCacheFormat, where, ": format '", format, "' is not '", kCacheFormat, "'");
  const auto version = json_field<int64_t>(j, "version", where);
  CARVE_CHECK(version == kCacheVersion, where, ": version ", version, " is not supported (this carve reads ",
              kCacheVersion, ")");
  CachePlan p;
  const auto& t = j.at("teacher");
  p.teacher_hash = json_field<std::string>(t, "hash", where + " teacher");
  p.teacher_model_type = json_field<std::string>(t, "model_type", where + " teacher");
  p.teacher_path = json_field<std::string>(t, "path", where + " teacher");
  p.num_layers = json_field<int64_t>(t, "num_layers", where + " teacher");
  p.hidden_size = json_field<int64_t>(t, "hidden_size", where + " teacher");
  p.vocab_size = json_field<int64_t>(t, "vocab_size", where + " teacher");
  CARVE_CHECK(j.contains("samples"), where, ": field 'samples' is missing");
  const auto& s = j.at("samples");
  p.samples_hash = json_field<std::string>(s, "hash", where + " samples");
  p.samples_path = json_field<std::string>(s, "path", where + " samples");
  p.num_samples = json_field<int64_t>(s, "num_samples", where + " samples");
  p.num_tokens = json_field<int64_t>(s, "num_tokens", where + " samples");
  p.dtype = json_field<std::string>(j, "dtype", where);
  CARVE_CHECK(p.dtype == "bfloat16" || p.dtype == "float16", where, ": dtype '", p.dtype,
              "' must be bfloat16 or float16");
  p.layers = json_field<std::vector<int64_t>>(j, "layers", where);
  for (auto l : p.layers)
    CARVE_CHECK(l >= 0 && l <= p.num_layers, where, ": layer ", l, " is outside [0, ", p.num_layers, "]");
  p.final_hidden = json_field<bool>(j, "final_hidden", where);
  p.top_k = json_field<int64_t>(j, "top_k", where);
  p.shard_tokens = json_field<int64_t>(j, "shard_tokens", where);
  int64_t expect_sample = 0, expect_token = 0;
  for (const auto& e : json_field<nlohmann::json>(j, "shards", where)) {
    ShardSpan span;
    const std::string at = where + " shard " + std::to_string(p.shards.size());
    span.index = json_field<int64_t>(e, "index", at);
    span.first_sample = json_field<int64_t>(e, "first_sample", at);
    span.num_samples = json_field<int64_t>(e, "num_samples", at);
    span.first_token = json_field<int64_t>(e, "first_token", at);
    span.tokens = json_field<int64_t>(e, "tokens", at);
    CARVE_CHECK(span.index == static_cast<int64_t>(p.shards.size()) && span.first_sample == expect_sample &&
                    span.first_token == expect_token && span.num_samples > 0 && span.tokens >= 0,
                at, ": does not continue the previous shard (index ", span.index, ", first sample ", span.first_sample,
                ", first token ", span.first_token, ")");
    expect_sample += span.num_samples;
    expect_token += span.tokens;
    p.shards.push_back(span);
  }
  CARVE_CHECK(expect_sample == p.num_samples && expect_token == p.num_tokens, where, ": shards cover ", expect_sample,
              " samples and ", expect_token, " tokens, the samples file has ", p.num_samples, " and ", p.num_tokens);
  return p;
}

nlohmann::json shard_files_to_json(const std::vector<ShardFile>& files) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& f : files) out.push_back({{"path", f.path}, {"bytes", f.bytes}, {"xxh64", f.xxh64}});
  return out;
}

std::vector<ShardFile> shard_files_from_json(const nlohmann::json& j, const std::string& where) {
  std::vector<ShardFile> out;
  CARVE_CHECK(j.is_array(), where, ": expected a list of files");
  for (const auto& e : j) {
    ShardFile f;
    f.path = json_field<std::string>(e, "path", where);
    f.bytes = json_field<int64_t>(e, "bytes", where);
    f.xxh64 = json_field<std::string>(e, "xxh64", where);
    out.push_back(f);
  }
  return out;
}

nlohmann::json manifest_to_json(const CacheManifest& m) {
  auto j = plan_to_json(m.plan);
  for (size_t i = 0; i < m.files.size(); ++i) j["shards"][i]["files"] = shard_files_to_json(m.files[i]);
  return j;
}

CacheManifest manifest_from_json(const nlohmann::json& j, const std::string& where) {
  CacheManifest m;
  m.plan = plan_from_json(j, where);
  const auto streams = m.plan.streams();
  for (size_t i = 0; i < m.plan.shards.size(); ++i) {
    const std::string at = where + " shard " + std::to_string(i);
    auto files = shard_files_from_json(json_field<nlohmann::json>(j.at("shards")[i], "files", at), at);
    CARVE_CHECK(files.size() == streams.size(), at, ": lists ", files.size(), " files for ", streams.size(),
                " streams");
    for (size_t s = 0; s < streams.size(); ++s)
      CARVE_CHECK(files[s].path == shard_path(streams[s], static_cast<int64_t>(i)), at, ": file '", files[s].path,
                  "' should be '", shard_path(streams[s], static_cast<int64_t>(i)), "'");
    m.files.push_back(std::move(files));
  }
  return m;
}

std::string plan_difference(const CachePlan& a, const CachePlan& b) {
  auto differs = [](const std::string& what, const auto& cache, const auto& run) {
    std::ostringstream out;
    out << what << ": the cache has " << cache << ", this run asks for " << run;
    return out.str();
  };
  auto list = [](const std::vector<int64_t>& v) {
    std::string s;
    for (auto x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
    return s.empty() ? std::string("none") : s;
  };
  if (a.teacher_hash != b.teacher_hash)
    return "teacher: the cache was made from another teacher (" + a.teacher_path + ", hash " + a.teacher_hash +
           ") than " + b.teacher_path + " (hash " + b.teacher_hash + ")";
  if (a.samples_hash != b.samples_hash)
    return "samples: the cache was made from other samples (" + a.samples_path + ", hash " + a.samples_hash +
           ") than " + b.samples_path + " (hash " + b.samples_hash + ")";
  if (a.dtype != b.dtype) return differs("dtype", a.dtype, b.dtype);
  if (a.layers != b.layers) return differs("layers", list(a.layers), list(b.layers));
  if (a.final_hidden != b.final_hidden) return differs("final hidden", a.final_hidden, b.final_hidden);
  if (a.top_k != b.top_k) return differs("top-k", a.top_k, b.top_k);
  if (a.shard_tokens != b.shard_tokens) return differs("shard tokens", a.shard_tokens, b.shard_tokens);
  return "";
}

CacheManifest read_manifest(const std::string& cache_dir) {
  const auto path = fs::join(cache_dir, "manifest.json");
  if (!fs::exists(path)) {
    CARVE_CHECK(fs::is_directory(cache_dir), cache_dir, ": not a directory (expected an activation cache)");
    CARVE_CHECK(!fs::exists(fs::join(cache_dir, "plan.json")), path,
                " is missing: the precompute of this cache did not finish; rerun the same `carve precompute` to "
                "complete it");
    throw Error(path + " is missing: " + cache_dir + " is not an activation cache");
  }
  return manifest_from_json(read_json_file(path), path);
}

std::string teacher_hash(const std::string& teacher_dir, const std::string& weight_prefix) {
  Xxh64 h;
  const auto config = fs::read_file(fs::join(teacher_dir, "config.json"));
  h.update(config.data(), config.size());
  h.update(weight_prefix.data(), weight_prefix.size());
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(teacher_dir)) {
    const auto name = entry.path().filename().string();
    if (entry.path().extension() == ".safetensors") files.push_back(name);
  }
  std::sort(files.begin(), files.end());
  CARVE_CHECK(!files.empty(), teacher_dir, ": no .safetensors files");
  for (const auto& name : files) {
    const uint64_t file_hash = xxh64_file(fs::join(teacher_dir, name));
    h.update(name.data(), name.size());
    h.update(&file_hash, sizeof file_hash);
  }
  return hex64(h.digest());
}

std::string samples_hash(const std::string& samples_path) { return hex64(xxh64_file(samples_path)); }

}  // namespace carve::data
