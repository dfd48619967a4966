//===- Numerics.cuh - Counting inf and NaN in an op's result -*- CUDA -*-===//
//
// The debug check of `--check-numerics` (docs/reliability.md): the printed
// step calls countNonfinite after each op for each floating-point result,
// and the driver reads the counts after the step; the first check with a
// non-zero count names the op. Without the flag Context::nonfiniteCounts is
// null and the calls launch nothing (and the step is captured as usual).
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_NUMERICS_CUH
#define MOERT_KERNELS_NUMERICS_CUH

#include "moert/kernels/Common.cuh"

namespace moert::kernels {

namespace detail {
template <class T>
__global__ void countNonfiniteKernel(const T *x, int64_t n,
                                     unsigned long long *count) {
  unsigned long long c = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    c += isfinite(toFloat(x[i])) ? 0 : 1;
  for (int o = 16; o > 0; o >>= 1)
    c += __shfl_xor_sync(0xffffffffu, c, o);
  if ((threadIdx.x & 31) == 0 && c != 0)
    atomicAdd(count, c);
}
} // namespace detail

/// Adds the count of inf and NaN elements among x[0, n) to check `check`'s
/// counter, on the step's stream; nothing without --check-numerics.
template <class T>
void countNonfinite(const Context &ctx, int check, const T *x, int64_t n) {
  if (!ctx.nonfiniteCounts || n == 0)
    return;
  int blocks = blocksFor(n);
  detail::countNonfiniteKernel<T><<<blocks < 1024 ? blocks : 1024, 256, 0,
                                    ctx.stream>>>(
      x, n, ctx.nonfiniteCounts + check);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_NUMERICS_CUH
