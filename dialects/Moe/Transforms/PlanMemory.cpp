//===- PlanMemory.cpp - One arena per rank, offsets from liveness ---------===//
//
// Implements moe-plan-memory (see Passes.td): liveness intervals over the
// function's single block in program order, views folded into their
// source's buffer, then largest-first placement at the lowest aligned offset
// free for the whole interval, then an independent overlap check. The rows
// an expert-parallel rank receives (moe.dispatch) are sized by their bound,
// every slot of the expert group, and so are the local experts' values on
// them. An offloaded value's bytes are held until its moe.offload_join. A
// collective that runs beside the compute stream
// (CollectiveSchedule.h) keeps its operands and results alive until the
// compute stream joins it.
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"
#include "dialects/Moe/Transforms/CollectiveSchedule.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Builders.h"

#include <algorithm>
#include <numeric>

namespace mlir::moe {
#define GEN_PASS_DEF_PLANMEMORY
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

struct Buffer {
  Value value;      ///< The op result that owns the buffer.
  int64_t bytes = 0;
  int64_t begin = 0; ///< Index of the producing op.
  int64_t end = 0;   ///< Index of the last op that reads it (or a view).
  int64_t offset = -1;
};

bool overlapsInTime(const Buffer &a, const Buffer &b) {
  return a.begin <= b.end && b.begin <= a.end;
}

/// The operand an AdamW result updates in place (parameter and moments).
Value inPlaceOperand(moe::AdamWOp adamw, Value result) {
  if (result == adamw.getNewParam())
    return adamw.getParam();
  if (result == adamw.getNewExpAvg())
    return adamw.getExpAvg();
  return adamw.getExpAvgSq();
}

/// The most rows a value with a dynamic leading dimension can have: the
/// receive bound of the moe.dispatch it comes from, through the local
/// experts (moe.experts and moe.experts_grad on received rows keep their
/// input's rows). None for any other dynamic value.
std::optional<int64_t> receivedRowBound(Value v) {
  Operation *def = v.getDefiningOp();
  if (auto dispatch = dyn_cast_or_null<moe::DispatchOp>(def))
    return dispatch.getReceiveRowBound();
  if (auto experts = dyn_cast_or_null<moe::ExpertsOp>(def))
    return receivedRowBound(experts.getInput());
  if (auto grad = dyn_cast_or_null<moe::ExpertsGradOp>(def))
    return receivedRowBound(grad.getInput());
  if (auto offload = dyn_cast_or_null<moe::OffloadOp>(def))
    return receivedRowBound(offload.getInput());
  if (auto fetch = dyn_cast_or_null<moe::FetchOp>(def))
    return receivedRowBound(fetch.getInput());
  return std::nullopt;
}

/// The elements of `type`, its dynamic leading dimension (if any) taken at
/// `rows`.
int64_t boundedElements(RankedTensorType type, int64_t rows) {
  int64_t n = 1;
  for (auto [d, size] : llvm::enumerate(type.getShape()))
    n *= d == 0 && ShapedType::isDynamic(size) ? rows : size;
  return n;
}

/// The value whose buffer `v` uses: a view's source, transitively, and for
/// an AdamW result the state it updates in place.
Value owner(Value v) {
  while (true) {
    Operation *def = v.getDefiningOp();
    if (auto adamw = dyn_cast_or_null<moe::AdamWOp>(def))
      v = inPlaceOperand(adamw, v);
    else if (auto expand = dyn_cast_or_null<tensor::ExpandShapeOp>(def))
      v = expand.getSrc();
    else if (auto collapse = dyn_cast_or_null<tensor::CollapseShapeOp>(def))
      v = collapse.getSrc();
    else
      return v;
  }
}

bool isView(Value v) { return owner(v) != v; }

/// Whether `type` is held in host memory (moe.offload's result).
bool isHostTensor(RankedTensorType type) {
  return isa_and_nonnull<moe::HostMemoryAttr>(type.getEncoding());
}

/// Places `buffers` largest first, each at the lowest `alignment`-aligned
/// offset that overlaps no buffer alive at the same time; returns the
/// region's size.
int64_t placeBuffers(std::vector<Buffer> &buffers, int64_t alignment) {
  std::vector<size_t> order(buffers.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return buffers[a].bytes > buffers[b].bytes;
  });
  auto align = [&](int64_t x) {
    return (x + alignment - 1) / alignment * alignment;
  };
  std::vector<size_t> placed;
  int64_t size = 0;
  for (size_t i : order) {
    Buffer &b = buffers[i];
    // Candidate offsets: 0 and the aligned end of every buffer alive at
    // the same time; take the lowest that fits.
    std::vector<std::pair<int64_t, int64_t>> busy;
    for (size_t j : placed)
      if (overlapsInTime(b, buffers[j]))
        busy.push_back({buffers[j].offset,
                        buffers[j].offset + buffers[j].bytes});
    std::sort(busy.begin(), busy.end());
    int64_t offset = 0;
    for (auto [start, stop] : busy) {
      if (offset + b.bytes <= start)
        break;
      offset = std::max(offset, align(stop));
    }
    b.offset = offset;
    size = std::max(size, align(offset + b.bytes));
    placed.push_back(i);
  }
  return size;
}

