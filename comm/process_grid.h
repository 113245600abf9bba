// The process grid of layer-wise distillation: world = layer groups x data-parallel replicas. The layers to train
// are split into contiguous groups of balanced cost; every replica of a group trains the group's layers on its own
// share of the data and the replicas average gradients. Ranks of one group are consecutive (rank = group *
// replicas + replica), so a group's gradient traffic stays within a node when the node's ranks are consecutive.
#pragma once

#include <cstdint>
#include <vector>

namespace carve::comm {

struct ProcessGrid {
  int world = 1, groups = 1, replicas = 1;
  int rank = 0, group = 0, replica = 0;
  std::vector<std::vector<int64_t>> group_layers;  // per group, its layers in ascending order

  // Errors (before any work) when the world size is not a multiple of `groups`, or `groups` exceeds the layers.
  static ProcessGrid make(int world, int rank, int groups, const std::vector<int64_t>& layers,
                          const std::vector<double>& costs);
  const std::vector<int64_t>& my_layers() const { return group_layers[static_cast<size_t>(group)]; }
};

// Splits items (in order) into `parts` contiguous runs, none empty, minimising the largest run's total cost.
// Returns the first index of each run.
std::vector<size_t> balanced_partition(const std::vector<double>& costs, int parts);

}  // namespace carve::comm
