//===- RaiseOnnx.cpp - Raise imported ONNX nodes to moe ops ---------------===//
//
// Implements moe-raise-onnx (see Passes.td).
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace mlir::moe {
#define GEN_PASS_DEF_RAISEONNX
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

struct RaiseOnnxPass : public moe::impl::RaiseOnnxBase<RaiseOnnxPass> {
  using RaiseOnnxBase::RaiseOnnxBase;

  void runOnOperation() override {
    func::FuncOp func = getOperation();
    RewritePatternSet patterns(&getContext());
    if (failed(applyPatternsGreedily(func, std::move(patterns))))
      return signalPassFailure();
    func.walk([&](OnnxNodeOp node) {
      ++numLeft;
      if (requireComplete)
        node.emitOpError() << "ONNX node '" << node.getOpType()
                           << "' could not be raised to moe ops";
    });
    if (requireComplete && numLeft > 0)
      signalPassFailure();
  }
};

} // namespace
