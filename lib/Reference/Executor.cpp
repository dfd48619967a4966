//===- Executor.cpp - The CPU reference executor --------------------------===//
//
// Interprets one function of raised moe IR: a map from SSA values to host
// tensors, filled op by op in program order. Each op is checked against the
// shapes its type promises before and after its kernel runs.
//
//===----------------------------------------------------------------------===//

#include "moec/Reference/Executor.h"

#include "Collectives.h"
#include "dialects/Moe/IR/MoeOps.h"
#include "moec/Reference/ExpertParallel.h"
#include "moec/Reference/Kernels.h"
#include "moec/Support/ParamInit.h"
#include "moec/Support/Routing.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/TypeSwitch.h"

#include <cmath>
#include <cstring>
#include <thread>

using namespace mlir;
using namespace moec;
using namespace moec::reference;

namespace {

/// Checks a host tensor against a value's tensor type: same rank, equal
/// static dimensions, float vs integer elements.
LogicalResult checkAgainstType(const HostTensor &tensor, Type type,
                               Location loc, llvm::StringRef what) {
  auto tensorType = dyn_cast<RankedTensorType>(type);
  if (!tensorType)
    return emitError(loc) << what << " has non-tensor type " << type;
  bool wantFloat = isa<FloatType>(tensorType.getElementType());
  if (wantFloat != tensor.isFloat())
    return emitError(loc) << what << " holds "
                          << (tensor.isFloat() ? "floats" : "integers")
                          << " but its type is " << type;
  ArrayRef<int64_t> shape = tensorType.getShape();
  bool ok = shape.size() == tensor.shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i)
    ok = ShapedType::isDynamic(shape[i]) || shape[i] == tensor.shape[i];
  if (!ok)
    return emitError(loc) << what << " has shape " << tensor.shapeString()
                          << " but its type is " << type;
  return success();
}

/// Rounds to the nearest bf16 (ties to even), kept in a float.
float roundToBFloat16(float x) {
  if (std::isnan(x))
    return x;
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  bits &= 0xFFFF0000u;
  float rounded;
  std::memcpy(&rounded, &bits, 4);
  return rounded;
}

HostTensor fromAttribute(DenseElementsAttr attr) {
  std::vector<int64_t> shape(attr.getType().getShape().begin(),
                             attr.getType().getShape().end());
  if (isa<FloatType>(attr.getElementType())) {
    HostTensor t = HostTensor::floats(shape);
    int64_t i = 0;
    for (APFloat v : attr.getValues<APFloat>())
      t.f32[i++] = static_cast<float>(v.convertToDouble());
    return t;
  }
  HostTensor t = HostTensor::ints(shape);
  int64_t i = 0;
  bool isUnsigned = attr.getElementType().isUnsignedInteger();
  for (APInt v : attr.getValues<APInt>())
    t.i64[i++] = isUnsigned ? static_cast<int64_t>(v.getZExtValue())
                            : v.getSExtValue();
  return t;
}

/// Row-major strides of `shape`.
std::vector<int64_t> stridesOf(ArrayRef<int64_t> shape) {
  std::vector<int64_t> strides(shape.size(), 1);
  for (int64_t d = static_cast<int64_t>(shape.size()) - 2; d >= 0; --d)
    strides[d] = strides[d + 1] * shape[d + 1];
  return strides;
}

/// Copies the box of `sizes` at `offsets` of `from` to the box at
/// `toOffsets` of `to` (unit strides, in bounds).
void copyBox(const HostTensor &from, ArrayRef<int64_t> fromOffsets,
             HostTensor &to, ArrayRef<int64_t> toOffsets,
             ArrayRef<int64_t> sizes) {
  std::vector<int64_t> fromStrides = stridesOf(from.shape),
                       toStrides = stridesOf(to.shape);
  int64_t count = 1;
  for (int64_t size : sizes)
    count *= size;
  std::vector<int64_t> index(sizes.size(), 0);
  for (int64_t i = 0; i < count; ++i) {
    int64_t src = 0, dst = 0;
    for (size_t d = 0; d < sizes.size(); ++d) {
      src += (fromOffsets[d] + index[d]) * fromStrides[d];
      dst += (toOffsets[d] + index[d]) * toStrides[d];
    }
    if (from.isFloat())
      to.f32[dst] = from.f32[src];
    else
      to.i64[dst] = from.i64[src];
    for (int64_t d = static_cast<int64_t>(index.size()) - 1; d >= 0; --d) {
      if (++index[d] < sizes[d])
        break;
      index[d] = 0;
    }
  }
}

/// Whether a slice op has static offsets and sizes and unit strides.
bool isStaticUnitSlice(OffsetSizeAndStrideOpInterface slice) {
  return !ShapedType::isDynamicShape(slice.getStaticOffsets()) &&
         !ShapedType::isDynamicShape(slice.getStaticSizes()) &&
         llvm::all_of(slice.getStaticStrides(),
                      [](int64_t s) { return s == 1; });
}

