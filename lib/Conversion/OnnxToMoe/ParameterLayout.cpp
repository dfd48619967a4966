//===- ParameterLayout.cpp - Parameters rearranged in a graph -------------===//
//
// See ParameterLayout.h.
//
//===----------------------------------------------------------------------===//

#include "ParameterLayout.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/TypeUtilities.h"
#include "llvm/ADT/SmallBitVector.h"

#include <algorithm>
#include <deque>

using namespace mlir;
using namespace moec;

namespace {

using Digits = SmallVector<LayoutDigit, 2>;

int64_t product(ArrayRef<LayoutDigit> digits) {
  int64_t n = 1;
  for (const LayoutDigit &d : digits)
    n *= d.size;
  return n;
}

/// The static shape of `v`, or nothing.
std::optional<SmallVector<int64_t>> staticShape(Value v) {
  auto type = dyn_cast<RankedTensorType>(v.getType());
  if (!type || !type.hasStaticShape())
    return std::nullopt;
  return SmallVector<int64_t>(type.getShape());
}

/// An axis attribute or input normalised to [0, rank), or nothing.
std::optional<int64_t> normalizeAxis(int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= rank)
    return std::nullopt;
  return axis < 0 ? axis + rank : axis;
}

/// Regroups the digits of `layout` into the axes of `shape` (a row-major
/// reshape), splitting a digit where an axis boundary falls inside it.
std::optional<ParameterLayout> reshape(ParameterLayout layout,
                                       ArrayRef<int64_t> shape) {
  std::deque<LayoutDigit> digits;
  for (const Digits &axis : layout.axes)
    for (const LayoutDigit &d : axis)
      if (d.size != 1)
        digits.push_back(d);
  ParameterLayout out{layout.parameters, layout.offset, {}};
  for (int64_t size : shape) {
    Digits axis;
    int64_t rest = size;
    while (rest > 1) {
      if (digits.empty())
        return std::nullopt;
      LayoutDigit d = digits.front();
      digits.pop_front();
      if (rest % d.size == 0) {
        axis.push_back(d);
        rest /= d.size;
      } else if (d.size % rest == 0) {
        // The axis takes the outer part of the digit; the inner part stays.
        int64_t inner = d.size / rest;
        axis.push_back({rest, d.stride * inner});
        digits.push_front({inner, d.stride});
        rest = 1;
      } else {
        return std::nullopt;
      }
    }
    out.axes.push_back(std::move(axis));
  }
  if (!digits.empty())
    return std::nullopt;
  return out;
}

/// Keeps `count` values of `axis` from `start` on, `step` apart.
bool slice(ParameterLayout &layout, int64_t axis, int64_t start, int64_t count,
           int64_t step) {
  Digits &digits = layout.axes[axis];
  llvm::erase_if(digits, [](const LayoutDigit &d) { return d.size == 1; });
  if (count <= 0)
    return false;
  if (digits.empty())
    return start == 0 && count == 1;
  if (digits.size() == 1) {
    layout.offset += start * digits[0].stride;
    digits[0] = {count, digits[0].stride * step};
    return true;
  }
  // Several digits: only whole steps of the outermost one.
  int64_t inner = product(ArrayRef<LayoutDigit>(digits).drop_front());
  if (step != 1 || start % inner != 0 || count % inner != 0)
    return false;
  layout.offset += start / inner * digits[0].stride;
  digits[0].size = count / inner;
  return true;
}

/// The element count of `v`'s static type.
int64_t numElements(Value v) {
  return cast<RankedTensorType>(v.getType()).getNumElements();
}

