//===- HybridShard.cpp - Model states sharded over the shard groups -------===//
//
// Implements moe-hybrid-shard (see Passes.td): rewrites the built
// @train_step into the per-rank program of a (R, H, P) mesh. Each parameter
// and its two AdamW moments become the rank's shard, laid out as lib/Plan's
// Placement says (one dimension chunked in ceil(n / H), the last chunks
// padded with zeros so every rank's shard has one static shape); the
// parameter is all-gathered over H just before its first use (a decoder
// layer's again before its first use in the backward), its gradient
// reduce-scattered over H and all-reduced over the replicas that hold the
// same shard. The losses and their gradients are made the global batch's:
// the cross-entropy divides by the global batch's target count.
//
//===----------------------------------------------------------------------===//

#include "moec/Conversion/MoeToShard/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "moec/Plan/Mesh.h"
#include "moec/Plan/Model.h"
#include "moec/Plan/Placement.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/FormatVariadic.h"

namespace moec {
#define GEN_PASS_DEF_HYBRIDSHARD
#include "moec/Conversion/MoeToShard/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;

namespace {

/// One parameter of the step and everything the pass changes about it.
struct ShardedParameter {
  StringRef name;
  BlockArgument param, expAvg, expAvgSq;
  moe::AdamWOp update;
  bool expertLocal = false;
  /// The shape one expert-parallel rank computes with (what the all-gather
  /// restores) and the shape of its shard; equal when H = 1.
  SmallVector<int64_t> localShape, shardShape;
  /// The dimension chunked over H, or -1.
  int64_t shardDim = -1;
  /// Whether it is the table of a moe.embedding.
  bool embedding = false;
  /// The rank's gradient of the whole local parameter, and its shard after
  /// the reductions.
  Value localGrad, reducedGrad;
};

/// The grid axes of the process groups the pass uses (moec::MeshAxis).
constexpr int16_t kShardAxes[] = {ShardAxis};
constexpr int16_t kDenseReplicaAxes[] = {ReplicaAxis, ExpertAxis};
constexpr int16_t kReplicaAxes[] = {ReplicaAxis};
constexpr int16_t kExpertAxes[] = {ExpertAxis};
constexpr int16_t kWorldAxes[] = {ReplicaAxis, ShardAxis, ExpertAxis};

struct HybridShardPass : public moec::impl::HybridShardBase<HybridShardPass> {
  using HybridShardBase::HybridShardBase;
  void runOnOperation() override;

private:
  /// A sum over the group that `axes` name, or `input` itself when that
  /// group is this rank alone (unless one-rank collectives are kept).
  Value allReduce(OpBuilder &b, Location loc, Value input,
                  ArrayRef<int16_t> axes);
  int64_t groupSize(ArrayRef<int16_t> axes) const;
  /// Makes `arg` (parameter `p` of some function) the rank's shard, and
  /// all-gathers it just before its first use for every use but `keep`;
  /// with `backwardStart`, the uses from there on get a gather of their
  /// own just before the first of them.
  void gatherBeforeUse(const ShardedParameter &p, BlockArgument arg,
                       Operation *keep, Operation *backwardStart);
  /// Gathers `p` before use (again in the backward, which starts at
  /// `backwardStart`, unless the plan keeps it) and reduces its gradient
  /// just before `reduceAt`.
  void shardParameter(ShardedParameter &p, Operation *backwardStart,
                      Operation *reduceAt);
  LogicalResult rewriteGradientNorm(func::FuncOp step,
                                    ArrayRef<ShardedParameter> params);
  LogicalResult rewriteLosses(func::FuncOp step);
  LogicalResult shardInitialization(func::FuncOp init,
                                    ArrayRef<ShardedParameter> params);

