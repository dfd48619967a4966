//===- MoeDialect.cpp - The moe dialect -----------------------------------===//
//
// Registers the `moe` dialect's operations and attributes, and verifies its
// discardable attributes (declared in MoeDialect.td): each has one type and
// one kind of place (an op, a function, a function argument or result),
// and any other `moe.` attribute is an error.
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/IR/MoeDialect.h"

#include "dialects/Moe/IR/MoeOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/DialectImplementation.h"
#include "mlir/Interfaces/FunctionInterfaces.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/TypeSwitch.h"

#include <cstring>

using namespace mlir;
using namespace mlir::moe;

#include "dialects/Moe/IR/MoeDialect.cpp.inc"
#include "dialects/Moe/IR/MoeEnums.cpp.inc"

#define GET_ATTRDEF_CLASSES
#include "dialects/Moe/IR/MoeAttrs.cpp.inc"

void MoeDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "dialects/Moe/IR/MoeOps.cpp.inc"
      >();
  addAttributes<
#define GET_ATTRDEF_LIST
#include "dialects/Moe/IR/MoeAttrs.cpp.inc"
      >();
}

namespace {

/// Whether `attr` is a string naming something: non-empty.
bool isName(Attribute attr) {
  auto name = dyn_cast<StringAttr>(attr);
  return name && !name.getValue().empty();
}

/// Whether `attr` is an i64 integer of at least 0.
bool isNonNegativeI64(Attribute attr) {
  auto n = dyn_cast<IntegerAttr>(attr);
  return n && n.getType().isSignlessInteger(64) && n.getInt() >= 0;
}

/// Verifies a naming attribute of function argument or result #`index`
/// (`where` is "argument" or "result"): it must be allowed there and be a
/// non-empty string.
/// Checks a moe.initializer_pieces value on argument `index` of `type`:
/// a non-empty list of {initializer, offsets, sizes, permutation}, each box
/// inside the argument, the boxes' elements adding up to the argument's
/// (the loader checks that they do not overlap).
LogicalResult verifyInitializerPieces(Operation *op, unsigned index,
                                      Attribute value, Type type) {
  auto fail = [&](const Twine &why) {
    return op->emitOpError() << "has 'moe.initializer_pieces' on argument #"
                             << index << " that " << why;
  };
  auto tensor = dyn_cast<RankedTensorType>(type);
  auto list = dyn_cast<ArrayAttr>(value);
  if (!tensor || !tensor.hasStaticShape())
    return fail("is on an argument that is not a static tensor");
  if (!list || list.empty())
    return fail("is not a non-empty list of pieces");
  int64_t rank = tensor.getRank(), covered = 0;
  for (auto [i, entry] : llvm::enumerate(list)) {
    auto piece = dyn_cast<DictionaryAttr>(entry);
    auto name = piece ? piece.getAs<StringAttr>("initializer") : StringAttr();
    auto offsets =
        piece ? piece.getAs<DenseI64ArrayAttr>("offsets") : DenseI64ArrayAttr();
    auto sizes =
        piece ? piece.getAs<DenseI64ArrayAttr>("sizes") : DenseI64ArrayAttr();
    auto perm = piece ? piece.getAs<DenseI64ArrayAttr>("permutation")
                      : DenseI64ArrayAttr();
    if (!name || name.getValue().empty() || !offsets || !sizes || !perm ||
        piece.size() != 4)
      return fail("has piece #" + Twine(i) +
                  " that is not {initializer = \"<name>\", offsets, sizes, "
                  "permutation}");
    if (offsets.size() != rank || sizes.size() != rank)
      return fail("has piece #" + Twine(i) +
                  " whose offsets or sizes are not of the argument's rank " +
                  Twine(rank));
    int64_t elements = 1;
    for (int64_t d = 0; d < rank; ++d) {
      if (offsets[d] < 0 || sizes[d] < 0 ||
          offsets[d] + sizes[d] > tensor.getDimSize(d))
        return fail("has piece #" + Twine(i) +
                    " whose box leaves the argument in dimension " + Twine(d));
      elements *= sizes[d];
    }
    covered += elements;
    SmallVector<int64_t> sorted(perm.asArrayRef());
    llvm::sort(sorted);
    for (auto [k, d] : llvm::enumerate(sorted))
      if (d != static_cast<int64_t>(k))
        return fail("has piece #" + Twine(i) +
                    " whose permutation is not a permutation");
  }
  if (covered != tensor.getNumElements())
    return fail("has boxes of " + Twine(covered) + " elements for an " +
                "argument of " + Twine(tensor.getNumElements()));
  return success();
}

LogicalResult verifyNameAttr(Operation *op, StringRef where, unsigned index,
                             NamedAttribute attribute,
                             ArrayRef<StringRef> allowed) {
  StringRef name = attribute.getName().getValue();
  if (!llvm::is_contained(allowed, name)) {
    bool onResults = name == MoeDialect::getOutputAttrName() ||
                     name == MoeDialect::getGradientAttrName();
    bool onArguments = name == MoeDialect::getInputAttrName();
    if (onResults || onArguments)
      return op->emitOpError() << "has '" << name << "' on " << where << " #"
                               << index << "; it belongs on a function "
                               << (onResults ? "result" : "argument");
    return op->emitOpError()
           << "has '" << name << "' on " << where << " #" << index
           << ", which the moe dialect does not define";
  }
  if (!isa<FunctionOpInterface>(op))
    return op->emitOpError()
           << "has '" << name << "' on " << where << " #" << index
           << ", but it belongs on a function's " << where;
  if (!isName(attribute.getValue()))
    return op->emitOpError() << "has '" << name << "' on " << where << " #"
                             << index << " that is " << attribute.getValue()
                             << "; it must be a non-empty string";
  return success();
}

} // namespace

