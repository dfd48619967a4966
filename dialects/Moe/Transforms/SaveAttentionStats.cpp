//===- SaveAttentionStats.cpp - Keep attention's log-sum-exp ---------------===//
//
// Implements moe-save-attention-stats (see Passes.td).
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace mlir::moe {
#define GEN_PASS_DEF_SAVEATTENTIONSTATS
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

/// The moe.attention before `grad` in its block with `grad`'s operands and
/// attributes.
AttentionOp forwardOf(AttentionGradOp grad) {
  for (Operation *user : grad.getQuery().getUsers()) {
    auto a = dyn_cast<AttentionOp>(user);
    if (a && a->getBlock() == grad->getBlock() && a->isBeforeInBlock(grad) &&
        a.getKey() == grad.getKey() && a.getValue() == grad.getValue() &&
        a.getCausal() == grad.getCausal() &&
        a.getScale() == grad.getScale() &&
        a.getSlidingWindow() == grad.getSlidingWindow())
      return a;
  }
  return {};
}

struct SaveAttentionStatsPass
    : public moe::impl::SaveAttentionStatsBase<SaveAttentionStatsPass> {
  void runOnOperation() override {
    SmallVector<AttentionGradOp> grads;
    getOperation().walk([&](AttentionGradOp g) {
      if (g.getSaved().empty())
        grads.push_back(g);
    });
    for (AttentionGradOp grad : grads) {
      AttentionOp a = forwardOf(grad);
      if (!a)
        continue;
      if (!a.getStats()) {
        auto query = cast<RankedTensorType>(a.getQuery().getType());
        auto statsType = RankedTensorType::get(
            {query.getDimSize(0), query.getDimSize(2), query.getDimSize(1)},
            Float32Type::get(&getContext()));
        OpBuilder builder(a);
        auto saving = AttentionOp::create(
            builder, a.getLoc(), a.getResult().getType(), statsType,
            a.getQuery(), a.getKey(), a.getValue(), a.getCausalAttr(),
            a.getScaleAttr(), a.getSlidingWindowAttr());
        a.getResult().replaceAllUsesWith(saving.getResult());
        a.erase();
        a = saving;
        ++numSaved;
      }
      grad.getSavedMutable().assign(ValueRange{a.getResult(), a.getStats()});
    }
  }
};

} // namespace
