//===- OnnxImporter.cpp - ONNX protobuf to the moe dialect ----------------===//
//
// Builds `func.func @forward` from an ONNX ModelProto, node by node, as
// described in moec/Import/Onnx.h. The importer is faithful: it raises
// nothing, it only checks what it must to produce well-formed IR (defined
// inputs, known element types, typed outputs, consistent static shapes) and
// rejects what moec cannot represent (sub-graphs, randomness, unknown
// domains, model-local functions) and declared sizes over the limits in
// moec/Import/Onnx.h (tensor elements, node count, nesting), before
// building IR for them.
//
//===----------------------------------------------------------------------===//

#include "moec/Import/Onnx.h"

#include "OnnxTensors.h"
#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Verifier.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"

#include <fmt/format.h>
#include <google/protobuf/arena.h>
#include <google/protobuf/io/coded_stream.h>
#include <onnx/onnx_pb.h>

#include <algorithm>

using namespace mlir;
using namespace moec;

namespace {

/// Operator domains the importer accepts. Other domains (and model-local
/// functions) are rejected with the node that uses them.
bool isKnownDomain(llvm::StringRef domain) {
  return domain.empty() || domain == "ai.onnx" || domain == "com.microsoft" ||
         domain == "moec";
}

/// Operators moec will never import: control flow with sub-graphs, random
/// number generation and sequences. A training compiler needs a pure,
/// statically-shaped forward graph.
bool isRejectedOp(llvm::StringRef opType, std::string &why) {
  static const llvm::StringSet<> controlFlow = {"If", "Loop", "Scan"};
  static const llvm::StringSet<> random = {
      "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
      "Multinomial",  "Bernoulli",     "Dropout"};
  if (controlFlow.contains(opType)) {
    why = "control flow with sub-graphs is not supported";
    return true;
  }
  if (random.contains(opType)) {
    why = "random operators are not supported (export the model in eval mode)";
    return true;
  }
  if (opType.starts_with("Sequence") || opType.starts_with("Optional")) {
    why = "sequence and optional values are not supported";
    return true;
  }
  return false;
}

/// A parameter is a floating-point initializer named like a module's weight
/// (`.weight`, `.bias`, `_proj`: checkpoint names) or, for initializers an
/// exporter created by folding (named `val_12`), one of rank >= 2 without a
/// unit dimension. Everything else (shape constants, broadcast-shaped buffers
/// such as `[1, d, 1]` rotary frequencies) is a constant.
bool isParameter(const onnx::TensorProto &tensor) {
  using T = onnx::TensorProto;
  int32_t type = tensor.data_type();
  bool floating = type == T::FLOAT || type == T::FLOAT16 ||
                  type == T::BFLOAT16 || type == T::DOUBLE;
  if (!floating)
    return false;
  llvm::StringRef name = tensor.name();
  if (name.ends_with(".weight") || name.ends_with(".bias") ||
      name.ends_with("_proj"))
    return true;
  if (tensor.dims_size() < 2)
    return false;
  return llvm::all_of(tensor.dims(), [](int64_t d) { return d > 1; });
}

class GraphImporter {
public:
  GraphImporter(MLIRContext &context, const onnx::ModelProto &model,
                llvm::StringRef path, const OnnxImportOptions &options)
      : context(context), builder(&context), model(model), path(path.str()),
        options(options) {
    llvm::SmallString<256> dir(path);
    llvm::sys::path::remove_filename(dir);
    modelDir = dir.empty() ? "." : std::string(dir);
  }

  OwningOpRef<ModuleOp> run();

private:
  // --- Types and attributes ---------------------------------------------
  // Each reports its errors at `loc`, prefixed with `node` when given.
  FailureOr<Type> convertElementType(int32_t type, Location loc,
                                     llvm::StringRef what,
                                     const onnx::NodeProto *node = nullptr);
  FailureOr<RankedTensorType>
  convertValueType(const onnx::TypeProto &type, Location loc,
                   llvm::StringRef what, const onnx::NodeProto *node = nullptr);
  FailureOr<DenseElementsAttr>
  convertTensor(const onnx::TensorProto &tensor, Location loc,
                const onnx::NodeProto *node = nullptr);
  FailureOr<Attribute> convertAttribute(const onnx::AttributeProto &attr,
                                        Location loc,
                                        const onnx::NodeProto &node);
  LogicalResult checkInitializer(const onnx::TensorProto &init,
                                 RankedTensorType type, Location loc);
  LogicalResult checkElementCount(ArrayRef<int64_t> shape, Location loc,
                                  llvm::StringRef what,
                                  const onnx::NodeProto *node = nullptr);

