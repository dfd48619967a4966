//===- Executor.h - The CPU reference executor ------------------*- C++ -*-===//
//
// Runs a function of raised `moe` IR on the CPU, in fp32 (accumulating in
// fp64), one op at a time. It is the oracle every other part of moec is
// checked against, so it is written to be obviously right rather than fast,
// and it shares no kernel code with the CUDA path.
//
// A partitioned (SPMD) function runs on W simulated ranks with
// executeOnRanks: one thread per rank, each with its RankContext, so that
// collective ops find their rank, the mesh that maps grid axes to process
// groups, and the shared in-process communicator.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_REFERENCE_EXECUTOR_H
#define MOEC_REFERENCE_EXECUTOR_H

#include "moec/Plan/Mesh.h"
#include "moec/Reference/Communicator.h"
#include "moec/Support/HostTensor.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Support/LogicalResult.h"

#include "llvm/Support/Error.h"

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moec::reference {

/// How a run checks what it computes.
struct ExecuteOptions {
  /// After every op, check its floating-point results: the first op with an
  /// inf or a NaN fails the run with a diagnostic at the op naming the
  /// result, its type and the count (`moec train --check-numerics`).
  bool checkNumerics = false;
};

/// Runs `func` on `arguments` (one per function argument, in order) and
/// returns its results in `results`. Shapes are checked against the
/// function's types. Fails with a diagnostic at the offending op on a shape
/// mismatch, an index out of range, or an op the executor does not know
/// (for example an unraised `moe.onnx_node`).
mlir::LogicalResult execute(mlir::func::FuncOp func,
                            const std::vector<HostTensor> &arguments,
                            std::vector<HostTensor> &results,
                            const ExecuteOptions &options = {});

/// Where a function returns what: its results by the tag and name on each
/// (`moe.output` = "loss", `moe.parameter` = "model.norm.weight", ...), so
/// that a caller of execute() reads results by what they are, whatever
/// their order.
class ResultIndex {
public:
  explicit ResultIndex(mlir::func::FuncOp function);

  /// The position of the result tagged `tag` = `name`, or an error naming
  /// the function, the tag and the name.
  llvm::Expected<unsigned> lookup(llvm::StringRef tag,
                                  llvm::StringRef name) const;

private:
  std::string functionName;
  std::map<std::pair<std::string, std::string>, unsigned> positions;
};

/// What a collective op needs to know about the rank that runs it.
struct RankContext {
  int64_t rank = 0;
  const plan::Mesh *mesh = nullptr;
  Communicator *communicator = nullptr;
};

/// Runs `func` as rank `context.rank` of `context.mesh`. Single-rank
/// `execute` is this with no context: collective ops then fail.
mlir::LogicalResult executeAsRank(mlir::func::FuncOp func,
                                  const RankContext &context,
                                  const std::vector<HostTensor> &arguments,
                                  std::vector<HostTensor> &results,
                                  const ExecuteOptions &options = {});

/// Runs the SPMD function `func` on every rank of `mesh` at once, one thread
/// per rank, with `perRankArguments[r]` as rank r's arguments; fills
/// `perRankResults[r]`. When a rank fails, the others' collectives are
/// abandoned and the whole run fails.
mlir::LogicalResult
executeOnRanks(mlir::func::FuncOp func, const plan::Mesh &mesh,
               const std::vector<std::vector<HostTensor>> &perRankArguments,
               std::vector<std::vector<HostTensor>> &perRankResults,
               const ExecuteOptions &options = {});

/// How far `actual` is from `expected`: the largest absolute difference and
/// the L2 norm of the difference relative to the L2 norm of `expected`.
struct ErrorStats {
  double maxAbs = 0.0;
  double relativeL2 = 0.0;
};
ErrorStats compare(const HostTensor &actual, const HostTensor &expected);

} // namespace moec::reference

#endif // MOEC_REFERENCE_EXECUTOR_H
