//===- StepScratch.cpp - The kernel scratch a training step needs ---------===//
//
// See StepScratch.h. One case per op with a scratch need, with the
// arguments the CUDA printer passes the op's kernel; the values come from
// moert/kernels/ScratchBytes.h, which the kernels carve their scratch with.
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/StepScratch.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/IR/SymbolTable.h"
#include "llvm/ADT/TypeSwitch.h"

#include "moert/kernels/ScratchBytes.h"

#include <algorithm>

using namespace mlir;
using namespace mlir::moe;
namespace kernels = moert::kernels;

namespace {

RankedTensorType typeOf(Value v) { return cast<RankedTensorType>(v.getType()); }

ArrayRef<int64_t> shapeOf(Value v) { return typeOf(v).getShape(); }

int64_t elementBytes(Value v) { return typeOf(v).getElementTypeBitWidth() / 8; }

/// The product of the dimensions before the last.
int64_t leadingCount(Value v) {
  int64_t n = 1;
  for (int64_t d : shapeOf(v).drop_back())
    n *= d;
  return n;
}

/// The ranks of `axes` of grid `gridName`, as the printer counts them.
FailureOr<int64_t> groupSize(Operation *op, StringRef gridName,
                             ArrayRef<int16_t> axes) {
  auto grid = SymbolTable::lookupNearestSymbolFrom<shard::GridOp>(
      op, StringAttr::get(op->getContext(), gridName));
  if (!grid)
    return op->emitOpError() << "runs on grid @" << gridName
                             << ", which is not in the module";
  int64_t size = 1;
  for (int16_t axis : axes)
    size *= grid.getShape()[axis];
  return size;
}

/// A need of `op` that a formula of moert/kernels/ScratchBytes.h gives
/// whole.
template <class... Args>
ScratchNeed need(Operation *op, StringRef formula,
                 int64_t (*function)(Args...), decltype(Args())... args) {
  ScratchNeed n;
  n.op = op;
  n.formula = formula;
  n.arguments = {args...};
  n.bytes = function(args...);
  return n;
}

/// The router's and its losses' need (routerScratchBytes), without the
/// balanced router's sort storage, which CUB sizes on the GPU.
ScratchNeed routerNeed(Operation *op, int64_t tokens, int64_t E, int64_t k,
                       int64_t layers) {
  ScratchNeed n;
  n.op = op;
  n.formula = "routerScratchBytes";
  n.arguments = {tokens, E, k, layers};
  n.bytes = kernels::routerScratchBytes(tokens, E, k, layers, /*sortBytes=*/0);
  n.uncounted = ScratchUncounted::SortStorage;
  return n;
}

} // namespace

