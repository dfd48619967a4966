//===- TrainStepTransfers.cpp - Offloaded activations of @train_step ------===//
//
// See TrainStepPrinter.h (activation offloading). This part numbers the
// step's moe.offload and moe.fetch, chooses where the compute stream and
// each fetch wait for them, and prints their copies.
//
//===----------------------------------------------------------------------===//

#include "TrainStepPrinter.h"

#include "mlir/Dialect/Tensor/IR/Tensor.h"

using namespace mlir;
using mlir::moe::MoeDialect;

namespace moec::detail {

std::optional<std::pair<int64_t, int64_t>>
TrainStepPrinter::arenaRangeOf(Value v) {
  while (isa_and_nonnull<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(
      v.getDefiningOp()))
    v = v.getDefiningOp()->getOperand(0);
  auto result = dyn_cast<OpResult>(v);
  auto type = dyn_cast<RankedTensorType>(v.getType());
  if (!result || !type)
    return std::nullopt;
  auto offsets = result.getOwner()->getAttrOfType<DenseI64ArrayAttr>(
      MoeDialect::getArenaOffsetsAttrName());
  if (!offsets || offsets[result.getResultNumber()] < 0)
    return std::nullopt;
  int64_t begin = offsets[result.getResultNumber()];
  int64_t end =
      type.hasStaticShape()
          ? begin + byteSize(type)
          : step->getAttrOfType<IntegerAttr>(
                     MoeDialect::getArenaBytesAttrName())
                .getInt();
  return std::make_pair(begin, end);
}

LogicalResult TrainStepPrinter::scheduleTransfers() {
  struct Pending {
    int id;
    std::pair<int64_t, int64_t> bytes;
  };
  auto overlaps = [](std::pair<int64_t, int64_t> a,
                     std::pair<int64_t, int64_t> b) {
    return a.first < b.second && b.first < a.second;
  };
  // Offloads the compute stream has not waited for, directly or through a
  // fetch it waited for; the offloads each fetch waits for.
  std::vector<Pending> pending;
  llvm::DenseMap<int, SmallVector<int>> offloadsBeforeFetch;
  int offloads = 0, fetches = 0;
  Block &block = step.getBody().front();
  for (Operation &op : block) {
    if (auto joins = fetchJoinsBefore.find(&op);
        joins != fetchJoinsBefore.end())
      for (int fetch : joins->second)
        llvm::erase_if(pending, [&](const Pending &p) {
          return llvm::is_contained(offloadsBeforeFetch[fetch], p.id);
        });
    if (auto offload = dyn_cast<moe::OffloadOp>(op)) {
      std::optional<std::pair<int64_t, int64_t>> bytes =
          arenaRangeOf(offload.getInput());
      if (!bytes)
        return offload.emitOpError()
               << "offloads a value outside the arena; the CUDA printer "
                  "offloads planned activations";
      if (!op.getAttrOfType<DenseI64ArrayAttr>(
              MoeDialect::getHostOffsetsAttrName()))
        return offload.emitOpError()
               << "has no moe.host_offsets; run moe-plan-memory before the "
                  "CUDA printer";
      transferIds[&op] = offloads;
      pending.push_back({offloads++, *bytes});
      continue;
    }
    if (auto fetch = dyn_cast<moe::FetchOp>(op)) {
      auto from = fetch.getInput().getDefiningOp<moe::OffloadOp>();
      std::optional<std::pair<int64_t, int64_t>> bytes =
          arenaRangeOf(fetch.getResult());
      int id = fetches++;
      transferIds[&op] = id;
      SmallVector<int> &waits = offloadsBeforeFetch[id];
      waits.push_back(transferIds.lookup(from));
      for (const Pending &p : pending)
        if (p.id != waits.front() && bytes && overlaps(p.bytes, *bytes)) {
          waits.push_back(p.id);
          fetchWaitsFor[&op].push_back(p.id);
        }
      // The compute stream waits right before the first reader of the
      // fetched value or of a view of it.
      llvm::DenseSet<Value> aliases = {fetch.getResult()};
      for (Operation *next = op.getNextNode(); next;
           next = next->getNextNode()) {
        bool reads = llvm::any_of(next->getOperands(), [&](Value v) {
          return aliases.contains(v);
        });
        if (reads &&
            isa<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(next)) {
          aliases.insert(next->getResult(0));
        } else if (reads) {
          fetchJoinsBefore[next].push_back(id);
          break;
        }
      }
      continue;
    }
    // The compute stream waits for an offload's copy at its join, where
    // the memory plan stops holding the value's bytes.
    if (auto join = dyn_cast<moe::OffloadJoinOp>(op)) {
      int id = transferIds.lookup(join.getInput().getDefiningOp());
      llvm::erase_if(pending, [&](const Pending &p) {
        if (p.id == id)
          offloadJoinsBefore[&op].push_back(id);
        return p.id == id;
      });
      continue;
    }
    // An op that writes bytes an unfinished offload reads waits for it
    // (the memory plan holds them until the join: a step without joins);
    // the step ends with every offload finished.
    SmallVector<std::pair<int64_t, int64_t>> written;
    for (Value result : op.getResults())
      if (std::optional<std::pair<int64_t, int64_t>> bytes =
              isa<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(op)
                  ? std::nullopt
                  : arenaRangeOf(result))
        written.push_back(*bytes);
    bool end = isa<func::ReturnOp>(op);
    llvm::erase_if(pending, [&](const Pending &p) {
      bool wait = end || llvm::any_of(written, [&](auto bytes) {
                    return overlaps(p.bytes, bytes);
                  });
      if (wait)
        offloadJoinsBefore[&op].push_back(p.id);
      return wait;
    });
  }
  if (fetches > 0 || offloads > 0) {
    auto bytes =
        step->getAttrOfType<IntegerAttr>(MoeDialect::getHostBytesAttrName());
    if (!bytes)
      return step.emitError() << "offloads activations but has no "
                                 "moe.host_bytes; run moe-plan-memory before "
                                 "the CUDA printer";
    hostBytes = bytes.getInt();
  }
  return success();
}

LogicalResult TrainStepPrinter::printTransfer(Operation &op) {
  body += fmt::format("  moert::kernels::mark(ctx, \"{}\");\n",
                      op.getName().getStringRef().str());
  int id = transferIds.lookup(&op);
  // The bytes of `v`: a literal, or its received rows times a row's bytes.
  auto bytesOf = [&](Value v) {
    RankedTensorType type = typeOf(v);
    int64_t row = elementBytes(v);
    for (int64_t d : type.getShape().drop_front())
      row *= d;
    if (type.hasStaticShape())
      return std::to_string(byteSize(type));
    return fmt::format("{} * {}", rowsOf(v), row);
  };
  if (auto offload = dyn_cast<moe::OffloadOp>(op)) {
    FailureOr<std::string> from = pointer(op, offload.getInput());
    if (failed(from))
      return failure();
    int64_t host = op.getAttrOfType<DenseI64ArrayAttr>(
        MoeDialect::getHostOffsetsAttrName())[0];
    if (auto rows = dynamicRows.find(offload.getInput());
        rows != dynamicRows.end())
      dynamicRows[offload.getResult()] = rows->second;
    hostOffsets[offload.getResult()] = host;
    body += fmt::format("  moert::kernels::offloadToHost(ctx, {}, {}, {}, "
                        "{}); // layer {}\n",
                        id, *from, host, bytesOf(offload.getInput()),
                        offload.getLayer());
    return success();
  }
  auto fetch = cast<moe::FetchOp>(op);
  if (failed(setResultPointers(op)))
    return failure();
  if (auto rows = dynamicRows.find(fetch.getInput()); rows != dynamicRows.end())
    dynamicRows[fetch.getResult()] = rows->second;
  for (int offload : fetchWaitsFor.lookup(&op))
    body += fmt::format("  moert::kernels::fetchAfterOffload(ctx, {});\n",
                        offload);
  auto from = fetch.getInput().getDefiningOp<moe::OffloadOp>();
  body += fmt::format("  moert::kernels::fetchFromHost(ctx, {}, {}, {}, {}, "
                      "{}); // layer {}\n",
                      id, transferIds.lookup(from), typed(fetch.getResult()),
                      hostOffsets.lookup(fetch.getInput()),
                      bytesOf(fetch.getResult()), fetch.getLayer());
  return success();
}

} // namespace moec::detail
