//===- CustomOps.cpp - What a user says an unknown ONNX op is -------------===//
//
// See CustomOps.h.
//
//===----------------------------------------------------------------------===//

#include "moec/Support/CustomOps.h"

using namespace moec;

llvm::StringRef moec::stringifyCustomOpKind(CustomOpKind kind) {
  switch (kind) {
  case CustomOpKind::GroupedMatMul:
    return "grouped_matmul";
  }
  llvm_unreachable("unknown custom-op kind");
}

llvm::Expected<CustomOpMapping>
moec::makeCustomOpMapping(llvm::StringRef name, llvm::StringRef kind) {
  auto [domain, opType] = name.split("::");
  if (!name.contains("::") || domain.empty() || opType.empty())
    return llvm::createStringError(
        "expected DOMAIN::NAME, e.g. my.domain::GroupedGemm");
  if (domain == "ai.onnx" || domain == "com.microsoft" || domain == "moec")
    return llvm::createStringError(
        "domain '" + domain +
        "' is one moec knows; only ops of other domains are mapped");
  if (kind != stringifyCustomOpKind(CustomOpKind::GroupedMatMul))
    return llvm::createStringError(
        "kind '" + kind + "' is not one of: " +
        stringifyCustomOpKind(CustomOpKind::GroupedMatMul));
  return CustomOpMapping{domain.str(), opType.str(),
                         CustomOpKind::GroupedMatMul, ""};
}

llvm::Expected<CustomOpMapping>
moec::parseCustomOpMapping(llvm::StringRef text) {
  auto fail = [&](const llvm::Twine &why) {
    return llvm::createStringError("--custom-op '" + text + "': " + why);
  };
  auto [name, kind] = text.split('=');
  auto [domain, opType] = name.split("::");
  if (!text.contains('=') || !name.contains("::") || domain.empty() ||
      opType.empty())
    return fail("expected DOMAIN::NAME=KIND, e.g. "
                "my.domain::GroupedGemm=grouped_matmul");
  llvm::Expected<CustomOpMapping> mapping = makeCustomOpMapping(name, kind);
  if (!mapping)
    return fail(llvm::toString(mapping.takeError()));
  mapping->origin = ("--custom-op " + text).str();
  return mapping;
}
