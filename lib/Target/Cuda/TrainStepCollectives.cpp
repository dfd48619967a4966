//===- TrainStepCollectives.cpp - Collectives of @train_step --------------===//
//
// See TrainStepPrinter.h. This part prints the collectives of a
// partitioned step (shard.all_reduce, all_gather, reduce_scatter; the
// load-balancing statistics' and target counts' reductions) on the streams
// moe::scheduleCollectives chose, with their joins, and the expert-parallel
// ops (moe.dispatch, moe.combine, moe.token_shuffle) with the host-side
// row counts they set.
//
//===----------------------------------------------------------------------===//

#include "TrainStepPrinter.h"

#include "Printers.h"

#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;

namespace {

/// The printed mask of the mesh axes `axes` (moert::meshAxes).
std::string axesMask(ArrayRef<int16_t> axes) {
  std::string list;
  for (int16_t a : axes)
    list += (list.empty() ? "" : ", ") + std::to_string(a);
  return "moert::meshAxes({" + list + "})";
}

} // namespace

namespace moec::detail {

FailureOr<int64_t> TrainStepPrinter::groupSize(Operation &op,
                                               StringRef gridName,
                                               ArrayRef<int16_t> axes) {
  if (!grid || grid.getSymName() != gridName) {
    op.emitOpError() << "runs on grid @" << gridName
                     << ", which is not the program's mesh";
    return failure();
  }
  int64_t size = 1;
  for (int16_t axis : axes)
    size *= grid.getShape()[axis];
  return size;
}

std::string TrainStepPrinter::rowsOf(Value v) {
  auto it = dynamicRows.find(v);
  if (it != dynamicRows.end())
    return it->second.first;
  return std::to_string(leadingCount(typeOf(v)));
}

int64_t TrainStepPrinter::rowBoundOf(Value v) {
  auto it = dynamicRows.find(v);
  if (it != dynamicRows.end())
    return it->second.second;
  return leadingCount(typeOf(v));
}

void TrainStepPrinter::scheduleCollectives() {
  // Every collective runs on its stream in program order, so that a group's
  // collectives are issued in one order on every rank, with a scratch of
  // the stream's own (moe::scheduleCollectives says which stream, and
  // where the compute stream joins each).
  collectives = moe::scheduleCollectives(step.getBody().front());
  for (auto &[op, c] : collectives)
    if (c.join)
      joinsBefore[c.join].push_back(c.id);
}

std::string TrainStepPrinter::forkCollective(Operation &op) {
  const moe::ScheduledCollective &c = collectives.find(&op)->second;
  body += fmt::format(
      "  const moert::kernels::Context collective{0} = "
      "moert::kernels::{1}(ctx, {0}); // joined {2}\n",
      c.id,
      c.stream == moe::CollectiveStream::Gradient ? "forkGradientReduction"
                                                  : "forkCollective",
      c.join ? "before " + c.join->getName().getStringRef().str()
             : std::string("at once"));
  return fmt::format("collective{}", c.id);
}

void TrainStepPrinter::endCollective(Operation &op) {
  const moe::ScheduledCollective &c = collectives.find(&op)->second;
  body += fmt::format("  moert::kernels::endCollective(collective{0}, {0});\n",
                      c.id);
  if (!c.join)
    body +=
        fmt::format("  moert::kernels::joinCollective(ctx, {});\n", c.id);
}

LogicalResult TrainStepPrinter::printCollective(Operation &op) {
  // A gather or scatter along `axis` of the rank's `local` block.
  auto printBlocks = [&](const char *function, Value in, Value out,
                         RankedTensorType local, int64_t axis,
                         StringRef gridName,
                         ArrayRef<int16_t> axes) -> LogicalResult {
    FailureOr<int64_t> size = groupSize(op, gridName, axes);
    FailureOr<std::string> c = cType(local);
    if (failed(size) || failed(c) || failed(pointer(op, in)))
      return failure();
    int64_t outer = 1;
    for (int64_t d : local.getShape().take_front(axis))
      outer *= d;
    int64_t inner = outer == 0 ? 0 : local.getNumElements() / outer;
    std::string context = forkCollective(op);
    body += fmt::format(
        "  moert::kernels::{}<{}>({}, {}, {}, {}, {}, {}, {});\n", function,
        *c, context, axesMask(axes), *size, typed(in), typed(out), outer,
        inner);
    endCollective(op);
    return success();
  };
  // A static unit-stride slice of `whole` as moert::kernels::Slice.
  auto sliceOf = [&](OffsetSizeAndStrideOpInterface s,
                     RankedTensorType whole) -> FailureOr<std::string> {
    if (!s.hasUnitStride() || !ShapedType::isStaticShape(s.getStaticSizes()) ||
        !ShapedType::isStaticShape(s.getStaticOffsets()) ||
        s.getStaticSizes().size() != static_cast<size_t>(whole.getRank()))
      return op.emitOpError() << "is not a static unit-stride slice of "
                              << whole
                              << " of full rank; the CUDA printer copies "
                                 "only those";
    return fmt::format("moert::kernels::Slice<{}>{{{{{}}}, {{{}}}, {{{}}}}}",
                       whole.getRank(), joined(s.getStaticSizes()),
                       joined(whole.getShape()),
                       joined(s.getStaticOffsets()));
  };
  // The shard reductions the printer lowers: sums.
  auto checkSum = [](Operation *collective,
                     shard::ReductionKind kind) -> LogicalResult {
    if (kind == shard::ReductionKind::Sum)
      return success();
    return collective->emitOpError()
           << "reduces with " << shard::stringifyReductionKind(kind)
           << "; the CUDA printer lowers sums only";
  };

  return TypeSwitch<Operation *, LogicalResult>(&op)
      .Case([&](tensor::ExtractSliceOp e) -> LogicalResult {
        FailureOr<std::string> slice = sliceOf(e, e.getSourceType());
        if (failed(slice) || failed(pointer(op, e.getSource())))
          return failure();
        body += fmt::format(
            "  moert::kernels::extractSlice(ctx, {}, {}, {});\n",
            typed(e.getSource()), *slice, typed(e.getResult()));
        return success();
      })
      .Case([&](tensor::InsertSliceOp i) -> LogicalResult {
        FailureOr<std::string> slice = sliceOf(i, i.getDestType());
        if (failed(slice) || failed(pointer(op, i.getSource())))
          return failure();
        Value result = i.getResult();
        int64_t n = typeOf(result).getNumElements();
        std::string c = *cType(result.getType());
        // The destination's values first: a splat constant is filled in,
        // a buffer copied unless the result is in place.
        if (auto splat = constants.find(i.getDest()); splat != constants.end()) {
          body += fmt::format(
              "  moert::kernels::fillValue<{}>(ctx, {}, {}, {});\n", c,
              floatLiteral(splat->second), n, typed(result));
        } else {
          FailureOr<std::string> dest = pointer(op, i.getDest());
          if (failed(dest))
            return failure();
          if (*dest != typed(result))
            body += fmt::format(
                "  MOERT_CUDA_CHECK(cudaMemcpyAsync({}, {}, {}, "
                "cudaMemcpyDeviceToDevice, ctx.stream));\n",
                typed(result), *dest, byteSize(typeOf(result)));
        }
        body += fmt::format("  moert::kernels::insertSlice(ctx, {}, {}, {});\n",
                            typed(i.getSource()), *slice, typed(result));
        return success();
      })
      .Case([&](shard::AllGatherOp g) {
        return printBlocks("allGather", g.getInput(), g.getResult(),
                           typeOf(g.getInput()),
                           g.getGatherAxis().getSExtValue(), g.getGrid(),
                           g.getGridAxes());
      })
      .Case([&](shard::ReduceScatterOp r) -> LogicalResult {
        if (failed(checkSum(r, r.getReduction())))
          return failure();
        return printBlocks("reduceScatter", r.getInput(), r.getResult(),
                           typeOf(r.getResult()),
                           r.getScatterAxis().getSExtValue(), r.getGrid(),
                           r.getGridAxes());
      })
      .Case([&](shard::AllReduceOp r) -> LogicalResult {
        if (failed(checkSum(r, r.getReduction())))
          return failure();
        FailureOr<int64_t> size = groupSize(op, r.getGrid(), r.getGridAxes());
        FailureOr<std::string> c = cType(r.getResult().getType());
        if (failed(size) || failed(c) || failed(pointer(op, r.getInput())))
          return failure();
        std::string context = forkCollective(op);
        body += fmt::format(
            "  moert::kernels::allReduceSum<{}>({}, {}, {}, {}, {}, {});\n",
            *c, context, axesMask(r.getGridAxes()), *size,
            typed(r.getInput()), typed(r.getResult()),
            typeOf(r.getResult()).getNumElements());
        endCollective(op);
        return success();
      })
      .Case([&](linalg::BroadcastOp b) -> LogicalResult {
        if (typeOf(b.getInput()).getRank() != 0)
          return b.emitOpError() << "broadcasts " << b.getInput().getType()
                                 << "; the CUDA printer broadcasts scalars "
                                    "only";
        Value result = b->getResult(0);
        FailureOr<std::string> c = cType(result.getType());
        if (failed(c) || failed(pointer(op, b.getInput())))
          return failure();
        body += fmt::format("  moert::kernels::fill<{}>(ctx, {}, {}, {});\n",
                            *c, typed(b.getInput()),
                            typeOf(result).getNumElements(), typed(result));
        return success();
      });
}

LogicalResult TrainStepPrinter::printExpertParallel(Operation &op) {
  auto shape = [](Value v) { return typeOf(v).getShape(); };
  auto elementType = [](Value v) { return *cType(v.getType()); };
  // The routed ops: their group must be the counts' P.
  auto routedGroup = [&](StringRef gridName, ArrayRef<int16_t> axes,
                         Value counts) -> FailureOr<int64_t> {
    FailureOr<int64_t> size = groupSize(op, gridName, axes);
    if (failed(size))
      return failure();
    if (*size != shape(counts)[0]) {
      op.emitOpError() << "runs on a group of " << *size
                       << " ranks but its counts are "
                       << counts.getType();
      return failure();
    }
    return size;
  };
  auto dispatcherName = [](moe::Dispatcher d) {
    return d == moe::Dispatcher::all_to_all ? "AllToAll" : "AllGather";
  };
  // Layers' logits as a host array named `name` (the router losses' form).
  auto logitList = [&](ValueRange logits, StringRef name,
                       bool &ok) -> std::string {
    RankedTensorType t = typeOf(logits[0]);
    for (Value v : logits)
      if (typeOf(v) != t) {
        op.emitOpError() << "takes logits of types " << t << " and "
                         << typeOf(v) << "; the CUDA kernels need one shape";
        ok = false;
        return "";
      }
    std::string list = pointerList(op, logits, ok);
    return fmt::format("    const {} *{}[] = {{{}}};\n", *cType(t),
                       name.str(), list);
  };
  return TypeSwitch<Operation *, LogicalResult>(&op)
      .Case([&](moe::DispatchOp d) -> LogicalResult {
        FailureOr<int64_t> size =
            routedGroup(d.getGrid(), d.getGridAxes(), d.getCounts());
        bool ok = true;
        std::string args = pointerList(op, {d.getInput(), d.getExperts()}, ok);
        if (failed(size) || !ok ||
            (d.getGates() && failed(pointer(op, d.getGates()))))
          return failure();
        int64_t tokens = leadingCount(typeOf(d.getExperts()));
        int64_t k = shape(d.getExperts()).back();
        int64_t hidden = shape(d.getInput()).back();
        int64_t local = shape(d.getCounts())[1];
        int64_t bound = *d.getReceiveRowBound(); // static experts: verified
        std::string rows = fmt::format("received{}", dynamicRows.size());
        std::string t = elementType(d.getInput());
        std::string context = forkCollective(op);
        body += fmt::format(
            "  const int64_t {} = moert::kernels::dispatch{}<{}>({}, {}, {}, "
            "{}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {});\n",
            rows, dispatcherName(d.getDispatcher()), t, context,
            axesMask(d.getGridAxes()), *size, args,
            d.getGates() ? typed(d.getGates()) : "nullptr", tokens, k, hidden,
            local, bound, typed(d.getRows()), typed(d.getRowExperts()),
            typed(d.getCounts()),
            d.getRowGates() ? typed(d.getRowGates()) : "nullptr");
        endCollective(op);
        for (Value r : {d.getRows(), d.getRowExperts(), d.getRowGates()})
          if (r)
            dynamicRows[r] = {rows, bound};
        return success();
      })
      .Case([&](moe::CombineOp c) -> LogicalResult {
        FailureOr<int64_t> size =
            routedGroup(c.getGrid(), c.getGridAxes(), c.getCounts());
        bool ok = true;
        std::string args = pointerList(
            op, {c.getRows(), c.getExperts(), c.getCounts()}, ok);
        if (failed(size) || !ok)
          return failure();
        int64_t tokens = leadingCount(typeOf(c.getExperts()));
        int64_t k = shape(c.getExperts()).back();
        int64_t width = shape(c.getRows()).back();
        int64_t local = shape(c.getCounts())[1];
        int64_t bound = rowBoundOf(c.getRows());
        std::string context = forkCollective(op);
        body += fmt::format(
            "  moert::kernels::combine{}<{}>({}, {}, {}, {}, {}, {}, {}, {}, "
            "{}, {});\n",
            dispatcherName(c.getDispatcher()), elementType(c.getRows()),
            context, axesMask(c.getGridAxes()), *size, args, tokens, k, width,
            local, bound, typed(c.getResult()));
        endCollective(op);
        return success();
      })
      .Case([&](moe::TokenShuffleOp s) -> LogicalResult {
        FailureOr<int64_t> size =
            groupSize(op, s.getGrid(), s.getGridAxes());
        bool ok = true;
        std::string args = pointerList(op, {s.getInput(), s.getStep()}, ok);
        if (failed(size) || !ok)
          return failure();
        int64_t tokens = leadingCount(typeOf(s.getInput()));
        int64_t width = shape(s.getInput()).back();
        std::string context = forkCollective(op);
        body += fmt::format(
            "  moert::kernels::tokenShuffle<{}>({}, {}, {}, {}, {}ull, {}, "
            "{}, {}, {});\n",
            elementType(s.getInput()), context, axesMask(s.getGridAxes()),
            *size, args, static_cast<uint64_t>(s.getSeed()),
            s.getInverse() ? "true" : "false", tokens, width,
            typed(s.getResult()));
        endCollective(op);
        return success();
      })
      .Case([&](moe::TargetCountOp t) -> LogicalResult {
        // Labels are int64: the printer holds no other integer type.
        FailureOr<std::string> labels = pointer(op, t.getLabels());
        if (failed(labels))
          return failure();
        auto s = shape(t.getLabels());
        body += fmt::format(
            "  moert::kernels::targetCount(ctx, {}, {}, {}, {}, {});\n",
            *labels, s[0], s[1], static_cast<int64_t>(t.getIgnoreIndex()),
            typed(t.getCount()));
        return success();
      })
      .Case([&](moe::LoadBalancingStatsOp l) -> LogicalResult {
        if (l.getLogits().empty())
          return l.emitOpError() << "takes no logits; the CUDA kernels need "
                                    "one tensor per layer";
        bool ok = true;
        std::string name = fmt::format("logits{}", groups++);
        std::string list = logitList(l.getLogits(), name, ok);
        if (!ok)
          return failure();
        RankedTensorType t = typeOf(l.getLogits()[0]);
        int64_t layers = l.getLogits().size(), tokens = leadingCount(t),
                experts = t.getShape().back();
        body += fmt::format("  {{\n{}    moert::kernels::loadBalancingStats("
                            "ctx, {}, {}, {}, {}, {}, {});\n  }}\n",
                            list, name, layers, tokens, experts, l.getK(),
                            typed(l.getStats()));
        return success();
      })
      .Case([&](moe::LoadBalancingLossFromStatsOp l) -> LogicalResult {
        FailureOr<std::string> stats = pointer(op, l.getStats());
        if (failed(stats))
          return failure();
        body += fmt::format(
            "  moert::kernels::loadBalancingLossFromStats(ctx, {}, {}, {}, "
            "{});\n",
            *stats, shape(l.getStats()).back(), l.getK(), typed(l.getLoss()));
        return success();
      })
      .Case([&](moe::LoadBalancingStatsGradOp l) -> LogicalResult {
        if (l.getLogits().empty())
          return l.emitOpError() << "takes no logits; the CUDA kernels need "
                                    "one tensor per layer";
        bool ok = true;
        std::string name = fmt::format("logits{}", groups++);
        std::string list = logitList(l.getLogits(), name, ok);
        if (!ok || failed(pointer(op, l.getStats())))
          return failure();
        RankedTensorType t = typeOf(l.getLogits()[0]);
        int64_t layers = l.getLogits().size(), tokens = leadingCount(t),
                experts = t.getShape().back();
        std::string outs;
        for (Value r : l.getDLogits())
          outs += (outs.empty() ? "" : ", ") + typed(r);
        body += fmt::format(
            "  {{\n{}    {} *d{}[] = {{{}}};\n"
            "    moert::kernels::loadBalancingStatsGrad(ctx, {}, {}, {}, {}, "
            "{}, {}, {:.17g}, d{});\n  }}\n",
            list, *cType(t), name, outs, name, layers, tokens, experts,
            l.getK(), typed(l.getStats()), l.getScale().convertToDouble(),
            name);
        return success();
      });
}

} // namespace moec::detail
