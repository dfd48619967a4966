//===- CustomOps.h - What a user says an unknown ONNX op is -----*- C++ -*-===//
//
// A node of an ONNX domain moec does not know is an error unless the user
// says what it stands for: `--custom-op DOMAIN::NAME=KIND` on the command
// line, or the job key `custom_ops` (`{"DOMAIN::NAME": "KIND"}`) in a
// config. Both spellings are checked here, by the same rules, so that the
// importer (moec/Import/Onnx.h) and the job reader (TrainingJob.h) agree.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_SUPPORT_CUSTOMOPS_H
#define MOEC_SUPPORT_CUSTOMOPS_H

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

#include <string>

namespace moec {

/// What a node of a domain moec does not know stands for.
enum class CustomOpKind {
  /// moec's own `moec::GroupedMatMul` (docs/onnx-forms.md §6): inputs X
  /// [S, K], W [G, K, N], offsets int32/int64 [G] (each group's end row);
  /// output Y [S, N]; no attributes.
  GroupedMatMul,
};

/// The spelling of a kind (`grouped_matmul`).
llvm::StringRef stringifyCustomOpKind(CustomOpKind kind);

/// One mapping of an op to a kind.
struct CustomOpMapping {
  std::string domain;
  std::string opType;
  CustomOpKind kind;
  /// How the user said it, for messages: `--custom-op a::B=grouped_matmul`
  /// or `custom_ops {"a::B": "grouped_matmul"}`.
  std::string origin;

  /// `DOMAIN::NAME`.
  std::string name() const { return domain + "::" + opType; }
};

/// Checks the op `name` (`DOMAIN::NAME`, of a domain moec does not know)
/// and the kind; the error says what is wrong, for the caller to say where.
llvm::Expected<CustomOpMapping> makeCustomOpMapping(llvm::StringRef name,
                                                    llvm::StringRef kind);

/// Parses the flag's `DOMAIN::NAME=KIND`. The error names the flag, the
/// text and what is wrong with it.
llvm::Expected<CustomOpMapping> parseCustomOpMapping(llvm::StringRef text);

} // namespace moec

#endif // MOEC_SUPPORT_CUSTOMOPS_H