/// Rebases `parts` onto one list of parameters, each part's own list a run
/// of it (in order of first appearance), so that their offsets index one
/// flat sequence. Fails unless every parameter has one element count and
/// type.
bool mergeParameters(MutableArrayRef<ParameterLayout> parts) {
  SmallVector<Value, 1> merged;
  for (const ParameterLayout &part : parts)
    for (Value p : part.parameters)
      if (!llvm::is_contained(merged, p))
        merged.push_back(p);
  if (merged.size() == 1)
    return true;
  int64_t n = numElements(merged.front());
  Type element = getElementTypeOrSelf(merged.front().getType());
  for (Value p : merged)
    if (numElements(p) != n || getElementTypeOrSelf(p.getType()) != element)
      return false;
  for (ParameterLayout &part : parts) {
    auto *it = llvm::find(merged, part.parameters.front());
    int64_t base = it - merged.begin();
    for (auto [k, p] : llvm::enumerate(part.parameters))
      if (base + static_cast<int64_t>(k) >=
              static_cast<int64_t>(merged.size()) ||
          merged[base + k] != p)
        return false;
    part.offset += base * n;
    part.parameters = merged;
  }
  return true;
}

/// Concatenates `parts` along `axis`: equal parts at a constant offset step
/// add an outer digit; single-digit parts that continue each other merge.
std::optional<ParameterLayout>
concatLayouts(MutableArrayRef<ParameterLayout> parts, int64_t axis) {
  if (!mergeParameters(parts))
    return std::nullopt;
  ParameterLayout first = parts.front();
  for (const ParameterLayout &part : parts) {
    if (part.axes.size() != first.axes.size())
      return std::nullopt;
    for (size_t a = 0; a < part.axes.size(); ++a)
      if (static_cast<int64_t>(a) != axis && part.axes[a] != first.axes[a])
        return std::nullopt;
  }
  bool equal = llvm::all_of(parts, [&](const ParameterLayout &p) {
    return p.axes[axis] == first.axes[axis];
  });
  if (equal && parts.size() > 1) {
    int64_t step = parts[1].offset - parts[0].offset;
    for (size_t i = 0; i < parts.size(); ++i)
      if (parts[i].offset != first.offset + static_cast<int64_t>(i) * step)
        return std::nullopt;
    ParameterLayout out = first;
    out.axes[axis].insert(out.axes[axis].begin(),
                          {static_cast<int64_t>(parts.size()), step});
    return out;
  }
  // Contiguous runs of one stride: [a, b) then [b, c).
  int64_t stride = 0, size = 0;
  for (const ParameterLayout &part : parts) {
    const Digits &digits = part.axes[axis];
    if (digits.size() != 1 || (stride && digits[0].stride != stride) ||
        part.offset != first.offset + size * digits[0].stride)
      return std::nullopt;
    stride = digits[0].stride;
    size += digits[0].size;
  }
  ParameterLayout out = first;
  out.axes[axis] = {{size, stride}};
  return out;
}

/// The `index`-th output of Split(`input`) along `axis` as (start, count).
std::optional<std::pair<int64_t, int64_t>>
splitRange(moe::OnnxNodeOp split, int64_t axisSize, unsigned index) {
  SmallVector<int64_t> sizes;
  if (split.getInputs().size() == 2) {
    std::optional<SmallVector<int64_t>> given =
        constantInts(split.getInputs()[1]);
    if (!given)
      return std::nullopt;
    sizes = *given;
    // Sizes that do not tile the axis describe no slice of it.
    int64_t total = 0;
    for (int64_t size : sizes) {
      if (size < 0 || size > axisSize - total)
        return std::nullopt;
      total += size;
    }
  } else {
    // ONNX's num_outputs, where given, must be the node's output count.
    int64_t parts = split.getOutputs().size();
    if (auto n = split->getAttrOfType<IntegerAttr>("num_outputs");
        n && n.getInt() != parts)
      return std::nullopt;
    if (parts < 1 || axisSize < 0)
      return std::nullopt;
    int64_t chunk = (axisSize + parts - 1) / parts;
    for (int64_t i = 0; i < parts; ++i)
      sizes.push_back(std::max<int64_t>(0, std::min(chunk, axisSize - i * chunk)));
  }
  if (index >= sizes.size())
    return std::nullopt;
  int64_t start = 0;
  for (unsigned i = 0; i < index; ++i)
    start += sizes[i];
  return std::make_pair(start, sizes[index]);
}

