//===- OnnxEvaluator.cpp - Evaluate imported ONNX subgraphs ---------------===//
//
// Operator semantics follow the ONNX operator specifications (opset 18+),
// restricted to what Mixtral exports contain. Element-wise operators
// broadcast numpy-style.
//
// Each operator is one function, `evaluate<Type>`, listed in `kOpRules` with
// the number of inputs it needs; `OnnxEvaluator::evaluateOp` looks the node
// up there, evaluates its operands and calls the function.
//
//===----------------------------------------------------------------------===//

#include "OnnxEvaluator.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "llvm/ADT/StringMap.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>

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

/// `v` truncated to an integer, saturating like a well-defined cast
/// instead of overflowing (NaN gives 0).
int64_t toInt(double v) {
  constexpr double lo = -9.2233720368547758e18, hi = 9.2233720368547748e18;
  return std::isnan(v) ? 0
         : v <= lo     ? std::numeric_limits<int64_t>::min()
         : v >= hi     ? std::numeric_limits<int64_t>::max()
                       : static_cast<int64_t>(v);
}

void put(HostTensor &t, int64_t i, double v) {
  if (t.isFloat())
    t.f32[i] = static_cast<float>(v);
  else
    t.i64[i] = toInt(v);
}

/// Copies element `from` of `src` to element `to` of `dst` (same kind).
void copyElement(const HostTensor &src, int64_t from, HostTensor &dst,
                 int64_t to) {
  if (src.isFloat())
    dst.f32[to] = src.f32[from];
  else
    dst.i64[to] = src.i64[from];
}

