//===- Init.cuh - delayed_param: parameters from the seed, on the GPU -*- CUDA -*-//
//
// moe.param_init on the GPU: every element of a parameter (or of this
// rank's shard of it) is drawn from the counter-based generator of
// moert/CounterRng.h, which the CPU reference uses too, at its index in the
// full parameter, so any sharding yields the same global values as the
// reference.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_INIT_CUH
#define MOERT_KERNELS_INIT_CUH

#include "moert/CounterRng.h"
#include "moert/kernels/Common.cuh"

namespace moert::kernels {

/// Where a parameter (or a shard of it) sits in the full parameter.
template <int Rank> struct Shard {
  int64_t local[Rank];  ///< shape of what this kernel writes
  int64_t global[Rank]; ///< shape of the full parameter
  int64_t offset[Rank]; ///< position of the shard in it
};

/// out[i] = stddev * N(0,1) at the element's index in the full parameter,
/// drawn in fp64 and rounded once to T (fp32, or bf16 for a bf16 model).
template <int Rank, class T>
__global__ void paramInitNormal(T *out, int64_t count, uint64_t base,
                                double stddev, Shard<Rank> shard) {
  ParamNormalStream stream(base);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = i, flat = 0, stride = 1;
    bool padding = false;
    for (int d = Rank - 1; d >= 0; --d) {
      int64_t local = rest % shard.local[d];
      rest /= shard.local[d];
      padding |= shard.offset[d] + local >= shard.global[d];
      flat += (shard.offset[d] + local) * stride;
      stride *= shard.global[d];
    }
    out[i] = padding ? fromFloat<T>(0.0f)
                     : fromFloat<T>(static_cast<float>(
                           stream.at(static_cast<uint64_t>(flat)) * stddev));
  }
}

/// out[i] = 1 inside the full parameter, 0 in a shard's padding past it.
template <int Rank, class T>
__global__ void paramInitOnesShard(T *out, int64_t count, Shard<Rank> shard) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = i;
    bool padding = false;
    for (int d = Rank - 1; d >= 0; --d) {
      padding |= shard.offset[d] + rest % shard.local[d] >= shard.global[d];
      rest /= shard.local[d];
    }
    out[i] = fromFloat<T>(padding ? 0.0f : 1.0f);
  }
}

template <class T> __global__ void paramInitOnes(T *out, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = fromFloat<T>(1.0f);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_INIT_CUH