std::optional<ParameterLayout> trace(Value value, int depth) {
  std::optional<SmallVector<int64_t>> shape = staticShape(value);
  if (!shape || depth > 64)
    return std::nullopt;
  if (auto arg = dyn_cast<BlockArgument>(value)) {
    auto func = dyn_cast<func::FuncOp>(arg.getOwner()->getParentOp());
    if (!func || !func.getArgAttr(arg.getArgNumber(),
                                  moe::MoeDialect::getParameterAttrName()))
      return std::nullopt;
    return ParameterLayout::identity(value);
  }
  auto node = value.getDefiningOp<moe::OnnxNodeOp>();
  if (!node || !node.getDomain().empty() || node.getInputs().empty())
    return std::nullopt;
  StringRef op = node.getOpType();
  Value input = node.getInputs()[0];
  std::optional<SmallVector<int64_t>> inputShape = staticShape(input);
  if (!inputShape)
    return std::nullopt;
  int64_t rank = inputShape->size();

  if (op == "Identity")
    return trace(input, depth + 1);
  if (op == "Cast") {
    Type from = getElementTypeOrSelf(input.getType());
    Type to = getElementTypeOrSelf(value.getType());
    if (from == to)
      return trace(input, depth + 1);
    if (!isa<FloatType>(from) || !isa<FloatType>(to))
      return std::nullopt;
    // The parameter's own values converted once: the input still has the
    // parameter's element type.
    std::optional<ParameterLayout> in = trace(input, depth + 1);
    if (!in || getElementTypeOrSelf(in->parameter().getType()) != from)
      return std::nullopt;
    return in;
  }
  if (op == "Reshape" || op == "Unsqueeze" || op == "Squeeze" ||
      op == "Flatten") {
    std::optional<ParameterLayout> in = trace(input, depth + 1);
    return in ? in->reshaped(*shape) : std::nullopt;
  }
  if (op == "Transpose") {
    std::optional<ParameterLayout> in = trace(input, depth + 1);
    if (!in)
      return std::nullopt;
    SmallVector<int64_t> perm;
    if (auto attr = node->getAttrOfType<DenseI64ArrayAttr>("perm"))
      perm.assign(attr.asArrayRef().begin(), attr.asArrayRef().end());
    else
      for (int64_t a = rank - 1; a >= 0; --a)
        perm.push_back(a);
    if (static_cast<int64_t>(perm.size()) != rank ||
        llvm::any_of(perm, [&](int64_t a) { return a < 0 || a >= rank; }))
      return std::nullopt;
    return in->transposed(perm);
  }
  if (op == "Slice") {
    if (node.getInputs().size() < 3 || node->hasAttr("absent_inputs"))
      return std::nullopt;
    std::optional<ParameterLayout> in = trace(input, depth + 1);
    std::optional<SmallVector<int64_t>> starts =
        constantInts(node.getInputs()[1]);
    std::optional<SmallVector<int64_t>> ends =
        constantInts(node.getInputs()[2]);
    std::optional<SmallVector<int64_t>> axes, steps;
    if (node.getInputs().size() > 3)
      axes = constantInts(node.getInputs()[3]);
    else
      axes.emplace(llvm::to_vector(
          llvm::seq<int64_t>(0, starts ? starts->size() : 0)));
    if (node.getInputs().size() > 4)
      steps = constantInts(node.getInputs()[4]);
    else
      steps.emplace(starts ? starts->size() : 0, 1);
    if (!in || !starts || !ends || !axes || !steps ||
        starts->size() != ends->size() || starts->size() != axes->size() ||
        starts->size() != steps->size())
      return std::nullopt;
    for (size_t i = 0; i < starts->size(); ++i) {
      std::optional<int64_t> axis = normalizeAxis((*axes)[i], rank);
      int64_t step = (*steps)[i];
      if (!axis || step <= 0)
        return std::nullopt;
      int64_t size = (*inputShape)[*axis];
      auto clamp = [&](int64_t x) {
        if (x < 0)
          x += size;
        return std::clamp<int64_t>(x, 0, size);
      };
      int64_t start = clamp((*starts)[i]), end = clamp((*ends)[i]);
      int64_t count = end > start ? (end - start + step - 1) / step : 0;
      if (count != (*shape)[*axis] || !slice(*in, *axis, start, count, step))
        return std::nullopt;
    }
    return in;
  }
  if (op == "Split") {
    std::optional<ParameterLayout> in = trace(input, depth + 1);
    auto axisAttr = node->getAttrOfType<IntegerAttr>("axis");
    std::optional<int64_t> axis =
        normalizeAxis(axisAttr ? axisAttr.getInt() : 0, rank);
    if (!in || !axis)
      return std::nullopt;
    unsigned index = cast<OpResult>(value).getResultNumber();
    std::optional<std::pair<int64_t, int64_t>> range =
        splitRange(node, (*inputShape)[*axis], index);
    if (!range || range->second != (*shape)[*axis] ||
        !slice(*in, *axis, range->first, range->second, 1))
      return std::nullopt;
    return in;
  }
  if (op == "Concat") {
    auto axisAttr = node->getAttrOfType<IntegerAttr>("axis");
    std::optional<int64_t> axis =
        axisAttr ? normalizeAxis(axisAttr.getInt(), rank) : std::nullopt;
    if (!axis)
      return std::nullopt;
    SmallVector<ParameterLayout> parts;
    for (Value in : node.getInputs()) {
      std::optional<ParameterLayout> part = trace(in, depth + 1);
      if (!part)
        return std::nullopt;
      parts.push_back(*part);
    }
    return ParameterLayout::concat(parts, *axis);
  }
  return std::nullopt;
}

} // namespace

