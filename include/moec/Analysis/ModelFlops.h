//===- ModelFlops.h - DESIGN.md §5's model FLOPs ----------------*- C++ -*-===//
//
// The model FLOPs of a training step, the numerator of MFU: 6 per active
// parameter and token (forward and backward of every matrix product) plus
// the causal attention's score and value products, 12 · L · h · S² · B / 2.
// The planner computes them from a model's geometry, the CUDA printer and
// `moec compile` from a specialised @train_step; both through modelFlops.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_ANALYSIS_MODELFLOPS_H
#define MOEC_ANALYSIS_MODELFLOPS_H

#include "mlir/Dialect/Func/IR/FuncOps.h"

#include <cstdint>

namespace moec {

/// The two terms of a micro-batch's model FLOPs.
struct ModelFlops {
  /// 6 · active parameters · tokens.
  double parameters = 0;
  /// 12 · layers · attention width · seq² · batch / 2 (causal: half the
  /// square).
  double attention = 0;

  double total() const { return parameters + attention; }
};

/// The model FLOPs of one micro-batch of `batch` sequences of `seq` tokens
/// through a model of `activeParameters` (every parameter but the
/// embedding table, expert weights at top_k / num_experts) and `layers`
/// attention layers of `attentionWidth` (heads · head_dim).
ModelFlops modelFlops(int64_t activeParameters, int64_t layers,
                      int64_t attentionWidth, int64_t batch, int64_t seq);

/// The model FLOPs of a specialised @train_step, read off its ops: the
/// parameters are its arguments marked moe.parameter, less the tables of
/// moe.embedding and the unchosen share of moe.experts' weights; batch and
/// sequence from its lm-head loss, layers and width from moe.attention.
/// Fails with a diagnostic when the step has no lm-head loss or its
/// attention layers disagree.
mlir::FailureOr<ModelFlops> trainStepModelFlops(mlir::func::FuncOp step);

} // namespace moec

#endif // MOEC_ANALYSIS_MODELFLOPS_H
