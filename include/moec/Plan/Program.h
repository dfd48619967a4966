//===- Program.h - What a partitioned step holds and sends ----*- C++ -*-===//
//
// The partitioned @train_step (moe-expert-parallel, moe-hybrid-shard) is the
// one source of truth for what a rank holds and what it sends: its argument
// types are the rank's parameter shards and AdamW moments, the gradients its
// moe.adamw updates take are its gradient shards, and every collective is an
// op with static (or, for token dispatch, routing-independent send) sizes.
// The planner reads these from the program instead of computing them again
// (docs/plan.md says which numbers come from where). Every rank runs the
// same program, so one function gives every rank's numbers.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PLAN_PROGRAM_H
#define MOEC_PLAN_PROGRAM_H

#include "moec/Plan/Mesh.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"

#include <cstdint>
#include <vector>

namespace moec::plan {

enum class CollectiveKind { AllGather, ReduceScatter, AllReduce, AllToAll };
llvm::StringRef stringifyCollectiveKind(CollectiveKind kind);

/// What one rank of a partitioned @train_step holds, bytes, read from the
/// program itself: its parameter shards (`moe.parameter` arguments), the
/// gradient shards their moe.adamw updates take, and both AdamW moments
/// (`moe.exp_avg`, `moe.exp_avg_sq`). The memory plan's master parameters,
/// gradients and optimizer states must agree with these.
struct ProgramStateBytes {
  int64_t parameters = 0;
  int64_t gradients = 0;
  int64_t optimizerStates = 0;
};
mlir::FailureOr<ProgramStateBytes> readStateBytes(mlir::func::FuncOp step);

/// The calls of one kind, on one kind of group, with one buffer size, in a
/// partitioned @train_step.
struct ProgramCollective {
  CollectiveKind kind;
  GroupKind group;
  /// The buffer per rank and call, as the plan's Collective::bytes counts
  /// it: the gathered output, the reduce-scatter input, the all-reduce
  /// buffer, the all-to-all send buffer (for token dispatch and combine,
  /// the rank's tokens times k rows: what a rank sends does not depend on
  /// the routing).
  int64_t bytes = 0;
  /// Calls per step.
  int64_t calls = 0;
  /// Whether the calls move a micro-batch's data (parameter gathers,
  /// gradient reduce-scatters, token dispatch), which a step with gradient
  /// accumulation repeats per micro-batch, rather than the step's (the
  /// gradient all-reduces, the norm's partials, losses and statistics).
  bool perMicroStep = false;
};

/// Everything the planner reads from a partitioned @train_step.
struct ProgramFootprint {
  ProgramStateBytes state;
  /// Ordered by kind, group, then bytes.
  std::vector<ProgramCollective> collectives;

  /// The bytes of every call of `kind` on `group`, summed.
  int64_t totalBytes(CollectiveKind kind, GroupKind group) const;
};

/// Reads `step`'s state bytes and collectives. Fails, on the op, on a
/// collective whose grid axes are not one of the mesh's groups (docs/
/// partitioning.md: [2] expert, [1] shard, [0] replica, [0, 2] dense
/// replica, [0, 1, 2] world), or whose sizes are not static.
mlir::FailureOr<ProgramFootprint> readProgramFootprint(mlir::func::FuncOp step);

} // namespace moec::plan

#endif // MOEC_PLAN_PROGRAM_H
