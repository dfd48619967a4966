//===- CollectiveSchedule.h - Streams and joins of collectives --*- C++ -*-===//
//
// Where the collectives of a partitioned step run beside its compute and
// where the compute stream waits for them: the one schedule that
// moe-plan-memory (which keeps a collective's buffers alive until it is
// joined) and the CUDA printer (which prints the forks, events and joins)
// both read, so that the two cannot disagree.
//
// Every collective (shard.all_gather, shard.reduce_scatter,
// shard.all_reduce, moe.dispatch, moe.combine, moe.token_shuffle) is forked
// off the compute stream where it stands, in program order, onto one of two
// streams:
//
//   - the gradient stream: the reductions of a gradient that a moe.adamw
//     reads (its reduce-scatter over H and all-reduce over the replicas);
//   - the collective stream: every other collective (parameter gathers,
//     dispatch and combine, the token shuffle, the losses' all-reduces).
//
// The compute stream joins a collective right after it, except:
//
//   - a parameter's all-gather (of the state, or of a bf16 cast of it) is
//     joined right before the first op that reads the gathered value or a
//     view of it;
//   - a gradient reduction is joined right before the first op off its
//     stream that reads its result, but no later than where the gradient
//     stream starts the reductions of the second decoder layer after its
//     own (a layer's gradients are reduced behind the next layer's
//     backward, and at most two layers' local gradients wait for their
//     reductions). A reduce-scatter read only by the all-reduce after it is
//     joined with that all-reduce.
//
// A collective joined late reads its operands and writes its result while
// the compute stream goes on: the memory plan keeps its operands' buffers
// alive until the join (its result's are alive until their readers, which
// come after the join).
//
//===----------------------------------------------------------------------===//

#ifndef DIALECTS_MOE_TRANSFORMS_COLLECTIVESCHEDULE_H
#define DIALECTS_MOE_TRANSFORMS_COLLECTIVESCHEDULE_H

#include "mlir/IR/Block.h"
#include "llvm/ADT/MapVector.h"

namespace mlir::moe {

/// The stream a collective runs on beside the compute stream.
enum class CollectiveStream {
  /// Parameter gathers, dispatch, combine, the token shuffle, the losses'
  /// and statistics' all-reduces.
  Collective,
  /// The reductions of the gradients the optimizer reads.
  Gradient,
};

/// One collective of the schedule.
struct ScheduledCollective {
  /// Its number, in program order from 0.
  int id = 0;
  CollectiveStream stream = CollectiveStream::Collective;
  /// The op before which the compute stream waits for it; null: right
  /// after it.
  Operation *join = nullptr;
};

/// The collectives of `block` (a step's body) in program order, each with
/// its stream and join (see the file comment). Ops that are not collectives
/// are not in it.
llvm::MapVector<Operation *, ScheduledCollective>
scheduleCollectives(Block &block);

} // namespace mlir::moe

#endif // DIALECTS_MOE_TRANSFORMS_COLLECTIVESCHEDULE_H
