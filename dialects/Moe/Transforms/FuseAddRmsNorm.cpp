//===- FuseAddRmsNorm.cpp - A residual add fused into its RMSNorm ---------===//
//
// Implements moe-fuse-add-rms-norm (see Passes.td). A pair is an arith.addf
// and the moe.rms_norm right after it that normalises its sum; with a memory
// plan, the fused op keeps both planned buffers and a pair whose norm
// buffer overlaps an addend's is left alone.
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace mlir::moe {
#define GEN_PASS_DEF_FUSEADDRMSNORM
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

/// Whether the memory plan put `a` and `b` in overlapping arena bytes.
bool overlap(Value a, Value b) {
  auto ra = MoeDialect::getArenaRange(a), rb = MoeDialect::getArenaRange(b);
  return ra && rb && ra->first < rb->second && rb->first < ra->second;
}

struct FuseAddRmsNormPass
    : public moe::impl::FuseAddRmsNormBase<FuseAddRmsNormPass> {
  void runOnOperation() override {
    SmallVector<std::pair<arith::AddFOp, RmsNormOp>> pairs;
    getOperation().walk([&](RmsNormOp norm) {
      auto add = dyn_cast_or_null<arith::AddFOp>(norm->getPrevNode());
      if (!add || norm.getInput() != add.getResult() ||
          !isa<RankedTensorType>(add.getType()))
        return;
      if (overlap(norm.getResult(), add.getLhs()) ||
          overlap(norm.getResult(), add.getRhs())) {
        ++numOverlapping;
        return;
      }
      pairs.emplace_back(add, norm);
    });
    for (auto [add, norm] : pairs) {
      OpBuilder builder(norm);
      auto fused = AddRmsNormOp::create(
          builder, norm.getLoc(), add.getType(), norm.getType(), add.getLhs(),
          add.getRhs(), norm.getWeight(), norm.getEpsilonAttr());
      StringRef offsetsName = MoeDialect::getArenaOffsetsAttrName();
      auto addOffsets = add->getAttrOfType<DenseI64ArrayAttr>(offsetsName);
      auto normOffsets = norm->getAttrOfType<DenseI64ArrayAttr>(offsetsName);
      if (addOffsets && normOffsets)
        fused->setAttr(offsetsName, builder.getDenseI64ArrayAttr(
                                        {addOffsets[0], normOffsets[0]}));
      add.getResult().replaceAllUsesWith(fused.getSum());
      norm.getResult().replaceAllUsesWith(fused.getResult());
      norm.erase();
      add.erase();
      ++numFused;
    }
  }
};

} // namespace
