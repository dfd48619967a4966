//===- MoeOps.cpp - moe dialect operations --------------------------------===//
//
// Verifiers of the `moe` operations. Each checks what ODS cannot say: ranks
// and the dimensions that must agree between operands. Dynamic dimensions
// (`?`) agree with anything; they are checked when the program runs.
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/OpImplementation.h"

using namespace mlir;
using namespace mlir::moe;

namespace {

/// Prints a dimension the way MLIR types do: a number or `?`.
std::string dimToString(int64_t dim) {
  return ShapedType::isDynamic(dim) ? std::string("?") : std::to_string(dim);
}

/// True when two dimensions may be equal at run time.
bool dimsAgree(int64_t a, int64_t b) {
  return ShapedType::isDynamic(a) || ShapedType::isDynamic(b) || a == b;
}

RankedTensorType tensorType(Value value) {
  return cast<RankedTensorType>(value.getType());
}

/// Checks that `actual` has exactly the dimensions `expected` (with dynamic
/// dimensions agreeing with anything), naming `what` in the diagnostic.
LogicalResult verifyShape(Operation *op, StringRef what,
                          RankedTensorType actual,
                          ArrayRef<int64_t> expected) {
  if (actual.getRank() != static_cast<int64_t>(expected.size()))
    return op->emitOpError() << what << " must have rank " << expected.size()
                             << " but has rank " << actual.getRank();
  for (auto [i, pair] : llvm::enumerate(llvm::zip(actual.getShape(), expected)))
    if (!dimsAgree(std::get<0>(pair), std::get<1>(pair)))
      return op->emitOpError()
             << what << " dimension " << i << " is "
             << dimToString(std::get<0>(pair)) << " but must be "
             << dimToString(std::get<1>(pair));
  return success();
}

/// Checks that `result` has the element type of `source`.
LogicalResult verifySameElementType(Operation *op, StringRef what,
                                    RankedTensorType result,
                                    RankedTensorType source) {
  if (result.getElementType() != source.getElementType())
    return op->emitOpError()
           << what << " element type " << result.getElementType()
           << " differs from the input's " << source.getElementType();
  return success();
}

/// moe.attention's `stats`: [batch, q_heads, seq] fp32 for `query`.
LogicalResult verifyAttentionStats(Operation *op, RankedTensorType stats,
                                   RankedTensorType query) {
  if (!stats.getElementType().isF32())
    return op->emitOpError() << "stats must be fp32 but are "
                             << stats.getElementType();
  return verifyShape(op, "stats", stats,
                     {query.getDimSize(0), query.getDimSize(2),
                      query.getDimSize(1)});
}

} // namespace

LogicalResult EmbeddingOp::verify() {
  RankedTensorType table = tensorType(getTable());
  RankedTensorType indices = tensorType(getIndices());
  if (table.getRank() != 2)
    return emitOpError() << "table must have rank 2 ([vocab, hidden]) but has "
                         << "rank " << table.getRank();
  SmallVector<int64_t> expected(indices.getShape());
  expected.push_back(table.getDimSize(1));
  if (failed(verifyShape(*this, "result", getType(), expected)))
    return failure();
  return verifySameElementType(*this, "result", getType(), table);
}

LogicalResult RmsNormOp::verify() {
  RankedTensorType input = tensorType(getInput());
  RankedTensorType weight = tensorType(getWeight());
  if (input.getRank() < 1)
    return emitOpError() << "input must have rank at least 1";
  if (failed(verifyShape(*this, "weight", weight,
                         {input.getDimSize(input.getRank() - 1)})))
    return failure();
  if (!(getEpsilon().convertToDouble() >= 0.0))
    return emitOpError() << "epsilon must be non-negative but is "
                         << getEpsilon().convertToDouble();
  if (failed(verifyShape(*this, "result", getType(), input.getShape())))
    return failure();
  return verifySameElementType(*this, "result", getType(), input);
}

LogicalResult AddRmsNormOp::verify() {
  RankedTensorType sum = getSum().getType();
  if (sum.getRank() < 1)
    return emitOpError() << "sum must have rank at least 1";
  if (failed(verifyShape(*this, "weight", tensorType(getWeight()),
                         {sum.getDimSize(sum.getRank() - 1)})))
    return failure();
  if (!(getEpsilon().convertToDouble() >= 0.0))
    return emitOpError() << "epsilon must be non-negative but is "
                         << getEpsilon().convertToDouble();
  return success();
}