std::optional<int64_t> mlir::moe::getDecoderLayerOfParameter(StringRef name) {
  for (size_t at = name.find("layers."); at != StringRef::npos;
       at = name.find("layers.", at + 1)) {
    if (at != 0 && name[at - 1] != '.')
      continue;
    StringRef rest = name.drop_front(at + strlen("layers."));
    StringRef digits = rest.take_while([](char c) { return llvm::isDigit(c); });
    int64_t layer;
    if (!digits.empty() && rest.drop_front(digits.size()).starts_with(".") &&
        !digits.getAsInteger(10, layer))
      return layer;
  }
  return std::nullopt;
}

moe::ParameterValues mlir::moe::getParameterValues(FunctionOpInterface func) {
  ParameterValues found;
  Block &body = func.getFunctionBody().front();
  for (BlockArgument arg : body.getArguments())
    if (auto name = func.getArgAttrOfType<StringAttr>(
            arg.getArgNumber(), MoeDialect::getParameterAttrName())) {
      found.values.insert(arg);
      found.layer[arg] = getDecoderLayerOfParameter(name.getValue())
                             .value_or(kOutsideDecoderLayers);
    }
  for (Operation &op : body) {
    if (!llvm::all_of(op.getOperands(),
                      [&](Value v) { return found.values.contains(v); }))
      continue;
    std::optional<int64_t> layer;
    for (Value v : op.getOperands())
      if (auto it = found.layer.find(v); it != found.layer.end())
        layer = std::max(layer.value_or(kOutsideDecoderLayers), it->second);
    for (Value r : op.getResults()) {
      found.values.insert(r);
      if (layer)
        found.layer[r] = *layer;
    }
  }
  return found;
}

std::optional<std::pair<int64_t, int64_t>>
MoeDialect::getArenaRange(Value value) {
  while (Operation *def = value.getDefiningOp()) {
    if (isa<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(def)) {
      value = def->getOperand(0);
      continue;
    }
    auto offsets =
        def->getAttrOfType<DenseI64ArrayAttr>(getArenaOffsetsAttrName());
    int64_t offset =
        offsets ? offsets[cast<OpResult>(value).getResultNumber()] : -1;
    if (offset < 0)
      return std::nullopt;
    auto type = cast<RankedTensorType>(value.getType());
    return std::make_pair(offset, offset + type.getNumElements() *
                                               type.getElementTypeBitWidth() /
                                               8);
  }
  return std::nullopt;
}

