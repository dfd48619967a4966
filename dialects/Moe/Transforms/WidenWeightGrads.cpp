//===- WidenWeightGrads.cpp - Weight gradients in fp32, no cast after ------===//
//
// Implements moe-widen-weight-grads (see Passes.td).
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"

namespace mlir::moe {
#define GEN_PASS_DEF_WIDENWEIGHTGRADS
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

/// Whether `v` is a weight gradient whose kernel can store fp32.
bool isWeightGradient(Value v) {
  Operation *def = v.getDefiningOp();
  if (auto g = dyn_cast_or_null<LinearGradOp>(def))
    return v == g.getDWeight();
  if (auto g = dyn_cast_or_null<RmsNormGradOp>(def))
    return v == g.getDWeight();
  if (auto g = dyn_cast_or_null<LmHeadCrossEntropyGradOp>(def))
    return v == g.getDWeight();
  if (auto g = dyn_cast_or_null<LmHeadCrossEntropyWithGradOp>(def))
    return v == g.getDWeight();
  if (auto g = dyn_cast_or_null<ExpertsGradOp>(def))
    return v == g.getDGateUp() || v == g.getDDown();
  return isa_and_nonnull<EmbeddingGradOp>(def);
}

struct WidenWeightGradsPass
    : public moe::impl::WidenWeightGradsBase<WidenWeightGradsPass> {
  void runOnOperation() override {
    SmallVector<arith::ExtFOp> casts;
    getOperation().walk([&](arith::ExtFOp ext) {
      Value in = ext.getIn();
      if (isWeightGradient(in) && in.hasOneUse())
        casts.push_back(ext);
    });
    for (arith::ExtFOp ext : casts) {
      Value in = ext.getIn();
      in.setType(ext.getType());
      ext.getResult().replaceAllUsesWith(in);
      ext.erase();
      ++numWidened;
    }
  }
};

} // namespace
