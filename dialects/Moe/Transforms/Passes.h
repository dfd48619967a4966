//===- Passes.h - moe dialect passes ----------------------------*- C++ -*-===//
//
// Declarations and registration of the passes on `moe` IR.
//
//===----------------------------------------------------------------------===//

#ifndef DIALECTS_MOE_TRANSFORMS_PASSES_H
#define DIALECTS_MOE_TRANSFORMS_PASSES_H

#include "dialects/Moe/IR/MoeOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Pass/Pass.h"

namespace mlir::moe {

#define GEN_PASS_DECL
#include "dialects/Moe/Transforms/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "dialects/Moe/Transforms/Passes.h.inc"

} // namespace mlir::moe

#endif // DIALECTS_MOE_TRANSFORMS_PASSES_H