LogicalResult RotaryOp::verify() {
  RankedTensorType input = tensorType(getInput());
  if (input.getRank() != 4)
    return emitOpError() << "input must have rank 4 ([batch, seq, heads, "
                            "head_dim]) but has rank "
                         << input.getRank();
  int64_t headDim = input.getDimSize(3);
  if (!ShapedType::isDynamic(headDim) && headDim % 2 != 0)
    return emitOpError() << "head_dim " << headDim << " must be even";
  if (!(getTheta().convertToDouble() > 0.0))
    return emitOpError() << "theta must be positive but is "
                         << getTheta().convertToDouble();
  if (Value positions = getPositions())
    if (failed(verifyShape(*this, "positions", tensorType(positions),
                           {input.getDimSize(0), input.getDimSize(1)})))
      return failure();
  if (failed(verifyShape(*this, "result", getType(), input.getShape())))
    return failure();
  return verifySameElementType(*this, "result", getType(), input);
}

LogicalResult AttentionOp::verify() {
  RankedTensorType query = tensorType(getQuery());
  RankedTensorType key = tensorType(getKey());
  RankedTensorType value = tensorType(getValue());
  if (query.getRank() != 4)
    return emitOpError() << "query must have rank 4 ([batch, seq, heads, "
                            "head_dim]) but has rank "
                         << query.getRank();
  if (failed(verifyShape(*this, "key", key,
                         {query.getDimSize(0), ShapedType::kDynamic,
                          ShapedType::kDynamic, query.getDimSize(3)})))
    return failure();
  if (failed(verifyShape(*this, "value", value, key.getShape())))
    return failure();
  int64_t qHeads = query.getDimSize(2), kvHeads = key.getDimSize(2);
  if (!ShapedType::isDynamic(qHeads) && !ShapedType::isDynamic(kvHeads) &&
      (kvHeads == 0 || qHeads % kvHeads != 0))
    return emitOpError() << "query heads " << qHeads
                         << " must be a multiple of key/value heads "
                         << kvHeads;
  if (getCausal() && !dimsAgree(query.getDimSize(1), key.getDimSize(1)))
    return emitOpError() << "causal attention needs as many keys as queries "
                            "but has "
                         << dimToString(key.getDimSize(1)) << " keys and "
                         << dimToString(query.getDimSize(1)) << " queries";
  if (std::optional<int64_t> window = getSlidingWindow()) {
    if (*window <= 0)
      return emitOpError() << "sliding_window must be positive but is "
                           << *window;
    if (!getCausal())
      return emitOpError() << "sliding_window needs causal attention";
  }
  if (!(getScale().convertToDouble() > 0.0))
    return emitOpError() << "scale must be positive but is "
                         << getScale().convertToDouble();
  RankedTensorType result = tensorType(getResult());
  if (failed(verifyShape(*this, "result", result, query.getShape())) ||
      failed(verifySameElementType(*this, "result", result, query)))
    return failure();
  if (Value stats = getStats())
    return verifyAttentionStats(*this, tensorType(stats), query);
  return success();
}

LogicalResult AttentionGradOp::verify() {
  if (getSaved().empty())
    return success();
  if (getSaved().size() != 2)
    return emitOpError() << "saved must be the forward's result and stats "
                            "(2 values) but has "
                         << getSaved().size();
  RankedTensorType query = tensorType(getQuery());
  if (getSaved()[0].getType() != query)
    return emitOpError() << "saved result is " << getSaved()[0].getType()
                         << " but must have the query's type " << query;
  return verifyAttentionStats(*this, tensorType(getSaved()[1]), query);
}

LogicalResult LinearOp::verify() {
  RankedTensorType input = tensorType(getInput());
  RankedTensorType weight = tensorType(getWeight());
  if (input.getRank() < 1)
    return emitOpError() << "input must have rank at least 1";
  if (failed(verifyShape(*this, "weight", weight,
                         {ShapedType::kDynamic,
                          input.getDimSize(input.getRank() - 1)})))
    return failure();
  if (Value bias = getBias())
    if (failed(verifyShape(*this, "bias", tensorType(bias),
                           {weight.getDimSize(0)})))
      return failure();
  SmallVector<int64_t> expected(input.getShape());
  expected.back() = weight.getDimSize(0);
  if (failed(verifyShape(*this, "result", getType(), expected)))
    return failure();
  return verifySameElementType(*this, "result", getType(), input);
}

