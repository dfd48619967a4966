//===- InitAll.h - Register moec's dialects and passes ----------*- C++ -*-===//
//
// One place that knows every dialect and pass moec uses, for the tools.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_INITALL_H
#define MOEC_INITALL_H

#include "mlir/IR/DialectRegistry.h"

namespace moec {

/// Adds the moe dialect and the upstream dialects moec's IR uses.
void registerAllDialects(mlir::DialectRegistry &registry);

/// Registers moec's passes and named pipelines with the global registry.
void registerAllPasses();

} // namespace moec

#endif // MOEC_INITALL_H
