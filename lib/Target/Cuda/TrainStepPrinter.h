//===- TrainStepPrinter.h - The printer of @train_step ----------*- C++ -*-===//
//
// Internal to lib/Target/Cuda: the class that prints the training program
// (moec::emitCudaTrainProgram, moec/Target/Cuda.h), in four files:
//
//   TrainStepEmitter.cpp      the arguments' layout in the state and input
//                             regions, the values' pointers, the segments,
//                             the program around the step, the entry point;
//   TrainStepOps.cpp          each op's launch (printOp): moert kernels,
//                             generated element-wise and transpose kernels,
//                             AdamW groups, --check-numerics counts;
//   TrainStepCollectives.cpp  collectives on their streams, expert-parallel
//                             dispatch and combine;
//   TrainStepTransfers.cpp    activation offloading's copies to the host
//                             and back.
//
// The printer walks the specialised, memory-planned
// @train_step once, in program order, and prints for every op a launch of
// the moert kernel library (runtime/include/moert/kernels) or a kernel it
// generates itself (element-wise arith ops), with every buffer a fixed
// offset into one of three device regions:
//
//   state   parameters, exp_avg, exp_avg_sq, fp32 (master weights) or bf16
//           (a bf16 model), one type per parameter (function arguments that
//           moe.adamw updates in place; moe-plan-memory gives them no arena
//           bytes);
//   inputs  input_ids, labels, step, lr (written by the host before a step);
//   arena   every other value, at the offset moe-plan-memory chose;
//   host    the offloaded activations (moe.offload's results), pinned host
//           memory at the offsets moe-plan-memory chose (moe.host_offsets).
//
// Activation offloading: moe.offload copies to the host on the offload
// stream, moe.fetch back on the fetch stream (moert/kernels/Offload.h),
// outside the captured segments. The compute stream waits for an offload's
// copy at its moe.offload_join (the memory plan holds the copied value's
// bytes until there; without a join, before the first op that writes
// them), and for a fetch right before
// the first op that reads the fetched value; a fetch waits for its offload
// and for any unfinished offload of the bytes it writes.
//
// Views (expand/collapse_shape) print as their source's pointer. The printer
// only prints: what it fuses or groups, passes made explicit in the IR
// before it (moe.add_rms_norm from moe-fuse-add-rms-norm, moe.adamw_group
// from moe-group-adamw), and the model FLOPs come from
// moec/Analysis/ModelFlops.h. It checks everything it relies on and fails
// with a diagnostic at the op.
//
// CUDA graphs: the step is cut into segments at the ops whose launches
// depend on values the host reads back during the step (the experts' group
// sizes: moe.experts and moe.experts_grad). Every segment between them has
// fixed launches on fixed buffers, so the program captures each one into a
// CUDA graph once and replays it (moert/StepGraphs.h); the experts ops run
// as they are between the replays.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_LIB_TARGET_CUDA_TRAINSTEPPRINTER_H
#define MOEC_LIB_TARGET_CUDA_TRAINSTEPPRINTER_H

#include "moec/Target/Cuda.h"

#include "dialects/Moe/IR/MoeOps.h"
#include "dialects/Moe/Transforms/CollectiveSchedule.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/StringMap.h"

#include <fmt/format.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace moec::detail {

// The MLIR names the printer's declarations use, as mlir/Support/LLVM.h
// brings LLVM's into mlir.
using mlir::ArrayRef;
using mlir::FailureOr;
using mlir::LogicalResult;
using mlir::Operation;
using mlir::RankedTensorType;
using mlir::SmallVector;
using mlir::StringRef;
using mlir::Type;
using mlir::Value;
using mlir::ValueRange;
namespace func = mlir::func;
namespace linalg = mlir::linalg;
namespace moe = mlir::moe;
namespace shard = mlir::shard;

/// The C++ element type of a tensor the printer can hold.
FailureOr<std::string> cType(Type type);
/// The rows of `type`: the product of all but its last dimension.
int64_t leadingCount(RankedTensorType type);
RankedTensorType typeOf(Value v);
int64_t elementBytes(Value v);
int64_t byteSize(RankedTensorType t);
/// `v` as a C++ float literal of 9 significant digits.
std::string floatLiteral(double v);

/// The arguments after the buffers that the attention kernels (GEMM and
/// cuDNN) share: B, S, N, KV, D, scale, causal, window.
template <class AttentionLikeOp>
std::string attentionShape(AttentionLikeOp a) {
  auto q = typeOf(a.getQuery()).getShape(), k = typeOf(a.getKey()).getShape();
  int64_t window = a.getSlidingWindow() ? *a.getSlidingWindow() : -1;
  return fmt::format("{}, {}, {}, {}, {}, {}, {}, {}", q[0], q[1], q[2], k[2],
                     q[3], floatLiteral(a.getScale().convertToDouble()),
                     a.getCausal() ? "true" : "false", window);
}

class TrainStepPrinter {
public:
  TrainStepPrinter(func::FuncOp step, func::FuncOp init,
                   shard::GridOp grid,
                   const moec::CudaTrainProgramOptions &options)
      : step(step), init(init), grid(grid), options(options) {}