LogicalResult MoeDialect::verifyRegionArgAttribute(Operation *op, unsigned,
                                                   unsigned argIndex,
                                                   NamedAttribute attribute) {
  if (attribute.getName() == getExpertLocalAttrName()) {
    auto func = dyn_cast<FunctionOpInterface>(op);
    if (!func)
      return op->emitOpError()
             << "has '" << attribute.getName().getValue() << "' on argument #"
             << argIndex << ", but it belongs on a function's argument";
    if (!isa<UnitAttr>(attribute.getValue()))
      return op->emitOpError() << "has '" << attribute.getName().getValue()
                               << "' on argument #" << argIndex << " that is "
                               << attribute.getValue() << "; it must be a unit";
    if (!func.getArgAttr(argIndex, getParameterAttrName()) &&
        !func.getArgAttr(argIndex, getExpAvgAttrName()) &&
        !func.getArgAttr(argIndex, getExpAvgSqAttrName()))
      return op->emitOpError()
             << "has '" << attribute.getName().getValue() << "' on argument #"
             << argIndex
             << ", which is neither a parameter nor an AdamW moment";
    return success();
  }
  if (attribute.getName() == getAllOnesAttrName()) {
    auto func = dyn_cast<FunctionOpInterface>(op);
    if (!func || !isa<UnitAttr>(attribute.getValue()) ||
        !func.getArgAttr(argIndex, getInputAttrName()))
      return op->emitOpError()
             << "has '" << attribute.getName().getValue() << "' = "
             << attribute.getValue() << " on argument #" << argIndex
             << "; it is a unit attribute of a function argument with '"
             << getInputAttrName() << "'";
    return success();
  }
  if (attribute.getName() == getInitializerPiecesAttrName()) {
    auto func = dyn_cast<FunctionOpInterface>(op);
    if (!func || !func.getArgAttr(argIndex, getParameterAttrName()))
      return op->emitOpError()
             << "has '" << attribute.getName().getValue() << "' on argument #"
             << argIndex << ", which is not a function's parameter";
    return verifyInitializerPieces(op, argIndex, attribute.getValue(),
                                   func.getArgumentTypes()[argIndex]);
  }
  if (attribute.getName() == getInitializerAttrName() ||
      attribute.getName() == getInitializerPermutationAttrName()) {
    StringRef name = attribute.getName().getValue();
    auto func = dyn_cast<FunctionOpInterface>(op);
    if (!func || !func.getArgAttr(argIndex, getParameterAttrName()))
      return op->emitOpError() << "has '" << name << "' on argument #"
                               << argIndex
                               << ", which is not a function's parameter";
    if (name == getInitializerAttrName())
      return isName(attribute.getValue())
                 ? success()
                 : op->emitOpError()
                       << "has '" << name << "' on argument #" << argIndex
                       << " that is " << attribute.getValue()
                       << "; it must be a non-empty string";
    auto perm = dyn_cast<DenseI64ArrayAttr>(attribute.getValue());
    auto type = dyn_cast<RankedTensorType>(
        func.getArgumentTypes()[argIndex]);
    SmallVector<int64_t> sorted;
    if (perm)
      sorted.assign(perm.asArrayRef().begin(), perm.asArrayRef().end());
    llvm::sort(sorted);
    bool permutation = perm && type && perm.size() == type.getRank();
    for (auto [i, d] : llvm::enumerate(sorted))
      permutation = permutation && d == static_cast<int64_t>(i);
    if (!permutation)
      return op->emitOpError() << "has '" << name << "' on argument #"
                               << argIndex << " that is "
                               << attribute.getValue()
                               << "; it must be a permutation of the "
                                  "argument's dimensions";
    return success();
  }
  return verifyNameAttr(op, "argument", argIndex, attribute,
                        {getParameterAttrName(), getExpAvgAttrName(),
                         getExpAvgSqAttrName(), getInputAttrName()});
}

LogicalResult MoeDialect::verifyRegionResultAttribute(
    Operation *op, unsigned, unsigned resultIndex, NamedAttribute attribute) {
  return verifyNameAttr(op, "result", resultIndex, attribute,
                        {getParameterAttrName(), getExpAvgAttrName(),
                         getExpAvgSqAttrName(), getOutputAttrName(),
                         getGradientAttrName()});
}

