//===- Passes.h - Partitioning of the training step -------------*- C++ -*-===//
//
// Declarations and registration of moe-expert-parallel and
// moe-hybrid-shard, and the IR contract between them.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_CONVERSION_MOETOSHARD_PASSES_H
#define MOEC_CONVERSION_MOETOSHARD_PASSES_H

#include "dialects/Moe/IR/MoeOps.h"
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

#define GEN_PASS_DECL
#include "moec/Conversion/MoeToShard/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "moec/Conversion/MoeToShard/Passes.h.inc"

} // namespace moec

#endif // MOEC_CONVERSION_MOETOSHARD_PASSES_H
