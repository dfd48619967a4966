//===- MoeOps.h - moe dialect operations ------------------------*- C++ -*-===//
//
// Declares the operations of the `moe` dialect (generated from MoeOps.td).
//
//===----------------------------------------------------------------------===//

#ifndef DIALECTS_MOE_IR_MOEOPS_H
#define DIALECTS_MOE_IR_MOEOPS_H

#include "dialects/Moe/IR/MoeDialect.h"
#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

namespace mlir::moe {
/// The trait of the ops that compute gradients (MoeOps.td's
/// Moe_ComputesGradient): a training step's backward is what depends on
/// their results.
template <typename ConcreteType>
class ComputesGradient
    : public OpTrait::TraitBase<ConcreteType, ComputesGradient> {};
} // namespace mlir::moe

#define GET_OP_CLASSES
#include "dialects/Moe/IR/MoeOps.h.inc"

#endif // DIALECTS_MOE_IR_MOEOPS_H
