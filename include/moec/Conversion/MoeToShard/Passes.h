//===- Passes.h - Partitioning of the training step -------------*- C++ -*-===//
//
// Declarations and registration of moe-expert-parallel, moe-hybrid-shard
// and moe-prefetch-collectives, and the IR contract between them.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_CONVERSION_MOETOSHARD_PASSES_H
#define MOEC_CONVERSION_MOETOSHARD_PASSES_H

#include "dialects/Moe/IR/MoeOps.h"
#include "moec/Support/TrainingJob.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Shard/IR/ShardDialect.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Pass/Pass.h"

namespace moec {

/// The name of the mesh `shard.grid` of a partitioned module. Its axes are
/// (R, H, P), in this order.
inline constexpr llvm::StringLiteral kMeshName = "mesh";
/// The grid axes of the mesh.
enum MeshAxis : int16_t { ReplicaAxis = 0, ShardAxis = 1, ExpertAxis = 2 };

/// A pass-option modifier that accepts every moe::Dispatcher by its name in
/// the dialect (all_to_all, all_gather).
struct DispatcherNames {
  template <typename Opt>
  void apply(Opt &option) const {
    for (uint32_t value = 0; value <= mlir::moe::getMaxEnumValForDispatcher();
         ++value)
      if (std::optional<mlir::moe::Dispatcher> kind =
              mlir::moe::symbolizeDispatcher(value))
        option.getParser().addLiteralOption(
            mlir::moe::stringifyDispatcher(*kind), *kind, "");
  }
};

/// A pass-option modifier that accepts every ShardingStrategy by its job
/// name (full_shard, hybrid_shard, no_shard).
struct ShardingStrategyNames {
  template <typename Opt>
  void apply(Opt &option) const {
    for (unsigned value = 0; value < kNumShardingStrategies; ++value) {
      auto strategy = static_cast<ShardingStrategy>(value);
      option.getParser().addLiteralOption(stringifyShardingStrategy(strategy),
                                          strategy, "");
    }
  }
};

#define GEN_PASS_DECL
#include "moec/Conversion/MoeToShard/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "moec/Conversion/MoeToShard/Passes.h.inc"

} // namespace moec

#endif // MOEC_CONVERSION_MOETOSHARD_PASSES_H
