//===- ExpertParallel.cpp - Expert parallelism as a pass ------------------===//
//
// Implements moe-expert-parallel (see Passes.td). The pass rewrites the
// built training step in place, in program order, so that every operand is
// rewritten before its users:
//
//   - expert weights and their moments take their local [E/P, ...] types;
//     element-wise ops and moe.adamw on them follow the new shapes;
//   - moe.experts and moe.experts_grad become dispatch → local experts →
//     combine and its mirror; the backward reuses the forward's dispatch
//     (received rows, their gates and experts, the counts);
//   - the load-balancing loss becomes global through a shard.all_reduce of
//     its statistics over the whole mesh;
//   - with the token shuffle, the router's and experts' input is permuted
//     across the expert group and the experts' output permuted back, and
//     the backward gets the adjoint permutations.
//
// The mesh comes from lib/Plan's resolveMesh, the one place that knows the
// rules of (W, P, H).
//
//===----------------------------------------------------------------------===//

#include "moec/Conversion/MoeToShard/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "moec/Plan/Mesh.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Shard/IR/ShardDialect.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/ADT/StringSet.h"

namespace moec {
#define GEN_PASS_DEF_EXPERTPARALLEL
#include "moec/Conversion/MoeToShard/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace mlir::moe;

namespace {

using moec::ExpertAxis;
using moec::kMeshName;
using moec::ReplicaAxis;
using moec::ShardAxis;

RankedTensorType tensorType(Value v) {
  return cast<RankedTensorType>(v.getType());
}

RankedTensorType withShape(RankedTensorType type, ArrayRef<int64_t> shape) {
  return RankedTensorType::get(shape, type.getElementType());
}

/// The block argument a weight operand comes from, looking through the
/// bf16 compute copy (`arith.truncf`) of an fp32 master.
BlockArgument weightArgument(Value weight) {
  if (auto trunc = weight.getDefiningOp<arith::TruncFOp>())
    weight = trunc.getIn();
  return dyn_cast<BlockArgument>(weight);
}

class StepPartitioner {
public:
  StepPartitioner(func::FuncOp func, const moec::plan::Mesh &mesh,
                  int64_t numExperts, Dispatcher dispatcher, bool shuffle,
                  int64_t seed, bool keepOneRankCollectives)
      : func(func), mesh(mesh), numExperts(numExperts),
        localExperts(numExperts / mesh.expertParallelDegree()),
        dispatcher(dispatcher), shuffle(shuffle), seed(seed),
        keepOneRankCollectives(keepOneRankCollectives),
        builder(func.getContext()) {}

  LogicalResult run();
  int64_t numDispatches = 0;
  int64_t numExpertParams = 0;

private:
  LogicalResult localizeExpertArguments();
  LogicalResult rewrite(Operation *op);
  void rewriteExperts(ExpertsOp op);
  LogicalResult rewriteExpertsGrad(ExpertsGradOp op);
  void rewriteRouterLinearGrad(LinearGradOp op);
  void rewriteLoadBalancing(LoadBalancingLossOp op);
  LogicalResult rewriteLoadBalancingGrad(LoadBalancingLossGradOp op);

  Value shuffleTokens(Location loc, Value tokens, bool inverse);
  Value allReduceOverMesh(Location loc, Value value);
  DispatchOp dispatch(Location loc, Value input, Value experts, Value gates);
  Value combine(Location loc, Value rows, Value experts, Value counts,
                RankedTensorType resultType);
  FlatSymbolRefAttr grid() {
    return FlatSymbolRefAttr::get(builder.getContext(), kMeshName);
  }
  DenseI16ArrayAttr expertAxes() {
    return builder.getDenseI16ArrayAttr({ExpertAxis});
  }

  func::FuncOp func;
  const moec::plan::Mesh &mesh;
  int64_t numExperts, localExperts;
  Dispatcher dispatcher;
  bool shuffle;
  int64_t seed;
  /// Collectives of one-rank groups are kept (keep-one-rank-collectives).
  bool keepOneRankCollectives;
  OpBuilder builder;

