//===- CheckpointActivations.cpp - Recompute layers in the backward -------===//
//
// Implements moe-checkpoint-activations (see Passes.td). The analysis finds
// the decoder layers of a training step (by the `layers.N.` parameters
// their ops read), the backward (what depends on a gradient op) and, per
// layer and policy, which forward values the backward keeps and which it
// recomputes; the rewrite clones the recomputed ops right before their
// first backward use. Under `auto` a cost model chooses each layer's
// policy and, with offloading on, whether its kept values move to host
// memory (moe.offload_layers, for moe-offload-activations).
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"
#include "dialects/Moe/Transforms/CollectiveSchedule.h"
#include "dialects/Moe/Transforms/StepScratch.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Shard/IR/ShardDialect.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/FormatVariadic.h"

#include <algorithm>
#include <array>
#include <functional>
#include <map>
#include <set>

namespace mlir::moe {
#define GEN_PASS_DEF_CHECKPOINTACTIVATIONS
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

/// Rates of the cost model (H200, docs/benchmarks.md): GEMMs, attention,
/// memory-bound ops and collectives.
constexpr double kGemmFlops = 650e12;
constexpr double kAttentionFlops = 500e12;
constexpr double kMemoryBytesPerSecond = 3.9e12;
constexpr double kCollectiveBytesPerSecond = 330e9;

/// `bytes` for a remark: in GiB, MiB or KiB, whichever is the largest
/// unit below it, or in bytes.
std::string formatBytes(int64_t bytes) {
  const char *units[] = {"GiB", "MiB", "KiB"};
  for (auto [i, unit] : llvm::enumerate(units)) {
    double size = double(int64_t(1) << (10 * (3 - i)));
    if (bytes >= size)
      return llvm::formatv("{0:F2} {1}", bytes / size, unit);
  }
  return llvm::formatv("{0} B", bytes);
}

/// What one layer costs under one policy.
struct LayerCost {
  /// Bytes of the layer's forward values the backward keeps.
  int64_t keptBytes = 0;
  /// Bytes of the values it recomputes (alive during its backward).
  int64_t recomputedBytes = 0;
  /// Seconds the recomputation adds (the cost model).
  double seconds = 0;
};

/// One decoder layer of the step.
struct Layer {
  /// N of its `layers.N.` parameters.
  int64_t index = 0;
  /// Its forward ops.
  llvm::SetVector<Operation *> ops;
};

/// The layers of a training step, its backward and what each policy keeps.
class StepAnalysis {
public:
  explicit StepAnalysis(Block &body) : body(body) {}

  /// Finds the backward, the layers and their boundaries; fails with a
  /// diagnostic at `func` when `policy` needs layers the step does not
  /// have. Returns false (and succeeds) when the function has no backward.
  FailureOr<bool> analyze(Operation *func, ActivationCheckpointing policy);

  /// Whether the backward keeps forward value `v` of a layer under
  /// `policy` rather than recomputing it.
  bool keeps(ActivationCheckpointing policy, Value v) const;

  /// The cost of layer `l` under `policy`; fails on a value of unknown
  /// size (dynamic, not received rows) at its op.
  FailureOr<LayerCost> costOf(const Layer &l, ActivationCheckpointing policy);

  /// The seconds `op` takes by the cost model; fails on a value of unknown
  /// size at its op.
  FailureOr<double> secondsOf(Operation *op);

  /// The seconds of the step's forward ops in layer `l` (index into
  /// layers).
  FailureOr<double> forwardSeconds(size_t l);

  /// The seconds of the lm-head ops (with their loss and gradient), most
  /// of what runs between the last layer's forward and the first layer's
  /// backward (the final norm and its gradient are left out).
  FailureOr<double> headSeconds();

  /// The layer (index into layers) of forward op `op`, or -1.
  int64_t layerOf(Operation *op) const {
    auto it = layerOfOp.find(op);
    return it == layerOfOp.end() ? -1 : it->second;
  }

  Block &body;
  std::vector<Layer> layers;
  /// The backward's ops, in block order.
  std::vector<Operation *> backward;

private:
  FailureOr<int64_t> bytesOf(Value v);

