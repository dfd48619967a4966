//===- Mesh.cpp - A rank's communicators on the (R, H, P) mesh ------------===//
//
// See moert/Mesh.h. The group over a set of axes joins the ranks that
// agree on every other axis: the split's color is the rank's coordinates
// on the axes outside the set, its key the world rank, so that a group's
// ranks are ordered as the world's (P fastest), which is the order the
// IR's collectives concatenate and scatter in. Every rank makes the seven
// splits in the same order (mask 1 to 7), as a collective split requires.
//
//===----------------------------------------------------------------------===//

#include "moert/Mesh.h"

#include <string>

using namespace moert;

std::string moert::meshGroupName(MeshAxes axes) {
  static const char *const names[3] = {"replica", "shard", "expert"};
  std::string name;
  for (int axis = 0; axis < 3; ++axis)
    if (axes & (1u << axis))
      name += (name.empty() ? "" : "+") + std::string(names[axis]);
  return name;
}

std::array<int64_t, 3> moert::meshCoordinates(const MeshShape &shape,
                                              int64_t worldRank) {
  return {worldRank / (shape.shard * shape.expert),
          (worldRank / shape.expert) % shape.shard, worldRank % shape.expert};
}

Status MeshGroups::create(Communicator &world, const MeshShape &shape,
                          std::unique_ptr<MeshGroups> &out) {
  out.reset();
  if (shape.replicas < 1 || shape.shard < 1 || shape.expert < 1 ||
      world.size() != shape.size())
    return Status::failure(
        "rank " + std::to_string(world.rank()) + " of " +
        std::to_string(world.size()) + " in group '" + world.group() +
        "': the mesh " + std::to_string(shape.replicas) + "x" +
        std::to_string(shape.shard) + "x" + std::to_string(shape.expert) +
        " (R x H x P) has " + std::to_string(shape.size()) +
        " ranks, the world " + std::to_string(world.size()));
  auto groups = std::make_unique<MeshGroups>();
  groups->shape_ = shape;
  groups->coordinates_ = meshCoordinates(shape, world.rank());
  for (MeshAxes axes = 1; axes < 8; ++axes) {
    // The color numbers the coordinates outside `axes`, R slowest.
    int64_t color = 0;
    for (int axis = 0; axis < 3; ++axis)
      if (!(axes & (1u << axis)))
        color = color * shape.extent(axis) + groups->coordinates_[axis];
    if (Status split = world.split(static_cast<int>(color), world.rank(),
                                   meshGroupName(axes), groups->groups_[axes]);
        !split.ok())
      return split;
    if (!groups->groups_[axes])
      return Status::failure("rank " + std::to_string(world.rank()) +
                             ": the split into the '" + meshGroupName(axes) +
                             "' group gave no communicator");
  }
  out = std::move(groups);
  return Status::success();
}

void MeshGroups::abort() {
  for (std::unique_ptr<Communicator> &group : groups_)
    if (group)
      group->abort();
}
