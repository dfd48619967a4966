//===- FuseLossGrad.cpp - Cross-entropy and its gradients in one op -------===//
//
// Implements moe-fuse-loss-grad (see Passes.td).
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace mlir::moe {
#define GEN_PASS_DEF_FUSELOSSGRAD
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

struct FuseLossGradPass
    : public moe::impl::FuseLossGradBase<FuseLossGradPass> {
  void runOnOperation() override {
    SmallVector<std::pair<LmHeadCrossEntropyOp, LmHeadCrossEntropyGradOp>>
        pairs;
    getOperation().walk([&](LmHeadCrossEntropyGradOp grad) {
      for (Operation *user : grad.getInput().getUsers()) {
        auto loss = dyn_cast<LmHeadCrossEntropyOp>(user);
        if (loss && loss->getBlock() == grad->getBlock() &&
            loss->isBeforeInBlock(grad) &&
            loss.getWeight() == grad.getWeight() &&
            loss.getLabels() == grad.getLabels() &&
            loss.getTargetCount() == grad.getTargetCount() &&
            loss.getIgnoreIndex() == grad.getIgnoreIndex()) {
          pairs.push_back({loss, grad});
          return;
        }
      }
    });
    for (auto [loss, grad] : pairs) {
      OpBuilder builder(loss);
      auto fused = LmHeadCrossEntropyWithGradOp::create(
          builder, builder.getFusedLoc({loss.getLoc(), grad.getLoc()}),
          loss.getLoss().getType(), grad.getDInput().getType(),
          grad.getDWeight().getType(), loss.getInput(), loss.getWeight(),
          loss.getLabels(), loss.getTargetCount(), loss.getIgnoreIndexAttr(),
          grad.getScaleAttr());
      loss.getLoss().replaceAllUsesWith(fused.getLoss());
      grad.getDInput().replaceAllUsesWith(fused.getDInput());
      grad.getDWeight().replaceAllUsesWith(fused.getDWeight());
      loss.erase();
      grad.erase();
      ++numFused;
    }
  }
};

} // namespace
