//===- Mesh.h - A rank's communicators on the (R, H, P) mesh ----*- C++ -*-===//
//
// A partitioned program (docs/partitioning.md) names the group of every
// collective by the grid axes it spans, as the IR does (`shard.all_gather
// ... on @mesh grid_axes = [1]`): axis 0 is R (replicas), 1 is H (the shard
// group), 2 is P (the expert group), P fastest, so world rank
// w = (r · H + h) · P + p (DESIGN.md §2). MeshGroups holds one Communicator
// for every non-empty set of axes, split from the world once at start (the
// same splits in the same order on every rank), and the rank's coordinates.
// The printed step looks its groups up by axes mask; a program of one rank
// makes none.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_MESH_H
#define MOERT_MESH_H

#include "moert/Communicator.h"
#include "moert/MeshShape.h"

#include <array>
#include <cstdint>
#include <memory>
#include <string>

namespace moert {

/// The name of the group over `axes` in messages: the axes' names joined by
/// '+' ("expert", "replica+expert", "replica+shard+expert").
std::string meshGroupName(MeshAxes axes);

/// The coordinates (r, h, p) of world rank `worldRank` on `shape`:
/// w = (r · H + h) · P + p.
std::array<int64_t, 3> meshCoordinates(const MeshShape &shape,
                                       int64_t worldRank);

/// A rank's place on the mesh and its communicator for every set of axes.
class MeshGroups {
public:
  /// Splits `world` (whose size must be shape.size()) into the groups of
  /// every non-empty set of axes. Every rank of `world` calls it.
  static Status create(Communicator &world, const MeshShape &shape,
                       std::unique_ptr<MeshGroups> &out);

  const MeshShape &shape() const { return shape_; }
  /// This rank's coordinate along `axis`.
  int64_t coordinate(int axis) const { return coordinates_[axis]; }
  /// The group over `axes` (a non-empty mask below 8).
  Communicator &group(MeshAxes axes) const { return *groups_[axes]; }
  /// Aborts every group (a watchdog's way out; see Communicator::abort).
  void abort();

private:
  MeshShape shape_;
  std::array<int64_t, 3> coordinates_{};
  /// Indexed by mask; [0] unused. The full mask's is the world's split.
  std::array<std::unique_ptr<Communicator>, 8> groups_;
};

} // namespace moert

#endif // MOERT_MESH_H
