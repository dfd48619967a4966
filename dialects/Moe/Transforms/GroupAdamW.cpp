//===- GroupAdamW.cpp - moe.adamw ops into multi-tensor updates -----------===//
//
// Implements moe-group-adamw (see Passes.td): one pass over each block,
// a new group whenever a moe.adamw does not follow one it can share a launch
// with.
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace mlir::moe {
#define GEN_PASS_DEF_GROUPADAMW
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

/// Whether `a` can be updated in the launch of `first`'s group: the same
/// hyperparameters but the weight decay, the same scalar operands and the
/// same parameter and gradient element types.
bool sharesLaunch(AdamWOp first, AdamWOp a) {
  return a.getBeta1() == first.getBeta1() && a.getBeta2() == first.getBeta2() &&
         a.getEpsilon() == first.getEpsilon() &&
         a.getMaxGradNorm() == first.getMaxGradNorm() &&
         a.getSkipNonfinite() == first.getSkipNonfinite() &&
         a.getStep() == first.getStep() && a.getLr() == first.getLr() &&
         a.getGradNorm() == first.getGradNorm() &&
         getElementTypeOrSelf(a.getParam().getType()) ==
             getElementTypeOrSelf(first.getParam().getType()) &&
         getElementTypeOrSelf(a.getGrad().getType()) ==
             getElementTypeOrSelf(first.getGrad().getType());
}

struct GroupAdamWPass : public moe::impl::GroupAdamWBase<GroupAdamWPass> {
  void runOnOperation() override {
    Builder builder(&getContext());
    int64_t groups = 0;
    getOperation().walk([&](Block *block) {
      AdamWOp first; // of the group the previous op belongs to
      for (Operation &op : *block) {
        auto a = dyn_cast<AdamWOp>(op);
        if (!a) {
          first = {};
          continue;
        }
        if (!first || !sharesLaunch(first, a)) {
          first = a;
          ++groups;
        }
        a->setAttr(MoeDialect::getAdamWGroupAttrName(),
                   builder.getI64IntegerAttr(groups - 1));
      }
    });
    numGroups += groups;
  }
};

} // namespace
