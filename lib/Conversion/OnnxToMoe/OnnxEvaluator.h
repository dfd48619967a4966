//===- OnnxEvaluator.h - Evaluate imported ONNX subgraphs -------*- C++ -*-===//
//
// Computes the value of a `moe.onnx_node` subgraph on concrete inputs, the
// way onnxruntime would, for the ONNX operators that Mixtral exports use.
//
// The raising pass uses it to prove a rewrite right instead of trusting a
// pattern's shape: a candidate subgraph (say, everything between three
// projections and the attention output, with its mask and rotary tables) is
// evaluated on random inputs at sample sizes and compared with the `moe` op
// it is to become. Tables that depend only on the input's shape (causal
// masks, cos/sin) are evaluated the same way.
//
// It is deliberately small: fp32 and int64 elements (bool as 0/1 int64), no
// sub-graphs. Each operator is one function in a table keyed by its domain
// and type; a node whose operator is not in the table fails with the
// operator's type and the node's location.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_LIB_CONVERSION_ONNXTOMOE_ONNXEVALUATOR_H
#define MOEC_LIB_CONVERSION_ONNXTOMOE_ONNXEVALUATOR_H

#include "moec/Support/HostTensor.h"

#include "mlir/IR/Value.h"
#include "llvm/ADT/DenseMap.h"

#include <memory>
#include <optional>
#include <string>

namespace moec {

class OnnxEvaluator {
public:
  /// Fixes the value of `value` (a function argument, or any value to cut the
  /// subgraph at).
  void bind(mlir::Value value, HostTensor tensor);

  /// Evaluates `value`, computing its producers as needed. Returns null and
  /// sets `error` (ending in " at node <location>" of the innermost node that
  /// failed) when an operator has no evaluation rule, a node's operands do
  /// not fit its operator or an argument is unbound.
  const HostTensor *evaluate(mlir::Value value, std::string &error);

  /// Why a node of an operator with `inputs` inputs (present ones: absent
  /// optional inputs are not counted) and `outputs` outputs does not fit
  /// the evaluator's rule for it ("it has 3 inputs, but ONNX 'Add' takes
  /// 2"): fewer inputs than the rule reads, more than it reads (they would
  /// be ignored), no output, or more outputs than the operator gives.
  /// nullopt when the node fits, or for an operator without a rule.
  static std::optional<std::string> countProblem(llvm::StringRef domain,
                                                 llvm::StringRef type,
                                                 unsigned inputs,
                                                 unsigned outputs);

private:
  bool evaluateOp(mlir::Operation *op, std::string &error);
  /// Boxed, so that pointers handed out stay valid as the map grows.
  llvm::DenseMap<mlir::Value, std::unique_ptr<HostTensor>> values;
  /// Elements of every result computed so far: held to the same 2^24 as one
  /// result, so that no chain of operators within the per-result limit
  /// adds up to seconds of work and gigabytes.
  int64_t evaluatedElements = 0;
};

} // namespace moec

#endif // MOEC_LIB_CONVERSION_ONNXTOMOE_ONNXEVALUATOR_H
