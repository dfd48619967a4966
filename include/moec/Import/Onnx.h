//===- Onnx.h - Import ONNX models into the moe dialect ---------*- C++ -*-===//
//
// The ONNX importer reads a model file (protobuf) and builds one
// `func.func @forward` in a module:
//
//   * graph inputs become function arguments tagged `moe.input = "<name>"`;
//   * parameters (floating-point initializers named like checkpoint weights,
//     or of rank >= 2 without a unit dimension) become arguments tagged
//     `moe.parameter = "<checkpoint name>"`, after the inputs, in file order;
//     their values are never read (external-data locations are checked),
//     so weights-free models import too;
//   * every other initializer and every `Constant` node becomes an
//     `arith.constant`;
//   * every other node becomes a `moe.onnx_node`, located at the node's name
//     and 1-based position in the graph; a node of another domain that the
//     options map to an op moec knows (`--custom-op`) becomes that op's
//     `moe.onnx_node` (`moec::GroupedMatMul`) after its arity and shapes are
//     checked;
//   * graph outputs are returned.
//
// Raising to `moe` ops is a separate pass (moe-raise-onnx). Errors are
// reported as MLIR diagnostics naming the node, its op type and the reason.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_IMPORT_ONNX_H
#define MOEC_IMPORT_ONNX_H

#include "moec/Support/CustomOps.h"
#include "moec/Support/HostTensor.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/OwningOpRef.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

#include <memory>
#include <string>
#include <vector>

namespace moec {

/// What the importer is told beyond the file.
struct OnnxImportOptions {
  /// Custom ops to import as the op they stand for (moec/Support/CustomOps.h);
  /// a node of a domain moec does not know and not named here is an error.
  std::vector<CustomOpMapping> customOps;
};

/// Reads and imports the ONNX model at `path`. Returns null after emitting a
/// diagnostic when the file cannot be read, is not an ONNX model, or holds a
/// graph the importer rejects.
mlir::OwningOpRef<mlir::ModuleOp>
importOnnxFile(mlir::MLIRContext &context, llvm::StringRef path,
               const OnnxImportOptions &options = {});

/// Imports the serialized ONNX model `bytes` as if read from `path` (which
/// locates diagnostics and external data). Returns null after emitting a
/// diagnostic, as importOnnxFile does.
mlir::OwningOpRef<mlir::ModuleOp>
importOnnxBytes(mlir::MLIRContext &context, llvm::StringRef bytes,
                llvm::StringRef path, const OnnxImportOptions &options = {});

/// What the importer refuses up front, before building IR for it: sizes
/// that would need absurd memory in the importer or in the compiled step.
/// A tensor type (initializer, graph input or output, value_info) of more
/// elements than this is refused with its shape.
constexpr int64_t kMaxOnnxTensorElements = int64_t(1) << 36;
/// A graph of more nodes than this is refused with its node count.
constexpr int64_t kMaxOnnxNodes = 500000;
/// Messages nested deeper than this (sub-graphs within sub-graphs) are
/// refused by the parser; protobuf's own default.
constexpr int kMaxOnnxNesting = 100;

/// The initializers of one ONNX model, loaded on demand by name. External
/// data is read relative to the model's folder; locations that are absolute
/// or leave that folder are rejected.
class OnnxWeights {
public:
  /// Opens `path`; on failure returns null and sets `error`.
  static std::unique_ptr<OnnxWeights> open(llvm::StringRef path,
                                           std::string &error);
  ~OnnxWeights();

  /// Loads initializer `name`; on failure returns false and sets `error`.
  bool load(llvm::StringRef name, HostTensor &out, std::string &error) const;

private:
  OnnxWeights();
  struct Impl;
  std::unique_ptr<Impl> impl;
};

/// Reads a serialized onnx.TensorProto (the `input_0.pb` files of ONNX test
/// data sets). On failure returns false and sets `error`.
bool readTensorProtoFile(llvm::StringRef path, HostTensor &out,
                         std::string &error);

/// Writes `tensor` as a serialized float32 or int64 onnx.TensorProto named
/// `name`, atomically (a temporary file renamed into place).
bool writeTensorProtoFile(llvm::StringRef path, llvm::StringRef name,
                          const HostTensor &tensor, std::string &error);

} // namespace moec

#endif // MOEC_IMPORT_ONNX_H
