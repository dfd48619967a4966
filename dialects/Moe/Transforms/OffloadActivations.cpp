//===- OffloadActivations.cpp - Saved activations in host memory ----------===//
//
// Implements moe-offload-activations (see Passes.td). The analysis finds
// the backward (what depends on a gradient op, and the recomputed clones),
// the decoder layer of each backward op and where each layer's backward
// starts; the rewrite moves every forward value a layer's backward reads to
// host memory after its last forward use (moe.offload), waits for the copy
// at the start of the forward `horizon` + 1 layers on (moe.offload_join:
// the device bytes are held until there) and brings it back `horizon`
// layers ahead of that backward (moe.fetch), which the backward reads
// instead. Values of parameters alone are never moved, nor values whose
// join and fetch would fall at the same point (nothing freed).
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/MapVector.h"

#include <map>

namespace mlir::moe {
#define GEN_PASS_DEF_OFFLOADACTIVATIONS
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

/// The bytes of `type`, 0 when a dimension is dynamic.
int64_t staticBytes(RankedTensorType type) {
  if (!type.hasStaticShape())
    return 0;
  return type.getNumElements() * ((type.getElementTypeBitWidth() + 7) / 8);
}

} // namespace

LogicalResult mlir::moe::verifyLoadingHorizon(func::FuncOp func,
                                              int64_t horizon) {
  if (horizon >= 1)
    return success();
  return func.emitOpError() << "has activation_loading_horizon " << horizon
                            << "; it must be at least 1";
}

