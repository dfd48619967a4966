//===- CollectiveSchedule.cpp - Streams and joins of a step's collectives -===//
//
// Implements scheduleCollectives (CollectiveSchedule.h): the streams of a
// partitioned step's collectives and where the compute stream joins each.
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/CollectiveSchedule.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Interfaces/FunctionInterfaces.h"
#include "llvm/ADT/DenseSet.h"

using namespace mlir;
using namespace mlir::moe;

namespace {

bool isCollective(Operation &op) {
  return isa<shard::AllGatherOp, shard::ReduceScatterOp, shard::AllReduceOp,
             DispatchOp, CombineOp, TokenShuffleOp>(op);
}

/// Whether `gather` gathers a parameter's shard: a block argument (the
/// state), or its bf16 cast.
bool gathersParameter(shard::AllGatherOp gather) {
  Value input = gather.getInput();
  if (auto cast = input.getDefiningOp<arith::TruncFOp>())
    input = cast.getIn();
  return isa<BlockArgument>(input);
}

/// The decoder layer of the parameter `update` updates, if it is a decoder
/// layer's.
std::optional<int64_t> layerOf(AdamWOp update) {
  auto param = dyn_cast<BlockArgument>(update.getParam());
  auto func =
      param ? dyn_cast<FunctionOpInterface>(param.getOwner()->getParentOp())
            : FunctionOpInterface();
  if (!func)
    return std::nullopt;
  auto name = func.getArgAttrOfType<StringAttr>(
      param.getArgNumber(), MoeDialect::getParameterAttrName());
  if (!name)
    return std::nullopt;
  return getDecoderLayerOfParameter(name.getValue());
}

} // namespace

llvm::MapVector<Operation *, ScheduledCollective>
mlir::moe::scheduleCollectives(Block &block) {
  llvm::MapVector<Operation *, ScheduledCollective> schedule;
  for (Operation &op : block)
    if (isCollective(op)) {
      ScheduledCollective c;
      c.id = static_cast<int>(schedule.size());
      schedule[&op] = c;
    }

  // The gradient reductions: what a moe.adamw reads as its gradient, an
  // all-reduce and the reduce-scatter before it, each there or not; with
  // the layer of the parameter they reduce for.
  llvm::DenseMap<Operation *, std::optional<int64_t>> gradientLayer;
  for (Operation &op : block) {
    auto update = dyn_cast<AdamWOp>(op);
    if (!update)
      continue;
    Value v = update.getGrad();
    if (auto reduce = v.getDefiningOp<shard::AllReduceOp>()) {
      gradientLayer[reduce] = layerOf(update);
      v = reduce.getInput();
    }
    if (auto scatter = v.getDefiningOp<shard::ReduceScatterOp>())
      gradientLayer[scatter] = layerOf(update);
  }
  // Runs of consecutive gradient reductions of one layer, in program
  // order: a reduction is joined no later than the start of the second run
  // after its own.
  SmallVector<Operation *> runStarts;
  llvm::DenseMap<Operation *, size_t> runOf;
  std::optional<std::optional<int64_t>> runLayer;
  for (auto &[op, c] : schedule) {
    auto layer = gradientLayer.find(op);
    if (layer == gradientLayer.end())
      continue;
    c.stream = CollectiveStream::Gradient;
    if (!runLayer || *runLayer != layer->second) {
      runLayer = layer->second;
      runStarts.push_back(op);
    }
    runOf[op] = runStarts.size() - 1;
  }

  // Joins, from the last collective back, so that a reduction read by a
  // later one on its own stream is joined with it.
  for (auto &[op, c] : llvm::reverse(schedule)) {
    auto gather = dyn_cast<shard::AllGatherOp>(op);
    const bool gradient = c.stream == CollectiveStream::Gradient;
    if (!gradient && !(gather && gathersParameter(gather)))
      continue;
    Operation *bound = nullptr;
    if (gradient && runOf[op] + 2 < runStarts.size())
      bound = runStarts[runOf[op] + 2];
    // The first op off the collective's stream that reads its result or a
    // view of it; a reader on its stream passes on its own join.
    llvm::DenseSet<Value> aliases(op->getResults().begin(),
                                  op->getResults().end());
    Operation *join = bound;
    for (Operation *next = op->getNextNode(); next && next != join;
         next = next->getNextNode()) {
      if (!llvm::any_of(next->getOperands(),
                        [&](Value v) { return aliases.contains(v); }))
        continue;
      if (isa<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(next)) {
        aliases.insert(next->getResult(0));
        continue;
      }
      auto reader = schedule.find(next);
      if (reader != schedule.end() && reader->second.stream == c.stream) {
        Operation *readerJoin =
            reader->second.join ? reader->second.join : next->getNextNode();
        if (!join || readerJoin->isBeforeInBlock(join))
          join = readerJoin;
        continue;
      }
      join = next;
      break;
    }
    // A gather read first by the update is joined at once: the update
    // writes the state in place.
    if (join && isa<AdamWOp>(join) && !gradient)
      join = nullptr;
    c.join = join;
  }
  return schedule;
}
