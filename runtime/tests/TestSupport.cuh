//===- TestSupport.cuh - What the GPU kernel tests share ----------*- CUDA -*-===//
//
// The harness of runtime/tests/*.cu: device buffers (owned, or raw pointers
// the tests free themselves), fp32/bf16 conversions of host vectors, the
// error report every check prints, bitwise comparison, and the Env that
// hands a test's launches their context and counts their checks. The host oracles
// stay in each test: they are what the test is about.
//
// compare() prints one line per check:
//
//   NAME: max abs err X, rel L2 err Y (tolerance T) PASS|FAIL
//
// with the relative L2 error ‖got − want‖ / ‖want‖ (the absolute L2 error
// where `want` is all zero); a non-finite or missing value fails.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_TESTS_TESTSUPPORT_CUH
#define MOERT_TESTS_TESTSUPPORT_CUH

#include "moert/kernels/Gemm.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

/// A failed CUDA call ends the test (exit 1, like the kernels' own checks).
#define CHECK_CUDA(call) MOERT_CUDA_CHECK(call)

namespace moert::testing {

using kernels::bf16;
using Doubles = std::vector<double>;

template <class T> const char *typeName();
template <> inline const char *typeName<float>() { return "fp32"; }
template <> inline const char *typeName<bf16>() { return "bf16"; }

/// A device copy of `host` (at least one element); the caller frees it.
template <class V> V *deviceCopy(const std::vector<V> &host) {
  V *p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<size_t>(host.size(), 1) * sizeof(V)));
  if (!host.empty())
    CHECK_CUDA(cudaMemcpy(p, host.data(), host.size() * sizeof(V),
                          cudaMemcpyHostToDevice));
  return p;
}

/// n elements of 0xFF bytes (NaN in fp32 and bf16), so that an element a
/// kernel forgets to write fails; the caller frees it.
template <class V> V *deviceNaN(int64_t n) {
  V *p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<int64_t>(n, 1) * sizeof(V)));
  CHECK_CUDA(cudaMemset(p, 0xFF, std::max<int64_t>(n, 1) * sizeof(V)));
  return p;
}

template <class V> std::vector<V> hostCopy(const V *p, int64_t n) {
  std::vector<V> host(n);
  if (n > 0)
    CHECK_CUDA(
        cudaMemcpy(host.data(), p, n * sizeof(V), cudaMemcpyDeviceToHost));
  return host;
}

/// An owned device buffer of `count` elements.
template <class V> class DeviceBuffer {
public:
  explicit DeviceBuffer(int64_t count) : count_(count) {
    CHECK_CUDA(cudaMalloc(&ptr_, bytes()));
  }
  explicit DeviceBuffer(const std::vector<V> &host)
      : DeviceBuffer(static_cast<int64_t>(host.size())) {
    write(host);
  }
  DeviceBuffer(const DeviceBuffer &) = delete;
  DeviceBuffer &operator=(const DeviceBuffer &) = delete;
  ~DeviceBuffer() { cudaFree(ptr_); }

  V *get() const { return ptr_; }
  void write(const std::vector<V> &host) {
    if (!host.empty())
      CHECK_CUDA(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(V),
                            cudaMemcpyHostToDevice));
  }
  /// 0xFF bytes: NaN in fp32 and bf16.
  void fillNaN() { CHECK_CUDA(cudaMemset(ptr_, 0xFF, bytes())); }
  std::vector<V> read() const { return hostCopy(ptr_, count_); }

private:
  size_t bytes() const {
    return static_cast<size_t>(std::max<int64_t>(count_, 1)) * sizeof(V);
  }
  V *ptr_ = nullptr;
  int64_t count_;
};

