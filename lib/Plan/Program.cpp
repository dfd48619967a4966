//===- Program.cpp - What a partitioned training step holds and sends -----===//
//
// See moec/Plan/Program.h.
//
//===----------------------------------------------------------------------===//

#include "moec/Plan/Program.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "llvm/ADT/TypeSwitch.h"

#include <map>
#include <tuple>

using namespace mlir;
using namespace moec;
using namespace moec::plan;

llvm::StringRef moec::plan::stringifyCollectiveKind(CollectiveKind kind) {
  switch (kind) {
  case CollectiveKind::AllGather:
    return "all_gather";
  case CollectiveKind::ReduceScatter:
    return "reduce_scatter";
  case CollectiveKind::AllReduce:
    return "all_reduce";
  case CollectiveKind::AllToAll:
    return "all_to_all";
  }
  llvm_unreachable("unknown collective");
}

namespace {

/// Bytes of a static tensor type.
int64_t bytesOf(Type type) {
  auto tensor = cast<RankedTensorType>(type);
  return tensor.getNumElements() *
         static_cast<int64_t>(tensor.getElementTypeBitWidth() / 8);
}

/// The group a collective's grid axes name (docs/partitioning.md).
std::optional<GroupKind> groupOf(ArrayRef<int16_t> axes) {
  SmallVector<int16_t> sorted(axes);
  llvm::sort(sorted);
  if (sorted == ArrayRef<int16_t>{2})
    return GroupKind::Expert;
  if (sorted == ArrayRef<int16_t>{1})
    return GroupKind::Shard;
  if (sorted == ArrayRef<int16_t>{0})
    return GroupKind::Replica;
  if (sorted == ArrayRef<int16_t>{0, 2})
    return GroupKind::DenseReplica;
  if (sorted == ArrayRef<int16_t>{0, 1, 2})
    return GroupKind::World;
  return std::nullopt;
}

/// A collective call: its kind, grid axes and buffer bytes.
struct Call {
  CollectiveKind kind;
  ArrayRef<int16_t> axes;
  /// The buffer whose bytes the call moves, `multiple` times: for token
  /// dispatch and combine, one row (its last dimension) per slot; for the
  /// all-gather dispatcher, the group's P copies of the tokens.
  RankedTensorType buffer;
  int64_t multiple = 1;
  /// ProgramCollective::perMicroStep.
  bool perMicroStep = true;
};

/// Whether `v` is a function argument, or a cast of one: a parameter shard.
bool isParameterShard(Value v) {
  if (auto cast = v.getDefiningOp<arith::TruncFOp>())
    v = cast.getIn();
  return isa<BlockArgument>(v);
}

/// One row (the last dimension of `rows`) per element of `slots`.
Call perSlot(ArrayRef<int16_t> axes, Value rows, Value slots) {
  auto rowType = cast<RankedTensorType>(rows.getType());
  auto slotType = cast<RankedTensorType>(slots.getType());
  return Call{CollectiveKind::AllToAll, axes,
              RankedTensorType::get({rowType.getShape().back()},
                                    rowType.getElementType()),
              slotType.hasStaticShape() ? slotType.getNumElements()
                                        : ShapedType::kDynamic};
}

/// The call `op` makes, if it is a collective.
std::optional<Call> callOf(Operation *op) {
  return llvm::TypeSwitch<Operation *, std::optional<Call>>(op)
      .Case([](shard::AllGatherOp g) {
        return Call{CollectiveKind::AllGather, g.getGridAxes(),
                    cast<RankedTensorType>(g.getResult().getType()), 1,
                    isParameterShard(g.getInput())};
      })
      .Case([](shard::ReduceScatterOp r) {
        return Call{CollectiveKind::ReduceScatter, r.getGridAxes(),
                    cast<RankedTensorType>(r.getInput().getType())};
      })
      .Case([](shard::AllReduceOp r) {
        return Call{CollectiveKind::AllReduce, r.getGridAxes(),
                    cast<RankedTensorType>(r.getInput().getType()), 1,
                    /*perMicroStep=*/false};
      })
      .Case([](mlir::moe::DispatchOp d) -> Call {
        // The all-gather dispatcher gathers the group's tokens.
        if (d.getDispatcher() == mlir::moe::Dispatcher::all_gather)
          return Call{CollectiveKind::AllGather, d.getGridAxes(),
                      cast<RankedTensorType>(d.getInput().getType()),
                      d.getGroupSize()};
        // Every slot (token, choice) sends its token's row.
        return perSlot(d.getGridAxes(), d.getInput(), d.getExperts());
      })
      .Case([](mlir::moe::CombineOp c) -> Call {
        // The all-gather dispatcher reduce-scatters the group's outputs.
        if (c.getDispatcher() == mlir::moe::Dispatcher::all_gather)
          return Call{
              CollectiveKind::ReduceScatter, c.getGridAxes(),
              cast<RankedTensorType>(c.getResult().getType()),
              cast<RankedTensorType>(c.getCounts().getType()).getDimSize(0)};
        // Every slot's row comes back to the rank that sent it.
        return perSlot(c.getGridAxes(), c.getRows(), c.getExperts());
      })
      .Case([](mlir::moe::TokenShuffleOp s) {
        return Call{CollectiveKind::AllToAll, s.getGridAxes(),
                    cast<RankedTensorType>(s.getInput().getType())};
      })
      .Default([](Operation *) { return std::nullopt; });
}

} // namespace

