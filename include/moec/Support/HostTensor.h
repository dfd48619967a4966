//===- HostTensor.h - A dense tensor in host memory -------------*- C++ -*-===//
//
// The one container for tensor values on the host: weights read from ONNX
// files, inputs and outputs of the reference executor, golden data. It holds
// either fp32 or int64 elements, row-major, with a static shape.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_SUPPORT_HOSTTENSOR_H
#define MOEC_SUPPORT_HOSTTENSOR_H

#include <cstdint>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

namespace moec {

struct HostTensor {
  enum class ElementKind { F32, I64 };

  ElementKind kind = ElementKind::F32;
  std::vector<int64_t> shape;
  std::vector<float> f32;   ///< Elements when kind == F32.
  std::vector<int64_t> i64; ///< Elements when kind == I64.

  static HostTensor floats(std::vector<int64_t> shape) {
    HostTensor t;
    t.kind = ElementKind::F32;
    t.shape = std::move(shape);
    t.f32.assign(t.numElements(), 0.0f);
    return t;
  }
  static HostTensor ints(std::vector<int64_t> shape) {
    HostTensor t;
    t.kind = ElementKind::I64;
    t.shape = std::move(shape);
    t.i64.assign(t.numElements(), 0);
    return t;
  }

  bool isFloat() const { return kind == ElementKind::F32; }
  int64_t numElements() const {
    return std::accumulate(shape.begin(), shape.end(), int64_t{1},
                           std::multiplies<int64_t>());
  }
  /// The shape as `[2, 8, 256]`, for diagnostics.
  std::string shapeString() const {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i)
      s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

} // namespace moec

#endif // MOEC_SUPPORT_HOSTTENSOR_H