template <class T> Doubles toDoubles(const std::vector<T> &v) {
  Doubles d(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    d[i] = static_cast<double>(kernels::toFloat(v[i]));
  return d;
}

/// `v` rounded to the storage type T.
template <class T> std::vector<T> toStorage(const std::vector<float> &v) {
  std::vector<T> s(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    s[i] = kernels::fromFloat<T>(v[i]);
  return s;
}

template <class V>
bool sameBits(const std::vector<V> &a, const std::vector<V> &b) {
  return a.size() == b.size() &&
         (a.empty() ||
          std::memcmp(a.data(), b.data(), a.size() * sizeof(V)) == 0);
}

template <class V> bool sameBits(const V *a, const V *b, int64_t n) {
  return sameBits(hostCopy(a, n), hostCopy(b, n));
}

/// Prints the check's line (see the file comment); true when it passes.
/// `floor` bounds ‖want‖ from below (for oracles that are zero in exact
/// arithmetic and hold only rounding noise).
inline bool compare(const std::string &name, const Doubles &got,
                    const Doubles &want, double tolerance,
                    double floor = 0.0) {
  double maxAbs = 0.0, diff2 = 0.0, want2 = 0.0;
  bool finite = got.size() == want.size();
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    if (!std::isfinite(got[i])) {
      finite = false;
      continue;
    }
    double d = got[i] - want[i];
    maxAbs = std::max(maxAbs, std::fabs(d));
    diff2 += d * d;
    want2 += want[i] * want[i];
  }
  double norm = std::max(std::sqrt(want2), floor);
  double rel = norm > 0.0 ? std::sqrt(diff2) / norm : std::sqrt(diff2);
  bool pass = finite && rel <= tolerance;
  std::printf("%s: max abs err %.3e, rel L2 err %.3e (tolerance %.0e)%s %s\n",
              name.c_str(), maxAbs, rel, tolerance,
              finite ? "" : " [non-finite or missing values]",
              pass ? "PASS" : "FAIL");
  return pass;
}

/// Prints `NAME: PASS|FAIL`; returns `pass`.
inline bool report(const std::string &name, bool pass) {
  std::printf("%s: %s\n", name.c_str(), pass ? "PASS" : "FAIL");
  return pass;
}

/// The stream, BLAS state, scratch and pinned counts a test's launches
/// share, and its tally of checks. The test allocates them in main().
struct Env {
  cudaStream_t stream = nullptr;
  kernels::Blas *blas = nullptr; ///< Gemm.cuh; null where nothing multiplies
  char *scratch = nullptr;
  int64_t scratchCapacity = 0; ///< bytes allocated at `scratch`
  int64_t *hostCounts = nullptr;
  int checks = 0, failures = 0;

  /// A context whose scratch is exactly `scratchBytes` (0xFF-filled), or
  /// false (a failed check) when that is over the allocation.
  bool context(const std::string &name, int64_t scratchBytes,
               kernels::Context &ctx) {
    if (scratchBytes < 0 || scratchBytes > scratchCapacity) {
      std::printf("%s: scratch of %lld bytes is over the test's %lld FAIL\n",
                  name.c_str(), static_cast<long long>(scratchBytes),
                  static_cast<long long>(scratchCapacity));
      count(false);
      return false;
    }
    if (scratchBytes > 0)
      CHECK_CUDA(cudaMemset(scratch, 0xFF, scratchBytes));
    ctx = kernels::Context{};
    ctx.stream = stream;
    ctx.blas = blas;
    ctx.scratch = scratch;
    ctx.scratchBytes = scratchBytes;
    ctx.hostCounts = hostCounts;
    return true;
  }

  /// After the launches of one test: launch errors, then execution errors.
  void sync() {
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaStreamSynchronize(stream));
    CHECK_CUDA(cudaGetLastError());
  }

  /// A check's line (above), counted.
  bool report(const std::string &name, bool pass) {
    return count(moert::testing::report(name, pass));
  }
  bool compare(const std::string &name, const Doubles &got,
               const Doubles &want, double tol, double floor = 0.0) {
    return count(moert::testing::compare(name, got, want, tol, floor));
  }
  bool count(bool pass) {
    ++checks;
    failures += !pass;
    return pass;
  }
};

} // namespace moert::testing

#endif // MOERT_TESTS_TESTSUPPORT_CUH
