//===- OnnxEvaluator.cpp - Evaluate imported ONNX subgraphs ---------------===//
//
// Operator semantics follow the ONNX operator specifications (opset 18+),
// restricted to what Mixtral exports contain. Element-wise operators
// broadcast numpy-style.
//
//===----------------------------------------------------------------------===//

#include "OnnxEvaluator.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "llvm/ADT/StringSwitch.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

using namespace mlir;
using namespace mlir::moe;
using moec::HostTensor;
using moec::OnnxEvaluator;

namespace {

using Shape = std::vector<int64_t>;

double at(const HostTensor &t, int64_t i) {
  return t.isFloat() ? t.f32[i] : static_cast<double>(t.i64[i]);
}

HostTensor like(bool isFloat, Shape shape) {
  return isFloat ? HostTensor::floats(std::move(shape))
                 : HostTensor::ints(std::move(shape));
}

void put(HostTensor &t, int64_t i, double v) {
  if (t.isFloat()) {
    t.f32[i] = static_cast<float>(v);
    return;
  }
  // Saturate like a well-defined cast instead of overflowing.
  constexpr double lo = -9.2233720368547758e18, hi = 9.2233720368547748e18;
  t.i64[i] = std::isnan(v) ? 0
             : v <= lo     ? std::numeric_limits<int64_t>::min()
             : v >= hi     ? std::numeric_limits<int64_t>::max()
                           : static_cast<int64_t>(v);
}

/// Copies element `from` of `src` to element `to` of `dst` (same kind).
void copyElement(const HostTensor &src, int64_t from, HostTensor &dst,
                 int64_t to) {
  if (src.isFloat())
    dst.f32[to] = src.f32[from];
  else
    dst.i64[to] = src.i64[from];
}

Shape stridesOf(const Shape &shape) {
  Shape strides(shape.size(), 1);
  for (int64_t i = static_cast<int64_t>(shape.size()) - 2; i >= 0; --i)
    strides[i] = strides[i + 1] * shape[i + 1];
  return strides;
}

/// The multi-index of flat element `flat` in `shape`.
Shape unflatten(int64_t flat, const Shape &shape) {
  Shape index(shape.size());
  for (int64_t i = static_cast<int64_t>(shape.size()) - 1; i >= 0; --i) {
    index[i] = shape[i] ? flat % shape[i] : 0;
    flat = shape[i] ? flat / shape[i] : 0;
  }
  return index;
}

/// Evaluation is for small sample shapes; anything larger is a sign of a
/// subgraph read wrongly, and fails instead of exhausting memory.
constexpr int64_t kMaxElements = int64_t{1} << 24;

bool fitsLimit(const Shape &shape, std::string &error) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || (d > 0 && n > kMaxElements / d)) {
      error = fmt::format("a tensor of shape [{}] is too large to evaluate",
                          fmt::join(shape, ", "));
      return false;
    }
    n *= d;
  }
  return true;
}

bool broadcastShapes(const Shape &a, const Shape &b, Shape &result,
                     std::string &error) {
  Shape out; // `result` may alias `a` or `b`
  size_t rank = std::max(a.size(), b.size());
  out.assign(rank, 1);
  for (size_t i = 0; i < rank; ++i) {
    int64_t x = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    int64_t y = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (x != y && x != 1 && y != 1) {
      error = fmt::format("shapes do not broadcast: dimension {} is {} and {}",
                          i, x, y);
      return false;
    }
    out[i] = x == 1 ? y : x;
  }
  result = out;
  return fitsLimit(result, error);
}

/// Flat index into `shape` (right-aligned, broadcast) of output index `idx`.
int64_t broadcastIndex(const Shape &idx, const Shape &shape) {
  Shape strides = stridesOf(shape);
  int64_t flat = 0;
  size_t offset = idx.size() - shape.size();
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] != 1)
      flat += idx[i + offset] * strides[i];
  return flat;
}

int64_t normalizeAxis(int64_t axis, int64_t rank) {
  return axis < 0 ? axis + rank : axis;
}

std::vector<int64_t> intValues(const HostTensor &t) {
  std::vector<int64_t> v(t.numElements());
  for (int64_t i = 0; i < t.numElements(); ++i)
    v[i] = t.isFloat() ? static_cast<int64_t>(t.f32[i]) : t.i64[i];
  return v;
}

int64_t intAttr(Operation *op, StringRef name, int64_t fallback) {
  if (auto a = op->getAttrOfType<IntegerAttr>(name))
    return a.getInt();
  return fallback;
}

double floatAttr(Operation *op, StringRef name, double fallback) {
  if (auto a = op->getAttrOfType<FloatAttr>(name))
    return a.getValueAsDouble();
  return fallback;
}