  // --- Graph --------------------------------------------------------------
  Location nodeLoc(const onnx::NodeProto &node, int index);
  LogicalResult importConstantNode(const onnx::NodeProto &node, Location loc);
  LogicalResult importNode(const onnx::NodeProto &node, int index);
  LogicalResult checkShapes(const onnx::NodeProto &node, Location loc,
                            ArrayRef<Value> inputs,
                            ArrayRef<Type> resultTypes);
  /// The element types the ONNX spec fixes that the raiser relies on: a
  /// Cast's `to` is an element type and its output's; a Reshape's shape is
  /// int64. (onnx.checker and onnxruntime refuse these models; the raiser
  /// would fold around them.)
  LogicalResult checkTypes(const onnx::NodeProto &node, Location loc,
                           ArrayRef<Value> inputs, ArrayRef<Type> resultTypes);
  /// Checks a node that is, or that `mapping` says stands for,
  /// moec::GroupedMatMul: three inputs X [S, K], W [G, K, N] of one float
  /// type and offsets int32/int64 [G]; one output [S, N]; no attributes.
  LogicalResult checkGroupedMatMul(const onnx::NodeProto &node, Location loc,
                                   ArrayRef<Value> inputs,
                                   ArrayRef<Type> resultTypes,
                                   const CustomOpMapping *mapping);
  /// The user's mapping for `node`'s domain and op type, or null.
  const CustomOpMapping *findCustomOp(const onnx::NodeProto &node) const {
    for (const CustomOpMapping &mapping : options.customOps)
      if (mapping.domain == node.domain() && mapping.opType == node.op_type())
        return &mapping;
    return nullptr;
  }

  /// The name diagnostics use for a node: its own, or `<op type>#<position>`
  /// when it has none.
  static std::string nodeName(const onnx::NodeProto &node, int index) {
    return node.name().empty() ? fmt::format("{}#{}", node.op_type(), index + 1)
                               : node.name();
  }

  InFlightDiagnostic nodeError(const onnx::NodeProto &node, Location loc) {
    InFlightDiagnostic diag = emitError(loc);
    // The node's name is the location's name: a nameless node has one too.
    llvm::StringRef name = node.name();
    if (auto nameLoc = dyn_cast<NameLoc>(loc))
      name = nameLoc.getName().getValue();
    diag << "ONNX node '" << name << "' (" << node.op_type() << "): ";
    return diag;
  }

  InFlightDiagnostic error(Location loc, const onnx::NodeProto *node) {
    return node ? nodeError(*node, loc) : emitError(loc);
  }

