//===- PrefetchCollectives.cpp - Collectives ahead of their readers -------===//
//
// Implements moe-prefetch-collectives (see Passes.td): moves each decoder
// layer's parameter all-gathers (with the cast before and the slice after
// them) `layers` layers ahead of their reader, to the first op that reads
// that layer's parameters, in the forward and in the backward; and each
// gradient's reduction up to the op that produces the gradient. The
// compiled program forks every collective where it stands and joins it
// where the collective schedule says (dialects/Moe/Transforms/
// CollectiveSchedule.h), so the new order is the overlap.
//
//===----------------------------------------------------------------------===//

#include "moec/Conversion/MoeToShard/Passes.h"

#include "mlir/IR/Matchers.h"
#include "llvm/ADT/DenseSet.h"

#include <algorithm>
#include <map>

namespace moec {
#define GEN_PASS_DEF_PREFETCHCOLLECTIVES
#include "moec/Conversion/MoeToShard/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;

namespace {

/// One all-gather of a decoder layer's parameter and the ops that move with
/// it, in block order: the arith.truncf of the shard it gathers (under
/// bf16), the gather, the tensor.extract_slice that drops the padding.
struct ParameterGather {
  SmallVector<Operation *, 3> ops;
  /// The decoder layer of the parameter.
  int64_t layer = 0;
  /// The first op that reads the gathered value, and whether it is in the
  /// backward.
  Operation *reader = nullptr;
  bool backward = false;

