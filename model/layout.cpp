#include "model/layout.h"

#include <algorithm>
#include <sstream>

#include "base/error.h"

namespace carve::model {

Layout Layout::parse(const std::string& text, int64_t num_layers, const std::string& source) {
  CARVE_CHECK(static_cast<int64_t>(text.size()) == num_layers, source, ": '", text, "' has ", text.size(),
              " characters but the teacher has ", num_layers, " layers (one 'A' or 'M' per layer)");
  for (size_t i = 0; i < text.size(); ++i)
    CARVE_CHECK(text[i] == 'A' || text[i] == 'M', source, ": character '", text[i], "' at layer ", i,
                " is neither 'A' (keep attention) nor 'M' (Mamba-2)");
  Layout l;
  l.layers_ = text;
  return l;
}

Layout Layout::generate(int64_t num_layers, int64_t count, char kind, Placement placement) {
  CARVE_CHECK(kind == 'A' || kind == 'M', "layout kind must be 'A' or 'M', got '", kind, "'");
  CARVE_CHECK(count >= 0 && count <= num_layers, "layout: cannot place ", count, " '", kind, "' layers among ",
              num_layers);
  const char other = kind == 'A' ? 'M' : 'A';
  std::string s(num_layers, other);
  for (int64_t i = 0; i < count; ++i) {
    int64_t at = 0;
    switch (placement) {
      case Placement::HeadInterleaved: at = i * num_layers / count; break;
      case Placement::TailInterleaved: at = (i + 1) * num_layers / count - 1; break;
      case Placement::HeadStacked: at = i; break;
      case Placement::TailStacked: at = num_layers - count + i; break;
    }
    s[at] = kind;
  }
  return parse(s, num_layers);
}

Layout Layout::from_list(int64_t num_layers, const std::vector<int64_t>& indices, char kind,
                         const std::string& source) {
  CARVE_CHECK(kind == 'A' || kind == 'M', "layout kind must be 'A' or 'M', got '", kind, "'");
  std::string s(num_layers, kind == 'A' ? 'M' : 'A');
  for (auto i : indices) {
    CARVE_CHECK(i >= 0 && i < num_layers, source, ": layer ", i, " is outside [0, ", num_layers, ")");
    CARVE_CHECK(s[i] != kind, source, ": layer ", i, " is listed twice");
    s[i] = kind;
  }
  return parse(s, num_layers, source);
}

std::vector<int64_t> Layout::indices(char kind) const {
  std::vector<int64_t> out;
  for (size_t i = 0; i < layers_.size(); ++i)
    if (layers_[i] == kind) out.push_back(static_cast<int64_t>(i));
  return out;
}

Placement parse_placement(const std::string& text, const std::string& source) {
  if (text == "head-interleaved") return Placement::HeadInterleaved;
  if (text == "head-stacked") return Placement::HeadStacked;
  if (text == "tail-interleaved") return Placement::TailInterleaved;
  if (text == "tail-stacked") return Placement::TailStacked;
  fail(source, ": '", text, "' is not a placement (head-interleaved, head-stacked, tail-interleaved, tail-stacked)");
}

std::vector<int64_t> parse_index_list(const std::string& text, const std::string& source) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    item.erase(std::remove(item.begin(), item.end(), ' '), item.end());
    if (item.empty()) continue;
    size_t used = 0;
    int64_t v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    CARVE_CHECK(used == item.size() && used > 0, source, ": '", item, "' is not a layer index");
    out.push_back(v);
  }
  return out;
}

}  // namespace carve::model
