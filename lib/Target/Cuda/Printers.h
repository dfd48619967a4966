//===- Printers.h - What the CUDA printers share ----------------*- C++ -*-===//
//
// Internal to lib/Target/Cuda: small text helpers, the launch of one
// moe.param_init, printed the same way in the init and training programs,
// and the check that the init program creates whole parameters.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_LIB_TARGET_CUDA_PRINTERS_H
#define MOEC_LIB_TARGET_CUDA_PRINTERS_H

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/raw_ostream.h"

#include <string>

namespace moec::detail {

/// A C++ string literal for `text`.
std::string quoted(llvm::StringRef text);

/// "1, 2, 3".
std::string joined(llvm::ArrayRef<int64_t> values);

/// One kernel launch that fills the fp32 or bf16 buffer `pointer` (a C++
/// expression) as `op` defines, on CUDA stream `stream`; the printed code
/// expects a `uint64_t seed` in scope. A rank's block (`grid`,
/// `split_axes`) is placed by the coordinates of `mesh`, a C++ expression
/// of a moert::MeshGroups.
void printParamInitLaunch(mlir::moe::ParamInitOp op, llvm::StringRef pointer,
                          llvm::StringRef stream, llvm::StringRef mesh,
                          llvm::raw_ostream &os);

/// Fails with a diagnostic on the first moe.param_init of `init` that
/// creates one rank's block (`grid`, `split_axes`): the init-only program
/// creates whole parameters (a partitioned training program creates its
/// blocks itself).
mlir::LogicalResult checkWholeParameters(mlir::func::FuncOp init);

} // namespace moec::detail

#endif // MOEC_LIB_TARGET_CUDA_PRINTERS_H