LogicalResult RouterOp::verify() {
  RankedTensorType logits = tensorType(getLogits());
  if (logits.getRank() < 1)
    return emitOpError() << "logits must have rank at least 1";
  int64_t numExperts = logits.getDimSize(logits.getRank() - 1);
  int64_t k = getK();
  if (!ShapedType::isDynamic(numExperts) && k > numExperts)
    return emitOpError() << "k " << k << " exceeds the number of experts "
                         << numExperts;
  if (int64_t group = getTokensPerGroup(); group && logits.hasStaticShape()) {
    int64_t tokens = logits.getNumElements() / std::max<int64_t>(1, numExperts);
    if (tokens % group != 0)
      return emitOpError() << "tokens_per_group " << group
                           << " does not divide the " << tokens
                           << " tokens of the logits";
  }
  SmallVector<int64_t> expected(logits.getShape());
  expected.back() = k;
  if (failed(verifyShape(*this, "gates", getGates().getType(), expected)) ||
      failed(verifyShape(*this, "experts", getExperts().getType(), expected)))
    return failure();
  return verifySameElementType(*this, "gates", getGates().getType(), logits);
}

LogicalResult ExpertsOp::verify() {
  RankedTensorType input = tensorType(getInput());
  RankedTensorType gateUp = tensorType(getGateUp());
  RankedTensorType down = tensorType(getDown());
  if (input.getRank() < 1)
    return emitOpError() << "input must have rank at least 1";
  SmallVector<int64_t> choices(input.getShape().drop_back());
  choices.push_back(ShapedType::kDynamic);
  if (failed(verifyShape(*this, "gates", tensorType(getGates()), choices)))
    return failure();
  int64_t k = tensorType(getGates()).getShape().back();
  choices.back() = k;
  if (failed(verifyShape(*this, "experts", tensorType(getExperts()), choices)))
    return failure();
  int64_t hidden = input.getShape().back();
  if (failed(verifyShape(*this, "gate_up", gateUp,
                         {ShapedType::kDynamic, ShapedType::kDynamic, hidden})))
    return failure();
  int64_t twoInter = gateUp.getDimSize(1);
  if (!ShapedType::isDynamic(twoInter) && twoInter % 2 != 0)
    return emitOpError() << "gate_up dimension 1 is " << twoInter
                         << " but must be even (gate and up rows)";
  int64_t inter =
      ShapedType::isDynamic(twoInter) ? ShapedType::kDynamic : twoInter / 2;
  if (failed(verifyShape(*this, "down", down,
                         {gateUp.getDimSize(0), hidden, inter})))
    return failure();
  if (failed(verifyShape(*this, "result", getResult().getType(),
                         input.getShape())))
    return failure();
  if (Value saved = getSaved()) {
    int64_t rows = ShapedType::kDynamic;
    if (input.hasStaticShape() && !ShapedType::isDynamic(k))
      rows = input.getNumElements() / hidden * k;
    if (failed(verifyShape(*this, "saved", tensorType(saved),
                           {rows, twoInter})) ||
        failed(verifySameElementType(*this, "saved", tensorType(saved), input)))
      return failure();
  }
  return verifySameElementType(*this, "result", getResult().getType(), input);
}

LogicalResult LmHeadOp::verify() {
  RankedTensorType input = tensorType(getInput());
  RankedTensorType weight = tensorType(getWeight());
  if (input.getRank() < 1)
    return emitOpError() << "input must have rank at least 1";
  if (failed(verifyShape(*this, "weight", weight,
                         {ShapedType::kDynamic,
                          input.getDimSize(input.getRank() - 1)})))
    return failure();
  SmallVector<int64_t> expected(input.getShape());
  expected.back() = weight.getDimSize(0);
  if (failed(verifyShape(*this, "result", getType(), expected)))
    return failure();
  return verifySameElementType(*this, "result", getType(), input);
}