class Interpreter {
public:
  explicit Interpreter(const RankContext *rankContext,
                       const ExecuteOptions &options)
      : rankContext(rankContext), options(options) {}
  LogicalResult run(func::FuncOp func, const std::vector<HostTensor> &args,
                    std::vector<HostTensor> &results);

private:
  const HostTensor &get(Value v) { return env.find(v)->second; }
  std::vector<const HostTensor *> all(ValueRange values) {
    std::vector<const HostTensor *> tensors;
    for (Value v : values)
      tensors.push_back(&get(v));
    return tensors;
  }
  LogicalResult set(Operation *op, Value v, HostTensor t) {
    if (failed(checkAgainstType(t, v.getType(), op->getLoc(), "result")))
      return failure();
    // A bf16 value is stored as fp32 rounded to bf16, as a GPU kernel that
    // computes in fp32 and stores bf16 would leave it.
    if (cast<RankedTensorType>(v.getType()).getElementType().isBF16())
      for (float &x : t.f32)
        x = roundToBFloat16(x);
    env[v] = std::move(t);
    return success();
  }
  /// Turns a kernel's outcome into a diagnostic at `op`.
  LogicalResult kernel(Operation *op, bool ok, const std::string &error) {
    if (ok)
      return success();
    return op->emitOpError() << "reference execution failed: " << error;
  }
  LogicalResult execute(Operation *op);
  /// Fails at `op` when one of its floating-point results holds an inf or
  /// a NaN, naming the result, its shape and how many.
  LogicalResult checkFinite(Operation *op);
  /// The expert group of a routed collective (moe.dispatch, moe.combine,
  /// moe.token_shuffle) on `gridAxes` of `grid`.
  LogicalResult routedGroup(Operation *op, FlatSymbolRefAttr grid,
                            ArrayRef<int16_t> gridAxes, ExpertGroup &group);

  llvm::DenseMap<Value, HostTensor> env;
  /// Values moved away: the device value of a moe.offload and the host
  /// value of a moe.fetch, by the op that moved them.
  llvm::DenseMap<Value, Operation *> offloaded;
  /// The rank this interpreter runs as; null when it runs alone.
  const RankContext *rankContext;
  ExecuteOptions options;
};

LogicalResult Interpreter::routedGroup(Operation *op, FlatSymbolRefAttr grid,
                                       ArrayRef<int16_t> gridAxes,
                                       ExpertGroup &group) {
  FailureOr<std::vector<int64_t>> ranks =
      processGroup(op, grid.getValue(), gridAxes, rankContext);
  if (failed(ranks))
    return failure();
  group.communicator = rankContext->communicator;
  group.rank = rankContext->rank;
  group.ranks = std::move(*ranks);
  group.groupRank = llvm::find(group.ranks, group.rank) - group.ranks.begin();
  return success();
}

/// The reference dispatcher of a moe.dispatch/moe.combine attribute.
DispatchKind dispatchKind(moe::Dispatcher dispatcher) {
  return dispatcher == moe::Dispatcher::all_gather ? DispatchKind::AllGather
                                                   : DispatchKind::AllToAll;
}

