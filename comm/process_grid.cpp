#include "comm/process_grid.h"

#include <algorithm>
#include <limits>

#include "base/error.h"

namespace carve::comm {

std::vector<size_t> balanced_partition(const std::vector<double>& costs, int parts) {
  const size_t n = costs.size();
  CARVE_CHECK(parts >= 1 && static_cast<size_t>(parts) <= n, "cannot split ", n, " items into ", parts, " parts");
  std::vector<double> prefix(n + 1, 0.0);
  for (size_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + costs[i];
  // best[p][i]: the smallest largest-run cost splitting the first i items into p runs; cut[p][i]: where the last
  // run starts. n and parts are layer counts, so the cubic dynamic programme is instant.
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(static_cast<size_t>(parts) + 1, std::vector<double>(n + 1, inf));
  std::vector<std::vector<size_t>> cut(static_cast<size_t>(parts) + 1, std::vector<size_t>(n + 1, 0));
  best[0][0] = 0;
  for (size_t p = 1; p <= static_cast<size_t>(parts); ++p)
    for (size_t i = p; i <= n; ++i)
      for (size_t j = p - 1; j < i; ++j) {
        const double v = std::max(best[p - 1][j], prefix[i] - prefix[j]);
        if (v < best[p][i]) {
          best[p][i] = v;
          cut[p][i] = j;
        }
      }
  std::vector<size_t> starts(static_cast<size_t>(parts));
  size_t end = n;
  for (size_t p = static_cast<size_t>(parts); p >= 1; --p) {
    starts[p - 1] = cut[p][end];
    end = cut[p][end];
  }
  return starts;
}

ProcessGrid ProcessGrid::make(int world, int rank, int groups, const std::vector<int64_t>& layers,
                              const std::vector<double>& costs) {
  CARVE_CHECK(groups >= 1, "--layer-groups must be at least 1, not ", groups);
  CARVE_CHECK(world % groups == 0, "the world of ", world, " processes does not fit ", groups,
              " layer groups: the number of processes must be a multiple of --layer-groups");
  CARVE_CHECK(static_cast<size_t>(groups) <= layers.size(), "--layer-groups ", groups, " is more than the ",
              layers.size(), " layers to train: each group needs at least one layer");
  CARVE_CHECK(costs.size() == layers.size(), "one cost per layer expected");
  ProcessGrid g;
  g.world = world;
  g.groups = groups;
  g.replicas = world / groups;
  g.rank = rank;
  g.group = rank / g.replicas;
  g.replica = rank % g.replicas;
  const auto starts = balanced_partition(costs, groups);
  for (int p = 0; p < groups; ++p) {
    const size_t begin = starts[static_cast<size_t>(p)];
    const size_t end = p + 1 < groups ? starts[static_cast<size_t>(p) + 1] : layers.size();
    g.group_layers.emplace_back(layers.begin() + static_cast<std::ptrdiff_t>(begin),
                                layers.begin() + static_cast<std::ptrdiff_t>(end));
  }
  return g;
}

}  // namespace carve::comm