  /// Values computed from parameters and constants alone.
  DenseSet<Value> fixed;
  /// Of those, the ones computed from parameters: the layer of their
  /// parameters (kOutsideDecoderLayers for the others).
  DenseMap<Value, int64_t> parameterLayer;
  DenseSet<Operation *> backwardOps;
  DenseMap<Operation *, int64_t> layerOfOp;
  /// Layer inputs and outputs.
  DenseSet<Value> boundaries;
  /// Forward values a backward op reads together with another layer's.
  DenseSet<Value> readAcrossLayers;
  /// The most rows a rank receives (moe.dispatch), for dynamic row counts.
  std::optional<int64_t> rowBound;
};

FailureOr<bool> StepAnalysis::analyze(Operation *func,
                                      ActivationCheckpointing policy) {
  ParameterValues parameters =
      getParameterValues(cast<FunctionOpInterface>(func));
  fixed = std::move(parameters.values);
  parameterLayer = std::move(parameters.layer);

  // The backward.
  for (Operation &op : body) {
    bool isBackward = op.hasTrait<ComputesGradient>() ||
                      llvm::any_of(op.getOperands(), [&](Value v) {
                        Operation *def = v.getDefiningOp();
                        return def && backwardOps.contains(def);
                      });
    if (isBackward) {
      backwardOps.insert(&op);
      backward.push_back(&op);
    }
    if (auto dispatch = dyn_cast<DispatchOp>(op))
      if (std::optional<int64_t> bound = dispatch.getReceiveRowBound())
        rowBound = std::max(rowBound.value_or(0), *bound);
  }
  if (backward.empty())
    return false;

  // The first forward op that reads each layer's parameters, and the first
  // after all of them that reads another parameter.
  auto isActivationOp = [&](Operation &op) {
    return !backwardOps.contains(&op) &&
           llvm::any_of(op.getOperands(),
                        [&](Value v) { return !fixed.contains(v); });
  };
  std::map<int64_t, Operation *> firstOfLayer;
  Operation *lastFirst = nullptr, *end = nullptr;
  for (Operation &op : body) {
    if (!isActivationOp(op))
      continue;
    for (Value v : op.getOperands()) {
      auto it = parameterLayer.find(v);
      if (it == parameterLayer.end())
        continue;
      if (it->second == kOutsideDecoderLayers) {
        if (lastFirst && !end)
          end = &op;
      } else if (!firstOfLayer.count(it->second)) {
        firstOfLayer[it->second] = &op;
        lastFirst = &op;
        end = nullptr;
      }
    }
  }
  if (firstOfLayer.empty())
    return func->emitOpError()
           << "has no decoder layer for activation checkpointing "
           << stringifyActivationCheckpointing(policy)
           << ": no parameter is named 'layers.<N>.<name>'";
  if (!end)
    return func->emitOpError()
           << "has no end of its last decoder layer for activation "
              "checkpointing "
           << stringifyActivationCheckpointing(policy)
           << ": no op after it reads a parameter outside the layers";

  // Layers in program order; the boundaries between them.
  std::vector<std::pair<int64_t, Operation *>> order(firstOfLayer.begin(),
                                                     firstOfLayer.end());
  llvm::sort(order, [](auto &a, auto &b) {
    return a.second->isBeforeInBlock(b.second);
  });
  auto activationsOf = [&](Operation *op) {
    SmallVector<Value> values;
    for (Value v : op->getOperands())
      if (!fixed.contains(v))
        values.push_back(v);
    return values;
  };
  // Ancestors of the layer boundaries, each op in the first layer that
  // needs it.
  DenseSet<Operation *> seen;
  auto collect = [&](ArrayRef<Value> roots,
                     llvm::SetVector<Operation *> *into) {
    SmallVector<Value> stack(roots.begin(), roots.end());
    while (!stack.empty()) {
      Value v = stack.pop_back_val();
      Operation *def = v.getDefiningOp();
      if (!def || fixed.contains(v) || !seen.insert(def).second)
        continue;
      if (into)
        into->insert(def);
      llvm::append_range(stack, def->getOperands());
    }
  };
  for (auto [i, entry] : llvm::enumerate(order)) {
    SmallVector<Value> inputs = activationsOf(entry.second);
    if (i == 0)
      collect(inputs, nullptr);
    SmallVector<Value> outputs =
        activationsOf(i + 1 < order.size() ? order[i + 1].second : end);
    boundaries.insert(inputs.begin(), inputs.end());
    boundaries.insert(outputs.begin(), outputs.end());
    Layer layer;
    layer.index = entry.first;
    collect(outputs, &layer.ops);
    // Program order.
    SmallVector<Operation *> ops(layer.ops.begin(), layer.ops.end());
    llvm::sort(
        ops, [](Operation *a, Operation *b) { return a->isBeforeInBlock(b); });
    layer.ops = llvm::SetVector<Operation *>(ops.begin(), ops.end());
    for (Operation *op : ops)
      layerOfOp[op] = layers.size();
    layers.push_back(std::move(layer));
  }

  // What a backward op reads from two layers or more is kept.
  for (Operation *op : backward) {
    DenseSet<int64_t> read;
    for (Value v : op->getOperands())
      if (Operation *def = v.getDefiningOp())
        if (layerOfOp.contains(def))
          read.insert(layerOfOp.lookup(def));
    if (read.size() < 2)
      continue;
    for (Value v : op->getOperands())
      if (Operation *def = v.getDefiningOp())
        if (layerOfOp.contains(def))
          readAcrossLayers.insert(v);
  }
  return true;
}

/// Whether `op`'s results are kept by `selective`: GEMMs, attention and
/// collectives.
bool isKeptBySelective(Operation *op) {
  return isa<LinearOp, ExpertsOp, AttentionOp, DispatchOp, CombineOp,
             TokenShuffleOp>(op) ||
         isa<shard::ShardDialect>(op->getDialect());
}

bool StepAnalysis::keeps(ActivationCheckpointing policy, Value v) const {
  Operation *def = v.getDefiningOp();
  if (!def || !layerOfOp.contains(def) || boundaries.contains(v) ||
      readAcrossLayers.contains(v) || !isMemoryEffectFree(def))
    return true;
  switch (policy) {
  case ActivationCheckpointing::None:
  case ActivationCheckpointing::Auto:
    return true;
  case ActivationCheckpointing::Selective:
    return isKeptBySelective(def);
  case ActivationCheckpointing::Full:
    return false;
  }
  llvm_unreachable("unknown activation checkpointing");
}

/// The value whose buffer `v` is: a reshape's source, transitively.
Value bufferOf(Value v) {
  while (Operation *def = v.getDefiningOp()) {
    if (!isa<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(def))
      break;
    v = def->getOperand(0);
  }
  return v;
}

/// Whether `op` is a read the backward can drop: nothing uses its result
/// (tensor.dim left by the builder).
bool isDeadRead(Operation *op) {
  return op->use_empty() && isMemoryEffectFree(op);
}

FailureOr<int64_t> StepAnalysis::bytesOf(Value v) {
  auto type = dyn_cast<RankedTensorType>(v.getType());
  if (!type)
    return int64_t(0);
  int64_t elements = 1;
  for (auto [d, size] : llvm::enumerate(type.getShape())) {
    if (!ShapedType::isDynamic(size)) {
      elements *= size;
      continue;
    }
    if (d != 0 || !rowBound) {
      Operation *where =
          v.getDefiningOp() ? v.getDefiningOp() : body.getParentOp();
      return where->emitOpError()
             << "has a value of type " << type
             << " whose size activation checkpointing auto cannot bound "
                "(run moe-specialize-shapes first)";
    }
    elements *= *rowBound;
  }
  return elements * ((type.getElementTypeBitWidth() + 7) / 8);
}

FailureOr<LayerCost> StepAnalysis::costOf(const Layer &l,
                                          ActivationCheckpointing policy) {
  LayerCost cost;
  const int64_t index = &l - layers.data();
  DenseSet<Value> kept;
  DenseSet<Operation *> recomputed;
  SmallVector<Value> stack;
  for (Operation *user : backward) {
    if (isDeadRead(user))
      continue;
    for (Value v : user->getOperands())
      if (layerOf(v.getDefiningOp()) == index)
        stack.push_back(v);
  }
  while (!stack.empty()) {
    Value v = stack.pop_back_val();
    Operation *def = v.getDefiningOp();
    if (keeps(policy, v)) {
      Value buffer = bufferOf(v);
      if (!kept.insert(buffer).second)
        continue;
      FailureOr<int64_t> bytes = bytesOf(buffer);
      if (failed(bytes))
        return failure();
      cost.keptBytes += *bytes;
      continue;
    }
    if (!recomputed.insert(def).second)
      continue;
    for (Value r : def->getResults()) {
      if (isa<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(def))
        continue;
      FailureOr<int64_t> bytes = bytesOf(r);
      if (failed(bytes))
        return failure();
      cost.recomputedBytes += *bytes;
    }
    for (Value w : def->getOperands())
      if (layerOf(w.getDefiningOp()) == index)
        stack.push_back(w);
    FailureOr<double> seconds = secondsOf(def);
    if (failed(seconds))
      return failure();
    cost.seconds += *seconds;
  }
  return cost;
}

FailureOr<double> StepAnalysis::secondsOf(Operation *def) {
  int64_t moved = 0;
  for (Value v : llvm::concat<Value>(def->getResults(), def->getOperands())) {
    FailureOr<int64_t> bytes = bytesOf(v);
    if (failed(bytes))
      return failure();
    moved += *bytes;
  }
  return TypeSwitch<Operation *, double>(def)
      .Case([&](LinearOp op) {
        auto in = cast<RankedTensorType>(op.getInput().getType());
        auto out = cast<RankedTensorType>(op.getResult().getType());
        double flops = 2.0 * out.getNumElements() * in.getShape().back();
        return std::max(flops / kGemmFlops, moved / kMemoryBytesPerSecond);
      })
      .Case([&](ExpertsOp op) {
        // Per (token, choice) pair: gate/up [2I, h] and down [h, I].
        auto gates = cast<RankedTensorType>(op.getGates().getType());
        auto down = cast<RankedTensorType>(op.getDown().getType());
        double pairs = gates.hasStaticShape() ? gates.getNumElements()
                                              : double(rowBound.value_or(0));
        double flops = 6.0 * pairs * down.getDimSize(1) * down.getDimSize(2);
        return std::max(flops / kGemmFlops, moved / kMemoryBytesPerSecond);
      })
      .Case([&](AttentionOp op) {
        // Causal: two [S, S] products per query head, half of them.
        auto q = cast<RankedTensorType>(op.getQuery().getType());
        double flops = 2.0 * q.getNumElements() * q.getDimSize(1);
        return std::max(flops / kAttentionFlops,
                        moved / kMemoryBytesPerSecond);
      })
      .Case<LmHeadOp, LmHeadCrossEntropyOp, LmHeadCrossEntropyWithGradOp>(
          [&](auto op) {
            // [T, h] x [h, V]; with its gradient, three products.
            auto in = cast<RankedTensorType>(op.getInput().getType());
            auto weight = cast<RankedTensorType>(op.getWeight().getType());
            double products =
                isa<LmHeadCrossEntropyWithGradOp>(op.getOperation()) ? 3 : 1;
            double flops = products * 2.0 * in.getNumElements() *
                           weight.getDimSize(0);
            return std::max(flops / kGemmFlops,
                            moved / kMemoryBytesPerSecond);
          })
      .Case<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(
          [](Operation *) { return 0.0; })
      .Default([&](Operation *op) {
        if (isa<DispatchOp, CombineOp, TokenShuffleOp>(op) ||
            isa<shard::ShardDialect>(op->getDialect()))
          return moved / kCollectiveBytesPerSecond;
        return moved / kMemoryBytesPerSecond;
      });
}

FailureOr<double> StepAnalysis::forwardSeconds(size_t l) {
  double seconds = 0;
  for (Operation *op : layers[l].ops) {
    FailureOr<double> s = secondsOf(op);
    if (failed(s))
      return failure();
    seconds += *s;
  }
  return seconds;
}

FailureOr<double> StepAnalysis::headSeconds() {
  double seconds = 0;
  for (Operation &op : body)
    if (isa<LmHeadOp, LmHeadCrossEntropyOp, LmHeadCrossEntropyWithGradOp>(
            op)) {
      FailureOr<double> s = secondsOf(&op);
      if (failed(s))
        return failure();
      seconds += *s;
    }
  return seconds;
}

/// Rewrites the step so that every backward read of a value its layer's
/// policy recomputes reads a clone made right before it; returns the number
/// of ops cloned.
int64_t rewrite(StepAnalysis &step,
                ArrayRef<ActivationCheckpointing> policies) {
  int64_t numRecomputed = 0;
  MLIRContext *context = step.body.getParentOp()->getContext();
  DenseMap<Value, Value> recomputedOf;
  // The clone of `v`'s op (of layer `layer`) before `user`, and of what
  // it needs, once.
  std::function<Value(Value, int64_t, Operation *)> recompute =
      [&](Value v, int64_t layer, Operation *user) -> Value {
    if (Value known = recomputedOf.lookup(v))
      return known;
    Operation *def = v.getDefiningOp();
    IRMapping mapping;
    for (Value w : def->getOperands())
      if (step.layerOf(w.getDefiningOp()) == layer &&
          !step.keeps(policies[layer], w))
        mapping.map(w, recompute(w, layer, user));
    OpBuilder builder(user);
    Operation *clone = builder.clone(*def, mapping);
    clone->setAttr(MoeDialect::getRecomputeAttrName(),
                   RecomputeAttr::get(context, step.layers[layer].index,
                                      policies[layer]));
    ++numRecomputed;
    for (auto [from, to] :
         llvm::zip_equal(def->getResults(), clone->getResults()))
      recomputedOf[from] = to;
    return recomputedOf.lookup(v);
  };
  // Reads that nothing uses (tensor.dim left by the builder, forward or
  // backward) would keep a recomputed value alive: they go.
  auto readsRecomputed = [&](Operation *op) {
    return llvm::any_of(op->getOperands(), [&](Value v) {
      int64_t layer = step.layerOf(v.getDefiningOp());
      return layer >= 0 && !step.keeps(policies[layer], v);
    });
  };
  DenseSet<Operation *> deadReads;
  for (Operation &op : step.body)
    if (isDeadRead(&op) && step.layerOf(&op) < 0 && readsRecomputed(&op))
      deadReads.insert(&op);
  llvm::erase_if(step.backward,
                 [&](Operation *op) { return deadReads.contains(op); });
  for (Operation *op : deadReads)
    op->erase();
  for (Operation *user : step.backward) {
    for (OpOperand &operand : user->getOpOperands()) {
      int64_t layer = step.layerOf(operand.get().getDefiningOp());
      if (layer >= 0 && !step.keeps(policies[layer], operand.get()))
        operand.set(recompute(operand.get(), layer, user));
    }
  }
  // A forward op that kept something for the backward alone (moe.experts'
  // projections, moe.attention's log-sum-exp) stops keeping it: the
  // recomputed op keeps its own.
  for (const Layer &layer : step.layers)
    for (Operation *op : layer.ops) {
      OpBuilder builder(op);
      if (auto experts = dyn_cast<ExpertsOp>(op);
          experts && experts.getSaved() && experts.getSaved().use_empty()) {
        auto plain = ExpertsOp::create(
            builder, experts.getLoc(), experts.getResult().getType(),
            /*saved=*/Type(), experts.getInput(), experts.getGates(),
            experts.getExperts(), experts.getGateUp(), experts.getDown(),
            experts.getGateUpLayoutAttr());
        experts.getResult().replaceAllUsesWith(plain.getResult());
        experts.erase();
      } else if (auto attention = dyn_cast<AttentionOp>(op);
                 attention && attention.getStats() &&
                 attention.getStats().use_empty()) {
        auto plain = AttentionOp::create(
            builder, attention.getLoc(), attention.getResult().getType(),
            /*stats=*/Type(), attention.getQuery(), attention.getKey(),
            attention.getValue(), attention.getCausalAttr(),
            attention.getScaleAttr(), attention.getSlidingWindowAttr());
        attention.getResult().replaceAllUsesWith(plain.getResult());
        attention.erase();
      }
    }
  return numRecomputed;
}

/// What activation checkpointing auto chose: a policy per layer and the
/// layers (their N) whose kept values move to host memory.
struct AutoChoice {
  std::vector<ActivationCheckpointing> policies;
  std::set<int64_t> offloaded;
};

/// The bytes the step needs under `choice`: its arguments (parameters,
/// optimizer state, inputs), with `keepCopies` the bf16 parameter copies
/// moe-keep-param-copies will keep beside them, the most bytes
/// moe-plan-memory's buffers have alive at once, measured on a copy of
/// `func` rewritten with it (recomputed, then offloaded with `horizon`,
/// then its copies kept), and `scratchBytes`, the CUDA program's kernel
/// scratch (which neither changes: recomputed clones have the shapes of the
/// ops they copy).
FailureOr<int64_t> measureBytes(func::FuncOp func, const AutoChoice &choice,
                                int64_t horizon, int64_t scratchBytes,
                                bool keepCopies) {
  OwningOpRef<func::FuncOp> copy = func.clone();
  StepAnalysis step(copy->getBody().front());
  FailureOr<bool> isStep = step.analyze(*copy, ActivationCheckpointing::Auto);
  if (failed(isStep) || !*isStep ||
      step.layers.size() != choice.policies.size())
    return func.emitOpError()
           << "changed its layers when copied (internal error of "
              "moe-checkpoint-activations)";
  rewrite(step, choice.policies);
  if (!choice.offloaded.empty() &&
      failed(offloadActivations(*copy, horizon, &choice.offloaded)))
    return failure();
  // The kept copies live outside the arena, for the whole step.
  const int64_t copies = keepCopies ? keepParamCopies(*copy).bytes : 0;
  FailureOr<int64_t> live = arenaLiveBytes(*copy);
  if (failed(live))
    return failure();
  int64_t bytes = *live + scratchBytes + copies;
  for (BlockArgument arg : copy->getArguments())
    if (auto type = dyn_cast<RankedTensorType>(arg.getType());
        type && type.hasStaticShape())
      bytes += (type.getNumElements() * type.getElementTypeBitWidth() + 7) / 8;
  return bytes;
}

/// The bytes moe-offload-activations moves per layer (its N) when every
/// layer of `func` has `policy`, measured on a rewritten copy.
FailureOr<std::map<int64_t, OffloadedLayer>>
offloadedBytesOf(func::FuncOp func, ActivationCheckpointing policy,
                 int64_t horizon) {
  OwningOpRef<func::FuncOp> copy = func.clone();
  StepAnalysis step(copy->getBody().front());
  FailureOr<bool> isStep = step.analyze(*copy, ActivationCheckpointing::Auto);
  if (failed(isStep) || !*isStep)
    return func.emitOpError()
           << "changed its layers when copied (internal error of "
              "moe-checkpoint-activations)";
  rewrite(step, std::vector<ActivationCheckpointing>(step.layers.size(),
                                                     policy));
  return offloadActivations(*copy, horizon);
}

/// The bytes of the CUDA program's kernel scratch buffers for `func`
/// (moe::stepScratchNeeds; partitioned, the collective stream's too).
FailureOr<int64_t> scratchBytesOf(func::FuncOp func, bool cudnnAttention) {
  FailureOr<SmallVector<ScratchNeed>> needs =
      stepScratchNeeds(func, cudnnAttention);
  if (failed(needs))
    return failure();
  auto module = func->getParentOfType<ModuleOp>();
  bool partitioned = module && !module.getOps<shard::GridOp>().empty();
  StepScratchBytes scratch = stepScratchBytes(*needs, partitioned);
  // The gradient stream's buffer, which the program holds beside the
  // collective stream's (the CUDA printer sizes it the same way): the
  // largest need of a reduction the collective schedule puts on it.
  int64_t gradientBytes = partitioned ? 256 : 0;
  if (partitioned) {
    auto schedule = scheduleCollectives(func.getBody().front());
    for (const ScratchNeed &n : *needs)
      if (auto it = schedule.find(n.op);
          it != schedule.end() &&
          it->second.stream == CollectiveStream::Gradient)
        gradientBytes = std::max(gradientBytes, n.bytes);
  }
  return scratch.bytes + scratch.collectiveBytes + gradientBytes;
}

/// The time model of offloading: the step as the compute stream runs it,
/// the offload and fetch streams beside it. Layer i's copy to the host
/// starts when its forward ends and the offload stream is free; the
/// compute stream waits for it at the start of the forward of layer
/// i + horizon + 1 (or of the backward); its fetch starts at the start of
/// the backward of layer i + horizon (or of the backward) once the fetch
/// stream is free and the copy out has ended, and the compute stream waits
/// for it at the start of layer i's backward. A layer's backward takes
/// twice its forward plus what it recomputes (the cost model).
struct OffloadTimeline {
  std::vector<double> forward;  ///< seconds of each layer's forward
  double head = 0;              ///< the lm-head's forward and backward
  int64_t horizon = 1;
  /// Pinned copies between host and device, each way (the pass option;
  /// on the H200, PCIe 5.0 x16, 55.2-55.5 GB/s measured,
  /// docs/activation-checkpointing.md).
  double linkBytesPerSecond = 55e9;