FailureOr<std::map<int64_t, OffloadedLayer>>
mlir::moe::offloadActivations(func::FuncOp func, int64_t horizon,
                              const std::set<int64_t> *layers) {
  std::map<int64_t, OffloadedLayer> moved;
  if (!func.getBody().hasOneBlock())
    return moved;
  Block &body = func.getBody().front();
  MLIRContext *context = func.getContext();

  // Values of parameters and constants alone, with the layer of their
  // parameters.
  ParameterValues parameters = getParameterValues(func);
  DenseSet<Value> &fixed = parameters.values;
  DenseMap<Value, int64_t> &parameterLayer = parameters.layer;
  // The backward: gradient ops, recomputed clones and what reads them.
  DenseMap<Operation *, int64_t> position, backwardLayer;
  std::map<int64_t, Operation *> layerStart;
  Operation *backwardStart = nullptr;
  int64_t current = kOutsideDecoderLayers; // before any layer's backward
  for (Operation &op : body) {
    position[&op] = position.size();
    auto recompute =
        op.getAttrOfType<RecomputeAttr>(MoeDialect::getRecomputeAttrName());
    bool isBackward =
        op.hasTrait<ComputesGradient>() || recompute ||
        llvm::any_of(op.getOperands(), [&](Value v) {
          Operation *def = v.getDefiningOp();
          return def && backwardLayer.contains(def);
        });
    if (!isBackward || isa<func::ReturnOp>(op))
      continue;
    if (!backwardStart)
      backwardStart = &op;
    if (recompute) {
      current = recompute.getLayer();
    } else {
      std::optional<int64_t> layer;
      for (Value v : op.getOperands())
        if (parameterLayer.contains(v))
          layer = std::max(layer.value_or(kOutsideDecoderLayers),
                           parameterLayer.lookup(v));
      current = layer.value_or(current);
    }
    backwardLayer[&op] = current;
    if (current != kOutsideDecoderLayers)
      layerStart.try_emplace(current, &op);
  }
  if (!backwardStart)
    return moved;
  if (failed(verifyLoadingHorizon(func, horizon)))
    return failure();
  if (layerStart.empty())
    return func.emitOpError()
           << "has no decoder layer for activation offloading: no backward "
              "op reads a parameter named 'layers.<N>.<name>'";
  const int64_t topLayer = layerStart.rbegin()->first;

  // Where each decoder layer's forward starts: its first forward op that
  // reads one of its parameters and an activation, in program order.
  SmallVector<Operation *> forwardStarts;
  DenseSet<int64_t> forwardLayers;
  for (Operation &op : body) {
    if (backwardLayer.contains(&op) ||
        llvm::all_of(op.getOperands(),
                     [&](Value v) { return fixed.contains(v); }))
      continue;
    for (Value v : op.getOperands()) {
      auto it = parameterLayer.find(v);
      if (it != parameterLayer.end() &&
          it->second != kOutsideDecoderLayers &&
          forwardLayers.insert(it->second).second) {
        forwardStarts.push_back(&op);
        break;
      }
    }
  }
  // Where the compute stream waits for an offload after `op`: at the
  // start of the forward of the (horizon + 1)th layer after it, so that the
  // copy overlaps the forward of `horizon` layers and the forward keeps at
  // most horizon + 1 layers' values on the device, as the backward does;
  // at the start of the backward when there is no such layer.
  auto joinPoint = [&](Operation *op) {
    int64_t after = 0;
    for (Operation *start : forwardStarts)
      if (position[start] > position[op] &&
          position[start] < position[backwardStart] && ++after == horizon + 1)
        return start;
    return backwardStart;
  };

  // Where layer `layer`'s values are fetched: the start of the backward
  // of layer + horizon (the earliest of the layers up to it that exist),
  // or the start of the backward past the last layer.
  auto fetchPoint = [&](int64_t layer) {
    if (layer + horizon > topLayer)
      return backwardStart;
    Operation *at = nullptr;
    for (auto it = layerStart.upper_bound(layer);
         it != layerStart.end() && it->first <= layer + horizon; ++it)
      if (!at || position[it->second] < position[at])
        at = it->second;
    return at ? at : layerStart.at(layer);
  };

  // Forward values a layer's backward reads, grouped by the buffer they
  // are views of (forward reshapes): each buffer moves once.
  auto isReshape = [](Operation *op) {
    return isa_and_nonnull<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(
        op);
  };
  auto bufferOf = [&](Value v) {
    while (isReshape(v.getDefiningOp()) &&
           !backwardLayer.contains(v.getDefiningOp()))
      v = v.getDefiningOp()->getOperand(0);
    return v;
  };
  struct Saved {
    Operation *lastForwardUse = nullptr;
    Operation *firstBackwardUse = nullptr;
    /// The buffer and its views that the backward reads.
    SmallVector<Value> read;
  };
  llvm::MapVector<Value, Saved> saved;
  for (Operation &op : body) {
    if (backwardLayer.contains(&op))
      continue;
    for (Value v : op.getResults()) {
      auto type = dyn_cast<RankedTensorType>(v.getType());
      Value buffer = bufferOf(v);
      if (!type || type.getEncoding() || fixed.contains(buffer) ||
          isa<BlockArgument>(buffer))
        continue;
      Saved &s = saved[buffer];
      if (!s.lastForwardUse ||
          position[&op] > position[s.lastForwardUse])
        s.lastForwardUse = &op;
      bool readByBackward = false;
      for (Operation *user : v.getUsers()) {
        if (user->getBlock() != &body)
          continue;
        if (!backwardLayer.contains(user)) {
          if (position[user] > position[s.lastForwardUse])
            s.lastForwardUse = user;
          continue;
        }
        readByBackward = true;
        if (!s.firstBackwardUse ||
            position[user] < position[s.firstBackwardUse])
          s.firstBackwardUse = user;
      }
      if (readByBackward)
        s.read.push_back(v);
    }
  }

  // What moves, the layers the backward reads first first: fetches at
  // one point go to the fetch stream in that order.
  SmallVector<std::pair<Value, Saved *>> toMove;
  for (auto &[buffer, s] : saved)
    if (!s.read.empty() &&
        backwardLayer.lookup(s.firstBackwardUse) != kOutsideDecoderLayers &&
        position[s.lastForwardUse] < position[s.firstBackwardUse] &&
        (!layers || layers->count(backwardLayer.lookup(s.firstBackwardUse))))
      toMove.push_back({buffer, &s});
  llvm::stable_sort(toMove, [&](auto &a, auto &b) {
    return backwardLayer.lookup(a.second->firstBackwardUse) >
           backwardLayer.lookup(b.second->firstBackwardUse);
  });

  // The rewrite: offload after the last forward use, fetch before the
  // fetch point (or the first backward use, if that comes first), the
  // views the backward reads made again from the fetched buffer.
  // The offloads and their joins first, so that the joins at a point come
  // before the fetches there.
  // A value whose join and fetch fall at the same point stays: its device
  // bytes would be held until the join and taken again by the fetch right
  // after it, so the round trip would free nothing and cost both copies
  // (with horizon h, the last h layers' values: joined and fetched at the
  // start of the backward).
  SmallVector<std::pair<Value, Saved *>> copied;
  SmallVector<std::pair<OffloadOp, Operation *>> placed;
  for (auto [buffer, entry] : toMove) {
    const Saved &s = *entry;
    const int64_t layer = backwardLayer.lookup(s.firstBackwardUse);
    // Never before the offload (a forward reader after the backward's
    // start), never after the first backward reader.
    Operation *at = fetchPoint(layer);
    if (position[s.firstBackwardUse] < position[at] ||
        position[at] <= position[s.lastForwardUse])
      at = s.firstBackwardUse;
    // The join: never before the offload, never after the fetch.
    Operation *join = joinPoint(s.lastForwardUse);
    if (position[join] <= position[s.lastForwardUse] ||
        position[join] > position[at])
      join = at;
    if (join == at)
      continue;
    auto type = cast<RankedTensorType>(buffer.getType());
    auto hostType = RankedTensorType::get(
        type.getShape(), type.getElementType(),
        HostMemoryAttr::get(context));
    OpBuilder builder(context);
    builder.setInsertionPointAfter(s.lastForwardUse);
    auto offload =
        OffloadOp::create(builder, buffer.getLoc(), hostType, buffer, layer);
    builder.setInsertionPoint(join);
    OffloadJoinOp::create(builder, buffer.getLoc(), offload.getResult());
    copied.push_back({buffer, entry});
    placed.push_back({offload, at});
  }
  for (auto [moving, where] : llvm::zip_equal(copied, placed)) {
    auto [buffer, entry] = moving;
    auto [offload, at] = where;
    const Saved &s = *entry;
    auto type = cast<RankedTensorType>(buffer.getType());
    OpBuilder builder(at);
    auto fetch = FetchOp::create(builder, buffer.getLoc(), type,
                                 offload.getResult(), offload.getLayer());
    auto isBackwardUse = [&](OpOperand &use) {
      return backwardLayer.contains(use.getOwner());
    };
    for (Value v : s.read) {
      // The reshapes from the buffer to `v`, outermost first.
      SmallVector<Operation *> chain;
      for (Value w = v; w != buffer; w = w.getDefiningOp()->getOperand(0))
        chain.insert(chain.begin(), w.getDefiningOp());
      IRMapping mapping;
      mapping.map(buffer, fetch.getResult());
      for (Operation *reshape : chain)
        builder.clone(*reshape, mapping);
      v.replaceUsesWithIf(mapping.lookup(v), isBackwardUse);
    }
    ++moved[offload.getLayer()].values;
    moved[offload.getLayer()].bytes += staticBytes(type);
  }
  return moved;
}

namespace {

struct OffloadActivationsPass
    : public moe::impl::OffloadActivationsBase<OffloadActivationsPass> {
  using Base::Base;

  void runOnOperation() override {
    func::FuncOp func = getOperation();
    // The layers activation checkpointing auto chose to offload, if it
    // chose.
    std::optional<std::set<int64_t>> chosen;
    if (auto layers = func->getAttrOfType<DenseI64ArrayAttr>(
            MoeDialect::getOffloadLayersAttrName()))
      chosen.emplace(layers.asArrayRef().begin(), layers.asArrayRef().end());
    FailureOr<std::map<int64_t, OffloadedLayer>> moved = offloadActivations(
        func, horizon, chosen ? &*chosen : nullptr);
    if (failed(moved))
      return signalPassFailure();
    for (auto [layer, values] : *moved) {
      numOffloaded += values.values;
      offloadedBytes += values.bytes;
    }
  }
};

} // namespace
