//===- Pipelines.h - moec's named pass pipelines ----------------*- C++ -*-===//
//
// The pass pipelines the drivers run, built in one place so that `moec` and
// `moec-opt` run exactly the same thing.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PIPELINES_PIPELINES_H
#define MOEC_PIPELINES_PIPELINES_H

#include "dialects/Moe/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"

namespace moec {

/// Raises an imported ONNX forward to moe ops and cleans up:
/// moe-raise-onnx, canonicalize, cse. With `requireComplete`, any ONNX node
/// left unraised is an error.
void buildImportPipeline(mlir::OpPassManager &pm, bool requireComplete);

/// Builds the training step from a raised forward (moe-build-train-step with
/// `options`), then canonicalize, cse, moe-widen-weight-grads,
/// moe-fuse-loss-grad and, unless `recomputeExperts`,
/// moe-save-expert-activations.
void buildTrainStepPipeline(mlir::OpPassManager &pm,
                            const mlir::moe::BuildTrainStepOptions &options,
                            bool recomputeExperts = false);

/// Registers the pipelines above with the global pass registry
/// (`moe-import-pipeline`).
void registerPipelines();

} // namespace moec

#endif // MOEC_PIPELINES_PIPELINES_H
