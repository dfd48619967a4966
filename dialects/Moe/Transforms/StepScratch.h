//===- StepScratch.h - The kernel scratch a training step needs -*- C++ -*-===//
//
// Besides its state, arena and inputs, a CUDA training program allocates
// one kernel scratch buffer (and, partitioned, one for its collective
// stream), as large as the largest need of its ops. The needs are the
// formulas of moert/kernels/ScratchBytes.h, the ones the kernels carve
// their scratch with, at the step's static shapes. stepScratchNeeds lists
// them, op by op: the CUDA printer prints the program's scratch size from
// this list and reports its total, and moe-checkpoint-activations counts
// the total in the bytes a policy needs.
//
//===----------------------------------------------------------------------===//

#ifndef DIALECTS_MOE_TRANSFORMS_STEPSCRATCH_H
#define DIALECTS_MOE_TRANSFORMS_STEPSCRATCH_H

#include "mlir/Dialect/Func/IR/FuncOps.h"

#include <cstdint>

namespace mlir::moe {

/// What a scratch need leaves to the GPU (ScratchNeed::uncounted).
enum class ScratchUncounted { Nothing, CudnnWorkspace, SortStorage };

/// One op's scratch need: the formula of moert/kernels/ScratchBytes.h that
/// gives it, its arguments and its value.
struct ScratchNeed {
  Operation *op = nullptr;
  /// The formula's name in moert::kernels (`expertsScratchBytes`, ...).
  StringRef formula;
  SmallVector<int64_t> arguments;
  /// The bytes, or those the compiler can count (see `uncounted`).
  int64_t bytes = 0;
  /// What the GPU adds to `bytes` that only it knows: cuDNN's SDPA
  /// workspace (`bytes` counts the buffers the cuDNN path carves beside
  /// it), CUB's radix-sort storage of the balanced router (`bytes` counts
  /// the router's other buffers). The program computes those at run time.
  ScratchUncounted uncounted = ScratchUncounted::Nothing;
  /// Whether the op is a collective, which runs on the collective stream
  /// with a scratch of its own (and counts for both).
  bool collective = false;
};

/// The scratch needs of the ops of `step` (single block, static shapes),
/// in program order; `cudnnAttention`: bf16 attention runs on cuDNN. Fails
/// with a diagnostic at an op whose grid is not in the module.
FailureOr<SmallVector<ScratchNeed>>
stepScratchNeeds(func::FuncOp step, bool cudnnAttention);

/// The bytes a step's scratch buffers take, from its needs.
struct StepScratchBytes {
  /// The compute stream's: the largest need, at least 256 bytes.
  int64_t bytes = 256;
  /// The collective stream's: the largest collective need, at least 256
  /// bytes; 0 in a step without collectives (no such buffer).
  int64_t collectiveBytes = 0;
  /// Whether some need leaves out cuDNN's workspace, or CUB's sort
  /// storage (ScratchNeed::uncounted).
  bool uncountedCudnnWorkspace = false, uncountedSortStorage = false;
};

/// The scratch bytes of `needs` (stepScratchNeeds), as the program sizes
/// its buffers; `collectiveStream`: the program has one (a partitioned
/// step).
StepScratchBytes stepScratchBytes(ArrayRef<ScratchNeed> needs,
                                  bool collectiveStream);

} // namespace mlir::moe

#endif // DIALECTS_MOE_TRANSFORMS_STEPSCRATCH_H