LogicalResult Interpreter::execute(Operation *op) {
  std::string error;
  HostTensor out;
  // The cross-entropy's `target_count`, when it has one.
  auto targetCountOf = [&](Value count) -> std::optional<double> {
    if (!count)
      return std::nullopt;
    return get(count).f32[0];
  };
  // The gradients of moe.lm_head_cross_entropy(_with_grad).
  auto lossGrad = [&](auto g) -> LogicalResult {
    HostTensor dWeight;
    if (failed(kernel(op,
                      lmHeadCrossEntropyGrad(
                          get(g.getInput()), get(g.getWeight()),
                          get(g.getLabels()), g.getIgnoreIndex(),
                          targetCountOf(g.getTargetCount()),
                          g.getScale().convertToDouble(), out, dWeight, error),
                      error)) ||
        failed(set(op, g.getDInput(), std::move(out))))
      return failure();
    return set(op, g.getDWeight(), std::move(dWeight));
  };
  return llvm::TypeSwitch<Operation *, LogicalResult>(op)
      .Case([&](arith::ConstantOp c) -> LogicalResult {
        auto dense = dyn_cast<DenseElementsAttr>(c.getValue());
        if (!dense)
          return op->emitOpError() << "reference executor needs a dense "
                                      "tensor constant";
        return set(op, c.getResult(), fromAttribute(dense));
      })
      .Case<arith::AddFOp, arith::SubFOp, arith::MulFOp, arith::DivFOp>(
          [&](Operation *binaryOp) -> LogicalResult {
            BinaryKind kind = isa<arith::AddFOp>(binaryOp)   ? BinaryKind::Add
                              : isa<arith::SubFOp>(binaryOp) ? BinaryKind::Sub
                              : isa<arith::MulFOp>(binaryOp) ? BinaryKind::Mul
                                                             : BinaryKind::Div;
            if (failed(kernel(op,
                              binary(kind, get(op->getOperand(0)),
                                     get(op->getOperand(1)), out, error),
                              error)))
              return failure();
            return set(op, op->getResult(0), std::move(out));
          })
      .Case([&](arith::MaximumFOp m) -> LogicalResult {
        const HostTensor &a = get(m.getLhs()), &b = get(m.getRhs());
        if (a.shape != b.shape)
          return op->emitOpError() << "operands of shapes " << a.shapeString()
                                   << " and " << b.shapeString();
        out = a;
        for (size_t i = 0; i < out.f32.size(); ++i)
          out.f32[i] = std::isnan(a.f32[i]) || std::isnan(b.f32[i])
                           ? NAN
                           : std::max(a.f32[i], b.f32[i]);
        return set(op, m.getResult(), std::move(out));
      })
      .Case([&](tensor::ExtractSliceOp e) -> LogicalResult {
        if (!isStaticUnitSlice(e))
          return op->emitOpError() << "reference executor needs static "
                                      "offsets and sizes and unit strides";
        if (e.getSourceType().getRank() != e.getResultType().getRank())
          return op->emitOpError() << "reference executor does not drop "
                                      "dimensions in a slice";
        const HostTensor &in = get(e.getSource());
        std::vector<int64_t> shape(e.getStaticSizes().begin(),
                                   e.getStaticSizes().end());
        out = in.isFloat() ? HostTensor::floats(shape) : HostTensor::ints(shape);
        std::vector<int64_t> zeros(shape.size(), 0);
        copyBox(in, e.getStaticOffsets(), out, zeros, shape);
        return set(op, e.getResult(), std::move(out));
      })
      .Case([&](tensor::InsertSliceOp e) -> LogicalResult {
        if (!isStaticUnitSlice(e))
          return op->emitOpError() << "reference executor needs static "
                                      "offsets and sizes and unit strides";
        if (e.getSourceType().getRank() != e.getResultType().getRank())
          return op->emitOpError() << "reference executor does not insert "
                                      "slices of lower rank";
        const HostTensor &in = get(e.getSource());
        out = get(e.getDest());
        std::vector<int64_t> zeros(in.shape.size(), 0);
        copyBox(in, zeros, out, e.getStaticOffsets(), in.shape);
        return set(op, e.getResult(), std::move(out));
      })
      .Case([&](linalg::BroadcastOp b) -> LogicalResult {
        // Result index -> input index: drop the broadcast dimensions.
        const HostTensor &in = get(b.getInput());
        auto type = cast<RankedTensorType>(b.getInit().getType());
        std::vector<int64_t> shape(type.getShape().begin(),
                                   type.getShape().end());
        out = in.isFloat() ? HostTensor::floats(shape) : HostTensor::ints(shape);
        std::vector<int64_t> inStrides = stridesOf(in.shape);
        std::vector<int64_t> strideOfDim(shape.size(), 0);
        for (int64_t d = 0, i = 0; d < static_cast<int64_t>(shape.size()); ++d)
          if (!llvm::is_contained(b.getDimensions(), d))
            strideOfDim[d] = inStrides[i++];
        std::vector<int64_t> index(shape.size(), 0);
        for (int64_t i = 0; i < out.numElements(); ++i) {
          int64_t src = 0;
          for (size_t d = 0; d < shape.size(); ++d)
            src += index[d] * strideOfDim[d];
          if (in.isFloat())
            out.f32[i] = in.f32[src];
          else
            out.i64[i] = in.i64[src];
          for (int64_t d = static_cast<int64_t>(index.size()) - 1; d >= 0;
               --d) {
            if (++index[d] < shape[d])
              break;
            index[d] = 0;
          }
        }
        return set(op, b.getResult()[0], std::move(out));
      })
      .Case([&](moe::TargetCountOp c) -> LogicalResult {
        if (failed(kernel(op,
                          targetCount(get(c.getLabels()), c.getIgnoreIndex(),
                                      out, error),
                          error)))
          return failure();
        return set(op, c.getCount(), std::move(out));
      })
      .Case([&](arith::NegFOp n) -> LogicalResult {
        out = get(n.getOperand());
        for (float &x : out.f32)
          x = -x;
        return set(op, n.getResult(), std::move(out));
      })
      .Case([&](moe::FusionOp f) -> LogicalResult {
        // The body's ops one by one, each rounded to its own type by set():
        // the op's definition, which fused kernels must match.
        Block &body = f.getBody().front();
        for (auto [arg, input] : llvm::zip(body.getArguments(), f.getInputs()))
          env[arg] = get(input);
        for (Operation &inner : body.without_terminator())
          if (failed(execute(&inner)))
            return failure();
        return set(op, f.getResult(),
                   get(body.getTerminator()->getOperand(0)));
      })
      .Case<arith::TruncFOp, arith::ExtFOp>([&](Operation *) -> LogicalResult {
        // Element conversions: set() rounds when the result is bf16.
        return set(op, op->getResult(0), get(op->getOperand(0)));
      })
      .Case([&](tensor::EmptyOp e) -> LogicalResult {
        RankedTensorType type = e.getType();
        if (!type.hasStaticShape())
          return op->emitOpError() << "reference executor needs a static "
                                      "shape here";
        std::vector<int64_t> shape(type.getShape().begin(),
                                   type.getShape().end());
        return set(op, e.getResult(),
                   isa<FloatType>(type.getElementType())
                       ? HostTensor::floats(shape)
                       : HostTensor::ints(shape));
      })
      .Case([&](linalg::TransposeOp t) -> LogicalResult {
        return set(op, t.getResult()[0],
                   transpose(get(t.getInput()), t.getPermutation()));
      })
      .Case([&](tensor::ExpandShapeOp e) -> LogicalResult {
        // Each group of result dimensions has at most one dynamic size,
        // the source dimension divided by the group's static sizes.
        const HostTensor &in = get(e.getSrc());
        out = in;
        out.shape.clear();
        // A 0-d source expands to unit dimensions only.
        if (in.shape.empty())
          out.shape.assign(e.getResultType().getRank(), 1);
        for (auto [source, group] :
             llvm::enumerate(e.getReassociationIndices())) {
          int64_t known = 1;
          for (int64_t d : group)
            if (!e.getResultType().isDynamicDim(d))
              known *= e.getResultType().getDimSize(d);
          for (int64_t d : group)
            out.shape.push_back(e.getResultType().isDynamicDim(d)
                                    ? in.shape[source] / known
                                    : e.getResultType().getDimSize(d));
        }
        return set(op, e.getResult(), std::move(out));
      })
      .Case([&](tensor::CollapseShapeOp c) -> LogicalResult {
        const HostTensor &in = get(c.getSrc());
        out = in;
        out.shape.clear();
        for (const ReassociationIndices &group : c.getReassociationIndices()) {
          int64_t size = 1;
          for (int64_t d : group)
            size *= in.shape[d];
          out.shape.push_back(size);
        }
        return set(op, c.getResult(), std::move(out));
      })
      .Case([&](moe::EmbeddingOp e) -> LogicalResult {
        if (failed(kernel(op,
                          embedding(get(e.getTable()), get(e.getIndices()),
                                    out, error),
                          error)))
          return failure();
        return set(op, e.getResult(), std::move(out));
      })
      .Case([&](moe::RmsNormOp n) -> LogicalResult {
        if (failed(kernel(op,
                          rmsNorm(get(n.getInput()), get(n.getWeight()),
                                  n.getEpsilon().convertToDouble(), out,
                                  error),
                          error)))
          return failure();
        return set(op, n.getResult(), std::move(out));
      })
      .Case([&](moe::AddRmsNormOp n) -> LogicalResult {
        // The sum is rounded to its type by set() before the norm reads it,
        // as the unfused arith.addf would store it.
        HostTensor sum;
        if (failed(kernel(op,
                          binary(BinaryKind::Add, get(n.getLhs()),
                                 get(n.getRhs()), sum, error),
                          error)) ||
            failed(set(op, n.getSum(), std::move(sum))) ||
            failed(kernel(op,
                          rmsNorm(get(n.getSum()), get(n.getWeight()),
                                  n.getEpsilon().convertToDouble(), out, error),
                          error)))
          return failure();
        return set(op, n.getResult(), std::move(out));
      })
      .Case([&](moe::RotaryOp r) -> LogicalResult {
        const HostTensor *positions =
            r.getPositions() ? &get(r.getPositions()) : nullptr;
        if (failed(kernel(op,
                          rotary(get(r.getInput()), positions,
                                 r.getTheta().convertToDouble(), out, error),
                          error)))
          return failure();
        return set(op, r.getResult(), std::move(out));
      })
      .Case([&](moe::AttentionOp a) -> LogicalResult {
        HostTensor stats;
        if (failed(kernel(op,
                          attention(get(a.getQuery()), get(a.getKey()),
                                    get(a.getValue()), a.getCausal(),
                                    a.getScale().convertToDouble(),
                                    a.getSlidingWindow(), out, error,
                                    a.getStats() ? &stats : nullptr),
                          error)) ||
            failed(set(op, a.getResult(), std::move(out))))
          return failure();
        return a.getStats() ? set(op, a.getStats(), std::move(stats))
                            : success();
      })
      .Case([&](moe::LinearOp l) -> LogicalResult {
        const HostTensor *bias = l.getBias() ? &get(l.getBias()) : nullptr;
        if (failed(kernel(op,
                          linear(get(l.getInput()), get(l.getWeight()), bias,
                                 out, error),
                          error)))
          return failure();
        return set(op, l.getResult(), std::move(out));
      })
      .Case([&](moe::LmHeadOp l) -> LogicalResult {
        if (failed(kernel(op,
                          linear(get(l.getInput()), get(l.getWeight()),
                                 nullptr, out, error),
                          error)))
          return failure();
        return set(op, l.getResult(), std::move(out));
      })
      .Case([&](moe::RouterOp r) -> LogicalResult {
        const HostTensor &logits = get(r.getLogits());
        const int64_t numExperts = logits.shape.back(), k = r.getK();
        const int64_t tokens = logits.numElements() / numExperts;
        const int64_t group =
            r.getTokensPerGroup() ? r.getTokensPerGroup() : tokens;
        std::vector<int64_t> shape = logits.shape;
        shape.back() = k;
        out = HostTensor::floats(shape);
        HostTensor experts = HostTensor::ints(shape);
        // Each group of tokens is routed alone, as its own [group, E].
        for (int64_t first = 0; first < tokens; first += group) {
          HostTensor groupLogits = HostTensor::floats({group, numExperts});
          std::copy_n(logits.f32.begin() + first * numExperts,
                      group * numExperts, groupLogits.f32.begin());
          HostTensor groupGates, groupExperts;
          if (failed(kernel(op,
                            route(groupLogits, k,
                                  routingOf(r.getLoadBalancing()), groupGates,
                                  groupExperts, error, r.getTraining()),
                            error)))
            return failure();
          std::copy(groupGates.f32.begin(), groupGates.f32.end(),
                    out.f32.begin() + first * k);
          std::copy(groupExperts.i64.begin(), groupExperts.i64.end(),
                    experts.i64.begin() + first * k);
        }
        if (failed(set(op, r.getGates(), std::move(out))))
          return failure();
        return set(op, r.getExperts(), std::move(experts));
      })
      .Case([&](moe::ExpertsOp x) -> LogicalResult {
        bool interleaved =
            x.getGateUpLayout() == moe::GateUpLayout::interleaved;
        HostTensor saved;
        if (failed(kernel(op,
                          experts(get(x.getInput()), get(x.getGates()),
                                  get(x.getExperts()), get(x.getGateUp()),
                                  get(x.getDown()), interleaved, out, error,
                                  x.getSaved() ? &saved : nullptr),
                          error)))
          return failure();
        if (x.getSaved() && failed(set(op, x.getSaved(), std::move(saved))))
          return failure();
        return set(op, x.getResult(), std::move(out));
      })
      .Case([&](moe::ParamInitOp init) -> LogicalResult {
        RankedTensorType type = init.getType();
        std::vector<int64_t> shape(type.getShape().begin(),
                                   type.getShape().end());
        out = HostTensor::floats(shape);
        // Element index in the full parameter, from the shard's offsets and,
        // in a partitioned program, the rank's block.
        ArrayRef<int64_t> global =
            init.getGlobalShape() ? *init.getGlobalShape() : type.getShape();
        SmallVector<int64_t> offsets(shape.size(), 0);
        if (init.getOffsets())
          offsets.assign(init.getOffsets()->begin(), init.getOffsets()->end());
        if (init.getSplitAxes()) {
          if (!rankContext || !rankContext->mesh)
            return op->emitOpError() << "needs a rank: run the partitioned "
                                        "function on simulated ranks";
          plan::MeshCoord c = rankContext->mesh->coord(rankContext->rank);
          const int64_t coords[] = {c.q, c.h, c.p};
          for (auto [d, axis] : llvm::enumerate(*init.getSplitAxes())) {
            if (axis > 2)
              return op->emitOpError()
                     << "split axis " << axis << " is not an axis of the "
                     << "(R, H, P) mesh";
            if (axis >= 0)
              offsets[d] += coords[axis] * shape[d];
          }
        }
        std::optional<ParamNormalStream> stream;
        if (init.getKind() == moe::ParamInitKind::normal)
          stream.emplace(static_cast<uint64_t>(get(init.getSeed()).i64.at(0)),
                         init.getName().str());
        double std = init.getStd().convertToDouble();
        std::vector<int64_t> index(shape.size(), 0);
        for (int64_t i = 0; i < out.numElements(); ++i) {
          int64_t flat = 0;
          bool padding = false;
          for (size_t d = 0; d < shape.size(); ++d) {
            padding |= offsets[d] + index[d] >= global[d];
            flat = flat * global[d] + offsets[d] + index[d];
          }
          out.f32[i] = padding  ? 0.0f
                       : stream ? static_cast<float>(stream->at(flat) * std)
                                : 1.0f;
          for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
            if (++index[d] < shape[d])
              break;
            index[d] = 0;
          }
        }
        return set(op, init.getResult(), std::move(out));
      })
      .Case([&](moe::LmHeadCrossEntropyOp c) -> LogicalResult {
        if (failed(kernel(op,
                          lmHeadCrossEntropy(
                              get(c.getInput()), get(c.getWeight()),
                              get(c.getLabels()), c.getIgnoreIndex(),
                              targetCountOf(c.getTargetCount()), out, error),
                          error)))
          return failure();
        return set(op, c.getLoss(), std::move(out));
      })
      .Case([&](moe::LoadBalancingLossOp l) -> LogicalResult {
        if (failed(kernel(op,
                          loadBalancingLoss(all(l.getLogits()), l.getK(), out,
                                            error),
                          error)))
          return failure();
        return set(op, l.getLoss(), std::move(out));
      })
      .Case([&](moe::RouterZLossOp z) -> LogicalResult {
        if (failed(kernel(op, routerZLoss(all(z.getLogits()), out, error),
                          error)))
          return failure();
        return set(op, z.getLoss(), std::move(out));
      })
      .Case([&](moe::ExpertCountsOp c) -> LogicalResult {
        int64_t numExperts = c.getCounts().getType().getDimSize(1);
        out = HostTensor::ints({static_cast<int64_t>(c.getExperts().size()),
                                numExperts});
        for (auto [l, experts] : llvm::enumerate(c.getExperts())) {
          HostTensor counts;
          if (failed(kernel(op,
                            expertCounts(get(experts), numExperts, counts,
                                         error),
                            error)))
            return failure();
          std::copy(counts.i64.begin(), counts.i64.end(),
                    out.i64.begin() + l * numExperts);
        }
        return set(op, c.getCounts(), std::move(out));
      })
      .Case([&](moe::EmbeddingGradOp g) -> LogicalResult {
        int64_t vocab = g.getDTable().getType().getDimSize(0);
        if (failed(kernel(op,
                          embeddingGrad(get(g.getIndices()),
                                        get(g.getDResult()), vocab, out,
                                        error),
                          error)))
          return failure();
        return set(op, g.getDTable(), std::move(out));
      })
      .Case([&](moe::RmsNormGradOp g) -> LogicalResult {
        HostTensor dWeight;
        if (failed(kernel(op,
                          rmsNormGrad(get(g.getInput()), get(g.getWeight()),
                                      g.getEpsilon().convertToDouble(),
                                      get(g.getDResult()), out, dWeight,
                                      error),
                          error)) ||
            failed(set(op, g.getDInput(), std::move(out))))
          return failure();
        return set(op, g.getDWeight(), std::move(dWeight));
      })
      .Case([&](moe::RotaryGradOp g) -> LogicalResult {
        const HostTensor *positions =
            g.getPositions() ? &get(g.getPositions()) : nullptr;
        if (failed(kernel(op,
                          rotaryGrad(get(g.getDResult()), positions,
                                     g.getTheta().convertToDouble(), out,
                                     error),
                          error)))
          return failure();
        return set(op, g.getDInput(), std::move(out));
      })
      .Case([&](moe::AttentionGradOp g) -> LogicalResult {
        HostTensor dKey, dValue;
        if (failed(kernel(op,
                          attentionGrad(get(g.getQuery()), get(g.getKey()),
                                        get(g.getValue()), g.getCausal(),
                                        g.getScale().convertToDouble(),
                                        g.getSlidingWindow(),
                                        get(g.getDResult()), out, dKey,
                                        dValue, error),
                          error)) ||
            failed(set(op, g.getDQuery(), std::move(out))) ||
            failed(set(op, g.getDKey(), std::move(dKey))))
          return failure();
        return set(op, g.getDValue(), std::move(dValue));
      })
      .Case([&](moe::LinearGradOp g) -> LogicalResult {
        HostTensor dWeight;
        if (failed(kernel(op,
                          linearGrad(get(g.getInput()), get(g.getWeight()),
                                     get(g.getDResult()), out, dWeight,
                                     error),
                          error)) ||
            failed(set(op, g.getDInput(), std::move(out))))
          return failure();
        return set(op, g.getDWeight(), std::move(dWeight));
      })
      .Case([&](moe::RouterGradOp g) -> LogicalResult {
        if (failed(kernel(op,
                          routeGrad(get(g.getLogits()), get(g.getExperts()),
                                    get(g.getDGates()),
                                    routingOf(g.getLoadBalancing()), out,
                                    error),
                          error)))
          return failure();
        return set(op, g.getDLogits(), std::move(out));
      })
      .Case([&](moe::ExpertsGradOp g) -> LogicalResult {
        // With `saved`, the reference still recomputes the projections: the
        // GPU, which reads them, is checked against this.
        HostTensor dGates, dGateUp, dDown;
        bool interleaved =
            g.getGateUpLayout() == moe::GateUpLayout::interleaved;
        if (failed(kernel(op,
                          expertsGrad(get(g.getInput()), get(g.getGates()),
                                      get(g.getExperts()), get(g.getGateUp()),
                                      get(g.getDown()), interleaved,
                                      get(g.getDResult()), out, dGates,
                                      dGateUp, dDown, error),
                          error)) ||
            failed(set(op, g.getDInput(), std::move(out))) ||
            failed(set(op, g.getDGates(), std::move(dGates))) ||
            failed(set(op, g.getDGateUp(), std::move(dGateUp))))
          return failure();
        return set(op, g.getDDown(), std::move(dDown));
      })
      .Case([&](moe::LmHeadCrossEntropyWithGradOp g) -> LogicalResult {
        HostTensor loss;
        if (failed(kernel(op,
                          lmHeadCrossEntropy(
                              get(g.getInput()), get(g.getWeight()),
                              get(g.getLabels()), g.getIgnoreIndex(),
                              targetCountOf(g.getTargetCount()), loss, error),
                          error)) ||
            failed(set(op, g.getLoss(), std::move(loss))))
          return failure();
        return lossGrad(g);
      })
      .Case([&](moe::LmHeadCrossEntropyGradOp g) { return lossGrad(g); })
      .Case<moe::LoadBalancingLossGradOp, moe::RouterZLossGradOp>(
          [&](Operation *) -> LogicalResult {
            std::vector<HostTensor> grads;
            bool ok;
            if (auto g = dyn_cast<moe::LoadBalancingLossGradOp>(op))
              ok = loadBalancingLossGrad(all(g.getLogits()), g.getK(),
                                         g.getScale().convertToDouble(), grads,
                                         error);
            else
              ok = routerZLossGrad(
                  all(cast<moe::RouterZLossGradOp>(op).getLogits()),
                  cast<moe::RouterZLossGradOp>(op).getScale().convertToDouble(),
                  grads, error);
            if (failed(kernel(op, ok, error)))
              return failure();
            for (auto [result, grad] : llvm::zip(op->getResults(), grads))
              if (failed(set(op, result, std::move(grad))))
                return failure();
            return success();
          })
      .Case([&](moe::GlobalNormOp n) -> LogicalResult {
        if (failed(kernel(op, globalNorm(all(n.getGradients()), out, error),
                          error)))
          return failure();
        return set(op, n.getNorm(), std::move(out));
      })
      .Case([&](moe::AdamWOp a) -> LogicalResult {
        AdamWConfig config;
        config.beta1 = a.getBeta1().convertToDouble();
        config.beta2 = a.getBeta2().convertToDouble();
        config.epsilon = a.getEpsilon().convertToDouble();
        config.weightDecay = a.getWeightDecay().convertToDouble();
        double maxNorm = a.getMaxGradNorm().convertToDouble();
        double norm = get(a.getGradNorm()).f32.at(0);
        // skip_nonfinite: unusable gradients leave the state as it was.
        if (a.getSkipNonfinite() && !std::isfinite(norm)) {
          if (failed(set(op, a.getNewParam(), get(a.getParam()))) ||
              failed(set(op, a.getNewExpAvg(), get(a.getExpAvg()))))
            return failure();
          return set(op, a.getNewExpAvgSq(), get(a.getExpAvgSq()));
        }
        // torch.nn.utils.clip_grad_norm_: coefficient clamped to 1.
        double scale =
            maxNorm > 0.0 ? std::min(1.0, maxNorm / (norm + 1e-6)) : 1.0;
        HostTensor m, v;
        if (failed(kernel(op,
                          adamw(get(a.getParam()), get(a.getGrad()),
                                get(a.getExpAvg()), get(a.getExpAvgSq()),
                                get(a.getStep()).i64.at(0),
                                get(a.getLr()).f32.at(0), scale, config, out,
                                m, v, error),
                          error)) ||
            failed(set(op, a.getNewParam(), std::move(out))) ||
            failed(set(op, a.getNewExpAvg(), std::move(m))))
          return failure();
        return set(op, a.getNewExpAvgSq(), std::move(v));
      })
      .Case([&](shard::AllGatherOp g) -> LogicalResult {
        if (failed(runAllGather(g, rankContext, get(g.getInput()), out)))
          return failure();
        return set(op, g.getResult(), std::move(out));
      })
      .Case([&](shard::ReduceScatterOp r) -> LogicalResult {
        if (failed(runReduceScatter(r, rankContext, get(r.getInput()), out)))
          return failure();
        return set(op, r.getResult(), std::move(out));
      })
      .Case([&](shard::AllReduceOp r) -> LogicalResult {
        if (failed(runAllReduce(r, rankContext, get(r.getInput()), out)))
          return failure();
        return set(op, r.getResult(), std::move(out));
      })
      .Case([&](moe::DispatchOp d) -> LogicalResult {
        ExpertGroup group;
        if (failed(routedGroup(op, d.getGridAttr(), d.getGridAxes(), group)))
          return failure();
        HostTensor rowExperts, counts, rowGates;
        if (failed(kernel(
                op,
                dispatch(group, dispatchKind(d.getDispatcher()),
                         get(d.getInput()), get(d.getExperts()),
                         d.getGates() ? &get(d.getGates()) : nullptr,
                         d.getNumLocalExperts(), out, rowExperts, counts,
                         d.getGates() ? &rowGates : nullptr, error),
                error)) ||
            failed(set(op, d.getRows(), std::move(out))) ||
            failed(set(op, d.getRowExperts(), std::move(rowExperts))) ||
            failed(set(op, d.getCounts(), std::move(counts))))
          return failure();
        if (d.getRowGates())
          return set(op, d.getRowGates(), std::move(rowGates));
        return success();
      })
      .Case([&](moe::CombineOp c) -> LogicalResult {
        ExpertGroup group;
        if (failed(routedGroup(op, c.getGridAttr(), c.getGridAxes(), group)) ||
            failed(kernel(op,
                          combine(group, dispatchKind(c.getDispatcher()),
                                  get(c.getRows()), get(c.getExperts()),
                                  get(c.getCounts()), out, error),
                          error)))
          return failure();
        return set(op, c.getResult(), std::move(out));
      })
      .Case([&](moe::TokenShuffleOp s) -> LogicalResult {
        ExpertGroup group;
        if (failed(routedGroup(op, s.getGridAttr(), s.getGridAxes(), group)) ||
            failed(kernel(op,
                          tokenShuffle(group, get(s.getInput()),
                                       static_cast<uint64_t>(s.getSeed()),
                                       get(s.getStep()).i64[0],
                                       s.getInverse(), out, error),
                          error)))
          return failure();
        return set(op, s.getResult(), std::move(out));
      })
      .Case([&](moe::LoadBalancingStatsOp s) -> LogicalResult {
        if (failed(kernel(op,
                          loadBalancingStats(all(s.getLogits()), s.getK(),
                                             out, error),
                          error)))
          return failure();
        return set(op, s.getStats(), std::move(out));
      })
      .Case([&](moe::LoadBalancingLossFromStatsOp l) -> LogicalResult {
        if (failed(kernel(op,
                          loadBalancingLossFromStats(get(l.getStats()),
                                                     l.getK(), out, error),
                          error)))
          return failure();
        return set(op, l.getLoss(), std::move(out));
      })
      .Case([&](moe::LoadBalancingStatsGradOp g) -> LogicalResult {
        std::vector<HostTensor> grads;
        if (failed(kernel(op,
                          loadBalancingStatsGrad(
                              all(g.getLogits()), get(g.getStats()), g.getK(),
                              g.getScale().convertToDouble(), grads, error),
                          error)))
          return failure();
        for (auto [result, grad] : llvm::zip(g.getDLogits(), grads))
          if (failed(set(op, result, std::move(grad))))
            return failure();
        return success();
      })
      .Case([&](moe::OffloadOp o) -> LogicalResult {
        // The host copy is a buffer of its own; the device value is gone,
        // so that a read of it after the offload fails (run()).
        if (failed(set(op, o.getResult(), get(o.getInput()))))
          return failure();
        env.erase(o.getInput());
        offloaded[o.getInput()] = o;
        return success();
      })
      .Case([&](moe::OffloadJoinOp) -> LogicalResult {
        // Where the CUDA program waits for the copy: no value.
        return success();
      })
      .Case([&](moe::FetchOp f) -> LogicalResult {
        if (failed(set(op, f.getResult(), get(f.getInput()))))
          return failure();
        env.erase(f.getInput());
        offloaded[f.getInput()] = f;
        return success();
      })
      .Case([&](moe::OnnxNodeOp node) -> LogicalResult {
        return op->emitOpError()
               << "reference executor cannot run the unraised ONNX node '"
               << node.getOpType() << "'";
      })
      .Default([&](Operation *) -> LogicalResult {
        return op->emitOpError() << "is not supported by the reference "
                                    "executor";
      });
}