LogicalResult ParamInitOp::verify() {
  RankedTensorType type = getType();
  if (!type.hasStaticShape())
    return emitOpError() << "result must have a static shape but has type "
                         << type;
  if (getKind() == ParamInitKind::normal && !(getStd().convertToDouble() > 0))
    return emitOpError() << "std must be positive for normal initialisation "
                            "but is "
                         << getStd().convertToDouble();
  ArrayRef<int64_t> shape = type.getShape();
  ArrayRef<int64_t> global = getGlobalShape() ? *getGlobalShape() : shape;
  SmallVector<int64_t> zeros(shape.size(), 0);
  ArrayRef<int64_t> offsets = getOffsets() ? *getOffsets() : ArrayRef(zeros);
  if (global.size() != shape.size() || offsets.size() != shape.size())
    return emitOpError() << "global_shape and offsets must have rank "
                         << shape.size();
  SmallVector<int64_t> unsplit(shape.size(), -1);
  if (static_cast<bool>(getGrid()) != static_cast<bool>(getSplitAxes()))
    return emitOpError() << "grid and split_axes come together";
  ArrayRef<int64_t> splitAxes =
      getSplitAxes() ? *getSplitAxes() : ArrayRef(unsplit);
  if (splitAxes.size() != shape.size())
    return emitOpError() << "split_axes must have rank " << shape.size();
  for (size_t d = 0; d < shape.size(); ++d)
    if (splitAxes[d] < -1)
      return emitOpError() << "split_axes entry " << splitAxes[d]
                           << " of dimension " << d
                           << " is neither a grid axis nor -1";
  for (size_t d = 0; d < shape.size(); ++d)
    if (splitAxes[d] < 0 &&
        (offsets[d] < 0 || offsets[d] + shape[d] > global[d]))
      return emitOpError() << "shard [" << offsets[d] << ", "
                           << offsets[d] + shape[d] << ") of dimension " << d
                           << " is outside the parameter's " << global[d];
  return success();
}

LogicalResult ExpertCountsOp::verify() {
  RankedTensorType counts = getCounts().getType();
  if (counts.getRank() != 2)
    return emitOpError() << "counts must be [layers, num_experts] but have "
                         << "rank " << counts.getRank();
  if (!counts.isDynamicDim(0) &&
      counts.getDimSize(0) != static_cast<int64_t>(getExperts().size()))
    return emitOpError() << "counts have " << counts.getDimSize(0)
                         << " rows but there are " << getExperts().size()
                         << " layers";
  return success();
}

//===----------------------------------------------------------------------===//
// moe.adamw
//===----------------------------------------------------------------------===//

/// The gradient's type in moe.adamw's syntax: nothing when it is the
/// parameter's, else `grad TYPE`.
static ParseResult parseGradType(OpAsmParser &parser, Type &grad,
                                 Type param) {
  if (succeeded(parser.parseOptionalKeyword("grad")))
    return parser.parseType(grad);
  grad = param;
  return success();
}

static void printGradType(OpAsmPrinter &printer, Operation *, Type grad,
                          Type param) {
  if (grad != param)
    printer << " grad " << grad;
}

LogicalResult AdamWOp::verify() {
  auto param = cast<RankedTensorType>(getParam().getType());
  auto grad = cast<RankedTensorType>(getGrad().getType());
  if (grad.getShape() != param.getShape())
    return emitOpError() << "gradient " << grad << " must have the shape of "
                         << "the parameter " << param;
  if (grad.getElementType() != param.getElementType() &&
      !(param.getElementType().isF32() && grad.getElementType().isBF16()))
    return emitOpError() << "gradient " << grad << " must have the "
                         << "parameter's element type, or be bf16 under an "
                         << "fp32 parameter, but the parameter is " << param;
  return success();
}

#define GET_OP_CLASSES
#include "dialects/Moe/IR/MoeOps.cpp.inc"

//===----------------------------------------------------------------------===//
// moe.fusion
//===----------------------------------------------------------------------===//

bool FusionOp::isFusible(Operation *op) {
  if (auto c = dyn_cast<arith::ConstantOp>(op)) {
    auto dense = dyn_cast<DenseElementsAttr>(c.getValue());
    return dense && dense.isSplat() && isa<FloatType>(dense.getElementType());
  }
  return isa<arith::AddFOp, arith::SubFOp, arith::MulFOp, arith::DivFOp,
             arith::NegFOp, arith::TruncFOp, arith::ExtFOp>(op) &&
         isa<RankedTensorType>(op->getResult(0).getType());
}