  MLIRContext &context;
  OpBuilder builder;
  const onnx::ModelProto &model;
  std::string path;
  std::string modelDir;
  const OnnxImportOptions &options;
  llvm::StringMap<Value> values;
  llvm::StringMap<const onnx::TypeProto *> declaredTypes;
};

FailureOr<Type> GraphImporter::convertElementType(int32_t type, Location loc,
                                                  llvm::StringRef what,
                                                  const onnx::NodeProto *node) {
  using T = onnx::TensorProto;
  switch (type) {
  case T::FLOAT: return Type(builder.getF32Type());
  case T::DOUBLE: return Type(builder.getF64Type());
  case T::FLOAT16: return Type(builder.getF16Type());
  case T::BFLOAT16: return Type(builder.getBF16Type());
  case T::INT64: return Type(builder.getI64Type());
  case T::INT32: return Type(builder.getI32Type());
  case T::INT16: return Type(builder.getI16Type());
  case T::INT8: return Type(builder.getI8Type());
  case T::UINT8: return Type(builder.getIntegerType(8, /*isSigned=*/false));
  case T::BOOL: return Type(builder.getI1Type());
  default:
    return error(loc, node)
           << what << " has unsupported element type "
           << T::DataType_Name(static_cast<T::DataType>(type)) << " (" << type
           << ")";
  }
}

FailureOr<RankedTensorType>
GraphImporter::convertValueType(const onnx::TypeProto &type, Location loc,
                                llvm::StringRef what,
                                const onnx::NodeProto *node) {
  if (type.value_case() == onnx::TypeProto::VALUE_NOT_SET)
    return error(loc, node) << what << " has no type information; export "
                                       "with shape inference";
  if (!type.has_tensor_type())
    return error(loc, node) << what << " is not a tensor";
  const auto &tensorType = type.tensor_type();
  FailureOr<Type> elementType =
      convertElementType(tensorType.elem_type(), loc, what, node);
  if (failed(elementType))
    return failure();
  if (!tensorType.has_shape())
    return error(loc, node) << what << " has no shape (not even a rank); "
                            << "re-export with shape information";
  SmallVector<int64_t> shape;
  for (const auto &dim : tensorType.shape().dim()) {
    if (dim.has_dim_value()) {
      if (dim.dim_value() < 0)
        return error(loc, node)
               << what << " has negative dimension " << dim.dim_value();
      shape.push_back(dim.dim_value());
    } else {
      shape.push_back(ShapedType::kDynamic); // dim_param or unknown
    }
  }
  if (failed(checkElementCount(shape, loc, what, node)))
    return failure();
  return RankedTensorType::get(shape, *elementType);
}

/// Refuses a shape whose static dimensions multiply to more than
/// kMaxOnnxTensorElements: the model declares a tensor no step could hold,
/// and the types would carry it into every pass. Dynamic dimensions count
/// as 1 (the job's shapes are checked when they are specialised).
LogicalResult GraphImporter::checkElementCount(ArrayRef<int64_t> shape,
                                               Location loc,
                                               llvm::StringRef what,
                                               const onnx::NodeProto *node) {
  uint64_t count = 1;
  bool over = false;
  for (int64_t d : shape) {
    if (ShapedType::isDynamic(d))
      continue;
    if (d != 0 && count > static_cast<uint64_t>(kMaxOnnxTensorElements) /
                              static_cast<uint64_t>(d))
      over = true;
    else
      count *= static_cast<uint64_t>(d);
  }
  if (llvm::is_contained(shape, 0) || !over)
    return success();
  std::string dims = llvm::join(
      llvm::map_range(shape,
                      [](int64_t d) {
                        return ShapedType::isDynamic(d) ? std::string("?")
                                                        : std::to_string(d);
                      }),
      ", ");
  return error(loc, node) << what << " of shape [" << dims << "] has more than "
                          << kMaxOnnxTensorElements
                          << " elements, moec's limit for one tensor";
}

FailureOr<DenseElementsAttr>
GraphImporter::convertTensor(const onnx::TensorProto &tensor, Location loc,
                             const onnx::NodeProto *node) {
  FailureOr<Type> elementType = convertElementType(
      tensor.data_type(), loc, "tensor '" + tensor.name() + "'", node);
  if (failed(elementType))
    return failure();
  HostTensor host;
  std::string message;
  if (!decodeTensor(tensor, modelDir, host, message))
    return error(loc, node) << message;
  auto type = RankedTensorType::get(host.shape, *elementType);
  if (auto floatType = dyn_cast<FloatType>(*elementType)) {
    SmallVector<APFloat> elements;
    elements.reserve(host.f32.size());
    for (float v : host.f32) {
      APFloat value(v);
      bool lostInfo = false;
      value.convert(floatType.getFloatSemantics(),
                    APFloat::rmNearestTiesToEven, &lostInfo);
      elements.push_back(value);
    }
    return DenseElementsAttr::get(type, elements);
  }
  unsigned width = elementType->getIntOrFloatBitWidth();
  SmallVector<APInt> elements;
  elements.reserve(host.i64.size());
  for (int64_t v : host.i64)
    elements.push_back(APInt(width, static_cast<uint64_t>(v),
                             /*isSigned=*/true, /*implicitTrunc=*/true));
  return DenseElementsAttr::get(type, elements);
}

FailureOr<Attribute>
GraphImporter::convertAttribute(const onnx::AttributeProto &attr,
                                Location loc, const onnx::NodeProto &node) {
  using A = onnx::AttributeProto;
  switch (attr.type()) {
  case A::INT:
    return Attribute(builder.getI64IntegerAttr(attr.i()));
  case A::FLOAT:
    return Attribute(builder.getF32FloatAttr(attr.f()));
  case A::STRING:
    return Attribute(builder.getStringAttr(attr.s()));
  case A::INTS:
    return Attribute(builder.getDenseI64ArrayAttr(
        SmallVector<int64_t>(attr.ints().begin(), attr.ints().end())));
  case A::FLOATS:
    return Attribute(builder.getDenseF32ArrayAttr(
        SmallVector<float>(attr.floats().begin(), attr.floats().end())));
  case A::STRINGS: {
    SmallVector<Attribute> strings;
    for (const std::string &s : attr.strings())
      strings.push_back(builder.getStringAttr(s));
    return Attribute(builder.getArrayAttr(strings));
  }
  case A::TENSOR: {
    FailureOr<DenseElementsAttr> tensor = convertTensor(attr.t(), loc, &node);
    if (failed(tensor))
      return failure();
    return Attribute(*tensor);
  }
  default:
    return nodeError(node, loc) << "attribute '" << attr.name() << "' has type "
                                << A::AttributeType_Name(attr.type())
                                << ", which is not supported";
  }
}

Location GraphImporter::nodeLoc(const onnx::NodeProto &node, int index) {
  Location fileLoc = FileLineColLoc::get(&context, path, index + 1, 1);
  return NameLoc::get(builder.getStringAttr(nodeName(node, index)), fileLoc);
}

LogicalResult GraphImporter::importConstantNode(const onnx::NodeProto &node,
                                                Location loc) {
  if (node.output_size() != 1 || node.attribute_size() != 1)
    return nodeError(node, loc) << "expected one output and one attribute, "
                                << "got " << node.output_size() << " and "
                                << node.attribute_size();
  const onnx::AttributeProto &attr = node.attribute(0);
  Attribute value;
  if (attr.name() == "value") {
    if (attr.type() != onnx::AttributeProto::TENSOR)
      return nodeError(node, loc)
             << "constant attribute 'value' has type "
             << onnx::AttributeProto::AttributeType_Name(attr.type())
             << ", expected TENSOR";
    FailureOr<DenseElementsAttr> tensor = convertTensor(attr.t(), loc, &node);
    if (failed(tensor))
      return failure();
    value = *tensor;
  } else if (attr.name() == "value_float") {
    value = DenseElementsAttr::get(
        RankedTensorType::get({}, builder.getF32Type()), attr.f());
  } else if (attr.name() == "value_floats") {
    SmallVector<float> v(attr.floats().begin(), attr.floats().end());
    value = DenseElementsAttr::get(
        RankedTensorType::get({static_cast<int64_t>(v.size())},
                              builder.getF32Type()),
        ArrayRef<float>(v));
  } else if (attr.name() == "value_int") {
    value = DenseElementsAttr::get(
        RankedTensorType::get({}, builder.getI64Type()),
        static_cast<int64_t>(attr.i()));
  } else if (attr.name() == "value_ints") {
    SmallVector<int64_t> v(attr.ints().begin(), attr.ints().end());
    value = DenseElementsAttr::get(
        RankedTensorType::get({static_cast<int64_t>(v.size())},
                              builder.getI64Type()),
        ArrayRef<int64_t>(v));
  } else {
    return nodeError(node, loc) << "constant attribute '" << attr.name()
                                << "' is not supported";
  }
  values[node.output(0)] =
      arith::ConstantOp::create(builder, loc, cast<TypedAttr>(value));
  return success();
}

/// Broadcasts two static-or-dynamic shapes by numpy rules; fails when two
/// static dimensions differ and neither is 1.
static bool broadcastable(ArrayRef<int64_t> a, ArrayRef<int64_t> b,
                          int64_t &badA, int64_t &badB) {
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    int64_t x = a[a.size() - 1 - i], y = b[b.size() - 1 - i];
    if (ShapedType::isDynamic(x) || ShapedType::isDynamic(y) || x == y ||
        x == 1 || y == 1)
      continue;
    badA = x;
    badB = y;
    return false;
  }
  return true;
}

