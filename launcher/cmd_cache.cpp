// carve cache verify CACHE: check an activation cache's manifest, every file's size and checksum and each shard's
// datasets; with --teacher and --samples, that it was made from them.
#include <iostream>

#include "data/cache_layout.h"
#include "data/cache_verify.h"
#include "launcher/options.h"
#include "launcher/subcommands.h"

namespace carve::launcher {

namespace {

int cache_verify(const std::vector<std::string>& args) {
  std::string cache, teacher, prefix, samples, locking;
  bool checksums = true;
  po::options_description desc("carve cache verify");
  desc.add_options()("cache", po::value<std::string>(&cache)->required(), "cache folder (also the first argument)")(
      "teacher", po::value<std::string>(&teacher), "refuse the cache unless it was made from this teacher")(
      "teacher-prefix", po::value<std::string>(&prefix)->default_value(""), "weight prefix inside a VLM checkpoint")(
      "samples", po::value<std::string>(&samples), "refuse the cache unless it was made from this sample file")(
      "checksums", po::value<bool>(&checksums)->default_value(checksums), "read every byte and check xxh64");
  desc.add(hdf5_options(locking));
  po::positional_options_description positional;
  positional.add("cache", 1);
  auto parsed = parse_options("cache verify", desc, args, &positional);
  if (parsed.help) {
    std::cout << "usage: carve cache verify CACHE [options]\n" << desc << "\n";
    return 0;
  }
  apply_hdf5_locking(locking);
  data::VerifyOptions vo;
  vo.checksums = checksums;
  vo.teacher_dir = teacher;
  vo.weight_prefix = prefix;
  vo.samples_path = samples;
  const auto report = data::verify_cache(cache, vo);
  std::cout << cache << ": verified " << report.shards << " shards, " << report.files << " files, "
            << report.bytes / 1e6 << " MB" << (checksums ? " (checksums match)" : " (sizes and shapes only)")
            << "\n";
  return 0;
}

}  // namespace

int cache_main(const std::vector<std::string>& args) {
  return run_action("cache", {{"verify", "check a cache's files, checksums and inputs", cache_verify}}, args);
}

}  // namespace carve::launcher