HostTensor fromDense(DenseElementsAttr attr) {
  Shape shape(attr.getType().getShape().begin(),
              attr.getType().getShape().end());
  bool isFloat = isa<FloatType>(attr.getElementType());
  HostTensor t = like(isFloat, shape);
  int64_t i = 0;
  if (isFloat) {
    for (APFloat v : attr.getValues<APFloat>())
      t.f32[i++] = static_cast<float>(v.convertToDouble());
  } else {
    bool isUnsigned = attr.getElementType().isUnsignedInteger() ||
                      attr.getElementType().isInteger(1);
    for (APInt v : attr.getValues<APInt>())
      t.i64[i++] = isUnsigned ? static_cast<int64_t>(v.getZExtValue())
                              : v.getSExtValue();
  }
  return t;
}

/// Reduces over `axes` (all when empty and `reduceAllWhenEmpty`).
HostTensor reduce(const HostTensor &x, std::vector<int64_t> axes,
                  bool keepDims, StringRef kind) {
  int64_t rank = static_cast<int64_t>(x.shape.size());
  std::vector<bool> reduced(rank, axes.empty());
  for (int64_t a : axes)
    reduced[normalizeAxis(a, rank)] = true;
  Shape outShape, keptShape;
  for (int64_t i = 0; i < rank; ++i) {
    keptShape.push_back(reduced[i] ? 1 : x.shape[i]);
    if (!reduced[i] || keepDims)
      outShape.push_back(keptShape.back());
  }
  HostTensor out = like(x.isFloat() || kind == "mean", outShape);
  int64_t n = out.numElements();
  std::vector<double> acc(n, kind == "max" ? -INFINITY : 0.0);
  std::vector<int64_t> count(n, 0);
  for (int64_t i = 0; i < x.numElements(); ++i) {
    Shape idx = unflatten(i, x.shape);
    for (int64_t d = 0; d < rank; ++d)
      if (reduced[d])
        idx[d] = 0;
    int64_t o = 0;
    Shape strides = stridesOf(keptShape);
    for (int64_t d = 0; d < rank; ++d)
      o += idx[d] * strides[d];
    double v = at(x, i);
    acc[o] = kind == "max" ? std::max(acc[o], v) : acc[o] + v;
    ++count[o];
  }
  for (int64_t o = 0; o < n; ++o)
    put(out, o, kind == "mean" ? acc[o] / std::max<int64_t>(count[o], 1)
                               : acc[o]);
  return out;
}

/// numpy.matmul on the last two dimensions, broadcasting the rest.
bool matmul(const HostTensor &a0, const HostTensor &b0, HostTensor &out,
            std::string &error) {
  if (a0.shape.empty() || b0.shape.empty()) {
    error = fmt::format("MatMul of shapes {} and {} needs operands of rank 1 "
                        "or more",
                        a0.shapeString(), b0.shapeString());
    return false;
  }
  HostTensor a = a0, b = b0;
  bool vecA = a.shape.size() == 1, vecB = b.shape.size() == 1;
  if (vecA)
    a.shape.insert(a.shape.begin(), 1);
  if (vecB)
    b.shape.push_back(1);
  int64_t m = a.shape[a.shape.size() - 2], k = a.shape.back();
  int64_t k2 = b.shape[b.shape.size() - 2], n = b.shape.back();
  if (k != k2) {
    error = fmt::format("MatMul inner dimensions {} and {} differ", k, k2);
    return false;
  }
  Shape batchA(a.shape.begin(), a.shape.end() - 2);
  Shape batchB(b.shape.begin(), b.shape.end() - 2);
  Shape batch;
  if (!broadcastShapes(batchA, batchB, batch, error))
    return false;
  Shape outShape = batch;
  outShape.push_back(m);
  outShape.push_back(n);
  if (!fitsLimit(outShape, error))
    return false;
  out = HostTensor::floats(outShape);
  int64_t batches = std::accumulate(batch.begin(), batch.end(), int64_t{1},
                                    std::multiplies<int64_t>());
  for (int64_t bi = 0; bi < batches; ++bi) {
    Shape idx = unflatten(bi, batch);
    int64_t offA = broadcastIndex(idx, batchA) * m * k;
    int64_t offB = broadcastIndex(idx, batchB) * k * n;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0.0;
        for (int64_t p = 0; p < k; ++p)
          s += at(a, offA + i * k + p) * at(b, offB + p * n + j);
        out.f32[(bi * m + i) * n + j] = static_cast<float>(s);
      }
  }
  if (vecA)
    out.shape.erase(out.shape.end() - 2);
  if (vecB)
    out.shape.pop_back();
  return true;
}

/// For GatherND/ScatterND: the flat offset into a tensor of `shape` of each
/// index tuple of `indices` ([..., depth]), negative indices wrapped. Fails
/// naming `op` and the index when one is out of range.
bool indexTupleOffsets(const HostTensor &indices, const Shape &shape,
                       StringRef op, std::vector<int64_t> &offsets,
                       std::string &error) {
  int64_t depth = indices.shape.back();
  Shape strides = stridesOf(shape);
  std::vector<int64_t> idx = intValues(indices);
  int64_t count = indices.numElements() / std::max<int64_t>(depth, 1);
  offsets.assign(count, 0);
  for (int64_t l = 0; l < count; ++l)
    for (int64_t d = 0; d < depth; ++d) {
      int64_t v = idx[l * depth + d];
      if (v < 0)
        v += shape[d];
      if (v < 0 || v >= shape[d]) {
        error = fmt::format("{} index {} is out of range [0, {})", op.str(), v,
                            shape[d]);
        return false;
      }
      offsets[l] += v * strides[d];
    }
  return true;
}

