//===- ModelConfig.h - A Mixtral model's geometry from its IR ---*- C++ -*-===//
//
// Reads the geometry of a raised Mixtral forward (vocabulary, hidden size,
// layers, heads, experts, ...) off its moe ops and parameter arguments. The
// planner, the summary printer and the training-step builder all take the
// model's shape from here rather than from a second description.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_ANALYSIS_MODELCONFIG_H
#define MOEC_ANALYSIS_MODELCONFIG_H

#include "mlir/Dialect/Func/IR/FuncOps.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace moec {

struct ModelConfig {
  int64_t vocabSize = 0;
  int64_t hiddenSize = 0;
  int64_t intermediateSize = 0;
  int64_t numLayers = 0;
  int64_t numHeads = 0;
  int64_t numKeyValueHeads = 0;
  int64_t headDim = 0;
  int64_t numExperts = 0;
  int64_t topK = 0;
  double ropeTheta = 0.0;
  double rmsNormEps = 0.0;
  std::optional<int64_t> slidingWindow;
  /// Parameter elements in total, and those of the experts alone.
  int64_t numParameters = 0;
  int64_t numExpertParameters = 0;
  /// How many of each op the forward holds, by op name.
  std::map<std::string, int64_t> opCounts;
};

/// Reads the configuration off `forward`. Fails with a diagnostic when the
/// function holds no experts or attention (not a raised Mixtral) or when
/// layers disagree about a size.
mlir::FailureOr<ModelConfig> inferModelConfig(mlir::func::FuncOp forward);

} // namespace moec

#endif // MOEC_ANALYSIS_MODELCONFIG_H
