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
// One MLIRContext serves many inputs: making one and loading the moe
// dialect and those it depends on (linalg, tensor, arith, ...) took about a
// millisecond under the sanitizers, as long as parsing and refusing a
// typical mutant, and most mutants are refused. A context keeps every type,
// attribute and location it uniques, so it is replaced every
// kInputsPerContext inputs, which bounds its memory. What an input's
// import and raising do does not depend on what the context already holds
// (types and attributes are uniqued by value; each input gets its own
// module, pass managers and diagnostic handler); a find is still replayed
// from its file alone (ReplayMain.cpp, tools/fuzz.sh) before it is kept.
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
#include <memory>

using namespace mlir;

namespace {
constexpr int kInputsPerContext = 1000;

MLIRContext &sharedContext() {
  static std::unique_ptr<MLIRContext> context;
  static int inputs = 0;
  if (!context || inputs++ == kInputsPerContext) {
    context.reset(); // the old one's memory first
    context = std::make_unique<MLIRContext>(MLIRContext::Threading::DISABLED);
    inputs = 1;
  }
  return *context;
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  MLIRContext &context = sharedContext();
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
