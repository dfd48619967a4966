//===- SaveExpertActivations.cpp - Keep the experts' projections ----------===//
//
// Implements moe-save-expert-activations (see Passes.td).
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace mlir::moe {
#define GEN_PASS_DEF_SAVEEXPERTACTIVATIONS
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

/// The moe.experts before `grad` in its block with `grad`'s operands.
ExpertsOp forwardOf(ExpertsGradOp grad) {
  for (Operation *user : grad.getInput().getUsers()) {
    auto x = dyn_cast<ExpertsOp>(user);
    if (x && x->getBlock() == grad->getBlock() && x->isBeforeInBlock(grad) &&
        x.getGates() == grad.getGates() &&
        x.getExperts() == grad.getExperts() &&
        x.getGateUp() == grad.getGateUp() && x.getDown() == grad.getDown() &&
        x.getGateUpLayout() == grad.getGateUpLayout())
      return x;
  }
  return {};
}

struct SaveExpertActivationsPass
    : public moe::impl::SaveExpertActivationsBase<SaveExpertActivationsPass> {
  void runOnOperation() override {
    SmallVector<ExpertsGradOp> grads;
    getOperation().walk([&](ExpertsGradOp g) {
      if (!g.getSaved())
        grads.push_back(g);
    });
    for (ExpertsGradOp grad : grads) {
      ExpertsOp x = forwardOf(grad);
      if (!x)
        continue;
      if (!x.getSaved()) {
        auto gates = cast<RankedTensorType>(x.getGates().getType());
        auto gateUp = cast<RankedTensorType>(x.getGateUp().getType());
        int64_t pairs = gates.hasStaticShape() ? gates.getNumElements()
                                               : ShapedType::kDynamic;
        auto savedType = RankedTensorType::get(
            {pairs, gateUp.getDimSize(1)},
            cast<RankedTensorType>(x.getInput().getType()).getElementType());
        OpBuilder builder(x);
        auto saving = ExpertsOp::create(
            builder, x.getLoc(), x.getResult().getType(), savedType,
            x.getInput(), x.getGates(), x.getExperts(), x.getGateUp(),
            x.getDown(), x.getGateUpLayoutAttr());
        x.getResult().replaceAllUsesWith(saving.getResult());
        x.erase();
        x = saving;
        ++numSaved;
      }
      grad.getSavedMutable().assign(x.getSaved());
    }
  }
};

} // namespace