/// Fails, naming the input and the first element that is not 1, when an
/// argument tagged moe.all_ones (an attention mask the raising proved the
/// model for only without padding) holds anything else.
LogicalResult checkAllOnes(func::FuncOp func, unsigned index,
                           const HostTensor &value) {
  int64_t n = value.numElements();
  int64_t at = 0;
  while (at < n && (value.isFloat() ? value.f32[at] == 1.0f
                                    : value.i64[at] == 1))
    ++at;
  if (at == n)
    return success();
  SmallVector<std::string> position(value.shape.size());
  for (int64_t d = static_cast<int64_t>(value.shape.size()) - 1, rest = at;
       d >= 0; --d) {
    position[d] = std::to_string(rest % value.shape[d]);
    rest /= value.shape[d];
  }
  auto name = func.getArgAttrOfType<StringAttr>(
      index, moe::MoeDialect::getInputAttrName());
  InFlightDiagnostic diag = func.emitError()
                            << "input '" << (name ? name.getValue() : "")
                            << "' is ";
  if (value.isFloat())
    diag << value.f32[at];
  else
    diag << value.i64[at];
  diag << " at [" << llvm::join(position, ", ")
       << "]: a padding mask is not supported; the model was raised for an "
          "all-ones attention mask (moec trains on packed blocks without "
          "padding)";
  return failure();
}

