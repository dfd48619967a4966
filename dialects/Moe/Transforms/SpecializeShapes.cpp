//===- SpecializeShapes.cpp - Static shapes for one micro-batch size ------===//
//
// Implements moe-specialize-shapes (see Passes.td). Result types are
// recomputed in program order from the operands' (now static) types with
// one rule per op kind; the rules are the shape relations the ops'
// verifiers check.
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/TypeSwitch.h"

namespace mlir::moe {
#define GEN_PASS_DEF_SPECIALIZESHAPES
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

using Shape = SmallVector<int64_t>;

Shape shapeOf(Value v) {
  return Shape(cast<RankedTensorType>(v.getType()).getShape());
}

/// The shapes an op's results must have, from its operands; empty when the
/// op has no rule.
std::optional<SmallVector<Shape>> inferShapes(Operation *op) {
  auto same = [](Value v) { return SmallVector<Shape>{shapeOf(v)}; };
  auto withLast = [](Value v, int64_t last) {
    Shape s = shapeOf(v);
    s.back() = last;
    return s;
  };
  return llvm::TypeSwitch<Operation *, std::optional<SmallVector<Shape>>>(op)
      .Case([&](EmbeddingOp e) -> std::optional<SmallVector<Shape>> {
        Shape s = shapeOf(e.getIndices());
        s.push_back(shapeOf(e.getTable())[1]);
        return SmallVector<Shape>{s};
      })
      .Case<RmsNormOp, RotaryOp>(
          [&](Operation *o) { return same(o->getOperand(0)); })
      .Case([&](ExpertsOp x) -> std::optional<SmallVector<Shape>> {
        SmallVector<Shape> shapes{shapeOf(x.getInput())};
        if (x.getSaved()) {
          Shape gates = shapeOf(x.getGates());
          int64_t pairs = 1;
          for (int64_t d : gates)
            pairs = ShapedType::isDynamic(d) || ShapedType::isDynamic(pairs)
                        ? ShapedType::kDynamic
                        : pairs * d;
          shapes.push_back({pairs, shapeOf(x.getGateUp())[1]});
        }
        return shapes;
      })
      .Case([&](AttentionOp a) { return same(a.getQuery()); })
      .Case<arith::AddFOp, arith::MulFOp, arith::SubFOp, arith::DivFOp,
            arith::TruncFOp, arith::ExtFOp>(
          [&](Operation *o) { return same(o->getOperand(0)); })
      .Case([&](LinearOp l) -> std::optional<SmallVector<Shape>> {
        return SmallVector<Shape>{
            withLast(l.getInput(), shapeOf(l.getWeight())[0])};
      })
      .Case([&](LmHeadOp l) -> std::optional<SmallVector<Shape>> {
        return SmallVector<Shape>{
            withLast(l.getInput(), shapeOf(l.getWeight())[0])};
      })
      .Case([&](RouterOp r) -> std::optional<SmallVector<Shape>> {
        Shape s = withLast(r.getLogits(), r.getK());
        return SmallVector<Shape>{s, s};
      })
      .Case([&](tensor::ExpandShapeOp e) -> std::optional<SmallVector<Shape>> {
        Shape src = shapeOf(e.getSrc());
        Shape out(e.getResultType().getShape());
        for (auto [source, group] :
             llvm::enumerate(e.getReassociationIndices())) {
          int64_t known = 1;
          for (int64_t d : group)
            if (!ShapedType::isDynamic(out[d]))
              known *= out[d];
          for (int64_t d : group)
            if (ShapedType::isDynamic(out[d]) &&
                !ShapedType::isDynamic(src[source]))
              out[d] = src[source] / known;
        }
        return SmallVector<Shape>{out};
      })
      .Case([&](tensor::CollapseShapeOp c) -> std::optional<SmallVector<Shape>> {
        Shape src = shapeOf(c.getSrc()), out;
        for (const ReassociationIndices &group : c.getReassociationIndices()) {
          int64_t size = 1;
          for (int64_t d : group)
            size = ShapedType::isDynamic(src[d]) || ShapedType::isDynamic(size)
                       ? ShapedType::kDynamic
                       : size * src[d];
          out.push_back(size);
        }
        return SmallVector<Shape>{out};
      })
      .Case([&](RmsNormGradOp g) -> std::optional<SmallVector<Shape>> {
        return SmallVector<Shape>{shapeOf(g.getInput()), shapeOf(g.getWeight())};
      })
      .Case([&](RotaryGradOp g) { return same(g.getDResult()); })
      .Case([&](AttentionGradOp g) -> std::optional<SmallVector<Shape>> {
        return SmallVector<Shape>{shapeOf(g.getQuery()), shapeOf(g.getKey()),
                                  shapeOf(g.getValue())};
      })
      .Case([&](LinearGradOp g) -> std::optional<SmallVector<Shape>> {
        return SmallVector<Shape>{shapeOf(g.getInput()), shapeOf(g.getWeight())};
      })
      .Case([&](RouterGradOp g) { return same(g.getLogits()); })
      .Case([&](ExpertsGradOp g) -> std::optional<SmallVector<Shape>> {
        return SmallVector<Shape>{shapeOf(g.getInput()), shapeOf(g.getGates()),
                                  shapeOf(g.getGateUp()), shapeOf(g.getDown())};
      })
      .Case([&](LmHeadCrossEntropyGradOp g) -> std::optional<SmallVector<Shape>> {
        return SmallVector<Shape>{shapeOf(g.getInput()), shapeOf(g.getWeight())};
      })
      .Case([&](LmHeadCrossEntropyWithGradOp g)
                -> std::optional<SmallVector<Shape>> {
        return SmallVector<Shape>{Shape{}, shapeOf(g.getInput()),
                                  shapeOf(g.getWeight())};
      })
      .Case<LoadBalancingLossGradOp, RouterZLossGradOp>(
          [&](Operation *o) -> std::optional<SmallVector<Shape>> {
            SmallVector<Shape> shapes;
            for (Value v : o->getOperands())
              shapes.push_back(shapeOf(v));
            return shapes;
          })
      .Default([](Operation *) { return std::nullopt; });
}

struct SpecializeShapesPass
    : public moe::impl::SpecializeShapesBase<SpecializeShapesPass> {
  using SpecializeShapesBase::SpecializeShapesBase;

  void runOnOperation() override {
    func::FuncOp func = getOperation();
    if (batch < 1 || seq < 1) {
      func.emitError() << "moe-specialize-shapes needs batch and seq of at "
                          "least 1, got batch "
                       << batch.getValue() << " and seq " << seq.getValue();
      return signalPassFailure();
    }
    Block &body = func.getBody().front();
    for (BlockArgument arg : body.getArguments()) {
      auto type = dyn_cast<RankedTensorType>(arg.getType());
      if (!func.getArgAttr(arg.getArgNumber(),
                           MoeDialect::getInputAttrName()) ||
          !type || type.getRank() != 2 ||
          !isa<IntegerType>(type.getElementType()))
        continue;
      const int64_t sizes[] = {batch, seq};
      for (auto [d, size] : llvm::enumerate(sizes))
        if (!type.isDynamicDim(d) && type.getDimSize(d) != size) {
          func.emitError() << "input " << arg.getArgNumber() << " has static "
                           << "dimension " << d << " = " << type.getDimSize(d)
                           << ", not " << size;
          return signalPassFailure();
        }
      arg.setType(RankedTensorType::get({batch, seq}, type.getElementType()));
    }

    WalkResult walk = body.walk([&](Operation *op) -> WalkResult {
      bool dynamic = llvm::any_of(op->getResultTypes(), [](Type t) {
        auto r = dyn_cast<RankedTensorType>(t);
        return r && !r.hasStaticShape();
      });
      std::optional<SmallVector<Shape>> shapes = inferShapes(op);
      if (!shapes) {
        if (dynamic)
          return op->emitOpError() << "has a dynamic result, and "
                                      "moe-specialize-shapes has no shape "
                                      "rule for it";
        return WalkResult::advance();
      }
      for (auto [result, shape] : llvm::zip(op->getResults(), *shapes)) {
        auto type = cast<RankedTensorType>(result.getType());
        for (auto [d, pair] : llvm::enumerate(llvm::zip(type.getShape(), shape)))
          if (!ShapedType::isDynamic(std::get<0>(pair)) &&
              std::get<0>(pair) != std::get<1>(pair))
            return op->emitOpError()
                   << "result dimension " << d << " is " << std::get<0>(pair)
                   << " but its operands make it " << std::get<1>(pair);
        result.setType(RankedTensorType::get(shape, type.getElementType()));
      }
      // An expand_shape with static sizes takes them as attributes.
      if (auto expand = dyn_cast<tensor::ExpandShapeOp>(op)) {
        OpBuilder builder(expand);
        auto replacement = tensor::ExpandShapeOp::create(
            builder, expand.getLoc(), expand.getResultType(), expand.getSrc(),
            expand.getReassociationIndices());
        expand.getResult().replaceAllUsesWith(replacement.getResult());
        expand.erase(); // safe: the walk is post-order
        return WalkResult::advance();
      }
      return WalkResult::advance();
    });
    if (walk.wasInterrupted())
      return signalPassFailure();
    // The signature follows the body.
    auto ret = cast<func::ReturnOp>(body.getTerminator());
    func.setType(FunctionType::get(&getContext(), body.getArgumentTypes(),
                                   ret.getOperandTypes()));
  }
};

} // namespace