LogicalResult GraphImporter::checkShapes(const onnx::NodeProto &node,
                                         Location loc, ArrayRef<Value> inputs,
                                         ArrayRef<Type> resultTypes) {
  auto shapeOf = [](Value v) -> ArrayRef<int64_t> {
    if (auto t = dyn_cast<RankedTensorType>(v.getType()))
      return t.getShape();
    return {};
  };
  llvm::StringRef op = node.op_type();
  if (!node.domain().empty() && node.domain() != "ai.onnx")
    return success();
  if (op == "MatMul" && inputs.size() == 2) {
    ArrayRef<int64_t> a = shapeOf(inputs[0]), b = shapeOf(inputs[1]);
    if (a.size() >= 2 && b.size() >= 2) {
      int64_t k1 = a.back(), k2 = b[b.size() - 2];
      if (!ShapedType::isDynamic(k1) && !ShapedType::isDynamic(k2) && k1 != k2)
        return nodeError(node, loc)
               << "inconsistent shapes: inner dimensions " << k1 << " (of '"
               << node.input(0) << "') and " << k2 << " (of '"
               << node.input(1) << "') differ";
      // The declared result's rank and last two dimensions are the
      // product's.
      auto result = resultTypes.empty()
                        ? RankedTensorType()
                        : dyn_cast<RankedTensorType>(resultTypes.front());
      const int64_t rank = static_cast<int64_t>(std::max(a.size(), b.size()));
      if (result && result.getRank() != rank)
        return nodeError(node, loc)
               << "inconsistent shapes: output '" << node.output(0)
               << "' is declared of rank " << result.getRank()
               << ", the product of '" << node.input(0) << "' (rank "
               << a.size() << ") and '" << node.input(1) << "' (rank "
               << b.size() << ") has rank " << rank;
      // Batch dimensions: the operands' broadcast (right-aligned).
      for (int64_t d = 0; result && d + 2 < rank; ++d) {
        auto dimOf = [&](ArrayRef<int64_t> s) {
          int64_t i = d - (rank - static_cast<int64_t>(s.size()));
          return i < 0 ? int64_t{1} : s[i];
        };
        int64_t x = dimOf(a), y = dimOf(b), declared = result.getDimSize(d);
        if (ShapedType::isDynamic(x) || ShapedType::isDynamic(y) ||
            ShapedType::isDynamic(declared))
          continue;
        int64_t expected = x == 1 ? y : x;
        if ((x != y && x != 1 && y != 1) || declared != expected)
          return nodeError(node, loc)
                 << "inconsistent shapes: output '" << node.output(0)
                 << "' is declared " << declared << " in dimension " << d
                 << ", where '" << node.input(0) << "' has " << x
                 << " and '" << node.input(1) << "' has " << y;
      }
      if (result) {
        int64_t rows = a[a.size() - 2], cols = b.back();
        int64_t declaredRows = result.getShape()[result.getRank() - 2];
        int64_t declaredCols = result.getShape().back();
        auto differs = [](int64_t x, int64_t y) {
          return !ShapedType::isDynamic(x) && !ShapedType::isDynamic(y) &&
                 x != y;
        };
        if (differs(rows, declaredRows) || differs(cols, declaredCols))
          return nodeError(node, loc)
                 << "inconsistent shapes: output '" << node.output(0)
                 << "' is declared " << declaredRows << "x" << declaredCols
                 << " in its last two dimensions, the product of '"
                 << node.input(0) << "' and '" << node.input(1) << "' is "
                 << rows << "x" << cols;
      }
    }
  }
  // Gemm multiplies matrices (A and B possibly transposed) into a matrix.
  if (op == "Gemm" && inputs.size() >= 2) {
    for (int i = 0; i < 2; ++i)
      if (auto t = dyn_cast<RankedTensorType>(inputs[i].getType());
          t && t.getRank() != 2)
        return nodeError(node, loc)
               << "inconsistent shapes: Gemm's input '" << node.input(i)
               << "' has rank " << t.getRank() << ", not a matrix";
    auto result = resultTypes.empty()
                      ? RankedTensorType()
                      : dyn_cast<RankedTensorType>(resultTypes.front());
    if (result && result.getRank() != 2)
      return nodeError(node, loc)
             << "inconsistent shapes: Gemm's output '" << node.output(0)
             << "' is declared of rank " << result.getRank()
             << ", not a matrix";
  }
  static const llvm::StringSet<> elementwise = {"Add", "Sub", "Mul", "Div",
                                                "Pow", "Where", "Equal"};
  if (elementwise.contains(op)) {
    for (size_t i = 1; i < inputs.size(); ++i) {
      int64_t x = 0, y = 0;
      if (!broadcastable(shapeOf(inputs[0]), shapeOf(inputs[i]), x, y))
        return nodeError(node, loc)
               << "inconsistent shapes: dimensions " << x << " (of '"
               << node.input(0) << "') and " << y << " (of '"
               << node.input(i) << "') do not broadcast";
    }
  }
  return success();
}