/// Checks independently that no two of `buffers` alive together share a
/// byte; fails at the producer of one.
LogicalResult checkPlacement(const std::vector<Buffer> &buffers) {
  for (size_t i = 0; i < buffers.size(); ++i)
    for (size_t j = i + 1; j < buffers.size(); ++j) {
      const Buffer &a = buffers[i], &b = buffers[j];
      if (overlapsInTime(a, b) && a.offset < b.offset + b.bytes &&
          b.offset < a.offset + a.bytes)
        return a.value.getDefiningOp()->emitOpError()
               << "shares arena bytes with another live buffer (internal "
                  "error of moe-plan-memory)";
    }
  return success();
}

/// The buffers of one function: the arena's, and the pinned host region's
/// (moe.offload's results), each owning value mapped to its buffer.
struct Buffers {
  std::vector<Buffer> device, host;
  llvm::DenseMap<Value, size_t> deviceOf, hostOf;
};

/// The buffers of `body` (ops numbered by `index`, `last` past the
/// terminator) with their live intervals. Fails with a diagnostic at an op
/// whose result has a shape the plan cannot size.
FailureOr<Buffers>
collectBuffers(Block &body, const llvm::DenseMap<Operation *, int64_t> &index,
               int64_t last) {
  Buffers buffers;
  for (Operation &op : body) {
    if (op.hasAttr(MoeDialect::getPersistentCopyAttrName()))
      continue; // the backend's persistent storage (moe-keep-param-copies)
    if (isa<tensor::EmptyOp>(op))
      continue; // a destination's type only: nothing reads or writes it
    for (Value result : op.getResults()) {
      auto type = dyn_cast<RankedTensorType>(result.getType());
      if (!type || isView(result))
        continue;
      int64_t elements;
      if (type.hasStaticShape()) {
        elements = type.getNumElements();
      } else {
        std::optional<int64_t> rows = receivedRowBound(result);
        bool onlyRowsDynamic =
            llvm::count_if(type.getShape(), ShapedType::isDynamic) == 1 &&
            type.isDynamicDim(0);
        if (!rows || !onlyRowsDynamic)
          return op.emitOpError() << "has a result of dynamic shape " << type
                                  << "; run moe-specialize-shapes first";
        elements = boundedElements(type, *rows);
      }
      int64_t bits = type.getElementTypeBitWidth();
      Buffer buffer;
      buffer.value = result;
      buffer.bytes = std::max<int64_t>(1, (elements * bits + 7) / 8);
      buffer.begin = buffer.end = index.lookup(&op);
      bool host = isHostTensor(type);
      (host ? buffers.hostOf : buffers.deviceOf)[result] =
          (host ? buffers.host : buffers.device).size();
      (host ? buffers.host : buffers.device).push_back(buffer);
    }
  }
  // Every operand is charged to its owner: a view read later keeps its
  // source alive.
  for (Operation &op : body)
    for (Value operand : op.getOperands()) {
      int64_t use = isa<func::ReturnOp>(op) ? last : index.lookup(&op);
      if (auto it = buffers.hostOf.find(operand); it != buffers.hostOf.end())
        buffers.host[it->second].end =
            std::max(buffers.host[it->second].end, use);
      auto it = buffers.deviceOf.find(owner(operand));
      if (it == buffers.deviceOf.end())
        continue; // an argument, or not a tensor
      buffers.device[it->second].end =
          std::max(buffers.device[it->second].end, use);
    }
  // A host copy is read by its fetch's copy, which the compute stream waits
  // for before the fetched value's first reader: it lives to the fetched
  // value's last reader, so that no later offload writes it while the fetch
  // may still read it.
  for (Operation &op : body)
    if (auto fetch = dyn_cast<moe::FetchOp>(op)) {
      auto host = buffers.hostOf.find(fetch.getInput());
      auto device = buffers.deviceOf.find(fetch.getResult());
      if (host != buffers.hostOf.end() && device != buffers.deviceOf.end())
        buffers.host[host->second].end =
            std::max(buffers.host[host->second].end,
                     buffers.device[device->second].end);
    }
  // An offload's copy reads the offloaded value until the compute stream
  // joins it (moe.offload_join): its device bytes are held until there.
  for (Operation &op : body)
    if (auto join = dyn_cast<moe::OffloadJoinOp>(op)) {
      auto offload = join.getInput().getDefiningOp<moe::OffloadOp>();
      auto it = buffers.deviceOf.find(owner(offload.getInput()));
      if (it != buffers.deviceOf.end())
        buffers.device[it->second].end =
            std::max(buffers.device[it->second].end, index.lookup(&op));
    }
  // A collective joined late reads its operands and writes its results
  // until the compute stream joins it: their bytes are not reused before.
  for (auto &[op, collective] : scheduleCollectives(body)) {
    if (!collective.join)
      continue;
    for (Value v : llvm::concat<Value>(op->getOperands(), op->getResults())) {
      auto it = buffers.deviceOf.find(owner(v));
      if (it != buffers.deviceOf.end())
        buffers.device[it->second].end = std::max(
            buffers.device[it->second].end, index.lookup(collective.join));
    }
  }
  return buffers;
}

