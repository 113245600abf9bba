// Hybrid layouts: which teacher layers keep attention ('A') and which become Mamba-2 ('M').
// A layout is written one character per layer ("AMMMAMMM..."), or generated from a count and a placement
// (mmMamba Table 6), or from an explicit list of layer indices (MaTVLM).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace carve::model {

enum class Placement { HeadInterleaved, HeadStacked, TailInterleaved, TailStacked };

class Layout {
 public:
  // "AMMM..." of exactly num_layers characters. `source` names the flag or field in errors.
  static Layout parse(const std::string& text, int64_t num_layers, const std::string& source = "layout");
  // `count` layers of kind `kind` ('A' or 'M') placed by `placement`; the rest are the other kind.
  //   head-interleaved: the first layer of each of `count` equal blocks (32 layers, 8: 0, 4, ..., 28)
  //   tail-interleaved: the last layer of each block (3, 7, ..., 31)
  //   head-stacked: the first `count` layers; tail-stacked: the last `count`.
  static Layout generate(int64_t num_layers, int64_t count, char kind, Placement placement);
  // The layers in `indices` are of kind `kind`, the rest the other kind.
  static Layout from_list(int64_t num_layers, const std::vector<int64_t>& indices, char kind,
                          const std::string& source = "layout");

  const std::string& str() const { return layers_; }
  int64_t size() const { return static_cast<int64_t>(layers_.size()); }
  bool is_mamba(int64_t layer) const { return layers_.at(layer) == 'M'; }
  std::vector<int64_t> indices(char kind) const;

 private:
  std::string layers_;
};

Placement parse_placement(const std::string& text, const std::string& source = "placement");

// "0,4,8" -> {0, 4, 8}; errors name `source`.
std::vector<int64_t> parse_index_list(const std::string& text, const std::string& source);

}  // namespace carve::model