/// "has K non-finite of N elements (the first, inf, at element i)" when
/// `tensor` holds an inf or a NaN, else empty.
std::string describeNonfinite(const HostTensor &tensor) {
  if (!tensor.isFloat())
    return "";
  int64_t count = 0, first = -1;
  for (size_t e = 0; e < tensor.f32.size(); ++e)
    if (!std::isfinite(tensor.f32[e])) {
      ++count;
      if (first < 0)
        first = static_cast<int64_t>(e);
    }
  if (count == 0)
    return "";
  float x = tensor.f32[first];
  return "has " + std::to_string(count) + " non-finite of " +
         std::to_string(tensor.f32.size()) + " elements (the first, " +
         (std::isnan(x) ? "nan" : x > 0 ? "inf" : "-inf") + ", at element " +
         std::to_string(first) + "): the first non-finite value of the run";
}

LogicalResult Interpreter::run(func::FuncOp func,
                               const std::vector<HostTensor> &args,
                               std::vector<HostTensor> &results) {
  if (!func.getBody().hasOneBlock())
    return func.emitOpError() << "reference executor needs a function with "
                                 "one block";
  Block &entry = func.getBody().front();
  if (args.size() != entry.getNumArguments())
    return func.emitOpError() << "takes " << entry.getNumArguments()
                              << " arguments but " << args.size()
                              << " were given";
  for (auto [i, arg] : llvm::enumerate(entry.getArguments())) {
    if (failed(checkAgainstType(args[i], arg.getType(), func.getLoc(),
                                "argument " + std::to_string(i))))
      return failure();
    if (func.getArgAttr(i, moe::MoeDialect::getAllOnesAttrName()) &&
        failed(checkAllOnes(func, i, args[i])))
      return failure();
    env[arg] = args[i];
    std::string found =
        options.checkNumerics ? describeNonfinite(args[i]) : std::string();
    if (!found.empty()) {
      InFlightDiagnostic diag = func.emitError()
                                << "argument " << i << " (" << arg.getType();
      if (auto name = func.getArgAttrOfType<StringAttr>(
              i, moe::MoeDialect::getParameterAttrName()))
        diag << ", parameter '" << name.getValue() << "'";
      return diag << ") " << found;
    }
  }
  for (Operation &op : entry) {
    // Index arithmetic (tensor.dim, index constants) only feeds the
    // output_shape operands of reshapes, which take their sizes from the
    // data instead.
    if (llvm::all_of(op.getResultTypes(),
                     [](Type t) { return t.isIndex(); }) &&
        op.getNumResults() > 0)
      continue;
    for (Value v : op.getOperands())
      if (Operation *mover = offloaded.lookup(v)) {
        InFlightDiagnostic diag =
            op.emitOpError()
            << "reads a value that " << mover->getName()
            << " already moved "
            << (isa<moe::OffloadOp>(mover) ? "to host memory"
                                            : "back to the device");
        diag.attachNote(mover->getLoc()) << "moved here";
        return diag;
      }
    if (auto ret = dyn_cast<func::ReturnOp>(op)) {
      results.clear();
      for (Value v : ret.getOperands())
        results.push_back(get(v));
      return success();
    }
    if (failed(execute(&op)) ||
        (options.checkNumerics && failed(checkFinite(&op))))
      return failure();
  }
  return func.emitOpError() << "has no return";
}

