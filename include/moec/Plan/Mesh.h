//===- Mesh.h - The (R, H, P) device mesh of a training job -----*- C++ -*-===//
//
// The mesh of DESIGN.md §2: W ranks arranged as (R, H, P) with the expert
// axis P fastest-varying. Rank r sits at p = r mod P, h = (r / P) mod H,
// q = r / (P·H). Expert groups (ranks that differ only in p) exchange tokens;
// shard groups (differ only in h) shard model states; replica groups (differ
// only in q) hold the same shards and all-reduce their gradients. Dense
// parameters are replicated along P as well, so their gradients are reduced
// over the dense replica group (same h, any p and q).
//
// resolveMesh is the only place that checks the SMP rules (P divides E and W,
// 0 <= H <= W/P, H divides W/P, the sharding strategy agrees with H) and turns
// an automatic H = 0 into a number; every error names the rule and the values.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PLAN_MESH_H
#define MOEC_PLAN_MESH_H

#include "moec/Support/TrainingJob.h"

#include "llvm/ADT/SmallVector.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moec::plan {

/// SMP's `sharding_strategy`, declared with the job.
using moec::ShardingStrategy;
using moec::stringifyShardingStrategy;
using moec::symbolizeShardingStrategy;

/// The mesh a job asks for: SMP's parallelism options and the node size.
struct ParallelConfig {
  int64_t worldSize = 1;
  /// `expert_parallel_degree` (P).
  int64_t expertParallelDegree = 1;
  /// `hybrid_shard_degree` (H); 0 means automatic.
  int64_t hybridShardDegree = 0;
  ShardingStrategy strategy = ShardingStrategy::HybridShard;
  int64_t gpusPerNode = 8;
};

/// The mesh `job` asks for on nodes of `gpusPerNode` GPUs.
ParallelConfig getParallelConfig(const TrainingJob &job, int64_t gpusPerNode);

/// The kinds of process group a mesh has.
enum class GroupKind {
  /// Same (q, h), p = 0..P-1: token dispatch and combine.
  Expert,
  /// Same (q, p), h = 0..H-1: all-gather of parameters, reduce-scatter of
  /// gradients.
  Shard,
  /// Same (h, p), q = 0..R-1: all-reduce of expert gradient shards.
  Replica,
  /// Same h, every (q, p): all-reduce of dense gradient shards (dense
  /// parameters are replicated along P and R).
  DenseReplica,
  /// Every rank.
  World,
};

llvm::StringRef stringifyGroupKind(GroupKind kind);

/// A rank's coordinates on the mesh.
struct MeshCoord {
  int64_t q = 0; ///< replica index, 0..R-1
  int64_t h = 0; ///< shard index, 0..H-1
  int64_t p = 0; ///< expert-parallel index, 0..P-1
};

/// One process group: its ranks in increasing order.
struct ProcessGroup {
  GroupKind kind;
  std::vector<int64_t> ranks;
  /// Whether its ranks live on more than one node.
  bool crossesNodes = false;
};

/// A resolved, valid mesh.
class Mesh {
public:
  int64_t worldSize() const { return r * h * p; }
  int64_t replicas() const { return r; }              ///< R
  int64_t shardDegree() const { return h; }           ///< H (resolved)
  int64_t expertParallelDegree() const { return p; }  ///< P
  int64_t gpusPerNode() const { return gpn; }
  int64_t numNodes() const { return (worldSize() + gpn - 1) / gpn; }
  ShardingStrategy strategy() const { return strat; }
  /// Whether H was chosen automatically (hybrid_shard_degree 0).
  bool automaticShardDegree() const { return automatic; }

  MeshCoord coord(int64_t rank) const;
  int64_t rank(MeshCoord coord) const;
  int64_t node(int64_t rank) const { return rank / gpn; }

  /// The group of `kind` that `rank` belongs to.
  ProcessGroup groupOf(GroupKind kind, int64_t rank) const;
  /// Every group of `kind`, ordered by their smallest rank.
  std::vector<ProcessGroup> groups(GroupKind kind) const;
  /// The size of every group of `kind`.
  int64_t groupSize(GroupKind kind) const;
  /// Whether any group of `kind` spans nodes.
  bool anyGroupCrossesNodes(GroupKind kind) const;

private:
  friend llvm::Expected<Mesh> resolveMesh(const ParallelConfig &,
                                          int64_t numExperts);
  int64_t r = 1, h = 1, p = 1, gpn = 8;
  ShardingStrategy strat = ShardingStrategy::FullShard;
  bool automatic = false;
};

/// Checks `config` against SMP's rules for a model of `numExperts` experts and
/// resolves an automatic hybrid_shard_degree. Errors name the rule and the
/// values, e.g. "expert_parallel_degree 3 does not divide num_local_experts 8".
llvm::Expected<Mesh> resolveMesh(const ParallelConfig &config,
                                 int64_t numExperts);

} // namespace moec::plan

#endif // MOEC_PLAN_MESH_H