/// The most bytes of `buffers` alive at once: a sweep over the starts and
/// ends of their intervals (an interval includes both ends).
int64_t liveBytesPeak(ArrayRef<Buffer> buffers) {
  std::vector<std::pair<int64_t, int64_t>> changes;
  for (const Buffer &b : buffers) {
    changes.push_back({b.begin, b.bytes});
    changes.push_back({b.end + 1, -b.bytes});
  }
  // At one position the ends go first: they belong to the previous one.
  llvm::sort(changes);
  int64_t live = 0, peak = 0;
  for (auto [position, delta] : changes) {
    live += delta;
    peak = std::max(peak, live);
  }
  return peak;
}

struct PlanMemoryPass : public moe::impl::PlanMemoryBase<PlanMemoryPass> {
  using PlanMemoryBase::PlanMemoryBase;

  void runOnOperation() override {
    func::FuncOp func = getOperation();
    if (alignment < 1 || (alignment & (alignment - 1)) != 0) {
      func.emitError() << "alignment " << alignment
                       << " must be a power of two";
      return signalPassFailure();
    }
    Block &body = func.getBody().front();
    llvm::DenseMap<Operation *, int64_t> index;
    int64_t position = 0;
    for (Operation &op : body)
      index[&op] = position++;
    int64_t last = position; // past the terminator: returned values

    // AdamW writes parameter and moments in place: nothing may read the old
    // values after it.
    for (Operation &op : body) {
      auto adamw = dyn_cast<moe::AdamWOp>(op);
      if (!adamw)
        continue;
      for (Value state :
           {adamw.getParam(), adamw.getExpAvg(), adamw.getExpAvgSq()})
        for (Operation *user : state.getUsers())
          if (user != &op && index.count(user) && index[user] > index[&op]) {
            InFlightDiagnostic diag = user->emitOpError()
                << "reads a state that moe.adamw (op #" << index[&op]
                << ") already updated in place (this op is #"
                << index[user] << ")";
            diag.attachNote(op.getLoc()) << "updated here";
            return signalPassFailure();
          }
    }

    // Buffers and their intervals: device buffers (the arena) and host
    // buffers (moe.offload's results, the pinned host region), each planned
    // on its own.
    FailureOr<Buffers> collected = collectBuffers(body, index, last);
    if (failed(collected))
      return signalPassFailure();
    std::vector<Buffer> &buffers = collected->device;
    std::vector<Buffer> &hostBuffers = collected->host;
    const llvm::DenseMap<Value, size_t> &bufferOf = collected->deviceOf;

    const int64_t arena = placeBuffers(buffers, alignment);
    const int64_t hostBytes = placeBuffers(hostBuffers, alignment);
    if (failed(checkPlacement(buffers)) || failed(checkPlacement(hostBuffers)))
      return signalPassFailure();

    // The most bytes alive at once, a bound no placement can beat.
    int64_t liveBound = liveBytesPeak(buffers);

    Builder builder(&getContext());
    for (Operation &op : body) {
      SmallVector<int64_t> offsets;
      bool any = false;
      for (Value result : op.getResults()) {
        auto it = bufferOf.find(result);
        offsets.push_back(it == bufferOf.end() ? -1
                                               : buffers[it->second].offset);
        any |= it != bufferOf.end();
      }
      if (any)
        op.setAttr(MoeDialect::getArenaOffsetsAttrName(),
                   builder.getDenseI64ArrayAttr(offsets));
      if (auto offload = dyn_cast<moe::OffloadOp>(op))
        op.setAttr(
            MoeDialect::getHostOffsetsAttrName(),
            builder.getDenseI64ArrayAttr(
                {hostBuffers[collected->hostOf.lookup(offload.getResult())]
                     .offset}));
    }
    if (!hostBuffers.empty())
      func->setAttr(MoeDialect::getHostBytesAttrName(),
                    builder.getI64IntegerAttr(hostBytes));
    func->setAttr(MoeDialect::getArenaBytesAttrName(),
                  builder.getI64IntegerAttr(arena));
    func->setAttr(MoeDialect::getArenaLiveBytesAttrName(),
                  builder.getI64IntegerAttr(liveBound));
    numBuffers += buffers.size();
    numHostBuffers += hostBuffers.size();
  }
};

} // namespace

FailureOr<int64_t> mlir::moe::arenaLiveBytes(func::FuncOp func) {
  if (!func.getBody().hasOneBlock())
    return func.emitOpError() << "has " << func.getBody().getBlocks().size()
                              << " blocks; the arena is planned for one";
  Block &body = func.getBody().front();
  llvm::DenseMap<Operation *, int64_t> index;
  int64_t position = 0;
  for (Operation &op : body)
    index[&op] = position++;
  FailureOr<Buffers> buffers = collectBuffers(body, index, position);
  if (failed(buffers))
    return failure();
  return liveBytesPeak(buffers->device);
}