FailureOr<SmallVector<ScratchNeed>>
mlir::moe::stepScratchNeeds(func::FuncOp step, bool cudnnAttention) {
  SmallVector<ScratchNeed> needs;
  // Values whose leading dimension is a dispatch's received rows: at most
  // its receive bound.
  llvm::DenseMap<Value, int64_t> rowBounds;
  auto rowBoundOf = [&](Value v) {
    auto it = rowBounds.find(v);
    return it != rowBounds.end() ? it->second : leadingCount(v);
  };
  auto attentionNeed = [&](Operation *op, Value query, Value key) {
    auto q = shapeOf(query), k = shapeOf(key);
    if (!cudnnAttention || !typeOf(query).getElementType().isBF16())
      return need(op, "attentionScratchBytes", &kernels::attentionScratchBytes,
                  q[0], q[1], q[2], k[2], q[3], elementBytes(query));
    ScratchNeed n;
    n.op = op;
    n.formula = "attentionCudnnScratchBytes";
    n.arguments = {q[0], q[1], q[2], k[2], q[3]};
    n.bytes = kernels::attentionCudnnBufferBytes(q[0], q[1], q[2], q[3]);
    n.uncounted = ScratchUncounted::CudnnWorkspace;
    return n;
  };
  auto expertsNeed = [&](Operation *op, Value input, Value gates,
                         Value gateUp) {
    auto gu = shapeOf(gateUp);
    return need(op, "expertsScratchBytes", &kernels::expertsScratchBytes,
                rowBoundOf(input), gu[2], gu[1] / 2, gu[0],
                shapeOf(gates).back(), elementBytes(input));
  };
  auto crossEntropyNeed = [&](Operation *op, Value input, Value weight) {
    auto s = shapeOf(input);
    return need(op, "crossEntropyScratchBytes",
                &kernels::crossEntropyScratchBytes, s[0] * s[1], s[2],
                shapeOf(weight)[0], elementBytes(input));
  };
  // The losses over the layers' logits [tokens, E].
  auto lossesNeed = [&](Operation *op, ValueRange logits) {
    return routerNeed(op, leadingCount(logits[0]), shapeOf(logits[0]).back(),
                      1, static_cast<int64_t>(logits.size()));
  };
  // A gather or scatter of the rank's `local` block along `axis`.
  auto blocksNeed = [&](Operation *op, RankedTensorType local, int64_t axis,
                        int64_t size) {
    int64_t outer = 1;
    for (int64_t d : local.getShape().take_front(axis))
      outer *= d;
    ScratchNeed n =
        need(op, "collectiveScratchBytes", &kernels::collectiveScratchBytes,
             outer, size, local.getNumElements(),
             int64_t(local.getElementTypeBitWidth() / 8));
    n.collective = true;
    return n;
  };

  for (Operation &op : step.getBody().front()) {
    std::optional<ScratchNeed> n;
    LogicalResult result =
        TypeSwitch<Operation *, LogicalResult>(&op)
            .Case([&](EmbeddingGradOp e) {
              n = need(&op, "embeddingScratchBytes",
                       &kernels::embeddingScratchBytes,
                       typeOf(e.getIndices()).getNumElements(),
                       shapeOf(e.getDTable())[0]);
              return success();
            })
            .Case([&](RmsNormGradOp r) {
              n = need(&op, "rmsNormScratchBytes",
                       &kernels::rmsNormScratchBytes,
                       leadingCount(r.getInput()),
                       shapeOf(r.getInput()).back());
              return success();
            })
            .Case([&](AttentionOp a) {
              n = attentionNeed(&op, a.getQuery(), a.getKey());
              return success();
            })
            .Case([&](AttentionGradOp a) {
              n = attentionNeed(&op, a.getQuery(), a.getKey());
              return success();
            })
            .Case([&](RouterOp r) {
              n = routerNeed(&op, leadingCount(r.getLogits()),
                             shapeOf(r.getLogits()).back(), r.getK(), 1);
              return success();
            })
            .Case([&](RouterGradOp r) {
              n = routerNeed(&op, leadingCount(r.getLogits()),
                             shapeOf(r.getLogits()).back(),
                             shapeOf(r.getExperts()).back(), 1);
              return success();
            })
            .Case([&](ExpertsOp e) {
              n = expertsNeed(&op, e.getInput(), e.getGates(), e.getGateUp());
              if (rowBounds.count(e.getInput()))
                for (Value r : e->getResults())
                  rowBounds[r] = rowBounds.lookup(e.getInput());
              return success();
            })
            .Case([&](ExpertsGradOp e) {
              n = expertsNeed(&op, e.getInput(), e.getGates(), e.getGateUp());
              if (rowBounds.count(e.getInput()))
                for (Value r : e->getResults())
                  rowBounds[r] = rowBounds.lookup(e.getInput());
              return success();
            })
            .Case<LmHeadCrossEntropyOp, LmHeadCrossEntropyGradOp,
                  LmHeadCrossEntropyWithGradOp>([&](auto l) {
              n = crossEntropyNeed(&op, l.getInput(), l.getWeight());
              return success();
            })
            .Case<LoadBalancingLossOp, LoadBalancingLossGradOp, RouterZLossOp,
                  RouterZLossGradOp>([&](Operation *loss) {
              if (!loss->getOperands().empty())
                n = lossesNeed(&op, loss->getOperands());
              return success();
            })
            .Case<LoadBalancingStatsOp, LoadBalancingStatsGradOp>([&](auto l) {
              if (!l.getLogits().empty())
                n = lossesNeed(&op, l.getLogits());
              return success();
            })
            .Case([&](GlobalNormOp g) {
              int64_t chunks = 0;
              for (Value v : g.getGradients())
                chunks += kernels::tensorGroupChunks(typeOf(v).getNumElements());
              n = need(&op, "globalNormScratchBytes",
                       static_cast<int64_t (*)(int64_t)>(
                           &kernels::globalNormScratchBytes),
                       chunks);
              return success();
            })
            .Case([&](shard::AllGatherOp g) -> LogicalResult {
              FailureOr<int64_t> size =
                  groupSize(&op, g.getGrid(), g.getGridAxes());
              if (failed(size))
                return failure();
              n = blocksNeed(&op, typeOf(g.getInput()),
                             g.getGatherAxis().getSExtValue(), *size);
              return success();
            })
            .Case([&](shard::ReduceScatterOp r) -> LogicalResult {
              FailureOr<int64_t> size =
                  groupSize(&op, r.getGrid(), r.getGridAxes());
              if (failed(size))
                return failure();
              n = blocksNeed(&op, typeOf(r.getResult()),
                             r.getScatterAxis().getSExtValue(), *size);
              return success();
            })
            .Case([&](DispatchOp d) -> LogicalResult {
              FailureOr<int64_t> size =
                  groupSize(&op, d.getGrid(), d.getGridAxes());
              std::optional<int64_t> bound = d.getReceiveRowBound();
              if (failed(size))
                return failure();
              if (!bound)
                return d.emitOpError() << "has no receive row bound; its "
                                          "scratch cannot be sized";
              n = need(&op, "dispatchScratchBytes",
                       &kernels::dispatchScratchBytes,
                       leadingCount(d.getExperts()),
                       shapeOf(d.getExperts()).back(),
                       shapeOf(d.getInput()).back(), *size,
                       shapeOf(d.getCounts())[1], *bound,
                       elementBytes(d.getInput()));
              n->collective = true;
              for (Value r : {d.getRows(), d.getRowExperts(), d.getRowGates()})
                if (r)
                  rowBounds[r] = *bound;
              return success();
            })
            .Case([&](CombineOp c) -> LogicalResult {
              FailureOr<int64_t> size =
                  groupSize(&op, c.getGrid(), c.getGridAxes());
              if (failed(size))
                return failure();
              n = need(&op, "combineScratchBytes",
                       &kernels::combineScratchBytes,
                       leadingCount(c.getExperts()),
                       shapeOf(c.getExperts()).back(),
                       shapeOf(c.getRows()).back(), *size,
                       shapeOf(c.getCounts())[1], rowBoundOf(c.getRows()),
                       elementBytes(c.getRows()));
              n->collective = true;
              return success();
            })
            .Case([&](TokenShuffleOp s) -> LogicalResult {
              FailureOr<int64_t> size =
                  groupSize(&op, s.getGrid(), s.getGridAxes());
              if (failed(size))
                return failure();
              n = need(&op, "tokenShuffleScratchBytes",
                       &kernels::tokenShuffleScratchBytes,
                       leadingCount(s.getInput()), shapeOf(s.getInput()).back(),
                       *size, elementBytes(s.getInput()));
              n->collective = true;
              return success();
            })
            .Default([](Operation *) { return success(); });
    if (failed(result))
      return failure();
    if (n)
      needs.push_back(std::move(*n));
  }
  return needs;
}

StepScratchBytes mlir::moe::stepScratchBytes(ArrayRef<ScratchNeed> needs,
                                             bool collectiveStream) {
  StepScratchBytes total;
  total.collectiveBytes = collectiveStream ? 256 : 0;
  for (const ScratchNeed &n : needs) {
    total.bytes = std::max(total.bytes, n.bytes);
    if (n.collective && collectiveStream)
      total.collectiveBytes = std::max(total.collectiveBytes, n.bytes);
    total.uncountedCudnnWorkspace |=
        n.uncounted == ScratchUncounted::CudnnWorkspace;
    total.uncountedSortStorage |= n.uncounted == ScratchUncounted::SortStorage;
  }
  return total;
}
