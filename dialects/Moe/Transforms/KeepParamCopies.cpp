//===- KeepParamCopies.cpp - Persistent bf16 copies of master weights -----===//
//
// Implements moe-keep-param-copies (see Passes.td).
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/STLExtras.h"

namespace mlir::moe {
#define GEN_PASS_DEF_KEEPPARAMCOPIES
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

KeptParamCopies mlir::moe::keepParamCopies(func::FuncOp func) {
  KeptParamCopies kept;
  if (func.isExternal())
    return kept;
  Block &block = func.getBody().front();
  for (BlockArgument arg : func.getArguments()) {
    if (!func.getArgAttr(arg.getArgNumber(),
                         MoeDialect::getParameterAttrName()))
      continue;
    AdamWOp update;
    for (Operation *user : arg.getUsers())
      if (auto a = dyn_cast<AdamWOp>(user); a && a.getParam() == arg)
        update = a;
    if (!update || update->getBlock() != &block)
      continue;
    // The parameter's bf16 casts read before its update, in block order.
    // A partitioned step casts a parameter once per gather (the forward's
    // and the backward's): one kept copy serves them all, so the others
    // are replaced by the first (which AdamW then writes for every use).
    SmallVector<arith::TruncFOp> casts;
    for (Operation *user : arg.getUsers()) {
      auto cast = dyn_cast<arith::TruncFOp>(user);
      if (!cast || cast->getBlock() != &block ||
          !getElementTypeOrSelf(cast.getType()).isBF16())
        continue;
      bool beforeUpdate = llvm::all_of(cast->getUsers(), [&](Operation *u) {
        return u->getBlock() == &block && u->isBeforeInBlock(update);
      });
      if (beforeUpdate)
        casts.push_back(cast);
    }
    if (casts.empty())
      continue;
    llvm::sort(casts, [](arith::TruncFOp a, arith::TruncFOp b) {
      return a->isBeforeInBlock(b);
    });
    arith::TruncFOp first = casts.front();
    for (arith::TruncFOp other : llvm::drop_begin(casts)) {
      if (other.getType() != first.getType())
        continue;
      other.getResult().replaceAllUsesWith(first.getResult());
      other.erase();
      ++kept.merged;
    }
    first->setAttr(MoeDialect::getPersistentCopyAttrName(),
                   UnitAttr::get(func.getContext()));
    ++kept.copies;
    if (auto type = dyn_cast<RankedTensorType>(first.getType());
        type && type.hasStaticShape())
      kept.bytes +=
          (type.getNumElements() * type.getElementTypeBitWidth() + 7) / 8;
  }
  return kept;
}

namespace {

struct KeepParamCopiesPass
    : public moe::impl::KeepParamCopiesBase<KeepParamCopiesPass> {
  void runOnOperation() override {
    KeptParamCopies kept = keepParamCopies(getOperation());
    numKept += kept.copies;
    numMerged += kept.merged;
  }
};

} // namespace