  Value gathered() const { return ops.back()->getResult(0); }
};

/// The reduction of one parameter's gradient that moe-hybrid-shard places
/// before the updates, in block order: the tensor.insert_slice of the
/// padding, the shard.reduce_scatter over H, the shard.all_reduce over the
/// replicas (each there or not).
SmallVector<Operation *, 3> matchGradientReduction(moe::AdamWOp update) {
  SmallVector<Operation *, 3> ops;
  Value v = update.getGrad();
  if (auto reduce = v.getDefiningOp<shard::AllReduceOp>()) {
    ops.push_back(reduce);
    v = reduce.getInput();
  }
  if (auto scatter = v.getDefiningOp<shard::ReduceScatterOp>()) {
    ops.push_back(scatter);
    v = scatter.getInput();
    if (auto pad = v.getDefiningOp<tensor::InsertSliceOp>();
        pad && pad->hasOneUse() &&
        matchPattern(pad.getDest(), m_Constant()))
      ops.push_back(pad);
  }
  std::reverse(ops.begin(), ops.end());
  return ops;
}

struct PrefetchCollectivesPass
    : public moec::impl::PrefetchCollectivesBase<PrefetchCollectivesPass> {
  using PrefetchCollectivesBase::PrefetchCollectivesBase;
  void runOnOperation() override;
};

/// The gather of `gather`'s parameter with its cast and slice, or none when
/// it gathers something else than a decoder layer's parameter.
std::optional<ParameterGather> matchParameterGather(shard::AllGatherOp gather,
                                                    func::FuncOp func) {
  ParameterGather g;
  Value input = gather.getInput();
  if (auto cast = input.getDefiningOp<arith::TruncFOp>();
      cast && cast->hasOneUse()) {
    g.ops.push_back(cast);
    input = cast.getIn();
  }
  auto arg = dyn_cast<BlockArgument>(input);
  if (!arg || arg.getOwner() != &func.getBody().front())
    return std::nullopt;
  auto name = func.getArgAttrOfType<StringAttr>(
      arg.getArgNumber(), moe::MoeDialect::getParameterAttrName());
  if (!name)
    return std::nullopt;
  std::optional<int64_t> layer = moe::getDecoderLayerOfParameter(name);
  if (!layer)
    return std::nullopt;
  g.layer = *layer;
  g.ops.push_back(gather);
  if (gather->hasOneUse())
    if (auto slice = dyn_cast<tensor::ExtractSliceOp>(
            *gather->getUsers().begin());
        slice && slice->getBlock() == gather->getBlock())
      g.ops.push_back(slice);
  return g;
}

} // namespace

void PrefetchCollectivesPass::runOnOperation() {
  func::FuncOp func = getOperation();
  if (func.isExternal())
    return;
  Block &body = func.getBody().front();

  // Each gradient's reduction right after the gradient: the full local
  // gradient is dead once scattered, and the collective stream reduces a
  // layer's gradients while the compute stream runs the layers below it.
  for (auto update : llvm::to_vector(body.getOps<moe::AdamWOp>())) {
    SmallVector<Operation *, 3> ops = matchGradientReduction(update);
    if (ops.empty())
      continue;
    Operation *produced = ops.front()->getOperand(0).getDefiningOp();
    if (!produced || produced->getBlock() != &body)
      continue;
    if (produced->getNextNode() == ops.front())
      continue;
    // Constants (the padding's zeros) move with the op that reads them; any
    // other operand stands before the gradient already or stops the move.
    SmallVector<Operation *> moved;
    bool movable = true;
    for (Operation *op : ops)
      for (Value v : op->getOperands()) {
        Operation *def = v.getDefiningOp();
        if (!def || llvm::is_contained(ops, def) ||
            def->getBlock() != &body || def->isBeforeInBlock(produced) ||
            def == produced)
          continue;
        if (def->getNumOperands() == 0 && isPure(def))
          moved.push_back(def);
        else
          movable = false;
      }
    if (!movable)
      continue;
    llvm::append_range(moved, ops);
    Operation *after = produced;
    for (Operation *op : moved) {
      op->moveAfter(after);
      after = op;
    }
    ++numMovedReductions;
  }

  if (layers <= 0)
    return;

  SmallVector<ParameterGather> gathers;
  DenseMap<Value, int64_t> layerOfGathered;
  DenseSet<Operation *> moving;
  for (auto gather : body.getOps<shard::AllGatherOp>())
    if (std::optional<ParameterGather> g = matchParameterGather(gather, func)) {
      layerOfGathered[g->gathered()] = g->layer;
      moving.insert(g->ops.begin(), g->ops.end());
      gathers.push_back(std::move(*g));
    }
  if (gathers.empty())
    return;

  // The backward (what depends on a gradient op) and, for each layer, the
  // first op of the forward and of the backward that reads its gathered
  // parameters: where its gathers stand now, and where the gathers of the
  // layers `layers` behind (in the backward: ahead) are to start.
  DenseSet<Operation *> backward;
  std::map<int64_t, Operation *> forwardStart, backwardStart;
  for (Operation &op : body) {
    if (op.hasTrait<moe::ComputesGradient>() ||
        llvm::any_of(op.getOperands(), [&](Value v) {
          Operation *def = v.getDefiningOp();
          return def && backward.contains(def);
        }))
      backward.insert(&op);
    if (moving.contains(&op))
      continue;
    for (Value v : op.getOperands()) {
      auto layer = layerOfGathered.find(v);
      if (layer == layerOfGathered.end())
        continue;
      auto &starts = backward.contains(&op) ? backwardStart : forwardStart;
      starts.try_emplace(layer->second, &op);
    }
  }
  // A reader in a nested region is found by its ancestor in the body.
  for (ParameterGather &g : gathers) {
    for (OpOperand &use : g.gathered().getUses()) {
      Operation *owner = body.findAncestorOpInBlock(*use.getOwner());
      if (owner && (!g.reader || owner->isBeforeInBlock(g.reader)))
        g.reader = owner;
    }
    g.backward = g.reader && backward.contains(g.reader);
  }

  // Gathers in block order, so those moved to one place keep their order.
  for (ParameterGather &g : gathers) {
    if (!g.reader)
      continue;
    const auto &starts = g.backward ? backwardStart : forwardStart;
    if (starts.empty())
      continue;
    int64_t ahead = g.backward ? g.layer + layers : g.layer - layers;
    ahead = std::clamp(ahead, starts.begin()->first, starts.rbegin()->first);
    auto start = starts.find(ahead);
    if (start == starts.end())
      continue;
    Operation *target = start->second;
    // Never above what the moved ops read.
    for (Operation *op : g.ops)
      for (Value v : op->getOperands()) {
        Operation *def = v.getDefiningOp();
        if (def && !moving.contains(def) && def->getBlock() == &body &&
            !def->isBeforeInBlock(target))
          target = def->getNextNode();
      }
    if (!target->isBeforeInBlock(g.ops.front()))
      continue;
    for (Operation *op : g.ops)
      op->moveBefore(target);
    ++numMovedGathers;
  }
}