FailureOr<ProgramStateBytes> moec::plan::readStateBytes(func::FuncOp step) {
  ProgramStateBytes bytes;
  for (BlockArgument arg : step.getArguments()) {
    unsigned i = arg.getArgNumber();
    auto type = dyn_cast<RankedTensorType>(arg.getType());
    bool isParameter =
        step.getArgAttr(i, mlir::moe::MoeDialect::getParameterAttrName()) !=
        nullptr;
    bool isState =
        isParameter ||
        step.getArgAttr(i, mlir::moe::MoeDialect::getExpAvgAttrName()) ||
        step.getArgAttr(i, mlir::moe::MoeDialect::getExpAvgSqAttrName());
    if (isState && (!type || !type.hasStaticShape()))
      return step.emitOpError() << "state argument " << i
                                << " has no static shape: " << arg.getType();
    if (isParameter) {
      bytes.parameters += bytesOf(type);
      for (Operation *user : arg.getUsers())
        if (auto update = dyn_cast<mlir::moe::AdamWOp>(user);
            update && update.getParam() == arg)
          bytes.gradients += bytesOf(update.getGrad().getType());
    } else if (isState) {
      bytes.optimizerStates += bytesOf(type);
    }
  }
  return bytes;
}

int64_t ProgramFootprint::totalBytes(CollectiveKind kind,
                                     GroupKind group) const {
  int64_t total = 0;
  for (const ProgramCollective &c : collectives)
    if (c.kind == kind && c.group == group)
      total += c.bytes * c.calls;
  return total;
}

FailureOr<ProgramFootprint>
moec::plan::readProgramFootprint(func::FuncOp step) {
  FailureOr<ProgramStateBytes> state = readStateBytes(step);
  if (failed(state))
    return failure();
  std::map<std::tuple<CollectiveKind, GroupKind, int64_t, bool>,
           ProgramCollective>
      byKind;
  WalkResult walk = step.walk([&](Operation *op) {
    std::optional<Call> call = callOf(op);
    if (!call)
      return WalkResult::advance();
    std::optional<GroupKind> group = groupOf(call->axes);
    if (!group) {
      op->emitOpError() << "runs on grid axes that name no group of the "
                           "mesh; expected [2], [1], [0], [0, 2] or "
                           "[0, 1, 2]";
      return WalkResult::interrupt();
    }
    if (!call->buffer.hasStaticShape() ||
        ShapedType::isDynamic(call->multiple)) {
      op->emitOpError() << "moves a buffer of dynamic size: the plan needs "
                           "static sizes";
      return WalkResult::interrupt();
    }
    const int64_t bytes = bytesOf(call->buffer) * call->multiple;
    ProgramCollective &entry =
        byKind[{call->kind, *group, bytes, call->perMicroStep}];
    entry.kind = call->kind;
    entry.group = *group;
    entry.bytes = bytes;
    entry.perMicroStep = call->perMicroStep;
    entry.calls += 1;
    return WalkResult::advance();
  });
  if (walk.wasInterrupted())
    return failure();
  ProgramFootprint footprint{*state, {}};
  for (auto &[key, entry] : byKind)
    footprint.collectives.push_back(entry);
  return footprint;
}
