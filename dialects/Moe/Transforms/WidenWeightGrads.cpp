//===- WidenWeightGrads.cpp - Weight-gradient casts into op or readers ----===//
//
// Implements moe-widen-weight-grads (see Passes.td).
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/SetVector.h"

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

/// The cast that widens a bf16 weight gradient to fp32, or null.
arith::ExtFOp gradientCast(Value v) {
  auto ext = v.getDefiningOp<arith::ExtFOp>();
  if (!ext || !isWeightGradient(ext.getIn()) ||
      !getElementTypeOrSelf(ext.getIn().getType()).isBF16() ||
      !getElementTypeOrSelf(ext.getType()).isF32())
    return nullptr;
  return ext;
}

struct WidenWeightGradsPass
    : public moe::impl::WidenWeightGradsBase<WidenWeightGradsPass> {
  using WidenWeightGradsBase::WidenWeightGradsBase;

  void runOnOperation() override {
    if (intoReaders) {
      foldIntoReaders();
      return;
    }
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

  /// `into-readers` (see Passes.td): every norm whose gradients are all
  /// widened bf16 weight gradients reads them bf16, and so does every
  /// moe.adamw that reads one of them.
  void foldIntoReaders() {
    llvm::SetVector<arith::ExtFOp> casts;
    getOperation().walk([&](GlobalNormOp norm) {
      SmallVector<arith::ExtFOp> mine;
      for (Value g : norm.getGradients())
        if (arith::ExtFOp ext = gradientCast(g))
          mine.push_back(ext);
      if (mine.empty())
        return;
      if (mine.size() != norm.getGradients().size()) {
        // Asked for bf16 gradients, and they stay fp32: said, not silent.
        norm.emitWarning()
            << "reads " << mine.size() << " widened bf16 weight gradients "
            << "and " << norm.getGradients().size() - mine.size()
            << " other gradients; its norm reads one element type, so all "
            << "stay fp32 (grad_dtype bf16 applies to none of them)";
        return;
      }
      for (auto [i, ext] : llvm::enumerate(mine))
        norm->setOperand(i, ext.getIn());
      casts.insert(mine.begin(), mine.end());
    });
    for (arith::ExtFOp ext : casts) {
      for (OpOperand &use : llvm::make_early_inc_range(ext->getUses()))
        if (auto adam = dyn_cast<AdamWOp>(use.getOwner());
            adam && &use == &adam.getGradMutable())
          use.set(ext.getIn());
      ++numFolded;
      if (ext->use_empty())
        ext.erase();
    }
  }
};

} // namespace