LogicalResult GraphImporter::importNode(const onnx::NodeProto &node,
                                        int index) {
  Location loc = nodeLoc(node, index);
  std::string why;
  // What the user says a custom op is comes first; then model-local
  // functions: they usually live in a domain of their own.
  const CustomOpMapping *mapping = findCustomOp(node);
  for (const auto &function : model.functions())
    if (!mapping && function.name() == node.op_type() &&
        function.domain() == node.domain())
      return nodeError(node, loc)
             << "unsupported op: '" << node.op_type()
             << "' is a function defined in the model (domain '"
             << node.domain() << "'); export with functions inlined";
  if (!mapping && !isKnownDomain(node.domain()))
    return nodeError(node, loc)
           << "unsupported op: domain '" << node.domain()
           << "' is not one moec knows (ai.onnx, com.microsoft, moec); if '"
           << node.domain() << "::" << node.op_type()
           << "' is a grouped matmul (moec::GroupedMatMul's semantics), say "
              "so with --custom-op "
           << node.domain() << "::" << node.op_type() << "="
           << stringifyCustomOpKind(CustomOpKind::GroupedMatMul)
           << " (or a config's custom_ops: {\"" << node.domain()
           << "::" << node.op_type() << "\": \""
           << stringifyCustomOpKind(CustomOpKind::GroupedMatMul) << "\"})";
  if (isRejectedOp(node.op_type(), why))
    return nodeError(node, loc) << "unsupported op: " << why;
  if (node.op_type() == "Constant" && node.domain().empty())
    return importConstantNode(node, loc);

  // Inputs; empty names are omitted optional inputs, recorded by position.
  SmallVector<Value> inputs;
  SmallVector<int64_t> absentInputs;
  for (int i = 0; i < node.input_size(); ++i) {
    const std::string &name = node.input(i);
    if (name.empty()) {
      absentInputs.push_back(i);
      continue;
    }
    auto it = values.find(name);
    if (it == values.end())
      return nodeError(node, loc) << "input " << i << " '" << name
                                  << "' is not a graph input, an "
                                     "initializer or an earlier node's output";
    inputs.push_back(it->second);
  }
  // Trailing absent inputs need no record: they are simply not there.
  while (!absentInputs.empty() &&
         absentInputs.back() == static_cast<int64_t>(absentInputs.size()) +
                                    static_cast<int64_t>(inputs.size()) - 1)
    absentInputs.pop_back();

  SmallVector<Type> resultTypes;
  for (int i = 0; i < node.output_size(); ++i) {
    const std::string &name = node.output(i);
    if (name.empty()) {
      resultTypes.push_back(builder.getNoneType());
      continue;
    }
    auto it = declaredTypes.find(name);
    if (it == declaredTypes.end())
      return nodeError(node, loc)
             << "output " << i << " '" << name
             << "' has no type information; export with shape inference";
    FailureOr<RankedTensorType> type =
        convertValueType(*it->second, loc, "output '" + name + "'", &node);
    if (failed(type))
      return failure();
    resultTypes.push_back(*type);
  }
  if (failed(checkShapes(node, loc, inputs, resultTypes)) ||
      failed(checkTypes(node, loc, inputs, resultTypes)))
    return failure();
  bool groupedMatMul =
      mapping || (node.domain() == "moec" && node.op_type() == "GroupedMatMul");
  if (groupedMatMul && failed(checkGroupedMatMul(node, loc, inputs,
                                                 resultTypes, mapping)))
    return failure();

  SmallVector<NamedAttribute> attrs;
  llvm::StringRef opType = node.op_type(), domain = node.domain();
  if (mapping)
    opType = "GroupedMatMul", domain = "moec";
  attrs.push_back(
      builder.getNamedAttr("op_type", builder.getStringAttr(opType)));
  if (!domain.empty())
    attrs.push_back(
        builder.getNamedAttr("domain", builder.getStringAttr(domain)));
  if (!absentInputs.empty())
    attrs.push_back(builder.getNamedAttr(
        "absent_inputs", builder.getDenseI64ArrayAttr(absentInputs)));
  for (const auto &attr : node.attribute()) {
    if (attr.name() == "op_type" || attr.name() == "domain" ||
        attr.name() == "absent_inputs")
      return nodeError(node, loc) << "attribute name '" << attr.name()
                                  << "' is reserved by moec";
    FailureOr<Attribute> value = convertAttribute(attr, loc, node);
    if (failed(value))
      return failure();
    attrs.push_back(builder.getNamedAttr(attr.name(), *value));
  }
  OperationState state(loc, moe::OnnxNodeOp::getOperationName());
  state.addOperands(inputs);
  state.addTypes(resultTypes);
  state.addAttributes(attrs);
  Operation *op = builder.create(state);
  for (int i = 0; i < node.output_size(); ++i) {
    if (node.output(i).empty())
      continue;
    if (!values.try_emplace(node.output(i), op->getResult(i)).second)
      return nodeError(node, loc) << "output '" << node.output(i)
                                  << "' is already defined";
  }
  return success();
}