/// The number of elements a tensor of `shape` has after its first `depth`
/// dimensions.
int64_t trailingSize(const Shape &shape, int64_t depth) {
  int64_t inner = 1;
  for (size_t d = depth; d < shape.size(); ++d)
    inner *= shape[d];
  return inner;
}

/// One element of a binary operator; integer division truncates and
/// integer Mod takes the divisor's sign (ONNX's fmod = 0), dividing by zero
/// gives 0 rather than a trap.
double binaryOp(StringRef type, double x, double y, bool isFloat, bool fmod) {
  if (type == "Add") return x + y;
  if (type == "Sub") return x - y;
  if (type == "Mul") return x * y;
  if (type == "Pow") return std::pow(x, y);
  if (type == "Max") return std::max(x, y);
  if (type == "Min") return std::min(x, y);
  if (type == "And") return (x != 0.0 && y != 0.0) ? 1.0 : 0.0;
  if (type == "Or") return (x != 0.0 || y != 0.0) ? 1.0 : 0.0;
  if (type == "Equal") return x == y ? 1.0 : 0.0;
  if (type == "Less") return x < y ? 1.0 : 0.0;
  if (type == "LessOrEqual") return x <= y ? 1.0 : 0.0;
  if (type == "Greater") return x > y ? 1.0 : 0.0;
  if (type == "GreaterOrEqual") return x >= y ? 1.0 : 0.0;
  if (type == "Div") {
    if (isFloat)
      return x / y;
    return y == 0.0 ? 0.0 : std::trunc(x / y);
  }
  if (type == "Mod") {
    if (isFloat || fmod)
      return std::fmod(x, y);
    return y == 0.0 ? 0.0 : x - std::floor(x / y) * y;
  }
  return 0.0;
}

} // namespace

void OnnxEvaluator::bind(Value value, HostTensor tensor) {
  values[value] = std::make_unique<HostTensor>(std::move(tensor));
}

const HostTensor *OnnxEvaluator::evaluate(Value value, std::string &error) {
  auto it = values.find(value);
  if (it != values.end())
    return it->second.get();
  Operation *op = value.getDefiningOp();
  if (!op) {
    error = "the subgraph reads a function argument that was not bound";
    return nullptr;
  }
  if (!evaluateOp(op, error)) {
    // Name the innermost node that failed, once.
    if (error.find(" at node ") == std::string::npos) {
      std::string where;
      llvm::raw_string_ostream os(where);
      op->getLoc().print(os);
      error += " at node " + where;
    }
    return nullptr;
  }
  it = values.find(value);
  if (it == values.end()) {
    error = fmt::format("'{}' produced no value",
                        op->getName().getStringRef().str());
    return nullptr;
  }
  return it->second.get();
}

