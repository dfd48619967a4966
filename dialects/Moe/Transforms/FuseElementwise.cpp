//===- FuseElementwise.cpp - Outline element-wise trees into moe.fusion ---===//
//
// Implements moe-fuse-elementwise (see Passes.td).
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/SetVector.h"

namespace mlir::moe {
#define GEN_PASS_DEF_FUSEELEMENTWISE
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

/// An element-wise op the pass may take as a root or absorb (constants are
/// copied, never absorbed).
bool isElementwise(Operation *op) {
  return FusionOp::isFusible(op) && !isa<arith::ConstantOp>(op);
}

/// A splat float constant, which the fusion copies into its body.
bool isSplatConstant(Value v) {
  Operation *def = v.getDefiningOp();
  return def && isa<arith::ConstantOp>(def) && FusionOp::isFusible(def);
}

struct FuseElementwisePass
    : public moe::impl::FuseElementwiseBase<FuseElementwisePass> {
  void runOnOperation() override {
    Block &block = getOperation().getBody().front();
    // Trees are chosen on the unchanged block, then outlined.
    llvm::DenseSet<Operation *> taken;
    SmallVector<std::pair<Operation *, SmallVector<Operation *>>> trees;
    for (Operation &op : llvm::reverse(block))
      if (isElementwise(&op) && !taken.count(&op)) {
        // The tree under `op`: producers used only by the tree.
        llvm::SetVector<Operation *> tree;
        SmallVector<Operation *> work = {&op};
        tree.insert(&op);
        while (!work.empty()) {
          Operation *member = work.pop_back_val();
          for (Value operand : member->getOperands()) {
            Operation *def = operand.getDefiningOp();
            // (arith ops on tensors have their operands' shapes)
            if (!def || def->getBlock() != &block || !isElementwise(def) ||
                !operand.hasOneUse() || taken.count(def))
              continue;
            if (tree.insert(def))
              work.push_back(def);
          }
        }
        for (Operation *member : tree)
          taken.insert(member);
        if (tree.size() >= 2)
          trees.emplace_back(&op, SmallVector<Operation *>(tree.begin(),
                                                           tree.end()));
      }
    for (auto &[root, members] : trees)
      outline(*root, members);
  }

  /// Replaces `tree` (rooted at `root`) by one moe.fusion at `root`.
  void outline(Operation &root, ArrayRef<Operation *> members) {
    // Body order: the block's order, so producers come first.
    SmallVector<Operation *> ordered(members.begin(), members.end());
    llvm::sort(ordered, [](Operation *a, Operation *b) {
      return a->isBeforeInBlock(b);
    });
    llvm::DenseSet<Operation *> inTree(members.begin(), members.end());
    llvm::SetVector<Value> inputs;
    for (Operation *member : ordered)
      for (Value operand : member->getOperands()) {
        Operation *def = operand.getDefiningOp();
        if ((def && inTree.count(def)) || isSplatConstant(operand))
          continue;
        inputs.insert(operand);
      }

    OpBuilder builder(&root);
    auto fusion = FusionOp::create(builder, root.getLoc(),
                                   root.getResult(0).getType(),
                                   inputs.getArrayRef());
    Block *body = builder.createBlock(&fusion.getBody());
    IRMapping map;
    for (Value input : inputs)
      map.map(input, body->addArgument(input.getType(), input.getLoc()));
    builder.setInsertionPointToStart(body);
    for (Operation *member : ordered) {
      for (Value operand : member->getOperands())
        if (!map.contains(operand) && isSplatConstant(operand))
          map.map(operand,
                  builder.clone(*operand.getDefiningOp())->getResult(0));
      builder.clone(*member, map);
    }
    YieldOp::create(builder, root.getLoc(), map.lookup(root.getResult(0)));

    root.getResult(0).replaceAllUsesWith(fusion.getResult());
    llvm::SetVector<Operation *> constants;
    for (Operation *member : llvm::reverse(ordered)) {
      for (Value operand : member->getOperands())
        if (isSplatConstant(operand))
          constants.insert(operand.getDefiningOp());
      member->erase();
    }
    for (Operation *constant : constants)
      if (constant->use_empty())
        constant->erase();
    ++numFusions;
    numFused += members.size();
  }
};

} // namespace