LogicalResult GraphImporter::checkTypes(const onnx::NodeProto &node,
                                        Location loc, ArrayRef<Value> inputs,
                                        ArrayRef<Type> resultTypes) {
  if (!node.domain().empty() && node.domain() != "ai.onnx")
    return success();
  auto elementOf = [](Type type) -> Type {
    if (auto ranked = dyn_cast<RankedTensorType>(type))
      return ranked.getElementType();
    return {};
  };
  if (node.op_type() == "Cast") {
    const onnx::AttributeProto *to = nullptr;
    for (const onnx::AttributeProto &attr : node.attribute())
      if (attr.name() == "to")
        to = &attr;
    if (!to || to->type() != onnx::AttributeProto::INT)
      return nodeError(node, loc) << "needs its integer attribute 'to'";
    if (!onnx::TensorProto_DataType_IsValid(static_cast<int>(to->i())) ||
        to->i() == onnx::TensorProto::UNDEFINED)
      return nodeError(node, loc)
             << "attribute 'to' = " << to->i() << " is not an ONNX element type";
    FailureOr<Type> target = convertElementType(
        static_cast<int32_t>(to->i()), loc, "attribute 'to'", &node);
    if (failed(target))
      return failure();
    Type declared = resultTypes.empty() ? Type() : elementOf(resultTypes[0]);
    if (declared && declared != *target)
      return nodeError(node, loc)
             << "casts to " << *target << " but its output '"
             << node.output(0) << "' is declared " << declared;
  }
  if (node.op_type() == "Reshape" && inputs.size() >= 2) {
    Type shape = elementOf(inputs[1].getType());
    if (shape && !shape.isInteger(64))
      return nodeError(node, loc)
             << "takes its shape '" << node.input(1) << "' as int64, not "
             << shape;
  }
  return success();
}

LogicalResult GraphImporter::checkGroupedMatMul(
    const onnx::NodeProto &node, Location loc, ArrayRef<Value> inputs,
    ArrayRef<Type> resultTypes, const CustomOpMapping *mapping) {
  auto error = [&]() {
    InFlightDiagnostic diag = nodeError(node, loc);
    if (mapping)
      diag << "as " << stringifyCustomOpKind(mapping->kind) << " ("
           << mapping->origin << "): ";
    return diag;
  };
  if (node.input_size() != 3 || inputs.size() != 3 ||
      node.output_size() != 1 || resultTypes.size() != 1 ||
      isa<NoneType>(resultTypes[0]))
    return error() << "takes 3 inputs (X [S, K], W [G, K, N], offsets [G]) "
                      "and gives 1 output (Y [S, N]), got "
                   << inputs.size() << " inputs and " << node.output_size()
                   << " outputs";
  if (node.attribute_size() != 0)
    return error() << "takes no attributes, got '" << node.attribute(0).name()
                   << "'";
  auto x = cast<RankedTensorType>(inputs[0].getType());
  auto w = cast<RankedTensorType>(inputs[1].getType());
  auto offsets = cast<RankedTensorType>(inputs[2].getType());
  auto y = cast<RankedTensorType>(resultTypes[0]);
  auto dims = [](RankedTensorType t) {
    return "[" +
           llvm::join(llvm::map_range(t.getShape(),
                                      [](int64_t d) {
                                        return ShapedType::isDynamic(d)
                                                   ? std::string("?")
                                                   : std::to_string(d);
                                      }),
                      ", ") +
           "]";
  };
  auto rankError = [&](int index, llvm::StringRef what,
                       RankedTensorType t) {
    return error() << "input " << index << " '" << node.input(index)
                   << "' must be " << what << ", got " << dims(t);
  };
  if (x.getRank() != 2 || !isa<FloatType>(x.getElementType()))
    return rankError(0, "X [S, K] of floats", x);
  if (w.getRank() != 3 || w.getElementType() != x.getElementType())
    return rankError(1, "W [G, K, N] of X's element type", w);
  if (offsets.getRank() != 1 || !(offsets.getElementType().isInteger(32) ||
                                  offsets.getElementType().isInteger(64)))
    return rankError(2, "offsets [G] of int32 or int64", offsets);
  auto differs = [](int64_t a, int64_t b) {
    return !ShapedType::isDynamic(a) && !ShapedType::isDynamic(b) && a != b;
  };
  if (differs(x.getDimSize(1), w.getDimSize(1)))
    return error() << "X " << dims(x) << " and W " << dims(w)
                   << " differ in K (X's dimension 1, W's dimension 1)";
  if (differs(offsets.getDimSize(0), w.getDimSize(0)))
    return error() << "offsets " << dims(offsets) << " and W " << dims(w)
                   << " differ in the number of groups G";
  if (y.getRank() != 2 || y.getElementType() != x.getElementType() ||
      differs(y.getDimSize(0), x.getDimSize(0)) ||
      differs(y.getDimSize(1), w.getDimSize(2)))
    return error() << "output '" << node.output(0) << "' must be Y [S, N] = ["
                   << (x.isDynamicDim(0) ? std::string("?")
                                         : std::to_string(x.getDimSize(0)))
                   << ", "
                   << (w.isDynamicDim(2) ? std::string("?")
                                         : std::to_string(w.getDimSize(2)))
                   << "] of X's element type, got " << dims(y);
  return success();
}

