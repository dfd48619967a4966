//===- CounterRng.h - The counter-based generator of delayed_param -*- C++ -*-//
//
// `delayed_param`'s generator: every element of every parameter is a pure
// function of (seed, parameter name, element index), so any rank can create
// any shard of any parameter alone. The CPU reference (through
// moec/Support/ParamInit.h), the GPU initialisation kernels
// (moert/kernels/Init.cuh) and python/moec/init.py implement exactly this:
//
//   splitmix64(z): z += 0x9E3779B97F4A7C15;
//                  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
//                  z = (z ^ (z >> 27)) * 0x94D049BB133111EB; return z ^ (z >>
//                  31)
//   key(name)    = FNV-1a 64 of the UTF-8 name
//   bits(i, j)   = splitmix64(splitmix64(splitmix64(seed) ^ key) ^ (2i + j))
//   u_j          = ((bits(i, j) >> 11) + 0.5) · 2^-53            in (0, 1)
//   normal(i)    = sqrt(-2 ln u_0) · cos(2π u_1)                 (fp64)
//
// Plain C++ usable from host and device code (nvcc sees __host__
// __device__); no CUDA needed to include it, no MLIR.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_COUNTERRNG_H
#define MOERT_COUNTERRNG_H

#include <cmath>
#include <cstdint>
#include <string_view>

#ifdef __CUDACC__
#define MOERT_HOST_DEVICE __host__ __device__
#else
#define MOERT_HOST_DEVICE
#endif

namespace moert {

MOERT_HOST_DEVICE inline uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint64_t fnv1a64(std::string_view text) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 0x100000001b3ull;
  }
  return hash;
}

/// The standard-normal stream of one parameter.
class ParamNormalStream {
public:
  ParamNormalStream(uint64_t seed, std::string_view name)
      : base(baseFor(seed, name)) {}
  /// From a precomputed baseFor(seed, name), as a GPU kernel receives it.
  MOERT_HOST_DEVICE explicit ParamNormalStream(uint64_t base) : base(base) {}

  static uint64_t baseFor(uint64_t seed, std::string_view name) {
    return splitmix64(splitmix64(seed) ^ fnv1a64(name));
  }

  /// The standard-normal value of element `index`.
  MOERT_HOST_DEVICE double at(uint64_t index) const {
    const double twoPi = 6.283185307179586476925286766559;
    double u0 = uniform(2 * index), u1 = uniform(2 * index + 1);
    return ::sqrt(-2.0 * ::log(u0)) * ::cos(twoPi * u1);
  }

private:
  MOERT_HOST_DEVICE double uniform(uint64_t counter) const {
    uint64_t bits = splitmix64(base ^ counter);
    return (static_cast<double>(bits >> 11) + 0.5) * 0x1.0p-53;
  }
  uint64_t base;
};

} // namespace moert

#endif // MOERT_COUNTERRNG_H
