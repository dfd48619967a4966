//===- Placement.h - Where every parameter's shards live --------*- C++ -*-===//
//
// The placement of one parameter on a mesh: which dimension is split along
// the expert axis P (dim 0 of an expert weight [E, ...], E/P experts per
// rank), which dimension is sharded along the shard axis H, and, for any
// rank, the offset and shape of the shard it holds. Replication along R (and,
// for dense parameters, along P) is implicit: ranks that differ only there
// hold the same shard.
//
// Sharding along H chunks one dimension as torch.chunk does: chunks of
// ceil(n / H), the last ones smaller or empty. The dimension is the first
// one (after the expert dimension) whose size H divides, so shards are even
// whenever some dimension allows it; otherwise the first such dimension is
// chunked unevenly. The partitioning passes read the same answer.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PLAN_PLACEMENT_H
#define MOEC_PLAN_PLACEMENT_H

#include "moec/Plan/Mesh.h"
#include "moec/Plan/Model.h"

namespace moec::plan {

/// How one parameter is split over the mesh.
struct ParameterLayout {
  /// The dimension split along P (0 for expert parameters), or -1.
  int64_t expertDim = -1;
  /// The dimension chunked along H, or -1 for a 0-d parameter (or H = 1).
  int64_t shardDim = -1;
  /// The shape one expert-parallel rank holds before H sharding (its E/P
  /// experts; the global shape for a dense parameter). This is what one
  /// all-gather over the shard group restores.
  llvm::SmallVector<int64_t, 3> localShape;
  /// The shape every rank of a shard group holds and a partitioned program
  /// allocates: localShape with the shard dimension in chunks of
  /// ceil(n / H), the chunks past the end zero-padded.
  llvm::SmallVector<int64_t, 3> heldShape;

  int64_t numLocalElements() const;
  int64_t numHeldElements() const;
};

/// The part of a parameter that one rank holds.
struct Shard {
  /// Offsets into the global tensor, one per dimension.
  llvm::SmallVector<int64_t, 3> offsets;
  llvm::SmallVector<int64_t, 3> shape;

  int64_t numElements() const;
};

/// How `param` is split on `mesh`.
ParameterLayout layoutParameter(const Parameter &param, const Mesh &mesh);

/// The shard of `param` that `rank` holds.
Shard shardOf(const Parameter &param, const ParameterLayout &layout,
              const Mesh &mesh, int64_t rank);

/// The experts [first, first + count) that `rank` owns.
struct ExpertRange {
  int64_t first = 0;
  int64_t count = 0;
};
ExpertRange expertsOf(const Mesh &mesh, int64_t numExperts, int64_t rank);

/// The placement of every parameter of a model on a mesh.
class ModelPlacement {
public:
  ModelPlacement(const ModelDescription &model, const Mesh &mesh);

  const ModelDescription &model() const { return *modelDesc; }
  const Mesh &mesh() const { return *meshRef; }
  /// Layouts, parallel to model().parameters.
  llvm::ArrayRef<ParameterLayout> layouts() const { return paramLayouts; }
  Shard shard(size_t param, int64_t rank) const;

  /// Parameter elements `rank` holds (its shards), in total and by kind.
  int64_t shardElements(int64_t rank) const;
  int64_t shardElements(int64_t rank, ParameterKind kind) const;
  /// Elements every rank allocates for its shards, padding included (the
  /// same on every rank), in total and by kind: what the memory plan and
  /// the partitioned program count.
  int64_t heldElements() const;
  int64_t heldElements(ParameterKind kind) const;
  /// Elements of `unit` one expert-parallel rank computes with: what an
  /// all-gather over the shard group materialises.
  int64_t unitLocalElements(int64_t unit) const;

private:
  const ModelDescription *modelDesc;
  const Mesh *meshRef;
  std::vector<ParameterLayout> paramLayouts;
};

} // namespace moec::plan

#endif // MOEC_PLAN_PLACEMENT_H