/// Checks an initializer's type against the one the graph declares for it
/// (in value_info, or as a graph input), if any.
LogicalResult GraphImporter::checkInitializer(const onnx::TensorProto &init,
                                              RankedTensorType type,
                                              Location loc) {
  auto declared = declaredTypes.find(init.name());
  if (declared == declaredTypes.end())
    return success();
  FailureOr<RankedTensorType> declaredType = convertValueType(
      *declared->second, loc, "initializer '" + init.name() + "'");
  if (failed(declaredType))
    return failure();
  bool sameShape = succeeded(verifyCompatibleShape(type, *declaredType));
  if (!sameShape || type.getElementType() != declaredType->getElementType())
    return emitError(loc) << "inconsistent "
                          << (sameShape ? "element types" : "shapes")
                          << ": initializer '" << init.name() << "' has type "
                          << type << " but the graph declares "
                          << *declaredType;
  return success();
}

OwningOpRef<ModuleOp> GraphImporter::run() {
  const onnx::GraphProto &graph = model.graph();
  Location fileLoc = FileLineColLoc::get(&context, path, 0, 0);
  if (graph.node_size() > kMaxOnnxNodes) {
    emitError(fileLoc) << "graph has " << graph.node_size()
                       << " nodes, more than moec's limit of " << kMaxOnnxNodes;
    return nullptr;
  }
  OwningOpRef<ModuleOp> module = ModuleOp::create(fileLoc);

  int64_t opset = 0;
  for (const auto &entry : model.opset_import())
    if (entry.domain().empty() || entry.domain() == "ai.onnx")
      opset = entry.version();
  (*module)->setAttr(moe::MoeDialect::getOnnxOpsetAttrName(),
                     builder.getI64IntegerAttr(opset));
  (*module)->setAttr(moe::MoeDialect::getOnnxProducerAttrName(),
                     builder.getStringAttr(model.producer_name() + " " +
                                           model.producer_version()));

  for (const auto &info : graph.value_info())
    declaredTypes[info.name()] = &info.type();
  for (const auto &info : graph.output())
    declaredTypes[info.name()] = &info.type();

  // Arguments: graph inputs (those not also initializers), then parameters.
  llvm::StringSet<> initializerNames;
  for (const auto &init : graph.initializer()) {
    if (!initializerNames.insert(init.name()).second) {
      emitError(NameLoc::get(builder.getStringAttr(init.name()), fileLoc))
          << "initializer '" << init.name() << "' is defined twice";
      return nullptr;
    }
  }
  // Models of IR version < 4 also list initializers as graph inputs, typed:
  // that type is a declaration to check like value_info.
  for (const auto &input : graph.input())
    if (initializerNames.contains(input.name()))
      declaredTypes.try_emplace(input.name(), &input.type());
  SmallVector<Type> argTypes;
  SmallVector<NamedAttribute> argTags;
  SmallVector<std::string> argNames;
  for (const auto &input : graph.input()) {
    if (initializerNames.contains(input.name()))
      continue;
    FailureOr<RankedTensorType> type = convertValueType(
        input.type(), fileLoc, "graph input '" + input.name() + "'");
    if (failed(type))
      return nullptr;
    argTypes.push_back(*type);
    argTags.push_back(
        builder.getNamedAttr(moe::MoeDialect::getInputAttrName(),
                             builder.getStringAttr(input.name())));
    argNames.push_back(input.name());
  }
  SmallVector<const onnx::TensorProto *> constants;
  for (const auto &init : graph.initializer()) {
    if (!isParameter(init)) {
      constants.push_back(&init);
      continue;
    }
    // A parameter's values are only read when the model runs, but its type
    // and where its data would come from are checked now.
    Location loc = NameLoc::get(builder.getStringAttr(init.name()), fileLoc);
    std::string what = "initializer '" + init.name() + "'";
    FailureOr<Type> elementType =
        convertElementType(init.data_type(), loc, what);
    if (failed(elementType))
      return nullptr;
    SmallVector<int64_t> shape(init.dims().begin(), init.dims().end());
    for (int64_t d : shape) {
      if (d < 0) {
        emitError(loc) << what << " has negative dimension " << d;
        return nullptr;
      }
    }
    if (failed(checkElementCount(shape, loc, what)))
      return nullptr;
    auto type = RankedTensorType::get(shape, *elementType);
    if (failed(checkInitializer(init, type, loc)))
      return nullptr;
    if (hasExternalData(init)) {
      ExternalLocation location;
      std::string message;
      if (!resolveExternalLocation(init, modelDir, location, message)) {
        emitError(loc) << message;
        return nullptr;
      }
    }
    argTypes.push_back(type);
    argTags.push_back(
        builder.getNamedAttr(moe::MoeDialect::getParameterAttrName(),
                             builder.getStringAttr(init.name())));
    argNames.push_back(init.name());
  }

  SmallVector<Type> resultTypes;
  for (const auto &output : graph.output()) {
    FailureOr<RankedTensorType> type = convertValueType(
        output.type(), fileLoc, "graph output '" + output.name() + "'");
    if (failed(type))
      return nullptr;
    resultTypes.push_back(*type);
  }

  builder.setInsertionPointToEnd(module->getBody());
  auto func = func::FuncOp::create(builder, 
      fileLoc, "forward", builder.getFunctionType(argTypes, resultTypes));
  Block *entry = func.addEntryBlock();
  for (auto [i, tag] : llvm::enumerate(argTags)) {
    func.setArgAttr(i, tag.getName(), tag.getValue());
    values[argNames[i]] = entry->getArgument(i);
  }
  for (auto [i, output] : llvm::enumerate(graph.output()))
    func.setResultAttr(i, moe::MoeDialect::getOutputAttrName(),
                       builder.getStringAttr(output.name()));

  builder.setInsertionPointToStart(entry);
  for (const onnx::TensorProto *init : constants) {
    Location loc = NameLoc::get(builder.getStringAttr(init->name()), fileLoc);
    FailureOr<DenseElementsAttr> value = convertTensor(*init, loc);
    if (failed(value) ||
        failed(checkInitializer(
            *init, cast<RankedTensorType>(value->getType()), loc)))
      return nullptr;
    values[init->name()] = arith::ConstantOp::create(builder, loc, *value);
  }
  for (int i = 0; i < graph.node_size(); ++i)
    if (failed(importNode(graph.node(i), i)))
      return nullptr;

  SmallVector<Value> results;
  for (const auto &output : graph.output()) {
    auto it = values.find(output.name());
    if (it == values.end()) {
      emitError(fileLoc) << "graph output '" << output.name()
                         << "' is not produced by any node";
      return nullptr;
    }
    results.push_back(it->second);
  }
  func::ReturnOp::create(builder, fileLoc, results);
  if (failed(verify(*module)))
    return nullptr;
  return module;
}

} // namespace