bool OnnxEvaluator::evaluateOp(Operation *op, std::string &error) {
  if (auto constant = dyn_cast<arith::ConstantOp>(op)) {
    auto dense = dyn_cast<DenseElementsAttr>(constant.getValue());
    if (!dense) {
      error = "a constant is not a dense tensor";
      return false;
    }
    bind(constant.getResult(), fromDense(dense));
    return true;
  }
  auto node = dyn_cast<OnnxNodeOp>(op);
  if (!node) {
    error = fmt::format("cannot evaluate '{}'",
                        op->getName().getStringRef().str());
    return false;
  }
  // Operands first (absent optional inputs are simply not there).
  std::vector<const HostTensor *> in;
  for (Value operand : node.getInputs()) {
    const HostTensor *t = evaluate(operand, error);
    if (!t)
      return false;
    in.push_back(t);
  }
  StringRef type = node.getOpType();
  bool groupedMatMul = node.getDomain() == "moec" && type == "GroupedMatMul";
  if ((!node.getDomain().empty() && !groupedMatMul) ||
      (op->hasAttr("absent_inputs") && type != "Slice" && type != "Clip")) {
    error = fmt::format("cannot evaluate ONNX '{}' (domain '{}')", type.str(),
                        node.getDomain().str());
    return false;
  }
  auto need = [&](size_t n) {
    if (in.size() >= n)
      return true;
    error = fmt::format("ONNX '{}' needs {} inputs but has {}", type.str(), n,
                        in.size());
    return false;
  };
  auto result = [&](unsigned i, HostTensor t) {
    bind(op->getResult(i), std::move(t));
    return true;
  };

  // --- Element-wise, unary ------------------------------------------------
  if (type == "Neg" || type == "Sqrt" || type == "Reciprocal" ||
      type == "Cos" || type == "Sin" || type == "Sigmoid" || type == "Exp" ||
      type == "IsNaN" || type == "Not" || type == "Identity" ||
      type == "Abs" || type == "Cast" || type == "Tanh") {
    if (!need(1))
      return false;
    const HostTensor &x = *in[0];
    bool outFloat = x.isFloat();
    if (type == "IsNaN" || type == "Not")
      outFloat = false;
    if (type == "Cast") {
      auto resultType = cast<RankedTensorType>(op->getResult(0).getType());
      outFloat = isa<FloatType>(resultType.getElementType());
    }
    bool toBool = type == "Cast" &&
                  cast<RankedTensorType>(op->getResult(0).getType())
                      .getElementType()
                      .isInteger(1);
    HostTensor out = like(outFloat, x.shape);
    for (int64_t i = 0; i < x.numElements(); ++i) {
      double v = at(x, i);
      double r = llvm::StringSwitch<double>(type)
                     .Case("Neg", -v)
                     .Case("Sqrt", std::sqrt(v))
                     .Case("Reciprocal", 1.0 / v)
                     .Case("Cos", std::cos(v))
                     .Case("Sin", std::sin(v))
                     .Case("Sigmoid", 1.0 / (1.0 + std::exp(-v)))
                     .Case("Exp", std::exp(v))
                     .Case("Tanh", std::tanh(v))
                     .Case("IsNaN", std::isnan(v) ? 1.0 : 0.0)
                     .Case("Not", v == 0.0 ? 1.0 : 0.0)
                     .Case("Abs", std::fabs(v))
                     .Default(v);
      if (toBool)
        r = r != 0.0;
      if (!x.isFloat() && !outFloat)
        out.i64[i] = type == "Neg" ? -x.i64[i]
                     : (type == "Identity" || type == "Cast") && !toBool
                         ? x.i64[i]
                         : static_cast<int64_t>(r);
      else
        put(out, i, r);
    }
    return result(0, std::move(out));
  }

  // --- Element-wise, binary and Where -------------------------------------
  static const char *binaryOps[] = {
      "Add",  "Sub", "Mul",   "Div",  "Pow",       "Max",  "Min", "Mod",
      "And",  "Or",  "Equal", "Less", "LessOrEqual", "Greater",
      "GreaterOrEqual"};
  if (llvm::is_contained(binaryOps, type) || type == "Where") {
    bool isWhere = type == "Where";
    if (!need(isWhere ? 3 : 2))
      return false;
    Shape shape = in[0]->shape;
    for (size_t i = 1; i < in.size(); ++i)
      if (!broadcastShapes(shape, in[i]->shape, shape, error))
        return false;
    bool logical = type == "And" || type == "Or" || type == "Equal" ||
                   type == "Less" || type == "LessOrEqual" ||
                   type == "Greater" || type == "GreaterOrEqual";
    const HostTensor &a = *in[isWhere ? 1 : 0];
    const HostTensor &b = *in[isWhere ? 2 : 1];
    bool outFloat = !logical && (a.isFloat() || b.isFloat());
    HostTensor out = like(outFloat, shape);
    for (int64_t i = 0; i < out.numElements(); ++i) {
      Shape idx = unflatten(i, shape);
      double x = at(a, broadcastIndex(idx, a.shape));
      double y = at(b, broadcastIndex(idx, b.shape));
      double r;
      if (isWhere) {
        r = at(*in[0], broadcastIndex(idx, in[0]->shape)) != 0.0 ? x : y;
      } else {
        r = binaryOp(type, x, y, outFloat, intAttr(op, "fmod", 0) != 0);
      }
      put(out, i, r);
    }
    return result(0, std::move(out));
  }

  // --- Shapes -------------------------------------------------------------
  if (type == "Shape") {
    if (!need(1))
      return false;
    int64_t rank = static_cast<int64_t>(in[0]->shape.size());
    int64_t start = std::clamp(normalizeAxis(intAttr(op, "start", 0), rank),
                               int64_t{0}, rank);
    int64_t end = std::clamp(normalizeAxis(intAttr(op, "end", rank), rank),
                             int64_t{0}, rank);
    HostTensor out = HostTensor::ints({std::max<int64_t>(end - start, 0)});
    for (int64_t i = start; i < end; ++i)
      out.i64[i - start] = in[0]->shape[i];
    return result(0, std::move(out));
  }
  if (type == "Squeeze" || type == "Unsqueeze") {
    if (!need(1))
      return false;
    HostTensor out = *in[0];
    std::vector<int64_t> axes =
        in.size() > 1 ? intValues(*in[1]) : std::vector<int64_t>();
    if (type == "Squeeze") {
      Shape shape;
      int64_t rank = static_cast<int64_t>(out.shape.size());
      for (int64_t d = 0; d < rank; ++d) {
        bool drop = axes.empty() ? out.shape[d] == 1
                                 : llvm::any_of(axes, [&](int64_t a) {
                                     return normalizeAxis(a, rank) == d;
                                   });
        if (!drop)
          shape.push_back(out.shape[d]);
      }
      out.shape = shape;
    } else {
      int64_t rank = static_cast<int64_t>(out.shape.size() + axes.size());
      std::vector<int64_t> sorted;
      for (int64_t a : axes)
        sorted.push_back(normalizeAxis(a, rank));
      llvm::sort(sorted);
      for (int64_t a : sorted)
        out.shape.insert(out.shape.begin() + a, 1);
    }
    return result(0, std::move(out));
  }
  if (type == "Reshape") {
    if (!need(2))
      return false;
    std::vector<int64_t> target = intValues(*in[1]);
    bool allowZero = intAttr(op, "allowzero", 0) != 0;
    int64_t known = 1, inferred = -1;
    for (size_t i = 0; i < target.size(); ++i) {
      if (target[i] == 0 && !allowZero)
        target[i] = in[0]->shape.at(i);
      if (target[i] == -1)
        inferred = static_cast<int64_t>(i);
      else
        known *= target[i];
    }
    if (inferred >= 0)
      target[inferred] = known ? in[0]->numElements() / known : 0;
    HostTensor out = *in[0];
    out.shape = target;
    if (!fitsLimit(target, error))
      return false;
    if (out.numElements() != in[0]->numElements()) {
      error = fmt::format("Reshape of {} to {} changes the element count",
                          in[0]->shapeString(), out.shapeString());
      return false;
    }
    return result(0, std::move(out));
  }
  if (type == "Expand") {
    if (!need(2))
      return false;
    Shape shape;
    if (!broadcastShapes(in[0]->shape, intValues(*in[1]), shape, error))
      return false;
    HostTensor out = like(in[0]->isFloat(), shape);
    for (int64_t i = 0; i < out.numElements(); ++i)
      copyElement(*in[0], broadcastIndex(unflatten(i, shape), in[0]->shape),
                  out, i);
    return result(0, std::move(out));
  }
  if (type == "Concat") {
    int64_t rank = static_cast<int64_t>(in.front()->shape.size());
    int64_t axis = normalizeAxis(intAttr(op, "axis", 0), rank);
    Shape shape = in.front()->shape;
    shape[axis] = 0;
    bool isFloat = false;
    for (const HostTensor *t : in) {
      shape[axis] += t->shape[axis];
      isFloat |= t->isFloat();
    }
    HostTensor out = like(isFloat, shape);
    int64_t offset = 0;
    for (const HostTensor *t : in) {
      for (int64_t i = 0; i < t->numElements(); ++i) {
        Shape idx = unflatten(i, t->shape);
        idx[axis] += offset;
        int64_t o = 0;
        Shape strides = stridesOf(shape);
        for (int64_t d = 0; d < rank; ++d)
          o += idx[d] * strides[d];
        put(out, o, at(*t, i));
      }
      offset += t->shape[axis];
    }
    return result(0, std::move(out));
  }
  if (type == "Slice") {
    if (!need(3) || op->hasAttr("absent_inputs")) {
      if (error.empty())
        error = "Slice with absent inputs in the middle is not supported";
      return false;
    }
    const HostTensor &x = *in[0];
    int64_t rank = static_cast<int64_t>(x.shape.size());
    std::vector<int64_t> starts = intValues(*in[1]), ends = intValues(*in[2]);
    std::vector<int64_t> axes(starts.size()), steps(starts.size(), 1);
    std::iota(axes.begin(), axes.end(), 0);
    if (in.size() > 3)
      axes = intValues(*in[3]);
    if (in.size() > 4)
      steps = intValues(*in[4]);
    Shape begin(rank, 0), step(rank, 1), shape = x.shape;
    for (size_t i = 0; i < axes.size(); ++i) {
      int64_t d = normalizeAxis(axes[i], rank), n = x.shape[d];
      int64_t s = steps[i];
      // Bounds may be INT64_MIN/MAX ("to the end"): clamp before adding n.
      auto wrap = [n](int64_t x) {
        return x < 0 ? (x < -n ? -1 : x + n) : x;
      };
      int64_t b = wrap(starts[i]), e = wrap(ends[i]);
      if (s > 0) {
        b = std::clamp(b, int64_t{0}, n);
        e = std::clamp(e, int64_t{0}, n);
        shape[d] = std::max<int64_t>(0, (e - b + s - 1) / s);
      } else {
        b = std::clamp(b, int64_t{-1}, n - 1);
        e = std::clamp(e, int64_t{-1}, n - 1);
        shape[d] = std::max<int64_t>(0, (b - e + (-s) - 1) / (-s));
      }
      begin[d] = b;
      step[d] = s;
    }
    HostTensor out = like(x.isFloat(), shape);
    Shape strides = stridesOf(x.shape);
    for (int64_t i = 0; i < out.numElements(); ++i) {
      Shape idx = unflatten(i, shape);
      int64_t src = 0;
      for (int64_t d = 0; d < rank; ++d)
        src += (begin[d] + idx[d] * step[d]) * strides[d];
      copyElement(x, src, out, i);
    }
    return result(0, std::move(out));
  }
  if (type == "Transpose") {
    if (!need(1))
      return false;
    const HostTensor &x = *in[0];
    int64_t rank = static_cast<int64_t>(x.shape.size());
    std::vector<int64_t> perm(rank);
    if (auto p = op->getAttrOfType<DenseI64ArrayAttr>("perm"))
      perm.assign(p.asArrayRef().begin(), p.asArrayRef().end());
    else
      for (int64_t i = 0; i < rank; ++i)
        perm[i] = rank - 1 - i;
    Shape shape(rank);
    for (int64_t i = 0; i < rank; ++i)
      shape[i] = x.shape[perm[i]];
    HostTensor out = like(x.isFloat(), shape);
    Shape strides = stridesOf(x.shape);
    for (int64_t i = 0; i < out.numElements(); ++i) {
      Shape idx = unflatten(i, shape);
      int64_t src = 0;
      for (int64_t d = 0; d < rank; ++d)
        src += idx[d] * strides[perm[d]];
      copyElement(x, src, out, i);
    }
    return result(0, std::move(out));
  }
  if (type == "Gather") {
    if (!need(2))
      return false;
    const HostTensor &x = *in[0];
    std::vector<int64_t> indices = intValues(*in[1]);
    int64_t rank = static_cast<int64_t>(x.shape.size());
    int64_t axis = normalizeAxis(intAttr(op, "axis", 0), rank);
    Shape shape(x.shape.begin(), x.shape.begin() + axis);
    shape.insert(shape.end(), in[1]->shape.begin(), in[1]->shape.end());
    shape.insert(shape.end(), x.shape.begin() + axis + 1, x.shape.end());
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < axis; ++d)
      outer *= x.shape[d];
    for (int64_t d = axis + 1; d < rank; ++d)
      inner *= x.shape[d];
    HostTensor out = like(x.isFloat(), shape);
    int64_t n = static_cast<int64_t>(indices.size());
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j = 0; j < n; ++j) {
        int64_t idx = indices[j] < 0 ? indices[j] + x.shape[axis] : indices[j];
        if (idx < 0 || idx >= x.shape[axis]) {
          error = fmt::format("Gather index {} is out of range [0, {})",
                              indices[j], x.shape[axis]);
          return false;
        }
        for (int64_t i = 0; i < inner; ++i)
          copyElement(x, (o * x.shape[axis] + idx) * inner + i, out,
                      (o * n + j) * inner + i);
      }
    return result(0, std::move(out));
  }
  if (type == "GatherND") {
    if (!need(2) || intAttr(op, "batch_dims", 0) != 0) {
      if (error.empty())
        error = "GatherND with batch_dims is not supported";
      return false;
    }
    const HostTensor &x = *in[0];
    const HostTensor &ind = *in[1];
    int64_t depth = ind.shape.back();
    Shape shape(ind.shape.begin(), ind.shape.end() - 1);
    shape.insert(shape.end(), x.shape.begin() + depth, x.shape.end());
    int64_t inner = trailingSize(x.shape, depth);
    HostTensor out = like(x.isFloat(), shape);
    std::vector<int64_t> offsets;
    if (!indexTupleOffsets(ind, x.shape, "GatherND", offsets, error))
      return false;
    for (size_t l = 0; l < offsets.size(); ++l)
      for (int64_t i = 0; i < inner; ++i)
        copyElement(x, offsets[l] + i, out, l * inner + i);
    return result(0, std::move(out));
  }
  if (type == "Range") {
    if (!need(3))
      return false;
    double start = at(*in[0], 0), limit = at(*in[1], 0), delta = at(*in[2], 0);
    int64_t n = std::max<int64_t>(
        0, static_cast<int64_t>(std::ceil((limit - start) / delta)));
    HostTensor out = like(in[0]->isFloat(), {n});
    for (int64_t i = 0; i < n; ++i)
      put(out, i, start + i * delta);
    return result(0, std::move(out));
  }
  if (type == "ConstantOfShape") {
    if (!need(1))
      return false;
    HostTensor fill = HostTensor::floats({1});
    if (auto v = op->getAttrOfType<DenseElementsAttr>("value"))
      fill = fromDense(v);
    HostTensor out = like(fill.isFloat(), intValues(*in[0]));
    for (int64_t i = 0; i < out.numElements(); ++i)
      copyElement(fill, 0, out, i);
    return result(0, std::move(out));
  }
  if (type == "Split") {
    if (!need(1))
      return false;
    const HostTensor &x = *in[0];
    int64_t rank = static_cast<int64_t>(x.shape.size());
    int64_t axis = normalizeAxis(intAttr(op, "axis", 0), rank);
    int64_t parts = op->getNumResults();
    std::vector<int64_t> sizes;
    if (in.size() > 1)
      sizes = intValues(*in[1]);
    else
      sizes.assign(parts, (x.shape[axis] + parts - 1) / parts);
    if (in.size() <= 1)
      sizes.back() = x.shape[axis] - (parts - 1) * sizes.front();
    int64_t offset = 0;
    for (int64_t p = 0; p < parts; ++p) {
      Shape shape = x.shape;
      shape[axis] = sizes[p];
      HostTensor out = like(x.isFloat(), shape);
      Shape strides = stridesOf(x.shape);
      for (int64_t i = 0; i < out.numElements(); ++i) {
        Shape idx = unflatten(i, shape);
        idx[axis] += offset;
        int64_t src = 0;
        for (int64_t d = 0; d < rank; ++d)
          src += idx[d] * strides[d];
        copyElement(x, src, out, i);
      }
      offset += sizes[p];
      bind(op->getResult(p), std::move(out));
    }
    return true;
  }

  // --- Reductions and linear algebra ---------------------------------------
  if (type == "ReduceMean" || type == "ReduceSum" || type == "ReduceMax") {
    if (!need(1))
      return false;
    std::vector<int64_t> axes =
        in.size() > 1 ? intValues(*in[1]) : std::vector<int64_t>();
    if (auto a = op->getAttrOfType<DenseI64ArrayAttr>("axes"))
      axes.assign(a.asArrayRef().begin(), a.asArrayRef().end());
    if (axes.empty() && intAttr(op, "noop_with_empty_axes", 0))
      return result(0, *in[0]);
    StringRef kind = type == "ReduceMean" ? "mean"
                     : type == "ReduceSum" ? "sum"
                                           : "max";
    return result(0, reduce(*in[0], axes, intAttr(op, "keepdims", 1), kind));
  }
  if (type == "MatMul") {
    if (!need(2))
      return false;
    HostTensor out;
    if (!matmul(*in[0], *in[1], out, error))
      return false;
    return result(0, std::move(out));
  }
  if (type == "Gemm") {
    if (!need(2))
      return false;
    auto transposed = [](const HostTensor &t) {
      HostTensor r = HostTensor::floats({t.shape[1], t.shape[0]});
      for (int64_t i = 0; i < t.shape[0]; ++i)
        for (int64_t j = 0; j < t.shape[1]; ++j)
          r.f32[j * t.shape[0] + i] = static_cast<float>(at(t, i * t.shape[1] + j));
      return r;
    };
    HostTensor a = intAttr(op, "transA", 0) ? transposed(*in[0]) : *in[0];
    HostTensor b = intAttr(op, "transB", 0) ? transposed(*in[1]) : *in[1];
    HostTensor out;
    if (!matmul(a, b, out, error))
      return false;
    double alpha = floatAttr(op, "alpha", 1.0), beta = floatAttr(op, "beta", 1.0);
    for (int64_t i = 0; i < out.numElements(); ++i) {
      double v = alpha * out.f32[i];
      if (in.size() > 2)
        v += beta * at(*in[2], broadcastIndex(unflatten(i, out.shape),
                                              in[2]->shape));
      out.f32[i] = static_cast<float>(v);
    }
    return result(0, std::move(out));
  }
  if (type == "Softmax") {
    if (!need(1))
      return false;
    const HostTensor &x = *in[0];
    int64_t rank = static_cast<int64_t>(x.shape.size());
    if (normalizeAxis(intAttr(op, "axis", -1), rank) != rank - 1) {
      error = "Softmax over an axis other than the last is not supported";
      return false;
    }
    int64_t n = x.shape.back();
    HostTensor out = HostTensor::floats(x.shape);
    for (int64_t row = 0; row < x.numElements() / std::max<int64_t>(n, 1);
         ++row) {
      double m = -INFINITY, total = 0.0;
      for (int64_t i = 0; i < n; ++i)
        m = std::max(m, at(x, row * n + i));
      for (int64_t i = 0; i < n; ++i)
        total += std::exp(at(x, row * n + i) - m);
      for (int64_t i = 0; i < n; ++i)
        out.f32[row * n + i] =
            static_cast<float>(std::exp(at(x, row * n + i) - m) / total);
    }
    return result(0, std::move(out));
  }
  if (type == "TopK") {
    if (!need(2))
      return false;
    const HostTensor &x = *in[0];
    int64_t rank = static_cast<int64_t>(x.shape.size());
    if (normalizeAxis(intAttr(op, "axis", -1), rank) != rank - 1) {
      error = "TopK along an axis other than the last is not supported";
      return false;
    }
    bool largest = intAttr(op, "largest", 1) != 0;
    int64_t k = intValues(*in[1]).at(0), n = x.shape.back();
    Shape shape = x.shape;
    shape.back() = k;
    HostTensor valuesOut = like(x.isFloat(), shape);
    HostTensor indicesOut = HostTensor::ints(shape);
    std::vector<int64_t> order(n);
    for (int64_t row = 0; row < x.numElements() / std::max<int64_t>(n, 1);
         ++row) {
      std::iota(order.begin(), order.end(), 0);
      // Ties keep the lower index first, as ONNX specifies.
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        double va = at(x, row * n + a), vb = at(x, row * n + b);
        return largest ? va > vb : va < vb;
      });
      for (int64_t j = 0; j < k; ++j) {
        copyElement(x, row * n + order[j], valuesOut, row * k + j);
        indicesOut.i64[row * k + j] = order[j];
      }
    }
    bind(op->getResult(0), std::move(valuesOut));
    bind(op->getResult(1), std::move(indicesOut));
    return true;
  }
  if (type == "Clip") {
    if (!need(1))
      return false;
    HostTensor out = *in[0];
    std::optional<double> lo, hi;
    // Inputs 1 and 2 are min and max; either may be absent.
    SmallVector<int64_t> absent;
    if (auto a = op->getAttrOfType<DenseI64ArrayAttr>("absent_inputs"))
      absent.assign(a.asArrayRef().begin(), a.asArrayRef().end());
    size_t next = 1;
    for (int64_t position = 1; position <= 2 && next < in.size(); ++position) {
      if (llvm::is_contained(absent, position))
        continue;
      (position == 1 ? lo : hi) = at(*in[next++], 0);
    }
    for (int64_t i = 0; i < out.numElements(); ++i) {
      double v = at(out, i);
      if (lo)
        v = std::max(v, *lo);
      if (hi)
        v = std::min(v, *hi);
      put(out, i, v);
    }
    return result(0, std::move(out));
  }
  if (type == "CumSum") {
    if (!need(2))
      return false;
    const HostTensor &x = *in[0];
    int64_t rank = static_cast<int64_t>(x.shape.size());
    int64_t axis = normalizeAxis(intValues(*in[1]).at(0), rank);
    bool exclusive = intAttr(op, "exclusive", 0), reverse = intAttr(op, "reverse", 0);
    HostTensor out = like(x.isFloat(), x.shape);
    Shape strides = stridesOf(x.shape);
    int64_t n = x.shape[axis], stride = strides[axis];
    for (int64_t i = 0; i < x.numElements(); ++i) {
      if (unflatten(i, x.shape)[axis] != 0)
        continue; // start of each line along the axis
      double acc = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        int64_t pos = reverse ? n - 1 - j : j;
        int64_t flat = i + pos * stride;
        double v = at(x, flat);
        if (!exclusive)
          acc += v;
        put(out, flat, acc);
        if (exclusive)
          acc += v;
      }
    }
    return result(0, std::move(out));
  }
  if (type == "ScatterND") {
    if (!need(3) || op->hasAttr("reduction")) {
      if (error.empty())
        error = "ScatterND with a reduction is not supported";
      return false;
    }
    HostTensor out = *in[0];
    const HostTensor &ind = *in[1];
    const HostTensor &updates = *in[2];
    int64_t inner = trailingSize(out.shape, ind.shape.back());
    std::vector<int64_t> offsets;
    if (!indexTupleOffsets(ind, out.shape, "ScatterND", offsets, error))
      return false;
    for (size_t l = 0; l < offsets.size(); ++l)
      for (int64_t i = 0; i < inner; ++i)
        put(out, offsets[l] + i, at(updates, l * inner + i));
    return result(0, std::move(out));
  }
  if (groupedMatMul) {
    // moec::GroupedMatMul (docs/onnx-forms.md): Y[r] = X[r] · W[g] for the
    // rows r of group g, [offsets[g-1], offsets[g]); other rows are 0.
    if (!need(3))
      return false;
    const HostTensor &x = *in[0], &w = *in[1];
    std::vector<int64_t> offsets = intValues(*in[2]);
    if (x.shape.size() != 2 || w.shape.size() != 3 || w.shape[1] != x.shape[1] ||
        static_cast<int64_t>(offsets.size()) != w.shape[0]) {
      error = fmt::format("GroupedMatMul of X {}, W {} and {} offsets does "
                          "not fit together",
                          x.shapeString(), w.shapeString(), offsets.size());
      return false;
    }
    int64_t rows = x.shape[0], k = x.shape[1], n = w.shape[2];
    HostTensor out = HostTensor::floats({rows, n});
    int64_t begin = 0;
    for (int64_t g = 0; g < w.shape[0]; ++g) {
      int64_t end = std::min(offsets[g], rows);
      for (int64_t r = begin; r < end; ++r)
        for (int64_t j = 0; j < n; ++j) {
          double acc = 0.0;
          for (int64_t p = 0; p < k; ++p)
            acc += at(x, r * k + p) * at(w, (g * k + p) * n + j);
          out.f32[r * n + j] = static_cast<float>(acc);
        }
      begin = std::max(begin, end);
    }
    return result(0, std::move(out));
  }
  error = fmt::format("cannot evaluate ONNX '{}'", type.str());
  return false;
}
