//===- OnnxImportFuzzer.cpp - libFuzzer target: the ONNX importer ---------===//
//
// Arbitrary bytes as an ONNX model: importOnnxBytes, then the import
// pipeline's passes (moe-raise-onnx, canonicalize, CSE) on what imported.
// Any outcome but a crash, a hang or a sanitizer report is a pass: the
// importer and the raising must answer every input with IR or a
// diagnostic. Diagnostics are swallowed; a verifier failure after raising
// is reported (the raising must produce valid IR from valid IR).
//
// The model is "located" in a folder that does not exist, so external
// data references resolve to nothing and are refused without touching
// the disk.
//
//===----------------------------------------------------------------------===//

#include "moec/Conversion/OnnxToMoe/Passes.h"
#include "moec/Import/Onnx.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Transforms/Passes.h"

#include <cstdio>
#include <cstdlib>

using namespace mlir;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  MLIRContext context(MLIRContext::Threading::DISABLED);
  ScopedDiagnosticHandler ignore(&context, [](Diagnostic &) {
    return success();
  });
  OwningOpRef<ModuleOp> module = moec::importOnnxBytes(
      context,
      llvm::StringRef(reinterpret_cast<const char *>(data), size),
      "/nonexistent-fuzz-folder/model.onnx");
  if (!module)
    return 0;
  // The passes of moec::buildImportPipeline (lib/Pipelines links every
  // pass of moec; this build compiles only the importer's libraries). The
  // raising is verified on its own, so that invalid IR it produces is told
  // apart from an input it refuses.
  PassManager raise(&context);
  raise.enableVerifier(false);
  raise.nest<func::FuncOp>().addPass(moec::createRaiseOnnx());
  if (failed(raise.run(*module)))
    return 0;
  if (failed(verify(*module))) {
    std::fprintf(stderr, "moe-raise-onnx produced invalid IR\n");
    std::abort();
  }
  PassManager cleanup(&context);
  OpPassManager &funcPm = cleanup.nest<func::FuncOp>();
  funcPm.addPass(createCanonicalizerPass());
  funcPm.addPass(createCSEPass());
  (void)cleanup.run(*module);
  return 0;
}