OwningOpRef<ModuleOp> moec::importOnnxFile(MLIRContext &context,
                                           llvm::StringRef path,
                                           const OnnxImportOptions &options) {
  auto buffer = llvm::MemoryBuffer::getFile(path, /*IsText=*/false,
                                            /*RequiresNullTerminator=*/false);
  if (!buffer) {
    emitError(FileLineColLoc::get(&context, path, 0, 0))
        << "cannot read ONNX model: " << buffer.getError().message();
    return nullptr;
  }
  return importOnnxBytes(context, (*buffer)->getBuffer(), path, options);
}

/// Parses `bytes` as a ModelProto nesting messages at most `nesting` deep.
static bool parseModel(llvm::StringRef bytes, int nesting,
                       onnx::ModelProto &model) {
  google::protobuf::io::CodedInputStream in(
      reinterpret_cast<const uint8_t *>(bytes.data()),
      static_cast<int>(bytes.size()));
  in.SetRecursionLimit(nesting);
  return model.ParseFromCodedStream(&in) && in.ConsumedEntireMessage();
}

OwningOpRef<ModuleOp> moec::importOnnxBytes(MLIRContext &context,
                                            llvm::StringRef bytes,
                                            llvm::StringRef path,
                                            const OnnxImportOptions &options) {
  context.loadDialect<moe::MoeDialect, arith::ArithDialect,
                      func::FuncDialect>();
  Location fileLoc = FileLineColLoc::get(&context, path, 0, 0);
  if (bytes.size() > static_cast<size_t>(INT32_MAX)) {
    emitError(fileLoc) << "ONNX model is " << bytes.size()
                       << " bytes, over protobuf's 2 GiB limit; store the "
                          "weights as external data";
    return nullptr;
  }
  if (bytes.empty()) {
    emitError(fileLoc) << "not an ONNX model: the file is empty";
    return nullptr;
  }
  // The messages live on an arena: a model is thousands of small messages
  // and strings, allocated and freed one by one otherwise (under the
  // sanitizers, parsing and freeing them was most of the import's time).
  google::protobuf::Arena arena;
  onnx::ModelProto &model =
      *google::protobuf::Arena::CreateMessage<onnx::ModelProto>(&arena);
  if (!parseModel(bytes, kMaxOnnxNesting, model)) {
    // Told apart from garbage by parsing again with a deeper (still
    // bounded) limit: nesting is what protobuf's parser recurses on.
    onnx::ModelProto &deeper =
        *google::protobuf::Arena::CreateMessage<onnx::ModelProto>(&arena);
    if (parseModel(bytes, 10 * kMaxOnnxNesting, deeper)) {
      emitError(fileLoc) << "ONNX model nests messages more than "
                         << kMaxOnnxNesting
                         << " deep (sub-graphs within sub-graphs), moec's "
                            "limit";
      return nullptr;
    }
    emitError(fileLoc) << "not an ONNX model: the file (" << bytes.size()
                       << " bytes) does not parse as an onnx.ModelProto";
    return nullptr;
  }
  if (!model.has_graph()) {
    emitError(fileLoc) << "not an ONNX model: the ModelProto has no graph";
    return nullptr;
  }
  return GraphImporter(context, model, path, options).run();
}
