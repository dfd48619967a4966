//===- Collectives.cpp - Reference execution of shard collectives ---------===//
//
// See Collectives.h. A tensor gathered or scattered along dimension `a` is
// seen as [outer, n, inner] (outer: the dimensions before `a`, inner: those
// after); the communicator concatenates and splits whole buffers, so the
// members' blocks are moved between the middle and the front.
//
//===----------------------------------------------------------------------===//

#include "Collectives.h"

#include "llvm/Support/FormatVariadic.h"

using namespace mlir;
using namespace moec;
using namespace moec::reference;

namespace {


/// Sizes of `shape` before and after dimension `axis`.
std::pair<int64_t, int64_t> outerInner(ArrayRef<int64_t> shape,
                                       int64_t axis) {
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < static_cast<int64_t>(shape.size()); ++d)
    (d < axis ? outer : inner) *= d == axis ? 1 : shape[d];
  return {outer, inner};
}

/// Copies block `[b][o][m]` of a [blocks, outer, middle] buffer to
/// `[o][b][m]`, or back with `toFront`.
HostTensor swapBlocks(const HostTensor &in, int64_t blocks, int64_t outer,
                      int64_t middle, bool toFront) {
  HostTensor out = in;
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t o = 0; o < outer; ++o) {
      int64_t front = (b * outer + o) * middle;
      int64_t back = (o * blocks + b) * middle;
      int64_t from = toFront ? back : front, to = toFront ? front : back;
      if (in.isFloat())
        std::copy_n(in.f32.begin() + from, middle, out.f32.begin() + to);
      else
        std::copy_n(in.i64.begin() + from, middle, out.i64.begin() + to);
    }
  return out;
}

LogicalResult communicatorFailure(Operation *op, const RankContext *context,
                                  const std::string &error) {
  return op->emitOpError() << "on rank " << context->rank << ": " << error;
}

} // namespace

LogicalResult reference::runAllGather(shard::AllGatherOp op,
                                      const RankContext *context,
                                      const HostTensor &input,
                                      HostTensor &result) {
  FailureOr<std::vector<int64_t>> group =
      processGroup(op, op.getGrid(), op.getGridAxes(), context);
  if (failed(group))
    return failure();
  const int64_t axis = op.getGatherAxis().getSExtValue();
  const int64_t size = static_cast<int64_t>(group->size());
  auto [outer, inner] = outerInner(input.shape, axis);
  HostTensor gathered;
  std::string error;
  if (!context->communicator->allGather(context->rank, *group, input,
                                        gathered, error))
    return communicatorFailure(op, context, error);
  // [member][outer][n·inner] -> [outer][member][n·inner].
  result = swapBlocks(gathered, size, outer, input.shape[axis] * inner,
                      /*toFront=*/false);
  result.shape = input.shape;
  result.shape[axis] *= size;
  return success();
}

LogicalResult reference::runReduceScatter(shard::ReduceScatterOp op,
                                          const RankContext *context,
                                          const HostTensor &input,
                                          HostTensor &result) {
  if (op.getReduction() != shard::ReductionKind::Sum)
    return op->emitOpError() << "reference executor only reduces by sum";
  FailureOr<std::vector<int64_t>> group =
      processGroup(op, op.getGrid(), op.getGridAxes(), context);
  if (failed(group))
    return failure();
  const int64_t axis = op.getScatterAxis().getSExtValue();
  const int64_t size = static_cast<int64_t>(group->size());
  if (input.shape[axis] % size != 0)
    return op->emitOpError() << "scatter dimension " << axis << " of size "
                             << input.shape[axis]
                             << " does not split into " << size
                             << " equal chunks";
  const int64_t chunk = input.shape[axis] / size;
  auto [outer, inner] = outerInner(input.shape, axis);
  // [outer][member][chunk·inner] -> [member][outer][chunk·inner].
  HostTensor blocks =
      swapBlocks(input, size, outer, chunk * inner, /*toFront=*/true);
  std::string error;
  if (!context->communicator->reduceScatterSum(context->rank, *group, blocks,
                                               result, error))
    return communicatorFailure(op, context, error);
  result.shape = input.shape;
  result.shape[axis] = chunk;
  return success();
}

LogicalResult reference::runAllReduce(shard::AllReduceOp op,
                                      const RankContext *context,
                                      const HostTensor &input,
                                      HostTensor &result) {
  if (op.getReduction() != shard::ReductionKind::Sum)
    return op->emitOpError() << "reference executor only reduces by sum";
  FailureOr<std::vector<int64_t>> group =
      processGroup(op, op.getGrid(), op.getGridAxes(), context);
  if (failed(group))
    return failure();
  result = input;
  std::string error;
  if (!context->communicator->allReduceSum(context->rank, *group, result,
                                           error))
    return communicatorFailure(op, context, error);
  return success();
}

/// The process group of `context`'s rank that `op`'s grid axes name, in
/// group-rank order. Checks that the grid is the mesh's.
FailureOr<std::vector<int64_t>>
reference::processGroup(Operation *op, StringRef gridName,
                                        ArrayRef<int16_t> gridAxes,
                                        const RankContext *context) {
  if (!context || !context->mesh || !context->communicator)
    return op->emitOpError()
           << "needs a rank: run the partitioned function on simulated ranks";
  auto grid = SymbolTable::lookupNearestSymbolFrom<shard::GridOp>(
      op, FlatSymbolRefAttr::get(op->getContext(), gridName));
  const plan::Mesh &mesh = *context->mesh;
  SmallVector<int64_t> meshShape = {mesh.replicas(), mesh.shardDegree(),
                                    mesh.expertParallelDegree()};
  if (!grid || ArrayRef<int64_t>(grid.getShape()) != ArrayRef(meshShape))
    return op->emitOpError() << "grid @" << gridName
                             << " is not the (R, H, P) = (" << meshShape[0]
                             << ", " << meshShape[1] << ", " << meshShape[2]
                             << ") mesh the ranks run on";
  SmallVector<int16_t> axes(gridAxes.begin(), gridAxes.end());
  std::optional<plan::GroupKind> kind;
  if (axes == SmallVector<int16_t>{0})
    kind = plan::GroupKind::Replica;
  else if (axes == SmallVector<int16_t>{1})
    kind = plan::GroupKind::Shard;
  else if (axes == SmallVector<int16_t>{2})
    kind = plan::GroupKind::Expert;
  else if (axes == SmallVector<int16_t>{0, 2})
    kind = plan::GroupKind::DenseReplica;
  else if (axes == SmallVector<int16_t>{0, 1, 2})
    kind = plan::GroupKind::World;
  else if (axes.empty())
    return std::vector<int64_t>{context->rank};
  if (!kind) {
    InFlightDiagnostic diag = op->emitOpError()
                              << "grid_axes [";
    llvm::interleaveComma(axes, diag);
    return diag << "] name no process group of the mesh; the groups are [0] "
                   "(replica), [1] (shard), [2] (expert), [0, 2] (dense "
                   "replica) and [0, 1, 2] (world)";
  }
  return context->mesh->groupOf(*kind, context->rank).ranks;
}
