//===- ParameterLayout.h - Parameters rearranged in a graph -----*- C++ -*-===//
//
// Exporters often hand an op not a parameter but a rearrangement of one:
// onnxruntime's MoE wants the gate and up rows of Hugging Face's
// `gate_up_proj` interleaved, and the graph computes that from the
// checkpoint-layout initializer with Split/Slice, Unsqueeze, Concat,
// Reshape and Transpose nodes. traceParameterLayout() reads such a subgraph
// structurally, without the parameter's values (a weights-free model has
// none): it says, for every element of the result, which element of the
// parameter it is.
//
// The answer is a strided layout over the parameter's row-major elements:
// each axis of the result is a mixed-radix number whose digits (outermost
// first) each step through the parameter with a stride, plus an offset.
// Transpose permutes axes; reshapes (Reshape, Unsqueeze, Squeeze, Flatten)
// regroup digits, splitting one where a new axis boundary falls inside it
// (and failing where sizes do not divide); Slice and Split move the offset
// and narrow or stride a digit; a Concat of layouts that differ only by a
// constant offset step along the axis adds a digit. Identity and Casts to
// the same type change nothing. A Cast from the parameter's own element
// type to another floating-point type (a checkpoint stored in bf16 and
// computed in fp32) keeps the layout: the value is the parameter converted,
// which its reader does once; a second conversion on the way (rounding in
// between) fails the trace. Anything else is not a rearrangement of one
// parameter, and the trace fails. A Concat of layouts over different
// parameters (per-expert tensors stacked, gate and up tensors side by side)
// indexes those parameters one after the other as if they were one, so the
// rest of the trace goes on unchanged; pieces() then says which box of the
// result each parameter fills.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_LIB_CONVERSION_ONNXTOMOE_PARAMETERLAYOUT_H
#define MOEC_LIB_CONVERSION_ONNXTOMOE_PARAMETERLAYOUT_H

#include "mlir/IR/Value.h"
#include "llvm/ADT/SmallVector.h"

#include <cstdint>
#include <optional>

namespace moec {

/// One digit of an axis: `size` values, `stride` parameter elements apart.
struct LayoutDigit {
  int64_t size;
  int64_t stride;
  bool operator==(const LayoutDigit &other) const {
    return size == other.size && stride == other.stride;
  }
};

/// One parameter filling a box of a layout's result (ParameterLayout::
/// pieces): the parameter transposed by `permutation` (dimension d of the
/// transposed tensor is the parameter's dimension permutation[d]), then
/// reshaped row-major to `sizes`, is the result's box at `offsets`.
struct LayoutPiece {
  mlir::Value parameter;
  llvm::SmallVector<int64_t> offsets, sizes, permutation;
};

/// Element (i_0, ..., i_{r-1}) of a tensor is element `offset` + sum over
/// axes a and digits k of digit_k(i_a) * stride_k of `parameters` (flat,
/// row-major, one after the other), where digit_k(i_a) are the mixed-radix
/// digits of i_a in the sizes of axis a's digits, outermost first.
/// `parameters` is one parameter except after a Concat of pieces of
/// different parameters (per-expert tensors stacked, separate gate and up
/// tensors): then several, all of one element count and element type.
struct ParameterLayout {
  llvm::SmallVector<mlir::Value, 1> parameters;
  int64_t offset = 0;
  llvm::SmallVector<llvm::SmallVector<LayoutDigit, 2>> axes;

  /// The one parameter of a layout over one.
  mlir::Value parameter() const { return parameters.front(); }

  /// The parameter itself: one digit per axis, row-major strides.
  static ParameterLayout identity(mlir::Value parameter);
  /// The layouts of `parts` concatenated along `axis` (equal but for that
  /// axis; parts over different parameters of one element count and type
  /// index those parameters one after the other), or nothing when the
  /// result is not a strided layout.
  static std::optional<ParameterLayout>
  concat(llvm::ArrayRef<ParameterLayout> parts, int64_t axis);

  /// This layout reshaped (row-major) to `shape`, or nothing where an axis
  /// boundary of `shape` falls inside a digit that does not divide.
  std::optional<ParameterLayout> reshaped(llvm::ArrayRef<int64_t> shape) const;
  /// This layout with its axes permuted: axis a is axis `perm[a]`.
  ParameterLayout transposed(llvm::ArrayRef<int64_t> perm) const;
  /// The permutation p for which this layout is the whole parameter with
  /// its axes permuted (axis a is the parameter's axis p[a]), or nothing
  /// when it is any other rearrangement (or over several parameters).
  std::optional<llvm::SmallVector<int64_t>> permutation() const;
  /// For a layout over several parameters: the box of the result each
  /// fills, when the result is exactly those boxes, one per parameter, each
  /// the parameter with its axes permuted (and unit axes added or dropped).
  /// Nothing when pieces straddle a box, leave gaps or overlap.
  std::optional<llvm::SmallVector<LayoutPiece>> pieces() const;

  /// Drops digits of size 1 and merges neighbours that step as one, so that
  /// two layouts of the same element map compare equal.
  void normalize();
};

/// The layout of `value` over the one parameter (a function argument tagged
/// moe.parameter) it is rearranged from by ONNX data-movement nodes, or
/// nothing when it is not such a rearrangement (or its shapes are not
/// static).
std::optional<ParameterLayout> traceParameterLayout(mlir::Value value);

/// The elements of an integer constant (arith.constant), or nothing.
std::optional<llvm::SmallVector<int64_t>> constantInts(mlir::Value v);

} // namespace moec

#endif // MOEC_LIB_CONVERSION_ONNXTOMOE_PARAMETERLAYOUT_H
