//===- ModelLoading.h - Load a model for a moec subcommand ------*- C++ -*-===//
//
// Turns a MODEL argument (an ONNX file or a .mlir file of moe IR) into a
// module of raised moe IR, reporting errors as diagnostics; the flags that
// say how to read an ONNX file are declared here once for every subcommand
// that reads one.
//
//===----------------------------------------------------------------------===//

#ifndef TOOLS_MOEC_MODELLOADING_H
#define TOOLS_MOEC_MODELLOADING_H

#include "moec/Import/Onnx.h"
#include "moec/Support/TrainingJob.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/OwningOpRef.h"

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/CommandLine.h"

#include <memory>

namespace moec::cli {

/// Prints diagnostics as `file:line:col: error: message` (for an ONNX node,
/// line is its 1-based position in the graph), with notes after them, for
/// as long as it lives.
/// Unlike MLIR's SourceMgr handler it never quotes the source line: an ONNX
/// file is binary.
class DiagnosticPrinter {
public:
  explicit DiagnosticPrinter(mlir::MLIRContext &context);
  ~DiagnosticPrinter();

private:
  mlir::MLIRContext &context;
  mlir::DiagnosticEngine::HandlerID id;
};

/// The flags that say how to read an ONNX model (`--custom-op`, repeated),
/// in the subcommands that read one. Construct it after the subcommands
/// exist (in main), before parsing.
class ImportFlags {
public:
  explicit ImportFlags(llvm::ArrayRef<llvm::cl::SubCommand *> subcommands);
  ~ImportFlags();

  /// The importer's options the flags spell, merged with `job`'s
  /// `custom_ops` when the command reads a job; the error names the flag
  /// and its value (or the flag and the key that map one op to two kinds).
  llvm::Expected<OnnxImportOptions>
  read(const moec::TrainingJob *job = nullptr) const;

private:
  std::unique_ptr<llvm::cl::list<std::string>> customOps;
};

/// Loads `path`: `.mlir` files are parsed as they are; anything else is
/// imported as ONNX with `flags`' options (and `job`'s custom_ops, for the
/// commands that read a job) and, when `raise` is set, run through the
/// import pipeline (with `requireComplete` failing on unraised nodes).
mlir::OwningOpRef<mlir::ModuleOp>
loadModel(mlir::MLIRContext &context, llvm::StringRef path,
          const ImportFlags &flags, bool raise, bool requireComplete,
          const moec::TrainingJob *job = nullptr);

/// Loads parameter `name` of `forward` from the model file's initializers
/// `weights`: the initializer its `moe.initializer` names (by default
/// `name`), transposed by its `moe.initializer_permutation`
/// (moe-canonicalize-parameters) and rounded to the parameter's element type
/// where the initializer is stored wider. On failure returns false and sets
/// `error`.
bool loadParameter(const moec::OnnxWeights &weights, mlir::func::FuncOp forward,
                   llvm::StringRef name, moec::HostTensor &out,
                   std::string &error);

/// The module's `forward` function, or null after a diagnostic.
mlir::func::FuncOp getForward(mlir::ModuleOp module);

/// An error when the file `output` (of flag `flag`) is one of `inputs`
/// (the same file by device and inode, however it is spelt): writing it
/// would destroy what the command reads. Inputs that do not exist are
/// skipped.
llvm::Error checkNotAnInput(llvm::StringRef flag, llvm::StringRef output,
                            llvm::ArrayRef<std::string> inputs);

} // namespace moec::cli

#endif // TOOLS_MOEC_MODELLOADING_H