ParameterLayout ParameterLayout::identity(Value parameter) {
  auto type = cast<RankedTensorType>(parameter.getType());
  ParameterLayout layout{{parameter}, 0, {}};
  int64_t stride = type.getNumElements();
  for (int64_t size : type.getShape()) {
    stride = size ? stride / size : 0;
    layout.axes.push_back({{size, stride}});
  }
  return layout;
}

std::optional<ParameterLayout>
ParameterLayout::concat(ArrayRef<ParameterLayout> parts, int64_t axis) {
  if (parts.empty() || axis < 0 ||
      axis >= static_cast<int64_t>(parts.front().axes.size()))
    return std::nullopt;
  SmallVector<ParameterLayout> normalized(parts);
  for (ParameterLayout &part : normalized)
    part.normalize();
  return concatLayouts(normalized, axis);
}

std::optional<ParameterLayout>
ParameterLayout::reshaped(ArrayRef<int64_t> shape) const {
  return reshape(*this, shape);
}

ParameterLayout ParameterLayout::transposed(ArrayRef<int64_t> perm) const {
  ParameterLayout out{parameters, offset, {}};
  for (int64_t a : perm)
    out.axes.push_back(axes[a]);
  return out;
}

std::optional<SmallVector<int64_t>> ParameterLayout::permutation() const {
  if (parameters.size() != 1)
    return std::nullopt;
  ParameterLayout self = *this, whole = identity(parameter());
  self.normalize();
  whole.normalize();
  if (self.offset != 0 || self.axes.size() != whole.axes.size())
    return std::nullopt;
  // Each axis is one whole axis of the parameter (size-1 axes, which have
  // no digits, pair up in order).
  SmallVector<int64_t> perm;
  llvm::SmallBitVector used(whole.axes.size());
  for (const Digits &axis : self.axes) {
    size_t p = 0;
    while (p < whole.axes.size() && (used.test(p) || whole.axes[p] != axis))
      ++p;
    if (p == whole.axes.size())
      return std::nullopt;
    used.set(p);
    perm.push_back(static_cast<int64_t>(p));
  }
  return perm;
}