  LogicalResult print(llvm::raw_ostream &os,
                      moec::CudaTrainProgramSummary &summary);

private:
  LogicalResult layoutArguments();
  LogicalResult printOp(Operation &op);
  LogicalResult setResultPointers(Operation &op);
  LogicalResult printElementwise(Operation &op);
  LogicalResult printTranspose(linalg::TransposeOp op);
  LogicalResult printAdamWGroup(ArrayRef<moe::AdamWOp> group);
  FailureOr<std::string> pointer(Operation &at, Value v);
  std::string typed(Value v);
  std::string pointerList(Operation &at, ValueRange values, bool &ok);
  /// Whether an attention op on `query` runs on cuDNN (and notes that the
  /// program then needs it).
  bool onCudnn(Value query) {
    bool cudnn = options.cudnnAttention &&
                 typeOf(query).getElementType().isBF16();
    usesCudnn |= cudnn;
    return cudnn;
  }
  /// Ends the segment `body` holds: it becomes a captured segment of the
  /// step when `capture`, else it runs as printed.
  void endSegment(bool capture);
  /// The storage class of the program's per-rank objects: a partitioned
  /// program's ranks may run as threads of one process.
  const char *perRank() const { return grid ? "thread_local" : "static"; }
  /// The group size of `axes` on the mesh, after checking that `gridName`
  /// is the program's mesh.
  FailureOr<int64_t> groupSize(Operation &op, StringRef gridName,
                               ArrayRef<int16_t> axes);
  /// The number of rows of `v`'s leading dimension: a literal, or the host
  /// variable that holds a dispatch's received row count.
  std::string rowsOf(Value v);
  /// The most rows `v` can have (its static extent, or its dispatch's
  /// receive bound).
  int64_t rowBoundOf(Value v);
  LogicalResult printCollective(Operation &op);
  /// Takes the collectives' streams and joins from moe::scheduleCollectives
  /// (the schedule moe-plan-memory planned the buffers for).
  void scheduleCollectives();
  /// Prints the fork of collective `op` onto its stream and returns the
  /// name of the context its calls take.
  std::string forkCollective(Operation &op);
  /// Prints the end of collective `op` and, unless it is overlapped, the
  /// compute stream's join right after it.
  void endCollective(Operation &op);
  LogicalResult printExpertParallel(Operation &op);
  /// Numbers the offloads and fetches and chooses where the compute stream
  /// waits for each, and which offloads each fetch waits for.
  LogicalResult scheduleTransfers();
  /// Prints moe.offload or moe.fetch `op`.
  LogicalResult printTransfer(Operation &op);
  /// The arena bytes [begin, end) that `v` (or its view's source) occupies,
  /// a value with dynamic rows up to the arena's end; none outside it.
  std::optional<std::pair<int64_t, int64_t>> arenaRangeOf(Value v);
  /// Prints a --check-numerics count (moert/kernels/Numerics.cuh) of the
  /// `count` elements of `v` and its row of the checks table, `what` naming
  /// it.
  void printNumericsCheck(const std::string &what, Value v,
                          const std::string &count);
  /// The same of the buffer at `pointer`, of type `typeText` as the table
  /// names it (a split master's copy).
  void printNumericsCheck(const std::string &what, const std::string &pointer,
                          const std::string &typeText,
                          const std::string &count);
  /// The checks of each floating-point result of `op`, which launched on
  /// the step's stream.
  void printNumericsChecks(Operation &op);

  func::FuncOp step, init;
  shard::GridOp grid; ///< the mesh of a partitioned program, else null
  const moec::CudaTrainProgramOptions &options;

  llvm::DenseMap<Value, std::string> pointers; ///< C++ pointer expressions
  llvm::DenseMap<Value, double> constants;     ///< splat scalar constants
  /// Values whose leading dimension is a dispatch's received rows: the
  /// host variable that holds it and its bound.
  llvm::DenseMap<Value, std::pair<std::string, int64_t>> dynamicRows;
  /// Every collective's number, stream and join; the overlapped ones are
  /// joined before the ops in joinsBefore.
  llvm::MapVector<Operation *, moe::ScheduledCollective> collectives;
  llvm::DenseMap<Operation *, SmallVector<int>> joinsBefore;
  /// The number of each moe.offload and of each moe.fetch; the offloads and
  /// fetches the compute stream waits for before an op; the other offloads
  /// a fetch's stream waits for.
  llvm::DenseMap<Operation *, int> transferIds;
  llvm::DenseMap<Operation *, SmallVector<int>> offloadJoinsBefore,
      fetchJoinsBefore, fetchWaitsFor;
  int64_t hostBytes = 0; ///< the pinned host region (moe.host_bytes)
  llvm::DenseMap<Value, int64_t> hostOffsets; ///< moe.offload's results
  std::string kernels, body, setup, statics;
  std::string stepBody;              ///< what step() runs, in order
  std::vector<std::string> segments; ///< bodies of the captured segments
  std::map<std::string, std::string> kernelNames; ///< source -> name
  int64_t stateBytes = 0, inputBytes = 0, groups = 0;
  int64_t derivedStateBytes = 0; ///< kept copies
  /// Parameter argument -> its persistent bf16 copy, which AdamW writes.
  llvm::DenseMap<Value, std::string> parameterCopies;
  /// store_param_remainders: parameter argument -> the low 16 bits of its
  /// fp32 master (its copy holds the rest), and the AdamW groups that
  /// update masters so (splitStepMasters, joinStepMasters).
  llvm::DenseMap<Value, std::string> masterRemainders;
  SmallVector<int64_t> splitGroups;
  llvm::DenseSet<Value> splitUpdated; ///< split masters AdamW updates
  int64_t splitMasterElements = 0;
  bool usesCudnn = false;
  /// The rows of the program's kNumericsChecks table, in program order.
  std::string numericsChecks;
  int numNumericsChecks = 0;

  struct Param {
    std::string name;
    RankedTensorType type;
    int64_t offset[3] = {-1, -1, -1}; ///< param, exp_avg, exp_avg_sq
  };
  std::vector<Param> params;
  llvm::StringMap<size_t> paramIndex;
  int64_t inputOffset[4] = {-1, -1, -1, -1}; ///< ids, labels, step, lr
};

} // namespace moec::detail

#endif // MOEC_LIB_TARGET_CUDA_TRAINSTEPPRINTER_H
