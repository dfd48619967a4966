//===- Pipelines.cpp - moec's named pass pipelines ------------------------===//
//
// Builds the pipelines declared in moec/Pipelines/Pipelines.h.
//
//===----------------------------------------------------------------------===//

#include "moec/Pipelines/Pipelines.h"

#include "dialects/Moe/Transforms/Passes.h"
#include "moec/Conversion/OnnxToMoe/Passes.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

void moec::buildImportPipeline(OpPassManager &pm, bool requireComplete) {
  RaiseOnnxOptions options;
  options.requireComplete = requireComplete;
  OpPassManager &funcPm = pm.nest<func::FuncOp>();
  funcPm.addPass(createRaiseOnnx(options));
  funcPm.addPass(createCanonicalizerPass());
  funcPm.addPass(createCSEPass());
}

void moec::buildTrainStepPipeline(OpPassManager &pm,
                                  const moe::BuildTrainStepOptions &options,
                                  bool recomputeExperts) {
  pm.addPass(moe::createBuildTrainStep(options));
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  pm.addNestedPass<func::FuncOp>(moe::createWidenWeightGrads());
  pm.addNestedPass<func::FuncOp>(moe::createFuseLossGrad());
  if (!recomputeExperts)
    pm.addNestedPass<func::FuncOp>(moe::createSaveExpertActivations());
}

namespace {
struct ImportPipelineOptions
    : public PassPipelineOptions<ImportPipelineOptions> {
  Option<bool> requireComplete{
      *this, "require-complete",
      llvm::cl::desc("fail on any ONNX node that could not be raised"),
      llvm::cl::init(false)};
};
} // namespace

void moec::registerPipelines() {
  PassPipelineRegistration<ImportPipelineOptions>(
      "moe-import-pipeline",
      "raise an imported ONNX forward to moe ops and clean up",
      [](OpPassManager &pm, const ImportPipelineOptions &options) {
        buildImportPipeline(pm, options.requireComplete);
      });
}
