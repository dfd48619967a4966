//===- BuildTrainStep.cpp - Loss, backward and AdamW from the forward -----===//
//
// Implements moe-build-train-step (see Passes.td). The training step is
// built in four parts, in this order in the new function:
//
//   1. the forward, cloned, with its routers set to the chosen mode and the
//      lm-head replaced by the fused cross-entropy;
//   2. the losses and their weighted sum;
//   3. the backward: a reverse walk over the cloned forward that emits, for
//      every op with a gradient flowing into one of its results, the grad op
//      of its rule, accumulating gradients of values used more than once;
//   4. the optimizer: global gradient norm, then one moe.adamw per parameter.
//
// The rules are listed in docs/training.md. An op without a rule on the path
// from a parameter to the loss is an error at that op.
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"

namespace mlir::moe {
#define GEN_PASS_DEF_BUILDTRAINSTEP
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

RankedTensorType tensorType(Value v) {
  return cast<RankedTensorType>(v.getType());
}

/// A scalar fp32 tensor constant.
Value scalar(OpBuilder &b, Location loc, double value) {
  auto type = RankedTensorType::get({}, b.getF32Type());
  return arith::ConstantOp::create(
      b, loc, DenseElementsAttr::get(type, static_cast<float>(value)));
}

/// `type` with an fp32 element (or an fp32 scalar) replaced by `computeType`;
/// null when it has none.
Type computeTypeOf(Type type, Type computeType) {
  if (auto tensor = dyn_cast<RankedTensorType>(type))
    return tensor.getElementType().isF32()
               ? RankedTensorType::get(tensor.getShape(), computeType)
               : Type();
  return type.isF32() ? computeType : Type();
}

/// Gives every fp32 value that `op` defines the compute type: its results,
/// and inside its regions (a linalg op's body) the block arguments and the
/// results of the scalar ops, whose float constants are converted. Retyping
/// the results alone would leave a structured op's body yielding fp32 into
/// a bf16 tensor, which the verifier rejects.
void retypeToCompute(Operation *op, Type computeType) {
  op->walk([&](Operation *nested) {
    for (Region &region : nested->getRegions())
      for (Block &block : region)
        for (BlockArgument arg : block.getArguments())
          if (Type t = computeTypeOf(arg.getType(), computeType))
            arg.setType(t);
    for (Value result : nested->getResults()) {
      Type t = computeTypeOf(result.getType(), computeType);
      if (!t)
        continue;
      result.setType(t);
      auto constant = dyn_cast<arith::ConstantOp>(nested);
      if (!constant)
        continue;
      Type element = getElementTypeOrSelf(t);
      const llvm::fltSemantics &semantics =
          cast<FloatType>(element).getFloatSemantics();
      auto convert = [&](APFloat value) {
        bool lost;
        value.convert(semantics, APFloat::rmNearestTiesToEven, &lost);
        return value;
      };
      if (auto scalar = dyn_cast<FloatAttr>(constant.getValue()))
        constant.setValueAttr(
            FloatAttr::get(element, convert(scalar.getValue())));
      else if (auto dense = dyn_cast<DenseFPElementsAttr>(constant.getValue()))
        constant.setValueAttr(dense.mapValues(
            element, [&](const APFloat &v) { return convert(v).bitcastToAPInt(); }));
    }
  });
}

class StepBuilder {
public:
  StepBuilder(func::FuncOp forward, LoadBalancing mode, Type computeType,
              Type paramType, const BuildTrainStepOptions &options)
      : forward(forward), mode(mode), computeType(computeType),
        paramType(paramType), options(options),
        builder(forward.getContext()) {}

