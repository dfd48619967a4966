//===- MeshShape.h - The (R, H, P) mesh's axes and extents ------*- C++ -*-===//
//
// The mesh of a partitioned program (docs/partitioning.md): axis 0 is R
// (replicas), 1 is H (the shard group), 2 is P (the expert group), as the
// IR's grid_axes number them. Host-only, without CUDA or a communicator, for
// the arithmetic that places parameter blocks (moert/ParameterBlocks.h),
// which `moec train --reference` shares with the programs; the rank's
// communicators on it are moert/Mesh.h's.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_MESHSHAPE_H
#define MOERT_MESHSHAPE_H

#include <cstdint>
#include <initializer_list>

namespace moert {

/// The mesh axes, as the IR's grid_axes number them.
enum MeshAxis : int { kReplicaAxis = 0, kShardAxis = 1, kExpertAxis = 2 };

/// A set of mesh axes: bit a set for axis a (grid_axes = [0, 2] is 0b101).
using MeshAxes = unsigned;

/// The mask of `grid_axes`, as the printer writes it.
constexpr MeshAxes meshAxes(std::initializer_list<int> axes) {
  MeshAxes mask = 0;
  for (int axis : axes)
    mask |= 1u << axis;
  return mask;
}

/// The shape of the mesh: replicas R, shard group H, expert group P.
struct MeshShape {
  int64_t replicas = 1, shard = 1, expert = 1;
  int64_t size() const { return replicas * shard * expert; }
  int64_t extent(int axis) const {
    return axis == kReplicaAxis ? replicas : axis == kShardAxis ? shard : expert;
  }
};

} // namespace moert

#endif // MOERT_MESHSHAPE_H