LogicalResult Interpreter::checkFinite(Operation *op) {
  for (auto [i, result] : llvm::enumerate(op->getResults())) {
    auto it = env.find(result);
    if (it == env.end())
      continue;
    std::string found = describeNonfinite(it->second);
    if (!found.empty())
      return op->emitOpError() << "result " << i << " (" << result.getType()
                               << ") " << found;
  }
  return success();
}

} // namespace

LogicalResult reference::execute(func::FuncOp func,
                                 const std::vector<HostTensor> &arguments,
                                 std::vector<HostTensor> &results,
                                 const ExecuteOptions &options) {
  return Interpreter(nullptr, options).run(func, arguments, results);
}

LogicalResult reference::executeAsRank(func::FuncOp func,
                                       const RankContext &context,
                                       const std::vector<HostTensor> &arguments,
                                       std::vector<HostTensor> &results,
                                       const ExecuteOptions &options) {
  return Interpreter(&context, options).run(func, arguments, results);
}

LogicalResult reference::executeOnRanks(
    func::FuncOp func, const plan::Mesh &mesh,
    const std::vector<std::vector<HostTensor>> &perRankArguments,
    std::vector<std::vector<HostTensor>> &perRankResults,
    const ExecuteOptions &options) {
  const int64_t worldSize = mesh.worldSize();
  if (static_cast<int64_t>(perRankArguments.size()) != worldSize)
    return func.emitOpError()
           << "runs on " << worldSize << " ranks but "
           << perRankArguments.size() << " argument lists were given";
  Communicator communicator(worldSize);
  perRankResults.assign(worldSize, {});
  std::vector<char> rankFailed(worldSize, 0);
  std::vector<std::thread> threads;
  for (int64_t rank = 0; rank < worldSize; ++rank)
    threads.emplace_back([&, rank] {
      RankContext context{rank, &mesh, &communicator};
      if (failed(executeAsRank(func, context, perRankArguments[rank],
                               perRankResults[rank], options))) {
        rankFailed[rank] = 1;
        communicator.abort(rank);
      }
    });
  for (std::thread &thread : threads)
    thread.join();
  return success(llvm::none_of(rankFailed, [](char f) { return f != 0; }));
}