/// Copies elements [from, from + count) of `src` to `to` onwards in `dst`
/// (same kind): one copy for a contiguous run instead of a call per element.
void copyElements(const HostTensor &src, int64_t from, HostTensor &dst,
                  int64_t to, int64_t count) {
  if (src.isFloat())
    std::copy_n(src.f32.begin() + from, count, dst.f32.begin() + to);
  else
    std::copy_n(src.i64.begin() + from, count, dst.i64.begin() + to);
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
      error = fmt::format("a tensor of shape [{}] is not one to evaluate "
                          "(sizes from 0, at most 2^24 elements)",
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

/// Walks the elements of a tensor of shape `shape` in order (row-major),
/// keeping the offset base + sum(i_d * strides[d]) of the element
/// (i_0, ...) in another tensor: an operand broadcast to a result (stride 0
/// on broadcast dimensions), a transposed input (permuted strides), a
/// sliced one (stepped strides), the result of Concat. Stepping to the next
/// element is one addition and, mostly, one comparison; the raising
/// evaluates every candidate subgraph through these loops, and under the
/// fuzz target's instrumentation a division, an allocation or a comparison
/// per element and dimension was most of the importer fuzz target's time.
///
///   for (int64_t i = 0; i < count; ++i, walk.next()) ... walk.offset() ...
class StridedWalk {
public:
  StridedWalk(Shape shape, Shape strides, int64_t base = 0)
      : shape(std::move(shape)), strides(std::move(strides)),
        index(this->shape.size(), 0), current(base) {}
  int64_t offset() const { return current; }
  void next() {
    for (size_t d = shape.size(); d-- > 0;) {
      current += strides[d];
      if (++index[d] < shape[d])
        return;
      current -= strides[d] * shape[d];
      index[d] = 0;
    }
  }

private:
  Shape shape, strides, index;
  int64_t current;
};

/// The walk over a result of shape `out` reading an operand of shape `in`
/// broadcast (right-aligned) to it; `out` has at least `in`'s rank.
StridedWalk broadcastFrom(const Shape &in, const Shape &out) {
  Shape inStrides = stridesOf(in), strides(out.size(), 0);
  size_t offset = out.size() - in.size();
  for (size_t i = 0; i < in.size(); ++i)
    if (in[i] != 1)
      strides[i + offset] = inStrides[i];
  return StridedWalk(out, strides);
}

int64_t normalizeAxis(int64_t axis, int64_t rank) {
  return axis < 0 ? axis + rank : axis;
}

std::vector<int64_t> intValues(const HostTensor &t) {
  std::vector<int64_t> v(t.numElements());
  for (int64_t i = 0; i < t.numElements(); ++i)
    v[i] = t.isFloat() ? toInt(t.f32[i]) : t.i64[i];
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

enum class Reduction { sum, mean, max };

/// Reduces over `axes` (over all dimensions when `axes` is empty).
HostTensor reduce(const HostTensor &x, std::vector<int64_t> axes,
                  bool keepDims, Reduction kind) {
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
  HostTensor out = like(x.isFloat() || kind == Reduction::mean, outShape);
  int64_t n = out.numElements();
  std::vector<double> acc(n, kind == Reduction::max ? -INFINITY : 0.0);
  std::vector<int64_t> count(n, 0);
  // Each element of x accumulates into the kept element it reduces to.
  Shape toKept = stridesOf(keptShape);
  for (int64_t d = 0; d < rank; ++d)
    if (reduced[d])
      toKept[d] = 0;
  StridedWalk kept(x.shape, toKept);
  for (int64_t i = 0; i < x.numElements(); ++i, kept.next()) {
    int64_t o = kept.offset();
    double v = at(x, i);
    acc[o] = kind == Reduction::max ? std::max(acc[o], v) : acc[o] + v;
    ++count[o];
  }
  for (int64_t o = 0; o < n; ++o)
    put(out, o,
        kind == Reduction::mean ? acc[o] / std::max<int64_t>(count[o], 1)
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
  // Two fp32 operands (the raising's proofs multiply fp32 activations by
  // fp32 weights) are read without at()'s test per element.
  bool floats = a.isFloat() && b.isFloat();
  for (int64_t bi = 0; bi < batches; ++bi) {
    Shape idx = unflatten(bi, batch);
    int64_t offA = broadcastIndex(idx, batchA) * m * k;
    int64_t offB = broadcastIndex(idx, batchB) * k * n;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0.0;
        if (floats) {
          const float *rowA = a.f32.data() + offA + i * k;
          const float *colB = b.f32.data() + offB + j;
          for (int64_t p = 0; p < k; ++p)
            s += static_cast<double>(rowA[p]) * colB[p * n];
        } else {
          for (int64_t p = 0; p < k; ++p)
            s += at(a, offA + i * k + p) * at(b, offB + p * n + j);
        }
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
  int64_t depth = indices.shape.empty() ? -1 : indices.shape.back();
  if (depth < 0 || depth > static_cast<int64_t>(shape.size())) {
    error = fmt::format("{} index tuples of shape {} do not index a tensor of "
                        "rank {}",
                        op.str(), indices.shapeString(), shape.size());
    return false;
  }
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

//===----------------------------------------------------------------------===//
// Operators
//===----------------------------------------------------------------------===//

/// One ONNX node being evaluated: its operands' values (as many as the node
/// has, between its rule's `minInputs` and `maxInputs`), and the values it
/// produces, one per result in order.
struct NodeEval {
  OnnxNodeOp node;
  ArrayRef<const HostTensor *> in;
  std::string &error;
  SmallVector<HostTensor, 2> results;

  int64_t intAttr(StringRef name, int64_t fallback) const {
    return ::intAttr(node, name, fallback);
  }
  double floatAttr(StringRef name, double fallback) const {
    return ::floatAttr(node, name, fallback);
  }
  Type resultElementType(unsigned i) const {
    return cast<RankedTensorType>(node->getResult(i).getType())
        .getElementType();
  }
  /// Appends the next result; true, so that rules can `return result(...)`.
  bool result(HostTensor t) {
    results.push_back(std::move(t));
    return true;
  }
  bool fail(std::string message) {
    error = std::move(message);
    return false;
  }
  /// Fails unless every one of `axes` names a dimension of a tensor of
  /// `rank` dimensions: [-rank, rank) (the values come from the model).
  bool checkAxes(ArrayRef<int64_t> axes, int64_t rank) {
    for (int64_t axis : axes)
      if (axis < -rank || axis >= rank)
        return fail(fmt::format("axis {} is out of range for rank {}", axis,
                                rank));
    return true;
  }
};

// --- Element-wise, unary -----------------------------------------------------

/// `fn` of every element of `x`, stored through `put` (an integer result
/// truncated, saturating).
HostTensor mapElements(const HostTensor &x, bool outFloat,
                       llvm::function_ref<double(double)> fn) {
  HostTensor out = like(outFloat, x.shape);
  for (int64_t i = 0; i < x.numElements(); ++i)
    put(out, i, fn(at(x, i)));
  return out;
}

/// A unary math operator: the result has the input's element kind.
bool mapMath(NodeEval &n, llvm::function_ref<double(double)> fn) {
  return n.result(mapElements(*n.in[0], n.in[0]->isFloat(), fn));
}

bool evaluateAbs(NodeEval &n) {
  return mapMath(n, [](double v) { return std::fabs(v); });
}
bool evaluateCos(NodeEval &n) {
  return mapMath(n, [](double v) { return std::cos(v); });
}
bool evaluateExp(NodeEval &n) {
  return mapMath(n, [](double v) { return std::exp(v); });
}
bool evaluateReciprocal(NodeEval &n) {
  return mapMath(n, [](double v) { return 1.0 / v; });
}
bool evaluateSigmoid(NodeEval &n) {
  return mapMath(n, [](double v) { return 1.0 / (1.0 + std::exp(-v)); });
}
bool evaluateSin(NodeEval &n) {
  return mapMath(n, [](double v) { return std::sin(v); });
}
bool evaluateSqrt(NodeEval &n) {
  return mapMath(n, [](double v) { return std::sqrt(v); });
}
bool evaluateTanh(NodeEval &n) {
  return mapMath(n, [](double v) { return std::tanh(v); });
}

/// Negation, exact on integers.
bool evaluateNeg(NodeEval &n) {
  HostTensor out = *n.in[0];
  for (float &v : out.f32)
    v = -v;
  for (int64_t &v : out.i64)
    v = -v;
  return n.result(std::move(out));
}

bool evaluateIdentity(NodeEval &n) { return n.result(*n.in[0]); }

/// Bool results (IsNaN, Not) are 0/1 integers.
bool evaluateIsNaN(NodeEval &n) {
  return n.result(mapElements(*n.in[0], /*outFloat=*/false, [](double v) {
    return std::isnan(v) ? 1.0 : 0.0;
  }));
}
bool evaluateNot(NodeEval &n) {
  return n.result(mapElements(*n.in[0], /*outFloat=*/false,
                              [](double v) { return v == 0.0 ? 1.0 : 0.0; }));
}

/// To the result's element type: integers keep their value (to bool: 0/1),
/// floats to integers saturate (`put`).
bool evaluateCast(NodeEval &n) {
  const HostTensor &x = *n.in[0];
  Type elementType = n.resultElementType(0);
  bool outFloat = isa<FloatType>(elementType);
  bool toBool = elementType.isInteger(1);
  HostTensor out = like(outFloat, x.shape);
  for (int64_t i = 0; i < x.numElements(); ++i) {
    if (!x.isFloat() && !outFloat) {
      out.i64[i] = toBool ? x.i64[i] != 0 : x.i64[i];
      continue;
    }
    double v = at(x, i);
    put(out, i, toBool ? (v != 0.0 ? 1.0 : 0.0) : v);
  }
  return n.result(std::move(out));
}

// --- Element-wise, binary and Where ------------------------------------------

/// The numpy broadcast of the shapes of all of the node's operands.
bool broadcastOperands(NodeEval &n, Shape &shape) {
  shape = n.in[0]->shape;
  for (size_t i = 1; i < n.in.size(); ++i)
    if (!broadcastShapes(shape, n.in[i]->shape, shape, n.error))
      return false;
  return true;
}

/// `combine(x, y, outFloat)` of the broadcast elements of operands 0 and 1.
/// A comparison or logical operator (`logical`) gives 0/1 integers; any other
/// gives fp32 when an operand is fp32.
bool combineElements(NodeEval &n, bool logical,
                     llvm::function_ref<double(double, double, bool)> combine) {
  Shape shape;
  if (!broadcastOperands(n, shape))
    return false;
  const HostTensor &a = *n.in[0], &b = *n.in[1];
  bool outFloat = !logical && (a.isFloat() || b.isFloat());
  HostTensor out = like(outFloat, shape);
  StridedWalk fromA = broadcastFrom(a.shape, shape),
              fromB = broadcastFrom(b.shape, shape);
  for (int64_t i = 0; i < out.numElements(); ++i, fromA.next(), fromB.next())
    put(out, i,
        combine(at(a, fromA.offset()), at(b, fromB.offset()), outFloat));
  return n.result(std::move(out));
}

bool arithmetic(NodeEval &n, llvm::function_ref<double(double, double)> fn) {
  return combineElements(n, /*logical=*/false,
                         [&](double x, double y, bool) { return fn(x, y); });
}

bool predicate(NodeEval &n, llvm::function_ref<bool(double, double)> fn) {
  return combineElements(n, /*logical=*/true, [&](double x, double y, bool) {
    return fn(x, y) ? 1.0 : 0.0;
  });
}

bool evaluateAdd(NodeEval &n) {
  return arithmetic(n, [](double x, double y) { return x + y; });
}
bool evaluateSub(NodeEval &n) {
  return arithmetic(n, [](double x, double y) { return x - y; });
}
bool evaluateMul(NodeEval &n) {
  return arithmetic(n, [](double x, double y) { return x * y; });
}
bool evaluatePow(NodeEval &n) {
  return arithmetic(n, [](double x, double y) { return std::pow(x, y); });
}
bool evaluateMax(NodeEval &n) {
  return arithmetic(n, [](double x, double y) { return std::max(x, y); });
}
bool evaluateMin(NodeEval &n) {
  return arithmetic(n, [](double x, double y) { return std::min(x, y); });
}

/// Integer division truncates; dividing an integer by zero gives 0 rather
/// than a trap.
bool evaluateDiv(NodeEval &n) {
  return combineElements(n, /*logical=*/false,
                         [](double x, double y, bool isFloat) {
                           if (isFloat)
                             return x / y;
                           return y == 0.0 ? 0.0 : std::trunc(x / y);
                         });
}

/// Integer Mod takes the divisor's sign unless `fmod` is set (ONNX's default
/// fmod = 0); an integer modulo zero gives 0.
bool evaluateMod(NodeEval &n) {
  bool fmod = n.intAttr("fmod", 0) != 0;
  return combineElements(n, /*logical=*/false,
                         [fmod](double x, double y, bool isFloat) {
                           if (isFloat || fmod)
                             return std::fmod(x, y);
                           return y == 0.0 ? 0.0 : x - std::floor(x / y) * y;
                         });
}

bool evaluateAnd(NodeEval &n) {
  return predicate(n, [](double x, double y) { return x != 0.0 && y != 0.0; });
}
bool evaluateOr(NodeEval &n) {
  return predicate(n, [](double x, double y) { return x != 0.0 || y != 0.0; });
}
bool evaluateEqual(NodeEval &n) {
  return predicate(n, [](double x, double y) { return x == y; });
}
bool evaluateLess(NodeEval &n) {
  return predicate(n, [](double x, double y) { return x < y; });
}
bool evaluateLessOrEqual(NodeEval &n) {
  return predicate(n, [](double x, double y) { return x <= y; });
}
bool evaluateGreater(NodeEval &n) {
  return predicate(n, [](double x, double y) { return x > y; });
}
bool evaluateGreaterOrEqual(NodeEval &n) {
  return predicate(n, [](double x, double y) { return x >= y; });
}

/// Where(condition, x, y), broadcast.
bool evaluateWhere(NodeEval &n) {
  Shape shape;
  if (!broadcastOperands(n, shape))
    return false;
  const HostTensor &condition = *n.in[0], &a = *n.in[1], &b = *n.in[2];
  HostTensor out = like(a.isFloat() || b.isFloat(), shape);
  StridedWalk fromCondition = broadcastFrom(condition.shape, shape),
              fromA = broadcastFrom(a.shape, shape),
              fromB = broadcastFrom(b.shape, shape);
  for (int64_t i = 0; i < out.numElements();
       ++i, fromCondition.next(), fromA.next(), fromB.next())
    put(out, i,
        at(condition, fromCondition.offset()) != 0.0 ? at(a, fromA.offset())
                                                     : at(b, fromB.offset()));
  return n.result(std::move(out));
}

// --- Shapes ------------------------------------------------------------------

bool evaluateShape(NodeEval &n) {
  const Shape &inShape = n.in[0]->shape;
  int64_t rank = static_cast<int64_t>(inShape.size());
  int64_t start = std::clamp(normalizeAxis(n.intAttr("start", 0), rank),
                             int64_t{0}, rank);
  int64_t end = std::clamp(normalizeAxis(n.intAttr("end", rank), rank),
                           int64_t{0}, rank);
  HostTensor out = HostTensor::ints({std::max<int64_t>(end - start, 0)});
  for (int64_t i = start; i < end; ++i)
    out.i64[i - start] = inShape[i];
  return n.result(std::move(out));
}

/// The axes of Squeeze/Unsqueeze (input 1; none when absent).
std::vector<int64_t> axesOperand(const NodeEval &n) {
  return n.in.size() > 1 ? intValues(*n.in[1]) : std::vector<int64_t>();
}

/// Drops the listed axes, or every dimension of size 1 when none is listed.
bool evaluateSqueeze(NodeEval &n) {
  HostTensor out = *n.in[0];
  std::vector<int64_t> axes = axesOperand(n);
  Shape shape;
  int64_t rank = static_cast<int64_t>(out.shape.size());
  if (!n.checkAxes(axes, rank))
    return false;
  for (int64_t d = 0; d < rank; ++d) {
    bool drop = axes.empty() ? out.shape[d] == 1
                             : llvm::any_of(axes, [&](int64_t a) {
                                 return normalizeAxis(a, rank) == d;
                               });
    // Only a dimension of 1 can go: dropping a 0 left the data empty
    // under a shape of elements (the onnx-import fuzz target's find).
    if (drop && out.shape[d] != 1)
      return n.fail(fmt::format("Squeeze of axis {} of {}, not of size 1",
                                d, out.shapeString()));
    if (!drop)
      shape.push_back(out.shape[d]);
  }
  out.shape = shape;
  return n.result(std::move(out));
}

bool evaluateUnsqueeze(NodeEval &n) {
  HostTensor out = *n.in[0];
  std::vector<int64_t> axes = axesOperand(n);
  int64_t rank = static_cast<int64_t>(out.shape.size() + axes.size());
  if (!n.checkAxes(axes, rank))
    return false;
  std::vector<int64_t> sorted;
  for (int64_t a : axes)
    sorted.push_back(normalizeAxis(a, rank));
  llvm::sort(sorted);
  // A repeated axis was inserted past the end (the onnx-import fuzz
  // target's find); distinct ones in order always land inside.
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
    return n.fail(fmt::format("Unsqueeze axes [{}] repeat an axis",
                              fmt::join(axes, ", ")));
  for (int64_t a : sorted)
    out.shape.insert(out.shape.begin() + a, 1);
  return n.result(std::move(out));
}

bool evaluateReshape(NodeEval &n) {
  const HostTensor &x = *n.in[0];
  std::vector<int64_t> target = intValues(*n.in[1]);
  bool allowZero = n.intAttr("allowzero", 0) != 0;
  int64_t known = 1, inferred = -1;
  for (size_t i = 0; i < target.size(); ++i) {
    if (target[i] == 0 && !allowZero) {
      if (i >= x.shape.size())
        return n.fail(fmt::format("Reshape target dimension {} copies a "
                                  "dimension {} does not have",
                                  i, x.shapeString()));
      target[i] = x.shape[i];
    }
    if (target[i] == -1)
      inferred = static_cast<int64_t>(i);
    else if (target[i] < 0 || __builtin_mul_overflow(known, target[i], &known))
      return n.fail(fmt::format("Reshape target [{}] is not a shape of at "
                                "most 2^63 elements",
                                fmt::join(target, ", ")));
  }
  if (inferred >= 0)
    target[inferred] = known ? x.numElements() / known : 0;
  HostTensor out = x;
  out.shape = target;
  if (!fitsLimit(target, n.error))
    return false;
  if (out.numElements() != x.numElements())
    return n.fail(fmt::format("Reshape of {} to {} changes the element count",
                              x.shapeString(), out.shapeString()));
  return n.result(std::move(out));
}

bool evaluateExpand(NodeEval &n) {
  const HostTensor &x = *n.in[0];
  Shape shape;
  if (!broadcastShapes(x.shape, intValues(*n.in[1]), shape, n.error))
    return false;
  HostTensor out = like(x.isFloat(), shape);
  StridedWalk fromX = broadcastFrom(x.shape, shape);
  for (int64_t i = 0; i < out.numElements(); ++i, fromX.next())
    copyElement(x, fromX.offset(), out, i);
  return n.result(std::move(out));
}

bool evaluateConcat(NodeEval &n) {
  int64_t rank = static_cast<int64_t>(n.in.front()->shape.size());
  int64_t axis = n.intAttr("axis", 0);
  if (!n.checkAxes(axis, rank))
    return false;
  axis = normalizeAxis(axis, rank);
  Shape shape = n.in.front()->shape;
  shape[axis] = 0;
  bool isFloat = false;
  for (const HostTensor *t : n.in) {
    // Operands of another rank, or of another size off the axis, were read
    // past their ends (the onnx-import fuzz target's find).
    bool fits = t->shape.size() == shape.size();
    for (int64_t d = 0; fits && d < rank; ++d)
      fits = d == axis || t->shape[d] == shape[d];
    if (!fits)
      return n.fail(fmt::format("Concat on axis {} of operands {} and {}: "
                                "they differ off the axis",
                                axis, n.in.front()->shapeString(),
                                t->shapeString()));
    shape[axis] += t->shape[axis];
    isFloat |= t->isFloat();
  }
  HostTensor out = like(isFloat, shape);
  Shape strides = stridesOf(shape);
  int64_t offset = 0;
  for (const HostTensor *t : n.in) {
    StridedWalk to(t->shape, strides, offset * strides[axis]);
    for (int64_t i = 0; i < t->numElements(); ++i, to.next())
      put(out, to.offset(), at(*t, i));
    offset += t->shape[axis];
  }
  return n.result(std::move(out));
}

/// Slice(data, starts, ends[, axes[, steps]]).
bool evaluateSlice(NodeEval &n) {
  const HostTensor &x = *n.in[0];
  int64_t rank = static_cast<int64_t>(x.shape.size());
  std::vector<int64_t> starts = intValues(*n.in[1]),
                       ends = intValues(*n.in[2]);
  std::vector<int64_t> axes(starts.size()), steps(starts.size(), 1);
  std::iota(axes.begin(), axes.end(), 0);
  if (n.in.size() > 3)
    axes = intValues(*n.in[3]);
  if (n.in.size() > 4)
    steps = intValues(*n.in[4]);
  if (ends.size() != starts.size() || axes.size() != starts.size() ||
      steps.size() != starts.size())
    return n.fail(fmt::format("starts, ends, axes and steps have {}, {}, {} "
                              "and {} values",
                              starts.size(), ends.size(), axes.size(),
                              steps.size()));
  if (!n.checkAxes(axes, rank))
    return false;
  if (llvm::is_contained(steps, 0))
    return n.fail("a step is 0");
  Shape begin(rank, 0), step(rank, 1), shape = x.shape;
  for (size_t i = 0; i < axes.size(); ++i) {
    int64_t d = normalizeAxis(axes[i], rank), size = x.shape[d];
    int64_t s = steps[i];
    // Bounds may be INT64_MIN/MAX ("to the end"): clamp before adding size.
    auto wrap = [size](int64_t bound) {
      return bound < 0 ? (bound < -size ? -1 : bound + size) : bound;
    };
    int64_t b = wrap(starts[i]), e = wrap(ends[i]);
    if (s > 0) {
      b = std::clamp(b, int64_t{0}, size);
      e = std::clamp(e, int64_t{0}, size);
      shape[d] = std::max<int64_t>(0, (e - b + s - 1) / s);
    } else {
      b = std::clamp(b, int64_t{-1}, size - 1);
      e = std::clamp(e, int64_t{-1}, size - 1);
      shape[d] = std::max<int64_t>(0, (b - e + (-s) - 1) / (-s));
    }
    begin[d] = b;
    step[d] = s;
  }
  HostTensor out = like(x.isFloat(), shape);
  Shape strides = stridesOf(x.shape), stepped(rank);
  int64_t first = 0;
  for (int64_t d = 0; d < rank; ++d) {
    first += begin[d] * strides[d];
    stepped[d] = step[d] * strides[d];
  }
  StridedWalk from(shape, stepped, first);
  for (int64_t i = 0; i < out.numElements(); ++i, from.next())
    copyElement(x, from.offset(), out, i);
  return n.result(std::move(out));
}

/// Transpose by `perm`; without it, reverses the dimensions.
bool evaluateTranspose(NodeEval &n) {
  const HostTensor &x = *n.in[0];
  int64_t rank = static_cast<int64_t>(x.shape.size());
  std::vector<int64_t> perm(rank);
  if (auto p = n.node->getAttrOfType<DenseI64ArrayAttr>("perm"))
    perm.assign(p.asArrayRef().begin(), p.asArrayRef().end());
  else
    for (int64_t i = 0; i < rank; ++i)
      perm[i] = rank - 1 - i;
  std::vector<bool> seen(rank, false);
  bool permutes = static_cast<int64_t>(perm.size()) == rank;
  for (int64_t p : perm) {
    permutes = permutes && p >= 0 && p < rank && !seen[p];
    if (permutes)
      seen[p] = true;
  }
  if (!permutes)
    return n.fail(fmt::format("Transpose perm [{}] is not a permutation of "
                              "the {} dimensions",
                              fmt::join(perm, ", "), rank));
  Shape shape(rank);
  for (int64_t i = 0; i < rank; ++i)
    shape[i] = x.shape[perm[i]];
  HostTensor out = like(x.isFloat(), shape);
  Shape strides = stridesOf(x.shape), permuted(rank);
  for (int64_t d = 0; d < rank; ++d)
    permuted[d] = strides[perm[d]];
  StridedWalk from(shape, permuted);
  for (int64_t i = 0; i < out.numElements(); ++i, from.next())
    copyElement(x, from.offset(), out, i);
  return n.result(std::move(out));
}

bool evaluateGather(NodeEval &n) {
  const HostTensor &x = *n.in[0];
  std::vector<int64_t> indices = intValues(*n.in[1]);
  int64_t rank = static_cast<int64_t>(x.shape.size());
  int64_t axis = n.intAttr("axis", 0);
  if (!n.checkAxes(axis, rank))
    return false;
  axis = normalizeAxis(axis, rank);
  Shape shape(x.shape.begin(), x.shape.begin() + axis);
  shape.insert(shape.end(), n.in[1]->shape.begin(), n.in[1]->shape.end());
  shape.insert(shape.end(), x.shape.begin() + axis + 1, x.shape.end());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d)
    outer *= x.shape[d];
  for (int64_t d = axis + 1; d < rank; ++d)
    inner *= x.shape[d];
  HostTensor out = like(x.isFloat(), shape);
  int64_t count = static_cast<int64_t>(indices.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < count; ++j) {
      int64_t idx = indices[j] < 0 ? indices[j] + x.shape[axis] : indices[j];
      if (idx < 0 || idx >= x.shape[axis])
        return n.fail(fmt::format("Gather index {} is out of range [0, {})",
                                  indices[j], x.shape[axis]));
      copyElements(x, (o * x.shape[axis] + idx) * inner, out,
                   (o * count + j) * inner, inner);
    }
  return n.result(std::move(out));
}

bool evaluateGatherND(NodeEval &n) {
  if (n.intAttr("batch_dims", 0) != 0)
    return n.fail("GatherND with batch_dims is not supported");
  const HostTensor &x = *n.in[0];
  const HostTensor &ind = *n.in[1];
  std::vector<int64_t> offsets;
  if (!indexTupleOffsets(ind, x.shape, "GatherND", offsets, n.error))
    return false;
  int64_t depth = ind.shape.back();
  Shape shape(ind.shape.begin(), ind.shape.end() - 1);
  shape.insert(shape.end(), x.shape.begin() + depth, x.shape.end());
  int64_t inner = trailingSize(x.shape, depth);
  HostTensor out = like(x.isFloat(), shape);
  for (size_t l = 0; l < offsets.size(); ++l)
    copyElements(x, offsets[l], out, l * inner, inner);
  return n.result(std::move(out));
}

bool evaluateRange(NodeEval &n) {
  for (const HostTensor *t : n.in)
    if (t->numElements() != 1)
      return n.fail(fmt::format("Range operand {} is not a scalar",
                                t->shapeString()));
  double start = at(*n.in[0], 0), limit = at(*n.in[1], 0),
         delta = at(*n.in[2], 0);
  double steps = std::ceil((limit - start) / delta);
  if (!std::isfinite(steps) || steps > static_cast<double>(kMaxElements))
    return n.fail(fmt::format("Range from {} to {} by {} is not a tensor of "
                              "at most {} elements",
                              start, limit, delta, kMaxElements));
  int64_t count = std::max<int64_t>(0, toInt(steps));
  HostTensor out = like(n.in[0]->isFloat(), {count});
  for (int64_t i = 0; i < count; ++i)
    put(out, i, start + i * delta);
  return n.result(std::move(out));
}

/// A tensor of the shape of input 0 filled with `value` (fp32 0 by default).
bool evaluateConstantOfShape(NodeEval &n) {
  HostTensor fill = HostTensor::floats({1});
  if (auto v = n.node->getAttrOfType<DenseElementsAttr>("value"))
    fill = fromDense(v);
  if (fill.numElements() != 1)
    return n.fail(fmt::format("ConstantOfShape value {} is not one element",
                              fill.shapeString()));
  // The shape comes from the model: its size was trusted.
  Shape shape = intValues(*n.in[0]);
  if (!fitsLimit(shape, n.error))
    return false;
  HostTensor out = like(fill.isFloat(), shape);
  for (int64_t i = 0; i < out.numElements(); ++i)
    copyElement(fill, 0, out, i);
  return n.result(std::move(out));
}

/// Split into the node's results, by the sizes of input 1 or into equal
/// parts (the last one smaller).
bool evaluateSplit(NodeEval &n) {
  const HostTensor &x = *n.in[0];
  int64_t rank = static_cast<int64_t>(x.shape.size());
  int64_t axis = n.intAttr("axis", 0);
  if (!n.checkAxes(axis, rank))
    return false;
  axis = normalizeAxis(axis, rank);
  int64_t parts = n.node->getNumResults();
  if (parts == 0)
    return n.fail("Split has no results");
  std::vector<int64_t> sizes;
  if (n.in.size() > 1) {
    sizes = intValues(*n.in[1]);
  } else {
    sizes.assign(parts, (x.shape[axis] + parts - 1) / parts);
    sizes.back() = x.shape[axis] - (parts - 1) * sizes.front();
  }
  // Sizes from the model (or a dimension too small for the results) were
  // trusted: too few read past their end, too large read past the input.
  int64_t total = 0;
  bool fits = static_cast<int64_t>(sizes.size()) == parts;
  for (int64_t size : sizes)
    fits = fits && size >= 0 && !__builtin_add_overflow(total, size, &total);
  if (!fits || total != x.shape[axis])
    return n.fail(fmt::format("Split of dimension {} of {} into {} results "
                              "of sizes [{}]",
                              axis, x.shapeString(), parts,
                              fmt::join(sizes, ", ")));
  Shape strides = stridesOf(x.shape);
  int64_t offset = 0;
  for (int64_t p = 0; p < parts; ++p) {
    Shape shape = x.shape;
    shape[axis] = sizes[p];
    HostTensor out = like(x.isFloat(), shape);
    StridedWalk from(shape, strides, offset * strides[axis]);
    for (int64_t i = 0; i < out.numElements(); ++i, from.next())
      copyElement(x, from.offset(), out, i);
    offset += sizes[p];
    n.result(std::move(out));
  }
  return true;
}

// --- Reductions and linear algebra -------------------------------------------

/// Reduce{Mean,Sum,Max}: axes from input 1 or the `axes` attribute (older
/// opsets); no axes reduces everything unless `noop_with_empty_axes`.
bool reduceOperand(NodeEval &n, Reduction kind) {
  std::vector<int64_t> axes =
      n.in.size() > 1 ? intValues(*n.in[1]) : std::vector<int64_t>();
  if (auto a = n.node->getAttrOfType<DenseI64ArrayAttr>("axes"))
    axes.assign(a.asArrayRef().begin(), a.asArrayRef().end());
  if (axes.empty() && n.intAttr("noop_with_empty_axes", 0))
    return n.result(*n.in[0]);
  if (!n.checkAxes(axes, static_cast<int64_t>(n.in[0]->shape.size())))
    return false;
  return n.result(reduce(*n.in[0], axes, n.intAttr("keepdims", 1), kind));
}

bool evaluateReduceMax(NodeEval &n) { return reduceOperand(n, Reduction::max); }
bool evaluateReduceMean(NodeEval &n) {
  return reduceOperand(n, Reduction::mean);
}
bool evaluateReduceSum(NodeEval &n) { return reduceOperand(n, Reduction::sum); }

bool evaluateMatMul(NodeEval &n) {
  HostTensor out;
  if (!matmul(*n.in[0], *n.in[1], out, n.error))
    return false;
  return n.result(std::move(out));
}

/// alpha · op(A) · op(B) + beta · C, op transposing when transA/transB.
bool evaluateGemm(NodeEval &n) {
  auto transposed = [](const HostTensor &t) {
    HostTensor r = HostTensor::floats({t.shape[1], t.shape[0]});
    for (int64_t i = 0; i < t.shape[0]; ++i)
      for (int64_t j = 0; j < t.shape[1]; ++j)
        r.f32[j * t.shape[0] + i] =
            static_cast<float>(at(t, i * t.shape[1] + j));
    return r;
  };
  if (n.in[0]->shape.size() != 2 || n.in[1]->shape.size() != 2)
    return n.fail(fmt::format("Gemm of shapes {} and {} needs matrices",
                              n.in[0]->shapeString(),
                              n.in[1]->shapeString()));
  HostTensor a = n.intAttr("transA", 0) ? transposed(*n.in[0]) : *n.in[0];
  HostTensor b = n.intAttr("transB", 0) ? transposed(*n.in[1]) : *n.in[1];
  HostTensor out;
  if (!matmul(a, b, out, n.error))
    return false;
  // C broadcasts to the product's shape, not the other way.
  std::optional<StridedWalk> fromC;
  if (n.in.size() > 2) {
    Shape both;
    if (!broadcastShapes(n.in[2]->shape, out.shape, both, n.error) ||
        both != out.shape)
      return n.fail(fmt::format("Gemm's C {} does not broadcast to the "
                                "product's {}",
                                n.in[2]->shapeString(), out.shapeString()));
    fromC = broadcastFrom(n.in[2]->shape, out.shape);
  }
  double alpha = n.floatAttr("alpha", 1.0), beta = n.floatAttr("beta", 1.0);
  for (int64_t i = 0; i < out.numElements(); ++i) {
    double v = alpha * out.f32[i];
    if (fromC) {
      v += beta * at(*n.in[2], fromC->offset());
      fromC->next();
    }
    out.f32[i] = static_cast<float>(v);
  }
  return n.result(std::move(out));
}

/// Softmax over the last axis (the only one exports use).
bool evaluateSoftmax(NodeEval &n) {
  const HostTensor &x = *n.in[0];
  int64_t rank = static_cast<int64_t>(x.shape.size());
  if (rank == 0 || normalizeAxis(n.intAttr("axis", -1), rank) != rank - 1)
    return n.fail("Softmax over an axis other than the last is not supported");
  int64_t width = x.shape.back();
  HostTensor out = HostTensor::floats(x.shape);
  for (int64_t row = 0; row < x.numElements() / std::max<int64_t>(width, 1);
       ++row) {
    double m = -INFINITY, total = 0.0;
    for (int64_t i = 0; i < width; ++i)
      m = std::max(m, at(x, row * width + i));
    for (int64_t i = 0; i < width; ++i)
      total += std::exp(at(x, row * width + i) - m);
    for (int64_t i = 0; i < width; ++i)
      out.f32[row * width + i] =
          static_cast<float>(std::exp(at(x, row * width + i) - m) / total);
  }
  return n.result(std::move(out));
}

/// TopK along the last axis: values, then indices.
bool evaluateTopK(NodeEval &n) {
  const HostTensor &x = *n.in[0];
  int64_t rank = static_cast<int64_t>(x.shape.size());
  if (rank == 0 || normalizeAxis(n.intAttr("axis", -1), rank) != rank - 1)
    return n.fail("TopK along an axis other than the last is not supported");
  bool largest = n.intAttr("largest", 1) != 0;
  // k comes from the model: one that is not one value in [0, width] was
  // read past the row (and allocated as a dimension).
  std::vector<int64_t> ks = intValues(*n.in[1]);
  int64_t width = x.shape.back();
  if (ks.size() != 1 || ks[0] < 0 || ks[0] > width)
    return n.fail(fmt::format("TopK k [{}] is not one value in [0, {}]",
                              fmt::join(ks, ", "), width));
  int64_t k = ks[0];
  Shape shape = x.shape;
  shape.back() = k;
  HostTensor valuesOut = like(x.isFloat(), shape);
  HostTensor indicesOut = HostTensor::ints(shape);
  std::vector<int64_t> order(width);
  for (int64_t row = 0; row < x.numElements() / std::max<int64_t>(width, 1);
       ++row) {
    std::iota(order.begin(), order.end(), 0);
    // Ties keep the lower index first, as ONNX specifies.
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      double va = at(x, row * width + a), vb = at(x, row * width + b);
      return largest ? va > vb : va < vb;
    });
    for (int64_t j = 0; j < k; ++j) {
      copyElement(x, row * width + order[j], valuesOut, row * k + j);
      indicesOut.i64[row * k + j] = order[j];
    }
  }
  n.result(std::move(valuesOut));
  return n.result(std::move(indicesOut));
}

/// Clip(x[, min[, max]]); either bound may be absent (`absent_inputs`).
bool evaluateClip(NodeEval &n) {
  HostTensor out = *n.in[0];
  std::optional<double> lo, hi;
  SmallVector<int64_t> absent;
  if (auto a = n.node->getAttrOfType<DenseI64ArrayAttr>("absent_inputs"))
    absent.assign(a.asArrayRef().begin(), a.asArrayRef().end());
  size_t next = 1;
  for (int64_t position = 1; position <= 2 && next < n.in.size(); ++position) {
    if (llvm::is_contained(absent, position))
      continue;
    (position == 1 ? lo : hi) = at(*n.in[next++], 0);
  }
  for (int64_t i = 0; i < out.numElements(); ++i) {
    double v = at(out, i);
    if (lo)
      v = std::max(v, *lo);
    if (hi)
      v = std::min(v, *hi);
    put(out, i, v);
  }
  return n.result(std::move(out));
}

bool evaluateCumSum(NodeEval &n) {
  const HostTensor &x = *n.in[0];
  int64_t rank = static_cast<int64_t>(x.shape.size());
  std::vector<int64_t> axisValues = intValues(*n.in[1]);
  if (axisValues.size() != 1)
    return n.fail(fmt::format("axis has {} values, not 1", axisValues.size()));
  int64_t axis = axisValues[0];
  if (!n.checkAxes(axis, rank))
    return false;
  axis = normalizeAxis(axis, rank);
  bool exclusive = n.intAttr("exclusive", 0), reverse = n.intAttr("reverse", 0);
  HostTensor out = like(x.isFloat(), x.shape);
  Shape strides = stridesOf(x.shape);
  int64_t length = x.shape[axis], stride = strides[axis];
  for (int64_t i = 0; i < x.numElements(); ++i) {
    if (i / stride % length != 0)
      continue; // start of each line along the axis
    double acc = 0.0;
    for (int64_t j = 0; j < length; ++j) {
      int64_t pos = reverse ? length - 1 - j : j;
      int64_t flat = i + pos * stride;
      double v = at(x, flat);
      if (!exclusive)
        acc += v;
      put(out, flat, acc);
      if (exclusive)
        acc += v;
    }
  }
  return n.result(std::move(out));
}

bool evaluateScatterND(NodeEval &n) {
  if (n.node->hasAttr("reduction"))
    return n.fail("ScatterND with a reduction is not supported");
  HostTensor out = *n.in[0];
  const HostTensor &ind = *n.in[1];
  const HostTensor &updates = *n.in[2];
  std::vector<int64_t> offsets;
  if (!indexTupleOffsets(ind, out.shape, "ScatterND", offsets, n.error))
    return false;
  int64_t inner = trailingSize(out.shape, ind.shape.back());
  if (updates.numElements() != static_cast<int64_t>(offsets.size()) * inner)
    return n.fail(fmt::format("ScatterND updates {} do not hold {} slices of "
                              "{} elements",
                              updates.shapeString(), offsets.size(), inner));
  for (size_t l = 0; l < offsets.size(); ++l)
    for (int64_t i = 0; i < inner; ++i)
      put(out, offsets[l] + i, at(updates, l * inner + i));
  return n.result(std::move(out));
}

/// moec::GroupedMatMul (docs/onnx-forms.md): Y[r] = X[r] · W[g] for the rows
/// r of group g, [offsets[g-1], offsets[g]); other rows are 0.
bool evaluateGroupedMatMul(NodeEval &n) {
  const HostTensor &x = *n.in[0], &w = *n.in[1];
  std::vector<int64_t> offsets = intValues(*n.in[2]);
  if (x.shape.size() != 2 || w.shape.size() != 3 ||
      w.shape[1] != x.shape[1] ||
      static_cast<int64_t>(offsets.size()) != w.shape[0])
    return n.fail(fmt::format("GroupedMatMul of X {}, W {} and {} offsets "
                              "does not fit together",
                              x.shapeString(), w.shapeString(),
                              offsets.size()));
  int64_t rows = x.shape[0], k = x.shape[1], cols = w.shape[2];
  HostTensor out = HostTensor::floats({rows, cols});
  int64_t begin = 0;
  for (int64_t g = 0; g < w.shape[0]; ++g) {
    int64_t end = std::min(offsets[g], rows);
    for (int64_t r = begin; r < end; ++r)
      for (int64_t j = 0; j < cols; ++j) {
        double acc = 0.0;
        for (int64_t p = 0; p < k; ++p)
          acc += at(x, r * k + p) * at(w, (g * k + p) * cols + j);
        out.f32[r * cols + j] = static_cast<float>(acc);
      }
    begin = std::max(begin, end);
  }
  return n.result(std::move(out));
}

//===----------------------------------------------------------------------===//
// The operator table
//===----------------------------------------------------------------------===//

/// How to evaluate one ONNX operator.
struct OpRule {
  StringLiteral domain; ///< "" for the default ONNX domain
  StringLiteral type;
  /// Inputs the function reads unconditionally; a node with fewer fails.
  unsigned minInputs;
  /// The most inputs and outputs it reads and writes (kAny: any number),
  /// ONNX's counts for the operator except Max and Min, which ONNX lets
  /// take any number of inputs and the rule evaluates for two; a node with
  /// more is refused (it would be read in part, silently).
  unsigned maxInputs, maxOutputs;
  /// Whether the function reads `absent_inputs` (optional inputs left out in
  /// the middle); every other operator refuses a node that has them.
  bool readsAbsentInputs;
  bool (*evaluate)(NodeEval &node);
};

constexpr unsigned kAny = std::numeric_limits<unsigned>::max();

const OpRule kOpRules[] = {
    {"", "Abs", 1, 1, 1, false, evaluateAbs},
    {"", "Add", 2, 2, 1, false, evaluateAdd},
    {"", "And", 2, 2, 1, false, evaluateAnd},
    {"", "Cast", 1, 1, 1, false, evaluateCast},
    {"", "Clip", 1, 3, 1, true, evaluateClip},
    {"", "Concat", 1, kAny, 1, false, evaluateConcat},
    {"", "ConstantOfShape", 1, 1, 1, false, evaluateConstantOfShape},
    {"", "Cos", 1, 1, 1, false, evaluateCos},
    {"", "CumSum", 2, 2, 1, false, evaluateCumSum},
    {"", "Div", 2, 2, 1, false, evaluateDiv},
    {"", "Equal", 2, 2, 1, false, evaluateEqual},
    {"", "Exp", 1, 1, 1, false, evaluateExp},
    {"", "Expand", 2, 2, 1, false, evaluateExpand},
    {"", "Gather", 2, 2, 1, false, evaluateGather},
    {"", "GatherND", 2, 2, 1, false, evaluateGatherND},
    {"", "Gemm", 2, 3, 1, false, evaluateGemm},
    {"", "Greater", 2, 2, 1, false, evaluateGreater},
    {"", "GreaterOrEqual", 2, 2, 1, false, evaluateGreaterOrEqual},
    {"", "Identity", 1, 1, 1, false, evaluateIdentity},
    {"", "IsNaN", 1, 1, 1, false, evaluateIsNaN},
    {"", "Less", 2, 2, 1, false, evaluateLess},
    {"", "LessOrEqual", 2, 2, 1, false, evaluateLessOrEqual},
    {"", "MatMul", 2, 2, 1, false, evaluateMatMul},
    {"", "Max", 2, 2, 1, false, evaluateMax},
    {"", "Min", 2, 2, 1, false, evaluateMin},
    {"", "Mod", 2, 2, 1, false, evaluateMod},
    {"", "Mul", 2, 2, 1, false, evaluateMul},
    {"", "Neg", 1, 1, 1, false, evaluateNeg},
    {"", "Not", 1, 1, 1, false, evaluateNot},
    {"", "Or", 2, 2, 1, false, evaluateOr},
    {"", "Pow", 2, 2, 1, false, evaluatePow},
    {"", "Range", 3, 3, 1, false, evaluateRange},
    {"", "Reciprocal", 1, 1, 1, false, evaluateReciprocal},
    {"", "ReduceMax", 1, 2, 1, false, evaluateReduceMax},
    {"", "ReduceMean", 1, 2, 1, false, evaluateReduceMean},
    {"", "ReduceSum", 1, 2, 1, false, evaluateReduceSum},
    {"", "Reshape", 2, 2, 1, false, evaluateReshape},
    {"", "ScatterND", 3, 3, 1, false, evaluateScatterND},
    {"", "Shape", 1, 1, 1, false, evaluateShape},
    {"", "Sigmoid", 1, 1, 1, false, evaluateSigmoid},
    {"", "Sin", 1, 1, 1, false, evaluateSin},
    {"", "Slice", 3, 5, 1, false, evaluateSlice},
    {"", "Softmax", 1, 1, 1, false, evaluateSoftmax},
    {"", "Split", 1, 2, kAny, false, evaluateSplit},
    {"", "Sqrt", 1, 1, 1, false, evaluateSqrt},
    {"", "Squeeze", 1, 2, 1, false, evaluateSqueeze},
    {"", "Sub", 2, 2, 1, false, evaluateSub},
    {"", "Tanh", 1, 1, 1, false, evaluateTanh},
    {"", "TopK", 2, 2, 2, false, evaluateTopK},
    {"", "Transpose", 1, 1, 1, false, evaluateTranspose},
    {"", "Unsqueeze", 1, 2, 1, false, evaluateUnsqueeze},
    {"", "Where", 3, 3, 1, false, evaluateWhere},
    {"moec", "GroupedMatMul", 3, 3, 1, false, evaluateGroupedMatMul},
};

/// The rule for operator `type` of `domain`, or null.
const OpRule *findRule(StringRef domain, StringRef type) {
  static const llvm::StringMap<const OpRule *> byType = [] {
    llvm::StringMap<const OpRule *> map;
    for (const OpRule &rule : kOpRules)
      map[rule.type] = &rule;
    return map;
  }();
  auto it = byType.find(type);
  if (it == byType.end() || it->second->domain != domain)
    return nullptr;
  return it->second;
}

} // namespace

void OnnxEvaluator::bind(Value value, HostTensor tensor) {
  values[value] = std::make_unique<HostTensor>(std::move(tensor));
}

std::optional<std::string> OnnxEvaluator::countProblem(StringRef domain,
                                                       StringRef type,
                                                       unsigned inputs,
                                                       unsigned outputs) {
  const OpRule *rule = findRule(domain, type);
  if (!rule)
    return std::nullopt;
  auto range = [](unsigned lo, unsigned hi) {
    return hi == kAny  ? fmt::format("at least {}", lo)
           : lo == hi ? fmt::format("{}", lo)
                      : fmt::format("{} to {}", lo, hi);
  };
  if (inputs < rule->minInputs || inputs > rule->maxInputs) {
    std::string problem =
        fmt::format("it has {} input{}, but ONNX '{}' takes {}", inputs,
                    inputs == 1 ? "" : "s", type.str(),
                    range(rule->minInputs, rule->maxInputs));
    if (type == "Max" || type == "Min")
      problem += " in moec (ONNX allows any number; moec evaluates two)";
    return problem;
  }
  if (outputs < 1 || outputs > rule->maxOutputs)
    return fmt::format("it has {} output{}, but ONNX '{}' gives {}", outputs,
                       outputs == 1 ? "" : "s", type.str(),
                       range(1, rule->maxOutputs));
  return std::nullopt;
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
  StringRef type = node.getOpType(), domain = node.getDomain();
  const OpRule *rule = findRule(domain, type);
  if (!rule) {
    error = domain.empty()
                ? fmt::format("no evaluation rule for ONNX '{}'", type.str())
                : fmt::format("no evaluation rule for ONNX '{}' of domain "
                              "'{}'",
                              type.str(), domain.str());
    return false;
  }
  if (!rule->readsAbsentInputs && op->hasAttr("absent_inputs")) {
    error = fmt::format("cannot evaluate ONNX '{}' with absent inputs",
                        type.str());
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
  if (std::optional<std::string> problem = countProblem(
          domain, type, in.size(), op->getNumResults())) {
    error = *problem;
    return false;
  }
  NodeEval eval{node, in, error, {}};
  if (!rule->evaluate(eval))
    return false;
  // Every rule's result is held to the limit here, so that no operator
  // (a Concat of large operands, say) hands a later one more to compute.
  // And so is all an evaluation computes: the bundled models' proofs take
  // under a million elements each, a fuzzed model chained operators near
  // the per-result limit to 190 million (3 s and 1.3 GB to raise).
  int64_t produced = 0;
  for (const HostTensor &result : eval.results) {
    if (!fitsLimit(result.shape, error)) {
      error = fmt::format("the result of ONNX '{}': {}", type.str(), error);
      return false;
    }
    produced += result.numElements();
  }
  if (produced > kMaxElements - evaluatedElements) {
    error = fmt::format("evaluating ONNX '{}' would bring the elements "
                        "computed to {}, past 2^24 in all",
                        type.str(), evaluatedElements + produced);
    return false;
  }
  evaluatedElements += produced;
  for (auto [result, tensor] : llvm::zip(op->getResults(), eval.results))
    bind(result, std::move(tensor));
  return true;
}
