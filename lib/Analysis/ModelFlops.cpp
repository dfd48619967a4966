//===- ModelFlops.cpp - DESIGN.md §5's model FLOPs ------------------------===//
//
// See moec/Analysis/ModelFlops.h.
//
//===----------------------------------------------------------------------===//

#include "moec/Analysis/ModelFlops.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "llvm/ADT/StringMap.h"

using namespace mlir;
using namespace moec;

ModelFlops moec::modelFlops(int64_t activeParameters, int64_t layers,
                            int64_t attentionWidth, int64_t batch,
                            int64_t seq) {
  const double s = double(seq), b = double(batch);
  ModelFlops flops;
  flops.parameters = 6.0 * double(activeParameters) * (batch * seq);
  flops.attention = 12.0 * layers * double(attentionWidth) * s * s * b / 2;
  return flops;
}

FailureOr<ModelFlops> moec::trainStepModelFlops(func::FuncOp step) {
  auto elements = [](Value v) {
    return cast<RankedTensorType>(v.getType()).getNumElements();
  };
  // A partitioned step holds blocks of the parameters: its model FLOPs are
  // the global model's on the rank's tokens, so parameters count by their
  // global shapes (what @init_params' moe.param_init ops create) and the
  // experts by the global number, P times each rank's.
  llvm::StringMap<int64_t> globalElements;
  int64_t expertGroup = 1;
  if (auto module = step->getParentOfType<ModuleOp>()) {
    if (auto init = module.lookupSymbol<func::FuncOp>("init_params"))
      init.walk([&](moe::ParamInitOp p) {
        if (std::optional<ArrayRef<int64_t>> global = p.getGlobalShape()) {
          int64_t n = 1;
          for (int64_t d : *global)
            n *= d;
          globalElements[p.getName()] = n;
        }
      });
    for (auto grid : module.getOps<shard::GridOp>())
      expertGroup = grid.getShape().back();
  }
  int64_t active = 0;
  for (auto [i, arg] : llvm::enumerate(step.getArguments()))
    if (auto name = step.getArgAttrOfType<StringAttr>(
            i, moe::MoeDialect::getParameterAttrName())) {
      auto global = globalElements.find(name.getValue());
      active += global != globalElements.end() ? global->second
                                               : elements(arg);
    }
  int64_t k = 0;
  Operation *loss = nullptr;
  moe::AttentionOp first;
  int64_t layers = 0;
  for (Operation &op : step.getBody().front()) {
    // Recomputation (activation checkpointing) adds hardware FLOPs, not
    // model FLOPs.
    if (op.hasAttr(moe::MoeDialect::getRecomputeAttrName()))
      continue;
    if (auto e = dyn_cast<moe::EmbeddingOp>(op))
      active -= elements(e.getTable());
    if (auto r = dyn_cast<moe::RouterOp>(op))
      k = r.getK();
    if (auto e = dyn_cast<moe::ExpertsOp>(op)) {
      // The experts' own k is one per received row after a dispatch; the
      // router's is the model's.
      int64_t local = e.getGateUp().getType().getDimSize(0);
      int64_t perExpert =
          (elements(e.getGateUp()) + elements(e.getDown())) / local;
      int64_t chosen = k ? k : e.getGates().getType().getShape().back();
      active -= perExpert * (local * expertGroup - chosen);
    }
    if (isa<moe::LmHeadCrossEntropyOp, moe::LmHeadCrossEntropyWithGradOp>(op))
      loss = &op;
    if (auto a = dyn_cast<moe::AttentionOp>(op)) {
      ++layers;
      auto q = a.getQuery().getType().getShape();
      auto q0 = first ? first.getQuery().getType().getShape() : q;
      if (q[2] * q[3] != q0[2] * q0[3]) {
        InFlightDiagnostic diag =
            a.emitOpError() << "has " << q[2] << " heads of " << q[3]
                            << " but the first attention " << q0[2] << " of "
                            << q0[3] << "; model FLOPs need one width";
        diag.attachNote(first.getLoc()) << "the first attention";
        return diag;
      }
      first = first ? first : a;
    }
  }
  if (!loss)
    return step.emitOpError() << "has no moe.lm_head_cross_entropy to take "
                                 "the batch and sequence from";
  auto tokens =
      cast<RankedTensorType>(loss->getOperand(0).getType()).getShape();
  int64_t width = 0;
  if (first) {
    auto q = first.getQuery().getType().getShape();
    width = q[2] * q[3];
    if (q[0] != tokens[0] || q[1] != tokens[1]) {
      InFlightDiagnostic diag = first.emitOpError()
                                << "attends over batch " << q[0]
                                << " and sequence " << q[1]
                                << " but the lm-head loss takes " << tokens[0]
                                << " and " << tokens[1];
      diag.attachNote(loss->getLoc()) << "the lm-head loss";
      return diag;
    }
  }
  return modelFlops(active, layers, width, tokens[0], tokens[1]);
}