ErrorStats reference::compare(const HostTensor &actual,
                              const HostTensor &expected) {
  ErrorStats stats;
  double diffSquares = 0.0, refSquares = 0.0;
  int64_t n = std::min(actual.numElements(), expected.numElements());
  for (int64_t i = 0; i < n; ++i) {
    double a = actual.isFloat() ? actual.f32[i] : actual.i64[i];
    double e = expected.isFloat() ? expected.f32[i] : expected.i64[i];
    double d = a - e;
    stats.maxAbs = std::max(stats.maxAbs, std::abs(d));
    diffSquares += d * d;
    refSquares += e * e;
  }
  stats.relativeL2 = refSquares > 0.0 ? std::sqrt(diffSquares / refSquares)
                                      : std::sqrt(diffSquares);
  return stats;
}

ResultIndex::ResultIndex(func::FuncOp function)
    : functionName(function.getSymName().str()) {
  for (unsigned i = 0, e = function.getNumResults(); i < e; ++i)
    for (NamedAttribute attr : function.getResultAttrs(i))
      if (auto name = dyn_cast<StringAttr>(attr.getValue()))
        positions[{attr.getName().str(), name.str()}] = i;
}

llvm::Expected<unsigned> ResultIndex::lookup(llvm::StringRef tag,
                                             llvm::StringRef name) const {
  auto it = positions.find({tag.str(), name.str()});
  if (it == positions.end())
    return llvm::createStringError("@" + functionName +
                                   " has no result tagged " + tag.str() +
                                   " = \"" + name.str() + "\"");
  return it->second;
}
