// carve cache verify CACHE: check an activation cache's manifest, every file's size and checksum and each shard's
// datasets; with --teacher and --samples, that it was made from them.
#include <iostream>

#include "data/cache_layout.h"
#include "data/cache_verify.h"
#include "data/hdf5_file.h"
#include "launcher/options.h"
#include "launcher/subcommands.h"

namespace carve::launcher {

namespace {

int cache_verify(const std::vector<std::string>& args) {
  std::string cache, teacher, prefix, samples, locking = "default";
  bool checksums = true;
  po::options_description desc("carve cache verify");
  desc.add_options()("cache", po::value<std::string>(&cache)->required(), "cache folder (also the first argument)")(
      "teacher", po::value<std::string>(&teacher), "refuse the cache unless it was made from this teacher")(
      "teacher-prefix", po::value<std::string>(&prefix)->default_value(""), "weight prefix inside a VLM checkpoint")(
      "samples", po::value<std::string>(&samples), "refuse the cache unless it was made from this sample file")(
      "checksums", po::value<bool>(&checksums)->default_value(checksums), "read every byte and check xxh64")(
      "hdf5-locking", po::value<std::string>(&locking)->default_value(locking), "HDF5 file locking: default, on, off");
  po::positional_options_description positional;
  positional.add("cache", 1);
  auto parsed = parse_options("cache verify", desc, args, &positional);
  if (parsed.help) {
    std::cout << "usage: carve cache verify CACHE [options]\n" << desc << "\n";
    return 0;
  }
  data::set_file_locking(data::parse_file_locking(locking, "--hdf5-locking"));
  data::VerifyOptions vo;
  vo.checksums = checksums;
  const auto report = data::verify_cache(cache, vo);
  if (!teacher.empty() || !samples.empty())
    data::check_cache_inputs(data::read_manifest(cache), cache, teacher, prefix, samples);
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
