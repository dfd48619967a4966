//===- Cuda.h - Emit CUDA C++ from moe IR -----------------------*- C++ -*-===//
//
// The CUDA printer: writes one self-contained .cu host program for the
// functions of a module it can emit. It only prints; it never changes the
// IR, and fails with a diagnostic at the first op it cannot emit.
//
// So far it emits @init_params (delayed_param on the GPU): one kernel
// launch per moe.param_init, all parameters in one device arena, and a host
// main that takes `--seed N [--dump DIR]` and writes each parameter as raw
// little-endian fp32 (`DIR/<name>.bin`) plus `DIR/manifest.tsv` (name,
// shape, arena offset, kind, std), which python -m moec.check_init compares
// with the generator's numpy twin. The training step's lowering comes next
// (docs/cuda-backend.md).
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_TARGET_CUDA_H
#define MOEC_TARGET_CUDA_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/raw_ostream.h"

namespace moec {

/// Prints the CUDA program of `module`'s @init_params to `os`.
mlir::LogicalResult emitCudaInitProgram(mlir::ModuleOp module,
                                        llvm::raw_ostream &os);

} // namespace moec

#endif // MOEC_TARGET_CUDA_H