  FailureOr<func::FuncOp> build();
  LogicalResult buildEval(ArrayRef<BlockArgument> params, Value inputIds);
  int64_t numGradOps = 0;

private:
  FailureOr<LmHeadOp> cloneForward(ArrayRef<BlockArgument> params,
                                   ValueRange masters, Value ids,
                                   bool training,
                                   SmallVector<Value> &computeParams,
                                   SmallVector<Operation *> &cloned);
  LogicalResult emitBackward(Operation *op);
  void addGrad(Value value, Value grad);
  Value gradOf(Value v) { return grads.lookup(v); }
  /// The type the step stores forward parameter `p` (and its moments) in.
  Type stateType(BlockArgument p) const {
    RankedTensorType t = cast<RankedTensorType>(p.getType());
    return paramType ? RankedTensorType::get(t.getShape(), paramType) : t;
  }

  func::FuncOp forward;
  LoadBalancing mode;
  Type computeType; ///< Null: compute in the masters' fp32.
  Type paramType;   ///< Null: parameters as the forward has them (fp32).
  const BuildTrainStepOptions &options;
  OpBuilder builder;
  llvm::DenseMap<Value, Value> grads;
};

void StepBuilder::addGrad(Value value, Value grad) {
  auto it = grads.find(value);
  if (it == grads.end()) {
    grads[value] = grad;
    return;
  }
  it->second = arith::AddFOp::create(builder, grad.getLoc(), it->second, grad);
}

LogicalResult StepBuilder::emitBackward(Operation *op) {
  bool hasGrad = llvm::any_of(op->getResults(),
                              [&](Value r) { return grads.count(r) > 0; });
  if (!hasGrad)
    return success();
  Location loc = op->getLoc();
  ++numGradOps;
  if (auto e = dyn_cast<EmbeddingOp>(op)) {
    addGrad(e.getTable(),
            EmbeddingGradOp::create(builder, loc, e.getTable().getType(),
                                    e.getIndices(), gradOf(e.getResult())));
    return success();
  }
  if (auto n = dyn_cast<RmsNormOp>(op)) {
    auto g = RmsNormGradOp::create(
        builder, loc, n.getInput().getType(), n.getWeight().getType(),
        n.getInput(), n.getWeight(), gradOf(n.getResult()), n.getEpsilonAttr());
    addGrad(n.getInput(), g.getDInput());
    addGrad(n.getWeight(), g.getDWeight());
    return success();
  }
  if (auto r = dyn_cast<RotaryOp>(op)) {
    addGrad(r.getInput(),
            RotaryGradOp::create(builder, loc, r.getInput().getType(),
                                 gradOf(r.getResult()), r.getPositions(),
                                 r.getThetaAttr()));
    return success();
  }
  if (auto a = dyn_cast<AttentionOp>(op)) {
    auto g = AttentionGradOp::create(
        builder, loc, a.getQuery().getType(), a.getKey().getType(),
        a.getValue().getType(), a.getQuery(), a.getKey(), a.getValue(),
        gradOf(a.getResult()), ValueRange(), a.getCausalAttr(),
        a.getScaleAttr(), a.getSlidingWindowAttr());
    addGrad(a.getQuery(), g.getDQuery());
    addGrad(a.getKey(), g.getDKey());
    addGrad(a.getValue(), g.getDValue());
    return success();
  }
  if (auto l = dyn_cast<LinearOp>(op)) {
    if (l.getBias())
      return l.emitOpError() << "has a bias, which moe-build-train-step "
                                "cannot differentiate yet";
    auto g = LinearGradOp::create(builder, loc, l.getInput().getType(),
                                  l.getWeight().getType(), l.getInput(),
                                  l.getWeight(), gradOf(l.getResult()));
    addGrad(l.getInput(), g.getDInput());
    addGrad(l.getWeight(), g.getDWeight());
    return success();
  }
  if (auto r = dyn_cast<RouterOp>(op)) {
    Value dGates = gradOf(r.getGates());
    if (!dGates)
      return success(); // only the (integer) choices were used
    addGrad(r.getLogits(),
            RouterGradOp::create(builder, loc, r.getLogits().getType(),
                                 r.getLogits(), r.getExperts(), dGates,
                                 r.getLoadBalancingAttr()));
    return success();
  }
  if (auto x = dyn_cast<ExpertsOp>(op)) {
    auto g = ExpertsGradOp::create(
        builder, loc, x.getInput().getType(), x.getGates().getType(),
        x.getGateUp().getType(), x.getDown().getType(), x.getInput(),
        x.getGates(), x.getExperts(), x.getGateUp(), x.getDown(),
        gradOf(x.getResult()), x.getSaved(), x.getGateUpLayoutAttr());
    addGrad(x.getInput(), g.getDInput());
    addGrad(x.getGates(), g.getDGates());
    addGrad(x.getGateUp(), g.getDGateUp());
    addGrad(x.getDown(), g.getDDown());
    return success();
  }
  if (auto add = dyn_cast<arith::AddFOp>(op)) {
    Value g = gradOf(add.getResult());
    addGrad(add.getLhs(), g);
    addGrad(add.getRhs(), g);
    return success();
  }
  if (auto expand = dyn_cast<tensor::ExpandShapeOp>(op)) {
    addGrad(expand.getSrc(),
            tensor::CollapseShapeOp::create(
                builder, loc, expand.getSrcType(), gradOf(expand.getResult()),
                expand.getReassociationIndices()));
    return success();
  }
  if (auto collapse = dyn_cast<tensor::CollapseShapeOp>(op)) {
    RankedTensorType srcType = collapse.getSrcType();
    SmallVector<OpFoldResult> sizes;
    for (int64_t d = 0; d < srcType.getRank(); ++d)
      sizes.push_back(
          srcType.isDynamicDim(d)
              ? OpFoldResult(tensor::DimOp::create(builder, loc,
                                                   collapse.getSrc(), d)
                                 .getResult())
              : OpFoldResult(builder.getIndexAttr(srcType.getDimSize(d))));
    addGrad(collapse.getSrc(),
            tensor::ExpandShapeOp::create(
                builder, loc, srcType, gradOf(collapse.getResult()),
                collapse.getReassociationIndices(), sizes));
    return success();
  }
  if (auto transpose = dyn_cast<linalg::TransposeOp>(op)) {
    ArrayRef<int64_t> perm = transpose.getPermutation();
    SmallVector<int64_t> inverse(perm.size());
    for (size_t i = 0; i < perm.size(); ++i)
      inverse[perm[i]] = i;
    RankedTensorType inType = tensorType(transpose.getInput());
    auto init = tensor::EmptyOp::create(builder, loc, inType.getShape(),
                                        inType.getElementType());
    addGrad(transpose.getInput(),
            linalg::TransposeOp::create(builder, loc,
                                        gradOf(transpose.getResult()[0]), init,
                                        inverse)
                .getResult()[0]);
    return success();
  }
  --numGradOps;
  return op->emitOpError() << "has no gradient rule, but a parameter's "
                              "gradient flows through it";
}

/// Clones the forward's body at the builder's insertion point, its
/// parameters mapped to `masters` (through bf16 compute copies when
/// computing in bf16 on fp32 masters) and its token ids to `ids`, every router in the chosen
/// mode (`training` false: evaluation routing). Returns the cloned lm-head.
FailureOr<LmHeadOp> StepBuilder::cloneForward(
    ArrayRef<BlockArgument> params, ValueRange masters, Value ids,
    bool training, SmallVector<Value> &computeParams,
    SmallVector<Operation *> &cloned) {
  Location loc = forward.getLoc();
  Block &body = forward.getBody().front();
  IRMapping mapping;
  for (auto [p, master] : llvm::zip(params, masters)) {
    Value copy = master;
    if (computeType && tensorType(master).getElementType() != computeType) {
      RankedTensorType t = tensorType(master);
      copy = arith::TruncFOp::create(
          builder, loc, RankedTensorType::get(t.getShape(), computeType),
          master);
    }
    computeParams.push_back(copy);
    mapping.map(p, copy);
  }
  for (BlockArgument arg : forward.getArguments())
    if (forward.getArgAttr(arg.getArgNumber(),
                           MoeDialect::getInputAttrName()) &&
        !forward.getArgAttr(arg.getArgNumber(),
                            MoeDialect::getAllOnesAttrName()))
      mapping.map(arg, ids);
  for (Operation &op : body.without_terminator()) {
    if (isa<OnnxNodeOp>(op))
      return op.emitOpError() << "was not raised; the training step needs a "
                                 "fully raised forward";
    Operation *copy = builder.clone(op, mapping);
    if (computeType)
      retypeToCompute(copy, computeType);
    if (auto r = dyn_cast<RouterOp>(copy)) {
      r.setLoadBalancingAttr(LoadBalancingAttr::get(builder.getContext(), mode));
      r.setTraining(training);
    }
    cloned.push_back(copy);
  }
  auto ret = cast<func::ReturnOp>(body.getTerminator());
  if (ret.getNumOperands() != 1)
    return ret.emitOpError() << "the forward must return only the logits";
  auto head = mapping.lookup(ret.getOperand(0)).getDefiningOp<LmHeadOp>();
  if (!head)
    return ret.emitOpError() << "the forward must return a moe.lm_head";
  return head;
}

/// @eval_step(params..., input_ids, labels) -> ce_loss: the forward with
/// evaluation routing and the fused loss, no backward.
LogicalResult StepBuilder::buildEval(ArrayRef<BlockArgument> params,
                                     Value inputIds) {
  Location loc = forward.getLoc();
  auto f32Scalar = RankedTensorType::get({}, builder.getF32Type());
  SmallVector<Type> argTypes;
  for (BlockArgument p : params)
    argTypes.push_back(stateType(p));
  argTypes.append({inputIds.getType(), inputIds.getType()});
  builder.setInsertionPointAfter(forward);
  auto eval = func::FuncOp::create(builder, loc, "eval_step",
                                   builder.getFunctionType(argTypes, {f32Scalar}));
  Block *entry = eval.addEntryBlock();
  size_t n = params.size();
  for (auto [i, p] : llvm::enumerate(params))
    eval.setArgAttr(i, MoeDialect::getParameterAttrName(),
                    forward.getArgAttr(p.getArgNumber(),
                                       MoeDialect::getParameterAttrName()));
  eval.setArgAttr(n, MoeDialect::getInputAttrName(),
                  builder.getStringAttr("input_ids"));
  eval.setArgAttr(n + 1, MoeDialect::getInputAttrName(),
                  builder.getStringAttr("labels"));
  eval.setResultAttr(0, MoeDialect::getOutputAttrName(),
                     builder.getStringAttr("ce_loss"));
  builder.setInsertionPointToStart(entry);
  SmallVector<Value> computeParams;
  SmallVector<Operation *> cloned;
  FailureOr<LmHeadOp> head =
      cloneForward(params, entry->getArguments().take_front(n),
                   entry->getArgument(n), /*training=*/false, computeParams,
                   cloned);
  if (failed(head))
    return failure();
  builder.setInsertionPointAfter(*head);
  Value ce = LmHeadCrossEntropyOp::create(
      builder, head->getLoc(), f32Scalar, head->getInput(), head->getWeight(),
      entry->getArgument(n + 1), /*target_count=*/Value(),
      builder.getI64IntegerAttr(options.ignoreIndex));
  head->erase();
  func::ReturnOp::create(builder, loc, ce);
  return success();
}

FailureOr<func::FuncOp> StepBuilder::build() {
  Location loc = forward.getLoc();

  // --- Signature --------------------------------------------------------
  SmallVector<BlockArgument> params;
  BlockArgument inputIds;
  for (BlockArgument arg : forward.getArguments()) {
    if (forward.getArgAttr(arg.getArgNumber(),
                           MoeDialect::getParameterAttrName()))
      params.push_back(arg);
    else if (forward.getArgAttr(arg.getArgNumber(),
                                MoeDialect::getAllOnesAttrName())) {
      // An attention mask the raising proved the model for only without
      // padding: the step trains on packed blocks, so it is ones.
      StringAttr name = forward.getArgAttrOfType<StringAttr>(
          arg.getArgNumber(), MoeDialect::getInputAttrName());
      if (!arg.use_empty())
        return forward.emitOpError()
               << "reads input '" << name.getValue() << "', tagged '"
               << MoeDialect::getAllOnesAttrName()
               << "' as an input it no longer reads";
      forward.emitRemark() << "input '" << name.getValue()
                           << "' is bound to all ones: the training step "
                              "runs on packed blocks without padding";
    } else if (forward.getArgAttr(arg.getArgNumber(),
                                  MoeDialect::getInputAttrName())) {
      if (inputIds)
        return forward.emitOpError()
               << "has more than one input; the training step expects only "
                  "token ids";
      inputIds = arg;
    }
  }
  if (!inputIds || params.empty())
    return forward.emitOpError() << "needs token ids and parameters";
  auto i64Scalar = RankedTensorType::get({}, builder.getI64Type());
  auto f32Scalar = RankedTensorType::get({}, builder.getF32Type());
  SmallVector<Type> argTypes, resultTypes;
  for (int copy = 0; copy < 3; ++copy)
    for (BlockArgument p : params)
      argTypes.push_back(stateType(p));
  argTypes.append({inputIds.getType(), inputIds.getType(), i64Scalar,
                   f32Scalar});
  resultTypes.append(argTypes.begin(), argTypes.begin() + 3 * params.size());

  int64_t numLayers = 0, numExperts = 0;
  forward.walk([&](RouterOp r) {
    ++numLayers;
    numExperts = tensorType(r.getLogits()).getShape().back();
  });
  if (numLayers == 0)
    return forward.emitOpError() << "has no moe.router; nothing to balance";
  resultTypes.append({f32Scalar, f32Scalar, f32Scalar, f32Scalar, f32Scalar,
                      RankedTensorType::get({numLayers, numExperts},
                                            builder.getI64Type())});
  if (options.returnGradients)
    for (BlockArgument p : params)
      resultTypes.push_back(stateType(p));

  builder.setInsertionPointAfter(forward);
  auto step = func::FuncOp::create(
      builder, loc, "train_step",
      builder.getFunctionType(argTypes, resultTypes));
  Block *entry = step.addEntryBlock();
  size_t n = params.size();
  for (auto [i, p] : llvm::enumerate(params)) {
    StringAttr name = forward.getArgAttrOfType<StringAttr>(
        p.getArgNumber(), MoeDialect::getParameterAttrName());
    step.setArgAttr(i, MoeDialect::getParameterAttrName(), name);
    step.setArgAttr(n + i, MoeDialect::getExpAvgAttrName(), name);
    step.setArgAttr(2 * n + i, MoeDialect::getExpAvgSqAttrName(), name);
    step.setResultAttr(i, MoeDialect::getParameterAttrName(), name);
    step.setResultAttr(n + i, MoeDialect::getExpAvgAttrName(), name);
    step.setResultAttr(2 * n + i, MoeDialect::getExpAvgSqAttrName(), name);
  }
  step.setArgAttr(3 * n, MoeDialect::getInputAttrName(),
                  builder.getStringAttr("input_ids"));
  step.setArgAttr(3 * n + 1, MoeDialect::getInputAttrName(),
                  builder.getStringAttr("labels"));
  step.setArgAttr(3 * n + 2, MoeDialect::getInputAttrName(),
                  builder.getStringAttr("step"));
  step.setArgAttr(3 * n + 3, MoeDialect::getInputAttrName(),
                  builder.getStringAttr("lr"));
  static const char *const metricNames[] = {
      "loss", "ce_loss", "aux_loss", "z_loss", "grad_norm", "expert_counts"};
  for (auto [i, name] : llvm::enumerate(metricNames))
    step.setResultAttr(3 * n + i, MoeDialect::getOutputAttrName(),
                       builder.getStringAttr(name));
  if (options.returnGradients)
    for (auto [i, p] : llvm::enumerate(params))
      step.setResultAttr(
          3 * n + 6 + i, MoeDialect::getGradientAttrName(),
          forward.getArgAttr(p.getArgNumber(),
                             MoeDialect::getParameterAttrName()));

  // --- 1. The forward -----------------------------------------------------
  SmallVector<Value> computeParams;
  SmallVector<Operation *> cloned;
  builder.setInsertionPointToStart(entry);
  FailureOr<LmHeadOp> clonedHead = cloneForward(
      params, entry->getArguments().take_front(n), entry->getArgument(3 * n),
      /*training=*/true, computeParams, cloned);
  if (failed(clonedHead))
    return failure();
  LmHeadOp head = *clonedHead;
  Value labels = entry->getArgument(3 * n + 1);
  SmallVector<Value> routerLogits, routerExperts;
  for (Operation *op : cloned)
    if (auto r = dyn_cast<RouterOp>(op)) {
      routerLogits.push_back(r.getLogits());
      routerExperts.push_back(r.getExperts());
    }
  int64_t k = 0;
  for (Operation *op : cloned)
    if (auto r = dyn_cast<RouterOp>(op))
      k = r.getK();

  // --- 2. Losses ----------------------------------------------------------
  builder.setInsertionPointAfter(head);
  Location headLoc = head.getLoc();
  Value ce = LmHeadCrossEntropyOp::create(
      builder, headLoc, f32Scalar, head.getInput(), head.getWeight(), labels,
      /*target_count=*/Value(), builder.getI64IntegerAttr(options.ignoreIndex));
  bool useAux = mode == LoadBalancing::aux_loss;
  Value aux = useAux ? Value(LoadBalancingLossOp::create(
                           builder, loc, f32Scalar, routerLogits,
                           builder.getI64IntegerAttr(k)))
                     : scalar(builder, loc, 0.0);
  bool useZ = options.zLossCoef != 0.0;
  Value z = useZ ? Value(RouterZLossOp::create(builder, loc, f32Scalar,
                                               routerLogits))
                 : scalar(builder, loc, 0.0);
  Value loss = ce;
  if (useAux)
    loss = arith::AddFOp::create(
        builder, loc, loss,
        arith::MulFOp::create(builder, loc,
                              scalar(builder, loc, options.auxLossCoef), aux));
  if (useZ)
    loss = arith::AddFOp::create(
        builder, loc, loss,
        arith::MulFOp::create(builder, loc,
                              scalar(builder, loc, options.zLossCoef), z));
  Value counts = ExpertCountsOp::create(
      builder, loc,
      RankedTensorType::get({numLayers, numExperts}, builder.getI64Type()),
      routerExperts);

  // --- 3. Backward --------------------------------------------------------
  auto ceGrad = LmHeadCrossEntropyGradOp::create(
      builder, headLoc, head.getInput().getType(), head.getWeight().getType(),
      head.getInput(), head.getWeight(), labels, /*target_count=*/Value(),
      builder.getI64IntegerAttr(options.ignoreIndex),
      builder.getF64FloatAttr(1.0));
  addGrad(head.getInput(), ceGrad.getDInput());
  addGrad(head.getWeight(), ceGrad.getDWeight());
  SmallVector<Type> logitTypes;
  for (Value l : routerLogits)
    logitTypes.push_back(l.getType());
  if (useAux && options.auxLossCoef != 0.0) {
    auto g = LoadBalancingLossGradOp::create(
        builder, loc, logitTypes, routerLogits, builder.getI64IntegerAttr(k),
        builder.getF64FloatAttr(options.auxLossCoef));
    for (auto [l, d] : llvm::zip(routerLogits, g.getDLogits()))
      addGrad(l, d);
  }
  if (useZ) {
    auto g = RouterZLossGradOp::create(
        builder, loc, logitTypes, routerLogits,
        builder.getF64FloatAttr(options.zLossCoef));
    for (auto [l, d] : llvm::zip(routerLogits, g.getDLogits()))
      addGrad(l, d);
  }
  for (Operation *op : llvm::reverse(cloned)) {
    if (op == head.getOperation())
      continue;
    if (failed(emitBackward(op)))
      return failure();
  }
  head.erase();

  // --- 4. Optimizer -------------------------------------------------------
  SmallVector<Value> paramGrads;
  for (size_t i = 0; i < n; ++i) {
    Value arg = entry->getArgument(i);
    Value g = gradOf(computeParams[i]);
    if (g && g.getType() != arg.getType()) // back to the masters' fp32
      g = arith::ExtFOp::create(builder, loc, arg.getType(), g);
    if (!g) { // a parameter the loss does not depend on
      RankedTensorType t = tensorType(arg);
      g = arith::ConstantOp::create(
          builder, loc, DenseElementsAttr::get(t, builder.getFloatAttr(
                                                      t.getElementType(), 0.0)));
    }
    paramGrads.push_back(g);
  }
  Value norm = GlobalNormOp::create(builder, loc, f32Scalar, paramGrads);
  SmallVector<Value> newParams, newM, newV;
  for (size_t i = 0; i < n; ++i) {
    Value p = entry->getArgument(i);
    double decay = tensorType(p).getRank() >= 2 ? options.weightDecay : 0.0;
    auto update = AdamWOp::create(
        builder, loc, p.getType(), p.getType(), p.getType(), p, paramGrads[i], entry->getArgument(n + i),
        entry->getArgument(2 * n + i), entry->getArgument(3 * n + 2),
        entry->getArgument(3 * n + 3), norm,
        builder.getF64FloatAttr(options.beta1),
        builder.getF64FloatAttr(options.beta2),
        builder.getF64FloatAttr(options.epsilon),
        builder.getF64FloatAttr(decay),
        builder.getF64FloatAttr(options.maxGradNorm),
        /*skip_nonfinite=*/builder.getUnitAttr());
    newParams.push_back(update.getNewParam());
    newM.push_back(update.getNewExpAvg());
    newV.push_back(update.getNewExpAvgSq());
  }
  SmallVector<Value> results;
  results.append(newParams);
  results.append(newM);
  results.append(newV);
  results.append({loss, ce, aux, z, norm, counts});
  if (options.returnGradients)
    results.append(paramGrads);
  func::ReturnOp::create(builder, loc, results);
  if (failed(buildEval(params, inputIds)))
    return failure();
  return step;
}

struct BuildTrainStepPass
    : public moe::impl::BuildTrainStepBase<BuildTrainStepPass> {
  using BuildTrainStepBase::BuildTrainStepBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto forward = module.lookupSymbol<func::FuncOp>("forward");
    if (!forward) {
      module.emitError() << "moe-build-train-step needs a function 'forward'";
      return signalPassFailure();
    }
    if (module.lookupSymbol("train_step")) {
      module.emitError() << "the module already has a 'train_step'";
      return signalPassFailure();
    }
    BuildTrainStepOptions options;
    options.loadBalancing = loadBalancing;
    options.auxLossCoef = auxLossCoef;
    options.zLossCoef = zLossCoef;
    options.beta1 = beta1;
    options.beta2 = beta2;
    options.epsilon = epsilon;
    options.weightDecay = weightDecay;
    options.maxGradNorm = maxGradNorm;
    options.ignoreIndex = ignoreIndex;
    options.returnGradients = returnGradients;
    options.computeType = computeType;
    options.paramType = paramType;
    Type compute;
    if (computeType == "bf16")
      compute = BFloat16Type::get(&getContext());
    else if (computeType != "f32") {
      module.emitError() << "unknown compute-type '" << computeType
                         << "'; expected f32 or bf16";
      return signalPassFailure();
    }
    Type param;
    if (paramType == "bf16") {
      if (!compute) {
        module.emitError() << "param-type bf16 needs compute-type bf16 (got '"
                           << computeType << "')";
        return signalPassFailure();
      }
      param = BFloat16Type::get(&getContext());
    } else if (paramType != "f32") {
      module.emitError() << "unknown param-type '" << paramType
                         << "'; expected f32 or bf16";
      return signalPassFailure();
    }
    StepBuilder step(forward, loadBalancing, compute, param, options);
    if (failed(step.build()))
      return signalPassFailure();
    numGradOps += step.numGradOps;
  }
};

} // namespace