  plan::Mesh mesh;
};

int64_t HybridShardPass::groupSize(ArrayRef<int16_t> axes) const {
  const int64_t sizes[] = {mesh.replicas(), mesh.shardDegree(),
                           mesh.expertParallelDegree()};
  int64_t n = 1;
  for (int16_t axis : axes)
    n *= sizes[axis];
  return n;
}

Value HybridShardPass::allReduce(OpBuilder &b, Location loc, Value input,
                                 ArrayRef<int16_t> axes) {
  if (groupSize(axes) == 1 && !keepOneRankCollectives)
    return input;
  return shard::AllReduceOp::create(b, loc, input.getType(), kMeshName, axes,
                                    input)
      .getResult();
}

/// Fills in `p`'s layout from lib/Plan's placement of the parameter. With
/// `oneChunk` and H = 1, the parameter is held as one chunk of its first
/// dimension after the experts', so that it is gathered and reduce-scattered
/// over the one-rank shard group (keep-one-rank-collectives).
static void layOut(ShardedParameter &p, StringRef name,
                   const plan::Mesh &mesh, bool oneChunk) {
  auto type = cast<RankedTensorType>(p.param.getType());
  plan::Parameter desc;
  desc.name = name.str();
  desc.shape.assign(type.getShape().begin(), type.getShape().end());
  desc.kind = p.expertLocal ? plan::ParameterKind::Expert
                            : plan::ParameterKind::Dense;
  // The placement splits the global expert dimension itself.
  if (p.expertLocal)
    desc.shape[0] *= mesh.expertParallelDegree();
  plan::ParameterLayout layout = plan::layoutParameter(desc, mesh);
  p.localShape.assign(layout.localShape.begin(), layout.localShape.end());
  p.shardShape.assign(layout.heldShape.begin(), layout.heldShape.end());
  p.shardDim = layout.shardDim;
  const int64_t firstShardable = p.expertLocal ? 1 : 0;
  if (oneChunk && mesh.shardDegree() == 1 &&
      firstShardable < static_cast<int64_t>(p.localShape.size()))
    p.shardDim = firstShardable;
}

void HybridShardPass::gatherBeforeUse(const ShardedParameter &p,
                                      BlockArgument arg, Operation *keep,
                                      Operation *backwardStart) {
  auto localType = cast<RankedTensorType>(arg.getType());
  auto shardType = localType.clone(p.shardShape);
  arg.setType(shardType);
  Location loc = arg.getLoc();
  Block *body = arg.getOwner();
  // The uses to gather for, keyed by the element type they read (the
  // parameter's, or the compute type of an arith.truncf of it: the shard is
  // cast before the gather, so that the gather moves compute bytes) and by
  // whether they are in the backward (1) or not (0).
  llvm::MapVector<std::pair<Type, unsigned>, SmallVector<OpOperand *>> groups;
  SmallVector<arith::TruncFOp> casts;
  auto add = [&](OpOperand &use, Type elementType) {
    Operation *owner = body->findAncestorOpInBlock(*use.getOwner());
    unsigned backward =
        backwardStart && !owner->isBeforeInBlock(backwardStart) ? 1 : 0;
    groups[{elementType, backward}].push_back(&use);
  };
  for (OpOperand &use : arg.getUses()) {
    if (use.getOwner() == keep)
      continue;
    if (auto cast = dyn_cast<arith::TruncFOp>(use.getOwner())) {
      for (OpOperand &castUse : cast.getOut().getUses())
        add(castUse, getElementTypeOrSelf(cast.getType()));
      casts.push_back(cast);
      continue;
    }
    add(use, localType.getElementType());
  }
  SmallVector<int64_t> paddedShape = p.shardShape;
  paddedShape[p.shardDim] *= mesh.shardDegree();
  for (auto &[key, uses] : groups) {
    Operation *first = nullptr;
    for (OpOperand *use : uses) {
      Operation *owner = body->findAncestorOpInBlock(*use->getOwner());
      if (!first || owner->isBeforeInBlock(first))
        first = owner;
    }
    OpBuilder b(first);
    Type elementType = key.first;
    Value shard = arg;
    if (elementType != shardType.getElementType())
      shard =
          arith::TruncFOp::create(b, loc, shardType.clone(elementType), arg);
    Value full = shard::AllGatherOp::create(
        b, loc, localType.clone(paddedShape, elementType), kMeshName,
        kShardAxes, shard, APInt(64, p.shardDim));
    if (paddedShape != p.localShape) {
      SmallVector<OpFoldResult> offsets(paddedShape.size(), b.getIndexAttr(0));
      SmallVector<OpFoldResult> strides(paddedShape.size(), b.getIndexAttr(1));
      SmallVector<OpFoldResult> sizes;
      for (int64_t size : p.localShape)
        sizes.push_back(b.getIndexAttr(size));
      full = tensor::ExtractSliceOp::create(
          b, loc, localType.clone(elementType), full, offsets, sizes, strides);
    }
    for (OpOperand *use : uses)
      use->set(full);
  }
  for (arith::TruncFOp cast : casts)
    cast.erase();
}

void HybridShardPass::shardParameter(ShardedParameter &p,
                                     Operation *backwardStart,
                                     Operation *reduceAt) {
  auto localType = cast<RankedTensorType>(p.param.getType());
  auto shardType = localType.clone(p.shardShape);
  Location loc = p.param.getLoc();
  const int64_t h = mesh.shardDegree();

  // Before use: all-gather the shards and drop the padding; the embedding
  // (if the backward reads it) and the decoder layers again in the
  // backward, as the memory plan frees them in between (docs/plan.md; the
  // head is used last in the forward and first in the backward, and kept).
  if (p.shardDim >= 0) {
    for (BlockArgument state : {p.expAvg, p.expAvgSq})
      state.setType(shardType);
    const bool gatherAgain =
        p.embedding || plan::decoderLayerOf(p.name).has_value();
    gatherBeforeUse(p, p.param, p.update,
                    gatherAgain ? backwardStart : nullptr);
  }

  // After the backward: pad, reduce-scatter over H, all-reduce over the
  // ranks holding the same shard.
  OpBuilder b(reduceAt);
  Value grad = p.localGrad = p.update.getGrad();
  auto gradType = cast<RankedTensorType>(grad.getType());
  if (p.shardDim >= 0) {
    SmallVector<int64_t> paddedShape = p.shardShape;
    paddedShape[p.shardDim] *= h;
    if (paddedShape != p.localShape) {
      auto paddedType = gradType.clone(paddedShape);
      Value zeros = arith::ConstantOp::create(
          b, loc, paddedType,
          DenseElementsAttr::get(
              paddedType, b.getFloatAttr(gradType.getElementType(), 0.0)));
      SmallVector<int64_t> zerosOffsets(paddedShape.size(), 0);
      SmallVector<int64_t> ones(paddedShape.size(), 1);
      grad = tensor::InsertSliceOp::create(b, loc, grad, zeros, ValueRange{},
                                           ValueRange{}, ValueRange{},
                                           zerosOffsets, p.localShape, ones);
    }
    grad = shard::ReduceScatterOp::create(
        b, loc, gradType.clone(p.shardShape), kMeshName, kShardAxes, grad,
        shard::ReductionKind::Sum, APInt(64, p.shardDim));
  }
  // Expert gradients never reduce across the expert axis: other expert
  // ranks hold other experts.
  grad = allReduce(b, loc, grad,
                   p.expertLocal ? ArrayRef<int16_t>(kReplicaAxes)
                                 : ArrayRef<int16_t>(kDenseReplicaAxes));
  p.reducedGrad = grad;
  p.update.getGradMutable().assign(grad);
  for (OpResult result : p.update->getResults())
    result.setType(p.param.getType());
}

LogicalResult
HybridShardPass::rewriteGradientNorm(func::FuncOp step,
                                     ArrayRef<ShardedParameter> params) {
  moe::GlobalNormOp norm;
  step.walk([&](moe::GlobalNormOp op) { norm = op; });
  if (!norm)
    return success();
  // Each gradient shard is counted once: the shard norms of the dense
  // parameters differ only along H (they are equal on their replicas), those
  // of the expert parameters along H and P. Gathering the local norms over
  // exactly those axes and taking their norm gives the global one.
  SmallVector<Value> dense, expert;
  for (Value grad : norm.getGradients()) {
    const ShardedParameter *owner = nullptr;
    for (const ShardedParameter &p : params)
      if (p.localGrad == grad)
        owner = &p;
    if (!owner)
      return norm.emitOpError()
             << "takes a gradient that no moe.adamw of a parameter updates";
    (owner->expertLocal ? expert : dense).push_back(owner->reducedGrad);
  }
  OpBuilder b(norm);
  Location loc = norm.getLoc();
  auto scalarType = cast<RankedTensorType>(norm.getType());
  SmallVector<Value> parts;
  auto gatherNorm = [&](ValueRange grads, ArrayRef<ArrayRef<int16_t>> axes) {
    if (grads.empty())
      return;
    Value local = moe::GlobalNormOp::create(b, loc, scalarType, grads);
    int64_t n = 1;
    for (ArrayRef<int16_t> axis : axes)
      n *= groupSize(axis);
    if (n == 1 && !keepOneRankCollectives) {
      parts.push_back(local);
      return;
    }
    Value gathered = tensor::ExpandShapeOp::create(
        b, loc, scalarType.clone({1}), local,
        ArrayRef<ReassociationIndices>{});
    for (ArrayRef<int16_t> axis : axes) {
      int64_t size = groupSize(axis);
      if (size == 1 && !keepOneRankCollectives)
        continue;
      auto type = cast<RankedTensorType>(gathered.getType());
      gathered = shard::AllGatherOp::create(
          b, loc, type.clone({type.getDimSize(0) * size}), kMeshName, axis,
          gathered, APInt(64, 0));
    }
    parts.push_back(gathered);
  };
  gatherNorm(dense, {kShardAxes});
  gatherNorm(expert, {kShardAxes, kExpertAxes});
  Value global = parts.size() == 1 && parts.front().getType() == scalarType
                     ? parts.front()
                     : moe::GlobalNormOp::create(b, loc, scalarType, parts)
                           .getResult();
  norm.getNorm().replaceAllUsesWith(global);
  norm.erase();
  return success();
}

LogicalResult HybridShardPass::rewriteLosses(func::FuncOp step) {
  const int64_t w = mesh.worldSize();
  if (w == 1 && !keepOneRankCollectives)
    return success();
  // The cross-entropy (moe.lm_head_cross_entropy, or the fused op of
  // moe-fuse-loss-grad) and the ops that compute its gradients.
  Value ce, labels;
  IntegerAttr ignoreIndex;
  SmallVector<Operation *> ceOps;
  SmallVector<moe::RouterZLossOp> zLosses;
  SmallVector<moe::RouterZLossGradOp> zGrads;
  SmallVector<moe::ExpertCountsOp> counts;
  WalkResult walk = step.walk([&](Operation *op) {
    if (auto c = dyn_cast<moe::LmHeadCrossEntropyOp>(op)) {
      ce = c.getLoss();
      labels = c.getLabels();
      ignoreIndex = c.getIgnoreIndexAttr();
      ceOps.push_back(op);
    } else if (auto c = dyn_cast<moe::LmHeadCrossEntropyWithGradOp>(op)) {
      ce = c.getLoss();
      labels = c.getLabels();
      ignoreIndex = c.getIgnoreIndexAttr();
      ceOps.push_back(op);
    } else if (isa<moe::LmHeadCrossEntropyGradOp>(op)) {
      ceOps.push_back(op);
    } else if (auto z = dyn_cast<moe::RouterZLossOp>(op)) {
      zLosses.push_back(z);
    } else if (auto z = dyn_cast<moe::RouterZLossGradOp>(op)) {
      zGrads.push_back(z);
    } else if (auto c = dyn_cast<moe::ExpertCountsOp>(op)) {
      counts.push_back(c);
    } else if (isa<moe::LoadBalancingLossOp>(op)) {
      op->emitOpError() << "needs the router statistics of all " << w
                        << " ranks: run moe-expert-parallel first";
      return WalkResult::interrupt();
    }
    return WalkResult::advance();
  });
  if (walk.wasInterrupted())
    return failure();

  // Cross-entropy: rank r's sum over its targets divided by the global
  // batch's count N is its share of the global mean, and its gradients are
  // the global step's, token for token: the cross-entropy ops divide by the
  // all-reduced N (moe.lm_head_cross_entropy's `target_count`), and the
  // shares are all-reduced into the global loss.
  if (ce) {
    Operation *first = ceOps.front();
    OpBuilder b(first);
    Location loc = ce.getLoc();
    auto scalarType = cast<RankedTensorType>(ce.getType());
    Value local =
        moe::TargetCountOp::create(b, loc, scalarType, labels, ignoreIndex);
    Value total = allReduce(b, loc, local, kWorldAxes);
    // No targets anywhere: the shares are 0, as the global loss is.
    Value one = arith::ConstantOp::create(
        b, loc, scalarType,
        DenseElementsAttr::get(scalarType, b.getF32FloatAttr(1.0f)));
    total = arith::MaximumFOp::create(b, loc, total, one);
    for (Operation *op : ceOps)
      llvm::TypeSwitch<Operation *>(op)
          .Case<moe::LmHeadCrossEntropyOp, moe::LmHeadCrossEntropyWithGradOp,
                moe::LmHeadCrossEntropyGradOp>(
              [&](auto c) { c.getTargetCountMutable().assign(total); });
    b.setInsertionPointAfterValue(ce);
    Value global = allReduce(b, loc, ce, kWorldAxes);
    ce.replaceUsesWithIf(global, [&](OpOperand &use) {
      return use.getOwner() != global.getDefiningOp();
    });
  }

  // The router z-loss is a mean over every token; ranks hold equally many.
  for (moe::RouterZLossOp z : zLosses) {
    OpBuilder b(z);
    b.setInsertionPointAfter(z);
    Location loc = z.getLoc();
    auto scalarType = cast<RankedTensorType>(z.getType());
    Value sum = allReduce(b, loc, z.getLoss(), kWorldAxes);
    Value inverse = arith::ConstantOp::create(
        b, loc, scalarType,
        DenseElementsAttr::get(scalarType,
                               b.getF32FloatAttr(1.0f / static_cast<float>(w))));
    Value mean = arith::MulFOp::create(b, loc, sum, inverse);
    z.getLoss().replaceUsesWithIf(mean, [&](OpOperand &use) {
      return use.getOwner() != sum.getDefiningOp();
    });
  }
  for (moe::RouterZLossGradOp grad : zGrads)
    grad.setScale(grad.getScale() / llvm::APFloat(static_cast<double>(w)));

  // Expert slot counts are reported over the global batch.
  for (moe::ExpertCountsOp c : counts) {
    OpBuilder b(c);
    b.setInsertionPointAfter(c);
    Value global = allReduce(b, c.getLoc(), c.getCounts(), kWorldAxes);
    c.getCounts().replaceUsesWithIf(global, [&](OpOperand &use) {
      return use.getOwner() != global.getDefiningOp();
    });
  }
  return success();
}

LogicalResult
HybridShardPass::shardInitialization(func::FuncOp init,
                                     ArrayRef<ShardedParameter> params) {
  // delayed_param: each rank creates its own experts' shard only, a block
  // of the same global parameter whatever the mesh.
  auto ret = cast<func::ReturnOp>(init.getBody().front().getTerminator());
  for (auto [i, operand] : llvm::enumerate(ret->getOpOperands())) {
    auto name = init.getResultAttrOfType<StringAttr>(i, mlir::moe::MoeDialect::getParameterAttrName());
    if (!name)
      continue;
    const ShardedParameter *p = llvm::find_if(
        params, [&](const ShardedParameter &q) { return q.name == name; });
    if (p == params.end() || (!p->expertLocal && p->shardDim < 0))
      continue;
    auto create = operand.get().getDefiningOp<moe::ParamInitOp>();
    if (!create || !create->hasOneUse())
      return init.emitOpError()
             << "returns parameter '" << name.getValue()
             << "' from something other than its own moe.param_init";
    SmallVector<int64_t> splitAxes(p->shardShape.size(), -1);
    if (p->expertLocal)
      splitAxes[0] = ExpertAxis;
    if (p->shardDim >= 0)
      splitAxes[p->shardDim] = ShardAxis;
    if (!create.getGlobalShape())
      create.setGlobalShape(create.getType().getShape());
    create.setGridAttr(FlatSymbolRefAttr::get(&getContext(), kMeshName));
    create.setSplitAxes(splitAxes);
    create.getResult().setType(create.getType().clone(p->shardShape));
  }
  init.setFunctionType(FunctionType::get(
      &getContext(), init.getArgumentTypes(), ret.getOperandTypes()));
  return success();
}

void HybridShardPass::runOnOperation() {
  ModuleOp module = getOperation();
  auto step = module.lookupSymbol<func::FuncOp>("train_step");
  if (!step) {
    module.emitError() << "moe-hybrid-shard needs @train_step: run "
                          "moe-build-train-step first";
    return signalPassFailure();
  }

  plan::ParallelConfig config;
  config.worldSize = worldSize;
  config.expertParallelDegree = expertParallelDegree;
  config.hybridShardDegree = hybridShardDegree;
  config.strategy = shardingStrategy;
  // The number of experts is the routers' width; a model without routers
  // has no expert dimension to split.
  int64_t numExperts = expertParallelDegree;
  step.walk([&](moe::RouterOp router) {
    numExperts = router.getLogits().getType().getShape().back();
  });
  llvm::Expected<plan::Mesh> resolved = plan::resolveMesh(config, numExperts);
  if (!resolved) {
    module.emitError() << llvm::toString(resolved.takeError());
    return signalPassFailure();
  }
  mesh = *resolved;

  // The mesh, unless moe-expert-parallel made it already.
  SmallVector<int64_t> meshShape = {mesh.replicas(), mesh.shardDegree(),
                                    mesh.expertParallelDegree()};
  if (auto grid = module.lookupSymbol<shard::GridOp>(kMeshName)) {
    if (ArrayRef<int64_t>(grid.getShape()) != ArrayRef(meshShape)) {
      InFlightDiagnostic diag = grid.emitOpError() << "has shape ";
      llvm::interleave(grid.getShape(), diag, "x");
      diag << ", not the (R, H, P) = (" << meshShape[0] << ", "
           << meshShape[1] << ", " << meshShape[2] << ") of the options";
      return signalPassFailure();
    }
  } else {
    OpBuilder b(module.getBodyRegion());
    b.setInsertionPointToStart(module.getBody());
    shard::GridOp::create(b, module.getLoc(), b.getStringAttr(kMeshName),
                          b.getDenseI64ArrayAttr(meshShape));
  }

  // Every parameter, with its moments and its update.
  SmallVector<ShardedParameter> params;
  llvm::StringMap<BlockArgument> expAvg, expAvgSq;
  for (BlockArgument arg : step.getArguments()) {
    if (auto name = step.getArgAttrOfType<StringAttr>(arg.getArgNumber(),
                                                      mlir::moe::MoeDialect::getExpAvgAttrName()))
      expAvg[name] = arg;
    if (auto name = step.getArgAttrOfType<StringAttr>(arg.getArgNumber(),
                                                      mlir::moe::MoeDialect::getExpAvgSqAttrName()))
      expAvgSq[name] = arg;
  }
  for (BlockArgument arg : step.getArguments()) {
    auto name = step.getArgAttrOfType<StringAttr>(arg.getArgNumber(),
                                                  mlir::moe::MoeDialect::getParameterAttrName());
    if (!name)
      continue;
    ShardedParameter p;
    p.name = name.getValue();
    p.param = arg;
    p.expAvg = expAvg.lookup(name);
    p.expAvgSq = expAvgSq.lookup(name);
    p.expertLocal = step.getArgAttr(arg.getArgNumber(), moe::MoeDialect::getExpertLocalAttrName()) !=
                    nullptr;
    p.embedding = llvm::any_of(arg.getUsers(), [&](Operation *user) {
      auto embedding = dyn_cast<moe::EmbeddingOp>(user);
      return embedding && embedding.getTable() == arg;
    });
    for (Operation *user : arg.getUsers())
      if (auto update = dyn_cast<moe::AdamWOp>(user);
          update && update.getParam() == arg)
        p.update = update;
    if (!p.expAvg || !p.expAvgSq || !p.update ||
        p.update.getExpAvg() != p.expAvg ||
        p.update.getExpAvgSq() != p.expAvgSq) {
      step.emitOpError() << "parameter '" << name.getValue()
                         << "' has no moe.adamw update of its own moments";
      return signalPassFailure();
    }
    layOut(p, name, mesh, keepOneRankCollectives);
    params.push_back(std::move(p));
  }

  // The backward starts at the cross-entropy's gradient; gradients are
  // reduced where the norm is taken, or else before each update.
  Operation *backwardStart = nullptr;
  step.walk([&](Operation *op) {
    if (!backwardStart &&
        isa<moe::LmHeadCrossEntropyGradOp, moe::LmHeadCrossEntropyWithGradOp>(
            op))
      backwardStart = op;
  });
  moe::GlobalNormOp norm;
  step.walk([&](moe::GlobalNormOp op) { norm = op; });
  // The losses first: the cross-entropy ops take the global target count.
  if (failed(rewriteLosses(step)))
    return signalPassFailure();
  for (ShardedParameter &p : params)
    shardParameter(p, backwardStart,
                   norm ? norm.getOperation() : p.update.getOperation());
  if (failed(rewriteGradientNorm(step, params)))
    return signalPassFailure();

  if (auto init = module.lookupSymbol<func::FuncOp>("init_params"))
    if (failed(shardInitialization(init, params)))
      return signalPassFailure();

  // The evaluation step reads the same sharded parameters, and its loss is
  // the global batch's too.
  if (auto eval = module.lookupSymbol<func::FuncOp>("eval_step")) {
    for (BlockArgument arg : eval.getArguments()) {
      auto name = eval.getArgAttrOfType<StringAttr>(arg.getArgNumber(),
                                                    mlir::moe::MoeDialect::getParameterAttrName());
      const ShardedParameter *p =
          name ? llvm::find_if(params,
                               [&](const ShardedParameter &q) {
                                 return q.name == name.getValue();
                               })
               : params.end();
      if (p != params.end() && p->shardDim >= 0)
        gatherBeforeUse(*p, arg, /*keep=*/nullptr, /*backwardStart=*/nullptr);
    }
    if (failed(rewriteLosses(eval)))
      return signalPassFailure();
    eval.setFunctionType(FunctionType::get(
        &getContext(), eval.getBody().front().getArgumentTypes(),
        eval.getResultTypes()));
  }

  // Returned gradients (return-gradients) are the reduced shards.
  auto ret = cast<func::ReturnOp>(step.getBody().front().getTerminator());
  for (auto [i, operand] : llvm::enumerate(ret->getOpOperands()))
    if (step.getResultAttr(i, mlir::moe::MoeDialect::getGradientAttrName()))
      for (const ShardedParameter &p : params)
        if (operand.get() == p.localGrad)
          operand.set(p.reducedGrad);
  step.setFunctionType(FunctionType::get(&getContext(),
                                         step.getBody().front().getArgumentTypes(),
                                         ret.getOperandTypes()));
  numShardedParameters = llvm::count_if(
      params, [](const ShardedParameter &p) { return p.shardDim >= 0; });
}

} // namespace
