//===- MoeDialect.cpp - The moe dialect -----------------------------------===//
//
// Registers the `moe` dialect's operations and attributes.
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/IR/MoeDialect.h"

#include "dialects/Moe/IR/MoeOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/DialectImplementation.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;
using namespace mlir::moe;

#include "dialects/Moe/IR/MoeDialect.cpp.inc"
#include "dialects/Moe/IR/MoeEnums.cpp.inc"

#define GET_ATTRDEF_CLASSES
#include "dialects/Moe/IR/MoeAttrs.cpp.inc"

void MoeDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "dialects/Moe/IR/MoeOps.cpp.inc"
      >();
  addAttributes<
#define GET_ATTRDEF_LIST
#include "dialects/Moe/IR/MoeAttrs.cpp.inc"
      >();
}
