//===- ModelLoading.cpp - Load a model for a moec subcommand --------------===//
//
// See ModelLoading.h.
//
//===----------------------------------------------------------------------===//

#include "ModelLoading.h"

#include "moec/Import/Onnx.h"
#include "moec/InitAll.h"
#include "moec/Pipelines/Pipelines.h"

#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/SourceMgr.h"

using namespace mlir;

OwningOpRef<ModuleOp> moec::cli::loadModel(MLIRContext &context,
                                           llvm::StringRef path, bool raise,
                                           bool requireComplete) {
  DialectRegistry registry;
  registerAllDialects(registry);
  context.appendDialectRegistry(registry);
  context.loadAllAvailableDialects();

  if (path.ends_with(".mlir")) {
    llvm::SourceMgr sourceMgr;
    std::string error;
    auto file = openInputFile(path, &error);
    if (!file) {
      emitError(UnknownLoc::get(&context)) << error;
      return nullptr;
    }
    sourceMgr.AddNewSourceBuffer(std::move(file), llvm::SMLoc());
    return parseSourceFile<ModuleOp>(sourceMgr, &context);
  }

  OwningOpRef<ModuleOp> module = importOnnxFile(context, path);
  if (!module || !raise)
    return module;
  PassManager pm(&context);
  buildImportPipeline(pm, requireComplete);
  if (failed(pm.run(*module)))
    return nullptr;
  return module;
}

func::FuncOp moec::cli::getForward(ModuleOp module) {
  auto forward = module.lookupSymbol<func::FuncOp>("forward");
  if (!forward)
    emitError(module.getLoc()) << "the module has no function 'forward'";
  return forward;
}