LogicalResult FusionOp::verifyRegions() {
  Block &block = getBody().front();
  if (block.getNumArguments() != getInputs().size())
    return emitOpError() << "has " << getInputs().size()
                         << " inputs but its body takes "
                         << block.getNumArguments() << " arguments";
  for (auto [i, pair] :
       llvm::enumerate(llvm::zip(getInputs(), block.getArguments())))
    if (std::get<0>(pair).getType() != std::get<1>(pair).getType())
      return emitOpError() << "input #" << i << " is "
                           << std::get<0>(pair).getType()
                           << " but body argument #" << i << " is "
                           << std::get<1>(pair).getType();
  int64_t elements = tensorType(getResult()).getNumElements();
  for (Operation &op : block.without_terminator()) {
    if (!isFusible(&op))
      return op.emitOpError()
             << "cannot be fused: a moe.fusion body holds element-wise arith "
                "ops and splat constants only";
    int64_t n = tensorType(op.getResult(0)).getNumElements();
    if (!isa<arith::ConstantOp>(op) && n != elements)
      return op.emitOpError() << "has " << n << " elements but the fusion's "
                              << "result has " << elements;
  }
  auto yield = dyn_cast<YieldOp>(block.getTerminator());
  if (!yield)
    return emitOpError() << "body must end in moe.yield";
  if (yield.getValue().getType() != getResult().getType())
    return emitOpError() << "yields " << yield.getValue().getType()
                         << " but its result is " << getResult().getType();
  return success();
}

//===----------------------------------------------------------------------===//
// Expert parallelism
//===----------------------------------------------------------------------===//

namespace {

/// The axes of a routed collective: at least one, none negative, none twice.
LogicalResult verifyGridAxes(Operation *op, ArrayRef<int16_t> axes) {
  if (axes.empty())
    return op->emitOpError() << "grid_axes must name at least one axis";
  for (auto [i, axis] : llvm::enumerate(axes)) {
    if (axis < 0)
      return op->emitOpError() << "grid axis " << axis << " is negative";
    if (llvm::is_contained(axes.take_front(i), axis))
      return op->emitOpError() << "grid axis " << axis << " appears twice";
  }
  return success();
}

/// `experts` (`[..., k]`) must choose for every token of a `[..., d]`
/// tensor with leading dimensions `tokens`.
LogicalResult verifyChoices(Operation *op, StringRef what,
                            RankedTensorType experts,
                            ArrayRef<int64_t> tokens) {
  SmallVector<int64_t> expected(tokens);
  expected.push_back(ShapedType::kDynamic);
  return verifyShape(op, what, experts, expected);
}

/// `[rows, 1]`, one value per received row.
LogicalResult verifyPerRow(Operation *op, StringRef what, RankedTensorType t,
                           int64_t rows) {
  return verifyShape(op, what, t, {rows, 1});
}

} // namespace

LogicalResult DispatchOp::verify() {
  if (failed(verifyGridAxes(*this, getGridAxes())))
    return failure();
  RankedTensorType input = tensorType(getInput());
  RankedTensorType experts = tensorType(getExperts());
  if (input.getRank() < 1)
    return emitOpError() << "input must have rank at least 1";
  if (failed(verifyChoices(*this, "experts", experts,
                           input.getShape().drop_back())))
    return failure();
  if (Value gates = getGates()) {
    if (failed(verifyShape(*this, "gates", tensorType(gates),
                           experts.getShape())))
      return failure();
    if (!getRowGates())
      return emitOpError() << "has gates but no row_gates result";
  } else if (getRowGates()) {
    return emitOpError() << "has a row_gates result but no gates";
  }
  RankedTensorType rows = getRows().getType();
  if (failed(verifyShape(*this, "rows", rows,
                         {ShapedType::kDynamic, input.getShape().back()})) ||
      failed(verifySameElementType(*this, "rows", rows, input)))
    return failure();
  int64_t numRows = rows.getDimSize(0);
  if (failed(verifyPerRow(*this, "row_experts", getRowExperts().getType(),
                          numRows)))
    return failure();
  if (Value rowGates = getRowGates())
    if (failed(verifyPerRow(*this, "row_gates", tensorType(rowGates),
                            numRows)) ||
        failed(verifySameElementType(*this, "row_gates", tensorType(rowGates),
                                     tensorType(getGates()))))
      return failure();
  RankedTensorType counts = getCounts().getType();
  if (counts.getRank() != 2 || !counts.hasStaticShape())
    return emitOpError() << "counts must be a static [group_size, "
                            "num_local_experts] tensor but are "
                         << counts;
  return success();
}

