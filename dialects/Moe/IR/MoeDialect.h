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

#include "dialects/Moe/IR/MoeDialect.h.inc"
#include "dialects/Moe/IR/MoeEnums.h.inc"

#define GET_ATTRDEF_CLASSES
#include "dialects/Moe/IR/MoeAttrs.h.inc"

#endif // DIALECTS_MOE_IR_MOEDIALECT_H
