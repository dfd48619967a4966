//===- Mesh.cpp - The (R, H, P) device mesh of a training job -------------===//
//
// See moec/Plan/Mesh.h. The rules are checked in a fixed order so that the
// first one broken is the one reported.
//
//===----------------------------------------------------------------------===//

#include "moec/Plan/Mesh.h"

#include "llvm/Support/FormatVariadic.h"

#include <algorithm>

using namespace moec::plan;

ParallelConfig moec::plan::getParallelConfig(const TrainingJob &job,
                                             int64_t gpusPerNode) {
  ParallelConfig config;
  config.worldSize = job.worldSize;
  config.expertParallelDegree = job.expertParallelDegree;
  config.hybridShardDegree = job.hybridShardDegree;
  config.strategy = job.shardingStrategy;
  config.gpusPerNode = gpusPerNode;
  return config;
}

llvm::StringRef moec::plan::stringifyGroupKind(GroupKind kind) {
  switch (kind) {
  case GroupKind::Expert: return "expert";
  case GroupKind::Shard: return "shard";
  case GroupKind::Replica: return "replica";
  case GroupKind::DenseReplica: return "dense_replica";
  case GroupKind::World: return "world";
  }
  llvm_unreachable("unknown group kind");
}

MeshCoord Mesh::coord(int64_t rank) const {
  return MeshCoord{rank / (p * h), (rank / p) % h, rank % p};
}

int64_t Mesh::rank(MeshCoord c) const { return (c.q * h + c.h) * p + c.p; }

ProcessGroup Mesh::groupOf(GroupKind kind, int64_t rank) const {
  MeshCoord c = coord(rank);
  ProcessGroup group{kind, {}, false};
  switch (kind) {
  case GroupKind::Expert:
    for (int64_t i = 0; i < p; ++i)
      group.ranks.push_back(this->rank({c.q, c.h, i}));
    break;
  case GroupKind::Shard:
    for (int64_t i = 0; i < h; ++i)
      group.ranks.push_back(this->rank({c.q, i, c.p}));
    break;
  case GroupKind::Replica:
    for (int64_t i = 0; i < r; ++i)
      group.ranks.push_back(this->rank({i, c.h, c.p}));
    break;
  case GroupKind::DenseReplica:
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < p; ++j)
        group.ranks.push_back(this->rank({i, c.h, j}));
    break;
  case GroupKind::World:
    for (int64_t i = 0; i < worldSize(); ++i)
      group.ranks.push_back(i);
    break;
  }
  group.crossesNodes = node(group.ranks.front()) != node(group.ranks.back());
  return group;
}

std::vector<ProcessGroup> Mesh::groups(GroupKind kind) const {
  std::vector<ProcessGroup> result;
  std::vector<bool> seen(worldSize(), false);
  for (int64_t rank = 0; rank < worldSize(); ++rank) {
    if (seen[rank])
      continue;
    ProcessGroup group = groupOf(kind, rank);
    for (int64_t member : group.ranks)
      seen[member] = true;
    result.push_back(std::move(group));
  }
  return result;
}

int64_t Mesh::groupSize(GroupKind kind) const {
  switch (kind) {
  case GroupKind::Expert: return p;
  case GroupKind::Shard: return h;
  case GroupKind::Replica: return r;
  case GroupKind::DenseReplica: return r * p;
  case GroupKind::World: return worldSize();
  }
  llvm_unreachable("unknown group kind");
}

bool Mesh::anyGroupCrossesNodes(GroupKind kind) const {
  for (const ProcessGroup &group : groups(kind))
    if (group.crossesNodes)
      return true;
  return false;
}

static llvm::Error fail(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

llvm::Expected<Mesh> moec::plan::resolveMesh(const ParallelConfig &config,
                                             int64_t numExperts) {
  const int64_t w = config.worldSize, p = config.expertParallelDegree;
  int64_t h = config.hybridShardDegree;
  if (w < 1)
    return fail(llvm::formatv("world_size {0} must be at least 1", w));
  if (p < 1)
    return fail(
        llvm::formatv("expert_parallel_degree {0} must be at least 1", p));
  if (config.gpusPerNode < 1)
    return fail(llvm::formatv("gpus_per_node {0} must be at least 1",
                              config.gpusPerNode));
  if (numExperts < 1)
    return fail(llvm::formatv("num_local_experts {0} must be at least 1",
                              numExperts));
  if (numExperts % p != 0)
    return fail(llvm::formatv(
        "expert_parallel_degree {0} does not divide num_local_experts {1}", p,
        numExperts));
  if (w % p != 0)
    return fail(llvm::formatv(
        "expert_parallel_degree {0} does not divide world_size {1}", p, w));
  if (h < 0)
    return fail(
        llvm::formatv("hybrid_shard_degree {0} must not be negative", h));
  const int64_t dataParallel = w / p;
  if (h * p > w)
    return fail(llvm::formatv(
        "hybrid_shard_degree {0} times expert_parallel_degree {1} is {2}, "
        "more than world_size {3}",
        h, p, h * p, w));

  ShardingStrategy strategy = config.strategy;
  bool automatic = h == 0;
  switch (strategy) {
  case ShardingStrategy::FullShard:
    if (automatic)
      h = dataParallel;
    else if (h != dataParallel)
      return fail(llvm::formatv(
          "sharding_strategy full_shard shards over all world_size / "
          "expert_parallel_degree = {0} ranks, but hybrid_shard_degree is {1}",
          dataParallel, h));
    break;
  case ShardingStrategy::NoShard:
    if (automatic)
      h = 1;
    else if (h != 1)
      return fail(llvm::formatv("sharding_strategy no_shard needs "
                                "hybrid_shard_degree 1 (or 0), not {0}",
                                h));
    break;
  case ShardingStrategy::HybridShard:
    if (automatic) {
      h = std::min(config.gpusPerNode, dataParallel);
      if (dataParallel % h != 0)
        return fail(llvm::formatv(
            "automatic hybrid_shard_degree {0} (one node's gpus_per_node {1}) "
            "does not divide world_size / expert_parallel_degree = {2}",
            h, config.gpusPerNode, dataParallel));
    }
    break;
  }
  if (dataParallel % h != 0)
    return fail(llvm::formatv("hybrid_shard_degree {0} does not divide "
                              "world_size / expert_parallel_degree = {1}",
                              h, dataParallel));

  Mesh mesh;
  mesh.r = dataParallel / h;
  mesh.h = h;
  mesh.p = p;
  mesh.gpn = config.gpusPerNode;
  mesh.strat = strategy;
  mesh.automatic = automatic;
  return mesh;
}
