//===- MoeDialect.h - The moe dialect ---------------------------*- C++ -*-===//
//
// Declares the `moe` dialect, its enums and attributes. Include MoeOps.h for
// the operations.
//
//===----------------------------------------------------------------------===//

#ifndef DIALECTS_MOE_IR_MOEDIALECT_H
#define DIALECTS_MOE_IR_MOEDIALECT_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Dialect.h"
#include "mlir/Interfaces/FunctionInterfaces.h"
#include "llvm/ADT/DenseSet.h"

#include "dialects/Moe/IR/MoeDialect.h.inc"
#include "dialects/Moe/IR/MoeEnums.h.inc"

#define GET_ATTRDEF_CLASSES
#include "dialects/Moe/IR/MoeAttrs.h.inc"

#include <optional>

namespace mlir::moe {
/// The decoder layer N of a parameter named `...layers.N.<rest>` (`layers.`
/// at the start of the name or after a dot, N followed by a dot), or none for
/// a parameter outside the decoder layers (embedding, final norm, head). The
/// passes that schedule by layer (moe-checkpoint-activations,
/// moe-prefetch-collectives) find a step's layers by it.
std::optional<int64_t> getDecoderLayerOfParameter(StringRef name);

/// The layer getParameterValues gives a parameter outside the decoder
/// layers (embedding, final norm, head) and the values computed from it.
constexpr int64_t kOutsideDecoderLayers = -1;

/// The values of a function's body computed from its parameters (arguments
/// tagged moe.parameter) and constants alone, the parameters included; for
/// those that read a parameter, the highest decoder layer of the parameters
/// they are computed from (getDecoderLayerOfParameter, or
/// kOutsideDecoderLayers).
struct ParameterValues {
  llvm::DenseSet<Value> values;
  llvm::DenseMap<Value, int64_t> layer;
};
ParameterValues getParameterValues(FunctionOpInterface func);
} // namespace mlir::moe

#endif // DIALECTS_MOE_IR_MOEDIALECT_H