LogicalResult MoeDialect::verifyOperationAttribute(Operation *op,
                                                   NamedAttribute attribute) {
  StringRef name = attribute.getName().getValue();
  Attribute value = attribute.getValue();
  if (name == getPersistentCopyAttrName()) {
    if (!isa<UnitAttr>(value) || !isa<arith::TruncFOp>(op))
      return op->emitOpError() << "has '" << name << "' = " << value
                               << "; it is a unit attribute of arith.truncf";
    return success();
  }
  if (name == getRecomputeAttrName()) {
    auto recompute = dyn_cast<RecomputeAttr>(value);
    if (!recompute || recompute.getLayer() < 0 ||
        (recompute.getPolicy() != ActivationCheckpointing::Selective &&
         recompute.getPolicy() != ActivationCheckpointing::Full))
      return op->emitOpError()
             << "has '" << name << "' = " << value
             << "; it is a #moe.recompute with a layer of at least 0 and "
                "the policy selective or full";
    return success();
  }
  if (name == getArenaOffsetsAttrName()) {
    auto offsets = dyn_cast<DenseI64ArrayAttr>(value);
    if (!offsets)
      return op->emitOpError() << "has '" << name << "' = " << value
                               << "; it must be an array<i64>";
    if (offsets.size() != static_cast<int64_t>(op->getNumResults()))
      return op->emitOpError()
             << "has " << offsets.size() << " '" << name << "' for "
             << op->getNumResults() << " results; it needs one per result";
    for (auto [i, offset] : llvm::enumerate(offsets.asArrayRef()))
      if (offset < -1)
        return op->emitOpError()
               << "has '" << name << "' " << offset << " for result #" << i
               << "; an offset is at least 0, or -1 for a "
                  "result outside the arena";
    return success();
  }
  if (name == getHostOffsetsAttrName()) {
    auto offsets = dyn_cast<DenseI64ArrayAttr>(value);
    if (!isa<OffloadOp>(op) || !offsets || offsets.size() != 1 ||
        offsets[0] < 0)
      return op->emitOpError() << "has '" << name << "' = " << value
                               << "; it is one offset of at least 0 on "
                                  "moe.offload";
    return success();
  }
  if (name == getOffloadLayersAttrName()) {
    auto layers = dyn_cast<DenseI64ArrayAttr>(value);
    if (!isa<FunctionOpInterface>(op) || !layers ||
        llvm::any_of(layers.asArrayRef(), [](int64_t l) { return l < 0; }))
      return op->emitOpError() << "has '" << name << "' = " << value
                               << "; it is an array<i64> of decoder layers "
                                  "(each at least 0) on a function";
    return success();
  }
  if (name == getArenaBytesAttrName() || name == getArenaLiveBytesAttrName() ||
      name == getHostBytesAttrName()) {
    if (!isa<FunctionOpInterface>(op) || !isNonNegativeI64(value))
      return op->emitOpError() << "has '" << name << "' = " << value
                               << "; it is an i64 of at least 0 on a "
                                  "function";
    return success();
  }
  if (name == getAdamWGroupAttrName()) {
    if (!isa<AdamWOp>(op) || !isNonNegativeI64(value))
      return op->emitOpError() << "has '" << name << "' = " << value
                               << "; it is an i64 of at least 0 on "
                                  "moe.adamw";
    return success();
  }
  if (name == getOnnxOpsetAttrName() || name == getOnnxProducerAttrName()) {
    bool typed = name == getOnnxOpsetAttrName() ? isNonNegativeI64(value)
                                                : isa<StringAttr>(value);
    if (!isa<ModuleOp>(op) || !typed)
      return op->emitOpError()
             << "has '" << name << "' = " << value << "; it is "
             << (name == getOnnxOpsetAttrName() ? "an i64" : "a string")
             << " on an imported module";
    return success();
  }
  if (llvm::is_contained({getParameterAttrName(), getExpAvgAttrName(),
                          getExpAvgSqAttrName(), getInputAttrName(),
                          getOutputAttrName(), getGradientAttrName()},
                         name))
    return op->emitOpError() << "has '" << name
                             << "' on the op; it belongs on a function "
                                "argument or result";
  return op->emitOpError() << "has '" << name
                           << "', which the moe dialect does not define";
}