  /// The step's seconds with `recompute[i]` seconds of recomputation and
  /// `moved[i]` bytes offloaded each way (0: none) for layer i.
  double stepSeconds(ArrayRef<double> recompute,
                     ArrayRef<int64_t> moved) const {
    const int64_t layers = forward.size();
    std::vector<double> offloadEnd(layers, 0), fetchEnd(layers, 0);
    double t = 0, offloadFree = 0, fetchFree = 0;
    auto copy = [&](int64_t i) { return moved[i] / linkBytesPerSecond; };
    for (int64_t i = 0; i < layers; ++i) {
      if (i - horizon - 1 >= 0 && moved[i - horizon - 1])
        t = std::max(t, offloadEnd[i - horizon - 1]);
      t += forward[i];
      if (moved[i])
        offloadEnd[i] = offloadFree = std::max(t, offloadFree) + copy(i);
    }
    for (int64_t i = std::max<int64_t>(0, layers - horizon - 1); i < layers;
         ++i)
      if (moved[i])
        t = std::max(t, offloadEnd[i]);
    auto fetch = [&](int64_t i) {
      if (i >= 0 && moved[i])
        fetchEnd[i] = fetchFree =
            std::max({t, fetchFree, offloadEnd[i]}) + copy(i);
    };
    for (int64_t i = layers - 1; i >= 0; --i)
      if (i + horizon >= layers)
        fetch(i);
    t += head;
    for (int64_t i = layers - 1; i >= 0; --i) {
      fetch(i - horizon);
      if (moved[i])
        t = std::max(t, fetchEnd[i]);
      t += 2 * forward[i] + recompute[i];
    }
    return t;
  }
};

/// The policy per layer that fits `budget` bytes with the least added
/// time, the layers it offloads (with `horizon` > 0: offloading is
/// allowed), and the remark that explains it. The cost model orders the
/// candidates; whether one fits is measured (measureBytes).
FailureOr<AutoChoice> chooseAutomatically(StepAnalysis &step,
                                          func::FuncOp func, int64_t budget,
                                          bool cudnnAttention,
                                          int64_t horizon,
                                          double linkBytesPerSecond,
                                          bool keepCopies) {
  FailureOr<int64_t> scratchBytes = scratchBytesOf(func, cudnnAttention);
  if (failed(scratchBytes))
    return failure();
  using AC = ActivationCheckpointing;
  const AC choices[] = {AC::None, AC::Selective, AC::Full};
  const size_t numLayers = step.layers.size();
  const bool offloading = horizon > 0;
  std::vector<std::array<LayerCost, 3>> costs;
  // With offloading: the bytes each layer's offload moves under each
  // policy, and the timeline.
  std::vector<std::array<int64_t, 3>> moved(numLayers, {0, 0, 0});
  OffloadTimeline timeline;
  timeline.horizon = std::max<int64_t>(horizon, 1);
  timeline.linkBytesPerSecond = linkBytesPerSecond;
  for (auto [l, layer] : llvm::enumerate(step.layers)) {
    std::array<LayerCost, 3> c;
    for (auto [i, policy] : llvm::enumerate(choices)) {
      FailureOr<LayerCost> cost = step.costOf(layer, policy);
      if (failed(cost))
        return failure();
      c[i] = *cost;
    }
    costs.push_back(c);
    FailureOr<double> forward = step.forwardSeconds(l);
    if (failed(forward))
      return failure();
    timeline.forward.push_back(*forward);
  }
  if (offloading) {
    FailureOr<double> head = step.headSeconds();
    if (failed(head))
      return failure();
    timeline.head = *head;
    for (auto [i, policy] : llvm::enumerate(choices)) {
      FailureOr<std::map<int64_t, OffloadedLayer>> bytes =
          offloadedBytesOf(func, policy, horizon);
      if (failed(bytes))
        return failure();
      for (auto [l, layer] : llvm::enumerate(step.layers))
        if (auto it = bytes->find(layer.index); it != bytes->end())
          moved[l][i] = it->second.bytes;
    }
  }
  // A choice per layer: 0, 1, 2 the policy (none, selective, full), plus 3
  // when the layer's kept values are offloaded.
  using Choice = std::vector<unsigned>;
  auto recomputeSeconds = [&](const Choice &chosen) {
    double seconds = 0;
    for (auto [layer, choice] : llvm::enumerate(chosen))
      seconds += costs[layer][choice % 3].seconds;
    return seconds;
  };
  auto stepSeconds = [&](const Choice &chosen, bool offload) {
    std::vector<double> recompute;
    std::vector<int64_t> bytes;
    for (auto [layer, choice] : llvm::enumerate(chosen)) {
      recompute.push_back(costs[layer][choice % 3].seconds);
      bytes.push_back(offload && choice >= 3 ? moved[layer][choice % 3] : 0);
    }
    return timeline.stepSeconds(recompute, bytes);
  };
  // The time offloading adds: the copies the compute does not hide.
  auto offloadSeconds = [&](const Choice &chosen) {
    if (llvm::none_of(chosen, [](unsigned c) { return c >= 3; }))
      return 0.0;
    return stepSeconds(chosen, true) - stepSeconds(chosen, false);
  };
  auto addedSeconds = [&](const Choice &chosen) {
    return recomputeSeconds(chosen) + offloadSeconds(chosen);
  };
  // Offloading layer `l` frees its bytes in the backward only if they
  // leave before the backward starts: its fetch is at a later layer's.
  auto mayOffload = [&](size_t l) {
    return offloading && int64_t(l) + horizon < int64_t(numLayers);
  };
  // From none everywhere, the change that adds the least time per byte it
  // saves, until none is left: candidates in the order of the cost model.
  std::vector<Choice> sequence = {Choice(numLayers, 0)};
  while (true) {
    const Choice &chosen = sequence.back();
    std::optional<Choice> best;
    double bestRatio = 0;
    const double before = addedSeconds(chosen);
    for (size_t layer = 0; layer < numLayers; ++layer) {
      // A policy that keeps less (an offloaded layer's values still come
      // back for its backward: it may recompute more too), or offloading
      // what the policy keeps.
      SmallVector<std::pair<unsigned, int64_t>> changes;
      const unsigned policy = chosen[layer] % 3, offloaded = chosen[layer] - policy;
      const LayerCost &from = costs[layer][policy];
      for (unsigned next = policy + 1; next < 3; ++next)
        changes.push_back({next + offloaded,
                           from.keptBytes - costs[layer][next].keptBytes});
      if (!offloaded && mayOffload(layer))
        changes.push_back({policy + 3, from.keptBytes});
      for (auto [next, saved] : changes) {
        if (saved <= 0)
          continue;
        Choice candidate = chosen;
        candidate[layer] = next;
        double ratio = (addedSeconds(candidate) - before) / saved;
        if (!best || ratio < bestRatio) {
          best = std::move(candidate);
          bestRatio = ratio;
        }
      }
    }
    if (!best)
      break;
    sequence.push_back(std::move(*best));
  }
  auto toChoice = [&](const Choice &chosen) {
    AutoChoice choice;
    for (auto [layer, c] : llvm::enumerate(chosen)) {
      choice.policies.push_back(choices[c % 3]);
      if (c >= 3)
        choice.offloaded.insert(step.layers[layer].index);
    }
    return choice;
  };
  std::map<Choice, int64_t> measured;
  auto bytesOf = [&](const Choice &chosen) -> FailureOr<int64_t> {
    if (auto it = measured.find(chosen); it != measured.end())
      return it->second;
    FailureOr<int64_t> bytes =
        measureBytes(func, toChoice(chosen), horizon, *scratchBytes,
                     keepCopies);
    if (succeeded(bytes))
      measured[chosen] = *bytes;
    return bytes;
  };
  // The first candidate that fits (each change saves bytes, so the
  // sequence's bytes fall: bisect it, after the common case that nothing
  // needs recomputing).
  std::optional<Choice> chosen;
  size_t low = 0, high = sequence.size() - 1;
  for (size_t end : {low, high}) {
    FailureOr<int64_t> bytes = bytesOf(sequence[end]);
    if (failed(bytes))
      return failure();
    if (*bytes <= budget) {
      high = end;
      chosen = sequence[end];
      break;
    }
  }
  while (chosen && low + 1 < high) {
    size_t middle = (low + high) / 2;
    FailureOr<int64_t> bytes = bytesOf(sequence[middle]);
    if (failed(bytes))
      return failure();
    (*bytes <= budget ? high : low) = middle;
  }
  if (chosen)
    chosen = sequence[high];
  // An offload that frees nothing at the peak (its values come back
  // before it, or an earlier change in the sequence made it useless) goes,
  // when the choice still fits without it.
  for (size_t layer = 0; chosen && layer < numLayers; ++layer) {
    if ((*chosen)[layer] < 3)
      continue;
    Choice kept = *chosen;
    kept[layer] -= 3;
    FailureOr<int64_t> bytes = bytesOf(kept);
    if (failed(bytes))
      return failure();
    if (*bytes <= budget)
      chosen = kept;
  }
  // The same policy everywhere, when it fits and adds less time (the
  // order of the changes can miss it), wins.
  for (unsigned choice = 0; choice < 3; ++choice) {
    Choice same(numLayers, choice);
    if (chosen && addedSeconds(same) >= addedSeconds(*chosen))
      continue;
    FailureOr<int64_t> bytes = bytesOf(same);
    if (failed(bytes))
      return failure();
    if (*bytes <= budget)
      chosen = same;
  }
  std::string table;
  llvm::raw_string_ostream os(table);
  // Per layer: the choice, then each policy's kept bytes, recomputed bytes
  // and added milliseconds (the cost model); with offloading, the bytes
  // the layer's offload moves each way under its policy and the time it
  // would add alone.
  os << "\n  layer  chosen     none: kept | selective: kept, recomputed, ms | "
        "full: kept, recomputed, ms";
  if (offloading)
    os << " | offload alone: each way, ms";
  // Without a fit, the candidate that needs the least.
  const Choice &shown =
      chosen ? *chosen
             : llvm::min_element(measured, [](auto &a, auto &b) {
                 return a.second < b.second;
               })->first;
  for (auto [layer, choice] : llvm::enumerate(shown)) {
    const std::array<LayerCost, 3> &c = costs[layer];
    std::string name =
        stringifyActivationCheckpointing(choices[choice % 3]).str();
    if (choice >= 3)
      name += "+offload";
    os << llvm::formatv("\n  {0,-6} {1,-10} {2} | {3}, {4}, {5:F3} | {6}, "
                        "{7}, {8:F3}",
                        step.layers[layer].index, name,
                        formatBytes(c[0].keptBytes),
                        formatBytes(c[1].keptBytes),
                        formatBytes(c[1].recomputedBytes), c[1].seconds * 1e3,
                        formatBytes(c[2].keptBytes),
                        formatBytes(c[2].recomputedBytes), c[2].seconds * 1e3);
    if (!offloading)
      continue;
    if (!mayOffload(layer)) {
      os << " | - (back at the backward's start)";
      continue;
    }
    Choice alone(numLayers);
    for (size_t l = 0; l < numLayers; ++l)
      alone[l] = shown[l] % 3;
    alone[layer] += 3;
    os << llvm::formatv(" | {0}, {1:F3}",
                        formatBytes(moved[layer][choice % 3]),
                        offloadSeconds(alone) * 1e3);
  }
  int64_t argumentBytes = 0;
  for (BlockArgument arg : func.getArguments())
    if (auto type = dyn_cast<RankedTensorType>(arg.getType());
        type && type.hasStaticShape())
      argumentBytes +=
          (type.getNumElements() * type.getElementTypeBitWidth() + 7) / 8;
  // The kept bf16 copies (the same under every choice), on a copy.
  int64_t copyBytes = 0;
  if (keepCopies) {
    OwningOpRef<func::FuncOp> copy = func.clone();
    copyBytes = keepParamCopies(*copy).bytes;
  }
  int64_t total = measured.at(shown);
  std::string summary = llvm::formatv(
      "activation checkpointing auto: {0} for a budget of {1} (arguments "
      "{2}{8}, kernel scratch {3}, the most bytes alive at once {4}, "
      "measured on the rewritten step for {5} of {6} candidates); "
      "recomputation adds {7:F3} ms",
      formatBytes(total), formatBytes(budget), formatBytes(argumentBytes),
      formatBytes(*scratchBytes),
      formatBytes(total - argumentBytes - copyBytes - *scratchBytes),
      measured.size(), sequence.size() + 3 + (offloading ? numLayers : 0),
      recomputeSeconds(shown) * 1e3,
      copyBytes ? llvm::formatv(", bf16 parameter copies {0}",
                                formatBytes(copyBytes))
                      .str()
                : std::string());
  if (offloading) {
    SmallVector<std::string> layers;
    int64_t bytes = 0;
    for (auto [layer, choice] : llvm::enumerate(shown))
      if (choice >= 3) {
        layers.push_back(std::to_string(step.layers[layer].index));
        bytes += moved[layer][choice % 3];
      }
    if (layers.empty())
      summary += llvm::formatv("; offloads no layer (horizon {0})", horizon);
    else
      summary += llvm::formatv(
          "; offloading layer{0} {1} (horizon {2}) moves {3} each way, "
          "{4:F3} ms of copies each way at {5:F0} GB/s, and adds {6:F3} ms",
          layers.size() > 1 ? "s" : "", llvm::join(layers, ", "), horizon,
          formatBytes(bytes), bytes / linkBytesPerSecond * 1e3,
          linkBytesPerSecond / 1e9, offloadSeconds(shown) * 1e3);
  }
  // At the function's location, without printing the function.
  if (!chosen)
    return emitError(func->getLoc())
           << summary << ": it does not fit whatever the layers recompute"
           << (offloading ? " or offload" : "");
  emitRemark(func->getLoc()) << summary << table;
  return toChoice(*chosen);
}

struct CheckpointActivationsPass
    : public moe::impl::CheckpointActivationsBase<CheckpointActivationsPass> {
  using Base::Base;

  void runOnOperation() override {
    func::FuncOp func = getOperation();
    if (policy == ActivationCheckpointing::None ||
        !func.getBody().hasOneBlock())
      return;
    if (policy == ActivationCheckpointing::Auto && memoryBudget <= 0) {
      func.emitOpError() << "needs a memory budget above 0 for activation "
                            "checkpointing auto, not "
                         << static_cast<int64_t>(memoryBudget);
      return signalPassFailure();
    }
    if (offloading && hostLinkBytesPerSecond <= 0) {
      func.emitOpError() << "needs a host link rate above 0 bytes/s for "
                            "activation offloading under auto, not "
                         << static_cast<double>(hostLinkBytesPerSecond);
      return signalPassFailure();
    }
    if (offloading && failed(verifyLoadingHorizon(func, horizon)))
      return signalPassFailure();
    StepAnalysis step(func.getBody().front());
    FailureOr<bool> isStep = step.analyze(func, policy);
    if (failed(isStep))
      return signalPassFailure();
    if (!*isStep)
      return;
    numLayers = step.layers.size();
    std::vector<ActivationCheckpointing> policies(step.layers.size(), policy);
    if (policy == ActivationCheckpointing::Auto) {
      FailureOr<AutoChoice> chosen = chooseAutomatically(
          step, func, memoryBudget, cudnnAttention, offloading ? horizon : 0,
          hostLinkBytesPerSecond, keepParamCopies);
      if (failed(chosen))
        return signalPassFailure();
      policies = chosen->policies;
      // moe-offload-activations moves the chosen layers' values only.
      if (offloading)
        func->setAttr(MoeDialect::getOffloadLayersAttrName(),
                      DenseI64ArrayAttr::get(
                          &getContext(),
                          SmallVector<int64_t>(chosen->offloaded.begin(),
                                               chosen->offloaded.end())));
    }
    numRecomputed += rewrite(step, policies);
  }
};

} // namespace