  Value stepArgument;
  /// The forward dispatch of each expert layer, by its routing (the
  /// router's `experts`): the backward reuses its rows, gates and counts.
  llvm::DenseMap<Value, DispatchOp> layers;
  /// Router inputs that were shuffled, with their shuffled value.
  llvm::DenseMap<Value, Value> shuffled;
  /// The globally reduced load-balancing statistics.
  Value globalStats;
};

LogicalResult StepPartitioner::localizeExpertArguments() {
  llvm::SetVector<BlockArgument> weights;
  WalkResult walk = func.walk([&](ExpertsOp experts) -> WalkResult {
    for (Value weight : {experts.getGateUp(), experts.getDown()}) {
      BlockArgument arg = weightArgument(weight);
      if (!arg || !func.getArgAttr(arg.getArgNumber(), mlir::moe::MoeDialect::getParameterAttrName()))
        return experts.emitOpError()
               << "takes an expert weight that is not a moe.parameter "
                  "argument of @"
               << func.getSymName()
               << "; moe-expert-parallel cannot split it";
      weights.insert(arg);
    }
    return WalkResult::advance();
  });
  if (walk.wasInterrupted())
    return failure();
  llvm::StringSet<> names;
  for (BlockArgument arg : weights)
    names.insert(
        func.getArgAttrOfType<StringAttr>(arg.getArgNumber(), mlir::moe::MoeDialect::getParameterAttrName())
            .getValue());
  // The weights and the AdamW moments of the same parameters.
  SmallVector<Type> argTypes(func.getArgumentTypes());
  for (BlockArgument arg : func.getArguments()) {
    unsigned i = arg.getArgNumber();
    bool isExpert = false;
    for (StringRef attr : {mlir::moe::MoeDialect::getParameterAttrName(), mlir::moe::MoeDialect::getExpAvgAttrName(), mlir::moe::MoeDialect::getExpAvgSqAttrName()})
      if (auto name = func.getArgAttrOfType<StringAttr>(i, attr))
        isExpert |= names.contains(name.getValue());
    if (!isExpert)
      continue;
    RankedTensorType type = tensorType(arg);
    if (type.getRank() < 1 || type.getDimSize(0) != numExperts)
      return func.emitOpError()
             << "expert argument #" << i << " has type " << type
             << "; moe-expert-parallel needs its dimension 0 to be the "
             << numExperts << " experts";
    SmallVector<int64_t> shape(type.getShape());
    shape[0] = localExperts;
    arg.setType(withShape(type, shape));
    argTypes[i] = arg.getType();
    func.setArgAttr(i, moe::MoeDialect::getExpertLocalAttrName(), builder.getUnitAttr());
    if (func.getArgAttr(i, mlir::moe::MoeDialect::getParameterAttrName()))
      ++numExpertParams;
  }
  func.setFunctionType(
      builder.getFunctionType(argTypes, func.getResultTypes()));
  return success();
}

Value StepPartitioner::shuffleTokens(Location loc, Value tokens,
                                     bool inverse) {
  auto op = TokenShuffleOp::create(builder, loc, tokens.getType(), tokens,
                                   stepArgument, grid(), expertAxes(),
                                   builder.getI64IntegerAttr(seed),
                                   inverse ? builder.getUnitAttr() : nullptr);
  return op.getResult();
}

Value StepPartitioner::allReduceOverMesh(Location loc, Value value) {
  if (mesh.worldSize() == 1 && !keepOneRankCollectives)
    return value;
  SmallVector<shard::GridAxis> axes = {ReplicaAxis, ShardAxis, ExpertAxis};
  return shard::AllReduceOp::create(builder, loc, value, kMeshName, axes,
                                    shard::ReductionKind::Sum)
      .getResult();
}

DispatchOp StepPartitioner::dispatch(Location loc, Value input, Value experts,
                                     Value gates) {
  ++numDispatches;
  RankedTensorType in = tensorType(input);
  int64_t hidden = in.getShape().back();
  auto i64 = builder.getI64Type();
  Type rowsType = RankedTensorType::get({ShapedType::kDynamic, hidden},
                                        in.getElementType());
  Type perRow = RankedTensorType::get({ShapedType::kDynamic, 1}, i64);
  Type counts = RankedTensorType::get(
      {mesh.expertParallelDegree(), localExperts}, i64);
  Type rowGates =
      gates ? RankedTensorType::get({ShapedType::kDynamic, 1},
                                    tensorType(gates).getElementType())
            : Type();
  return DispatchOp::create(
      builder, loc, rowsType, perRow, counts, rowGates, input, experts, gates,
      grid(), expertAxes(),
      DispatcherAttr::get(builder.getContext(), dispatcher));
}

Value StepPartitioner::combine(Location loc, Value rows, Value experts,
                               Value counts, RankedTensorType resultType) {
  return CombineOp::create(
             builder, loc, resultType, rows, experts, counts, grid(),
             expertAxes(),
             DispatcherAttr::get(builder.getContext(), dispatcher))
      .getResult();
}

void StepPartitioner::rewriteExperts(ExpertsOp op) {
  Location loc = op.getLoc();
  builder.setInsertionPoint(op);
  Value input = op.getInput();
  Value shuffledInput;
  if (shuffle) {
    shuffledInput = shuffled.lookup(input);
    if (!shuffledInput) {
      // The router reads the same tokens: it is moe.linear of `input`.
      OpBuilder::InsertionGuard guard(builder);
      if (Operation *def = input.getDefiningOp())
        builder.setInsertionPointAfter(def);
      else
        builder.setInsertionPointToStart(input.getParentBlock());
      shuffledInput = shuffleTokens(loc, input, /*inverse=*/false);
      shuffled[input] = shuffledInput;
      input.replaceUsesWithIf(shuffledInput, [&](OpOperand &use) {
        return isa<LinearOp>(use.getOwner()) &&
               use.getOwner()->isBeforeInBlock(op);
      });
    }
    input = shuffledInput;
  }
  DispatchOp d = dispatch(loc, input, op.getExperts(), op.getGates());
  // Saved activations (moe-save-expert-activations) are kept for the
  // received rows, which are already in expert order.
  Type savedType;
  if (Value saved = op.getSaved())
    savedType = RankedTensorType::get(
        {ShapedType::kDynamic, tensorType(saved).getDimSize(1)},
        tensorType(saved).getElementType());
  auto local = ExpertsOp::create(builder, loc, d.getRows().getType(),
                                 savedType, d.getRows(), d.getRowGates(),
                                 d.getRowExperts(), op.getGateUp(),
                                 op.getDown(), op.getGateUpLayoutAttr());
  Value rows = local.getResult();
  Value result =
      combine(loc, rows, op.getExperts(), d.getCounts(),
              tensorType(op.getResult()));
  if (shuffle)
    result = shuffleTokens(loc, result, /*inverse=*/true);
  layers[op.getExperts()] = d;
  op.getResult().replaceAllUsesWith(result);
  // The backward's moe.experts_grad reads the local rows' activations.
  if (Value saved = op.getSaved())
    saved.replaceAllUsesWith(local.getSaved());
  op.erase();
}

LogicalResult StepPartitioner::rewriteExpertsGrad(ExpertsGradOp op) {
  auto it = layers.find(op.getExperts());
  if (it == layers.end())
    return op.emitOpError() << "has no moe.experts with the same routing "
                               "before it; moe-expert-parallel needs the "
                               "forward's dispatch";
  DispatchOp forward = it->second;
  Location loc = op.getLoc();
  builder.setInsertionPoint(op);
  Value dResult = op.getDResult();
  if (shuffle)
    dResult = shuffleTokens(loc, dResult, /*inverse=*/false);
  Value experts = op.getExperts();
  DispatchOp dRows = dispatch(loc, dResult, experts, Value());
  // The local weights' shapes, in the gradients' element type (fp32 where
  // moe-widen-weight-grads widened them).
  auto localGradType = [](Value weight, Value grad) {
    return tensorType(weight).clone(tensorType(grad).getElementType());
  };
  auto local = ExpertsGradOp::create(
      builder, loc, forward.getRows().getType(),
      forward.getRowGates().getType(),
      localGradType(op.getGateUp(), op.getDGateUp()),
      localGradType(op.getDown(), op.getDDown()), forward.getRows(),
      forward.getRowGates(), forward.getRowExperts(), op.getGateUp(),
      op.getDown(), dRows.getRows(), op.getSaved(), op.getGateUpLayoutAttr());
  Value dInput = combine(loc, local.getDInput(), experts, forward.getCounts(),
                         tensorType(op.getDInput()));
  if (shuffle)
    dInput = shuffleTokens(loc, dInput, /*inverse=*/true);
  // The gates' gradient: one value per slot, a combine with one choice per
  // slot ([..., k] experts as [..., k, 1]).
  RankedTensorType expertsType = tensorType(experts);
  RankedTensorType gatesType = tensorType(op.getDGates());
  int64_t rank = expertsType.getRank();
  SmallVector<ReassociationIndices> slots;
  for (int64_t d = 0; d + 1 < rank; ++d)
    slots.push_back({d});
  slots.push_back({rank - 1, rank});
  SmallVector<int64_t> perSlot(expertsType.getShape());
  perSlot.push_back(1);
  Value slotExperts = tensor::ExpandShapeOp::create(
      builder, loc, withShape(expertsType, perSlot), experts, slots);
  Value dSlots = combine(loc, local.getDGates(), slotExperts,
                         forward.getCounts(), withShape(gatesType, perSlot));
  Value dGates = tensor::CollapseShapeOp::create(builder, loc, gatesType,
                                                 dSlots, slots);
  op.getDInput().replaceAllUsesWith(dInput);
  op.getDGates().replaceAllUsesWith(dGates);
  op.getDGateUp().replaceAllUsesWith(local.getDGateUp());
  op.getDDown().replaceAllUsesWith(local.getDDown());
  op.erase();
  return success();
}

/// The router's moe.linear_grad reads the shuffled tokens; its input
/// gradient goes back through the inverse shuffle.
void StepPartitioner::rewriteRouterLinearGrad(LinearGradOp op) {
  Value shuffledInput = shuffled.lookup(op.getInput());
  if (!shuffledInput)
    return;
  builder.setInsertionPointAfter(op);
  op.getInputMutable().assign(shuffledInput);
  Value dInput = shuffleTokens(op.getLoc(), op.getDInput(), /*inverse=*/true);
  op.getDInput().replaceAllUsesExcept(dInput, dInput.getDefiningOp());
}

void StepPartitioner::rewriteLoadBalancing(LoadBalancingLossOp op) {
  Location loc = op.getLoc();
  builder.setInsertionPoint(op);
  auto statsType = RankedTensorType::get({2, numExperts},
                                         builder.getF32Type());
  Value stats = LoadBalancingStatsOp::create(builder, loc, statsType,
                                             op.getLogits(), op.getKAttr());
  globalStats = allReduceOverMesh(loc, stats);
  Value loss = LoadBalancingLossFromStatsOp::create(
      builder, loc, op.getType(), globalStats, op.getKAttr());
  op.getResult().replaceAllUsesWith(loss);
  op.erase();
}

LogicalResult
StepPartitioner::rewriteLoadBalancingGrad(LoadBalancingLossGradOp op) {
  if (!globalStats)
    return op.emitOpError() << "has no moe.load_balancing_loss before it";
  builder.setInsertionPoint(op);
  // Each rank's share of the gradient of the global loss: gradients are
  // summed over the ranks (moe-hybrid-shard), which adds up the shares.
  auto grad = LoadBalancingStatsGradOp::create(
      builder, op.getLoc(), op.getResultTypes(), op.getLogits(), globalStats,
      op.getKAttr(), op.getScaleAttr());
  op.replaceAllUsesWith(grad.getResults());
  op.erase();
  return success();
}

LogicalResult StepPartitioner::rewrite(Operation *op) {
  if (auto experts = dyn_cast<ExpertsOp>(op)) {
    rewriteExperts(experts);
    return success();
  }
  if (auto grad = dyn_cast<ExpertsGradOp>(op))
    return rewriteExpertsGrad(grad);
  if (auto grad = dyn_cast<LinearGradOp>(op)) {
    if (shuffle)
      rewriteRouterLinearGrad(grad);
    return success();
  }
  if (auto loss = dyn_cast<LoadBalancingLossOp>(op)) {
    rewriteLoadBalancing(loss);
    return success();
  }
  if (auto grad = dyn_cast<LoadBalancingLossGradOp>(op))
    return rewriteLoadBalancingGrad(grad);
  if (auto adamw = dyn_cast<AdamWOp>(op)) {
    for (Value result : adamw.getResults())
      result.setType(adamw.getParam().getType());
    return success();
  }
  // Element-wise ops on expert weights and gradients (compute copies,
  // widening, accumulation) keep their operands' shapes.
  if (op->hasTrait<OpTrait::Elementwise>() && op->getNumResults() == 1 &&
      op->getNumOperands() > 0)
    if (auto in = dyn_cast<RankedTensorType>(op->getOperand(0).getType()))
      if (auto out = dyn_cast<RankedTensorType>(op->getResult(0).getType()))
        if (in.getShape() != out.getShape())
          op->getResult(0).setType(withShape(out, in.getShape()));
  return success();
}

LogicalResult StepPartitioner::run() {
  for (BlockArgument arg : func.getArguments())
    if (auto name = func.getArgAttrOfType<StringAttr>(arg.getArgNumber(),
                                                      mlir::moe::MoeDialect::getInputAttrName()))
      if (name.getValue() == "step")
        stepArgument = arg;
  if (shuffle && !stepArgument)
    return func.emitOpError()
           << "has no 'step' input; global-token-shuffle seeds its "
              "permutation with the step";
  // With P = 1 every rank holds every expert: only the routing statistics
  // become global (unless one-rank collectives are kept: then the experts
  // are dispatched over the one-rank expert group too).
  bool splitExperts =
      mesh.expertParallelDegree() > 1 || keepOneRankCollectives;
  if (splitExperts && failed(localizeExpertArguments()))
    return failure();
  Block &body = func.getBody().front();
  for (Operation &op : llvm::make_early_inc_range(body)) {
    if (!splitExperts && isa<ExpertsOp, ExpertsGradOp>(op))
      continue;
    if (failed(rewrite(&op)))
      return failure();
  }
  auto ret = cast<func::ReturnOp>(body.getTerminator());
  func.setFunctionType(builder.getFunctionType(func.getArgumentTypes(),
                                               ret.getOperandTypes()));
  return success();
}

struct ExpertParallelPass
    : public moec::impl::ExpertParallelBase<ExpertParallelPass> {
  using ExpertParallelBase::ExpertParallelBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto step = module.lookupSymbol<func::FuncOp>("train_step");
    if (!step) {
      module.emitError() << "moe-expert-parallel needs a function "
                            "'train_step' (run moe-build-train-step first)";
      return signalPassFailure();
    }
    int64_t numExperts = 0;
    step.walk([&](RouterOp r) {
      numExperts = tensorType(r.getLogits()).getShape().back();
    });
    if (numExperts <= 0) {
      step.emitOpError() << "has no moe.router with a static number of "
                            "experts";
      return signalPassFailure();
    }
    moec::plan::ParallelConfig config;
    config.worldSize = worldSize;
    config.expertParallelDegree = expertParallelDegree;
    config.hybridShardDegree = hybridShardDegree;
    config.strategy = shardingStrategy;
    llvm::Expected<moec::plan::Mesh> mesh =
        moec::plan::resolveMesh(config, numExperts);
    if (!mesh) {
      module.emitError() << "invalid layout: "
                         << llvm::toString(mesh.takeError());
      return signalPassFailure();
    }
    if (failed(declareGrid(module, *mesh)))
      return signalPassFailure();
    bool shuffle = globalTokenShuffle && (mesh->expertParallelDegree() > 1 ||
                                          keepOneRankCollectives);
    for (StringRef name : {"train_step", "eval_step"}) {
      auto func = module.lookupSymbol<func::FuncOp>(name);
      if (!func)
        continue;
      StepPartitioner partitioner(func, *mesh, numExperts, dispatcher,
                                  shuffle && name == "train_step", seed,
                                  keepOneRankCollectives);
      if (failed(partitioner.run()))
        return signalPassFailure();
      numDispatches += partitioner.numDispatches;
      if (name == "train_step")
        numExpertParams += partitioner.numExpertParams;
    }
  }

  /// Adds `shard.grid @mesh(shape = RxHxP)`, or checks the one there.
  LogicalResult declareGrid(ModuleOp module, const moec::plan::Mesh &mesh) {
    SmallVector<int64_t> shape = {mesh.replicas(), mesh.shardDegree(),
                                  mesh.expertParallelDegree()};
    if (auto existing = module.lookupSymbol<shard::GridOp>(kMeshName)) {
      if (existing.getShape() != ArrayRef<int64_t>(shape))
        return existing.emitOpError()
               << "has shape "
               << llvm::join(llvm::map_range(existing.getShape(),
                                             [](int64_t d) {
                                               return std::to_string(d);
                                             }),
                             "x")
               << " but the layout's mesh (R, H, P) is " << shape[0] << "x"
               << shape[1] << "x" << shape[2];
      return success();
    }
    OpBuilder builder = OpBuilder::atBlockBegin(module.getBody());
    shard::GridOp::create(builder, module.getLoc(), kMeshName, shape);
    return success();
  }
};

} // namespace
