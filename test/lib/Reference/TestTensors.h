//===- TestTensors.h - Host tensors from literals, for tests ----*- C++ -*-===//
//
// Shared by the reference executor's unit tests: a HostTensor from a shape
// and its row-major values.
//
//===----------------------------------------------------------------------===//

#ifndef TEST_LIB_REFERENCE_TESTTENSORS_H
#define TEST_LIB_REFERENCE_TESTTENSORS_H

#include "moec/Support/HostTensor.h"

namespace moec::testing {

inline HostTensor floats(std::vector<int64_t> shape,
                         std::vector<float> values) {
  HostTensor t = HostTensor::floats(std::move(shape));
  t.f32 = std::move(values);
  return t;
}

inline HostTensor ints(std::vector<int64_t> shape,
                       std::vector<int64_t> values) {
  HostTensor t = HostTensor::ints(std::move(shape));
  t.i64 = std::move(values);
  return t;
}

} // namespace moec::testing

#endif // TEST_LIB_REFERENCE_TESTTENSORS_H