std::optional<int64_t> DispatchOp::getReceiveRowBound() {
  RankedTensorType experts = tensorType(getExperts());
  if (!experts.hasStaticShape())
    return std::nullopt;
  return getGroupSize() * experts.getNumElements();
}

LogicalResult CombineOp::verify() {
  if (failed(verifyGridAxes(*this, getGridAxes())))
    return failure();
  RankedTensorType rows = tensorType(getRows());
  RankedTensorType experts = tensorType(getExperts());
  RankedTensorType counts = getCounts().getType();
  if (rows.getRank() != 2)
    return emitOpError() << "rows must be [rows, width] but have rank "
                         << rows.getRank();
  if (experts.getRank() < 1)
    return emitOpError() << "experts must have rank at least 1";
  if (counts.getRank() != 2 || !counts.hasStaticShape())
    return emitOpError() << "counts must be a static [group_size, "
                            "num_local_experts] tensor but are "
                         << counts;
  SmallVector<int64_t> expected(experts.getShape().drop_back());
  expected.push_back(rows.getDimSize(1));
  if (failed(verifyShape(*this, "result", getType(), expected)))
    return failure();
  return verifySameElementType(*this, "result", getType(), rows);
}

LogicalResult TokenShuffleOp::verify() {
  if (failed(verifyGridAxes(*this, getGridAxes())))
    return failure();
  if (tensorType(getInput()).getRank() < 1)
    return emitOpError() << "input must have rank at least 1";
  if (getType() != getInput().getType())
    return emitOpError() << "result type " << getType()
                         << " differs from the input's "
                         << getInput().getType();
  return success();
}

LogicalResult LoadBalancingStatsOp::verify() {
  if (getLogits().empty())
    return emitOpError() << "needs the router logits of at least one layer";
  int64_t numExperts = ShapedType::kDynamic;
  for (auto [layer, logits] : llvm::enumerate(getLogits())) {
    RankedTensorType type = tensorType(logits);
    if (type.getRank() < 1)
      return emitOpError() << "logits of layer " << layer
                           << " must have rank at least 1";
    int64_t e = type.getShape().back();
    if (!dimsAgree(e, numExperts))
      return emitOpError() << "logits of layer " << layer << " have " << e
                           << " experts but earlier layers have "
                           << numExperts;
    if (!ShapedType::isDynamic(e))
      numExperts = e;
  }
  return verifyShape(*this, "stats", getStats().getType(), {2, numExperts});
}

//===----------------------------------------------------------------------===//
// Activation offloading
//===----------------------------------------------------------------------===//

/// Whether `type` is held in host memory (encoding #moe.host).
static bool isHostTensor(RankedTensorType type) {
  return isa_and_nonnull<HostMemoryAttr>(type.getEncoding());
}

/// Checks that `host` is `device` held in host memory; `what` names the two
/// in a diagnostic of `op`.
static LogicalResult verifyHostCopy(Operation *op, RankedTensorType device,
                                    RankedTensorType host,
                                    StringRef deviceName,
                                    StringRef hostName) {
  if (device.getEncoding())
    return op->emitOpError() << deviceName << " has type " << device
                             << "; it must be a device tensor (no encoding)";
  if (!isHostTensor(host))
    return op->emitOpError() << hostName << " has type " << host
                             << "; it must be a host tensor (encoding "
                                "#moe.host)";
  if (device.getShape() != host.getShape() ||
      device.getElementType() != host.getElementType())
    return op->emitOpError()
           << deviceName << " " << device << " and " << hostName << " "
           << host << " must have the same shape and element type";
  return success();
}

LogicalResult OffloadOp::verify() {
  return verifyHostCopy(*this, getInput().getType(), getResult().getType(),
                        "input", "result");
}

LogicalResult OffloadJoinOp::verify() {
  if (!getInput().getDefiningOp<OffloadOp>())
    return emitOpError() << "input is not made by moe.offload";
  return success();
}

LogicalResult FetchOp::verify() {
  if (failed(verifyHostCopy(*this, getResult().getType(),
                            getInput().getType(), "result", "input")))
    return failure();
  auto offload = getInput().getDefiningOp<OffloadOp>();
  if (!offload)
    return emitOpError() << "input is not made by moe.offload";
  if (offload.getLayer() != getLayer())
    return emitOpError() << "fetches for layer " << getLayer()
                         << " a value offloaded for layer "
                         << offload.getLayer();
  return success();
}
