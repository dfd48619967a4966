//===- Collectives.h - Reference execution of shard collectives -*- C++ -*-===//
//
// The executor's kernels for the upstream `shard` collectives of a
// partitioned step (all_gather, reduce_scatter, all_reduce). A collective's
// `grid_axes` name a process group of the rank's mesh: lib/Plan's Mesh is
// the one place that knows which ranks that is, so the axes are mapped to
// its GroupKinds (axes 0, 1, 2 of the grid are R, H, P). The data moves
// through the in-process communicator as flat buffers, as NCCL moves it;
// these functions arrange the tensor dimensions around that.
//
//===----------------------------------------------------------------------===//

#ifndef LIB_REFERENCE_COLLECTIVES_H
#define LIB_REFERENCE_COLLECTIVES_H

#include "moec/Reference/Executor.h"

#include "mlir/Dialect/Shard/IR/ShardOps.h"

namespace moec::reference {

/// The process group of `context`'s rank that `gridAxes` of the grid
/// `gridName` name, in group-rank order. Fails at `op` without a rank, on a
/// grid that is not the rank's mesh, or on axes that name no group.
mlir::FailureOr<std::vector<int64_t>>
processGroup(mlir::Operation *op, llvm::StringRef gridName,
             llvm::ArrayRef<int16_t> gridAxes, const RankContext *context);

mlir::LogicalResult runAllGather(mlir::shard::AllGatherOp op,
                                 const RankContext *context,
                                 const HostTensor &input, HostTensor &result);

mlir::LogicalResult runReduceScatter(mlir::shard::ReduceScatterOp op,
                                     const RankContext *context,
                                     const HostTensor &input,
                                     HostTensor &result);

mlir::LogicalResult runAllReduce(mlir::shard::AllReduceOp op,
                                 const RankContext *context,
                                 const HostTensor &input, HostTensor &result);

} // namespace moec::reference

#endif // LIB_REFERENCE_COLLECTIVES_H