std::optional<SmallVector<LayoutPiece>> ParameterLayout::pieces() const {
  ParameterLayout self = *this;
  self.normalize();
  int64_t n = numElements(parameters.front());
  int64_t count = static_cast<int64_t>(parameters.size());
  if (self.offset != 0 || n == 0)
    return std::nullopt;
  // Each digit steps either between parameters (outer: a stride of whole
  // parameters) or within one (inner: spanning at most one); a digit that
  // does both is split. Within an axis the outer digits come first, so that
  // one parameter fills a contiguous range of it.
  struct Axis {
    Digits outer, inner; // outer strides count parameters
    int64_t extent = 1;  // the inner digits' product: the box's size
  };
  SmallVector<Axis> split;
  for (const Digits &digits : self.axes) {
    Axis a;
    for (const LayoutDigit &d : digits) {
      if (d.stride >= n && d.stride % n == 0) {
        if (!a.inner.empty())
          return std::nullopt;
        a.outer.push_back({d.size, d.stride / n});
      } else if (d.size * d.stride <= n) {
        a.inner.push_back(d);
      } else if (n % d.stride == 0 && d.size % (n / d.stride) == 0) {
        if (!a.inner.empty())
          return std::nullopt;
        int64_t within = n / d.stride;
        a.outer.push_back({d.size / within, 1});
        a.inner.push_back({within, d.stride});
      } else {
        return std::nullopt;
      }
    }
    a.extent = product(a.inner);
    split.push_back(std::move(a));
  }
  // Every combination of outer digits names one parameter, each exactly
  // once: no gaps, no overlaps.
  int64_t combinations = 1;
  for (const Axis &a : split)
    combinations *= product(a.outer);
  if (combinations != count)
    return std::nullopt;
  SmallVector<std::optional<LayoutPiece>> found(count);
  for (int64_t c = 0; c < combinations; ++c) {
    // c's mixed-radix digits over the axes' outer digits, innermost last.
    int64_t rest = c, which = 0;
    SmallVector<int64_t> offsets(split.size());
    for (int64_t a = static_cast<int64_t>(split.size()) - 1; a >= 0; --a) {
      int64_t value = 0, radix = 1;
      for (const LayoutDigit &d : llvm::reverse(split[a].outer)) {
        int64_t digit = rest % d.size;
        rest /= d.size;
        which += digit * d.stride;
        value += digit * radix;
        radix *= d.size;
      }
      offsets[a] = value * split[a].extent;
    }
    if (which >= count || found[which])
      return std::nullopt;
    LayoutPiece piece{parameters[which], offsets, {}, {}};
    for (const Axis &a : split)
      piece.sizes.push_back(a.extent);
    // The box is the parameter with its axes permuted, unit axes aside.
    ParameterLayout whole = identity(piece.parameter);
    whole.normalize();
    llvm::SmallBitVector used(whole.axes.size());
    for (const Axis &a : split) {
      ParameterLayout axis{{piece.parameter}, 0, {a.inner}};
      axis.normalize();
      if (axis.axes[0].empty())
        continue;
      size_t p = 0;
      while (p < whole.axes.size() &&
             (used.test(p) || whole.axes[p] != axis.axes[0]))
        ++p;
      if (p == whole.axes.size())
        return std::nullopt;
      used.set(p);
      piece.permutation.push_back(static_cast<int64_t>(p));
    }
    for (size_t p = 0; p < whole.axes.size(); ++p) {
      if (used.test(p))
        continue;
      if (!whole.axes[p].empty())
        return std::nullopt; // part of the parameter is not in the box
      piece.permutation.push_back(static_cast<int64_t>(p));
    }
    found[which] = std::move(piece);
  }
  SmallVector<LayoutPiece> out;
  for (std::optional<LayoutPiece> &piece : found)
    out.push_back(std::move(*piece));
  return out;
}

void ParameterLayout::normalize() {
  for (Digits &digits : axes) {
    llvm::erase_if(digits, [](const LayoutDigit &d) { return d.size == 1; });
    Digits merged;
    for (const LayoutDigit &d : digits) {
      if (!merged.empty() && merged.back().stride == d.size * d.stride)
        merged.back() = {merged.back().size * d.size, d.stride};
      else
        merged.push_back(d);
    }
    digits = std::move(merged);
  }
}

std::optional<ParameterLayout> moec::traceParameterLayout(Value value) {
  return trace(value, 0);
}

std::optional<SmallVector<int64_t>> moec::constantInts(Value v) {
  auto constant = v.getDefiningOp<arith::ConstantOp>();
  auto dense = constant ? dyn_cast<DenseIntElementsAttr>(constant.getValue())
                        : DenseIntElementsAttr();
  if (!dense)
    return std::nullopt;
  SmallVector<int64_t> out;
  for (APInt x : dense.getValues<APInt>())
    out.push_back(x.getSExtValue());
  return out;
}
