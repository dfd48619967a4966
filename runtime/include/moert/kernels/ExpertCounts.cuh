//===- ExpertCounts.cuh - Tokens routed to each expert ---------*- CUDA -*-===//
//
// moe.expert_counts: per layer, the (token, slot) pairs routed to each
// expert, exactly (integer histograms). Scratch: none.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_EXPERT_COUNTS_CUH
#define MOERT_KERNELS_EXPERT_COUNTS_CUH

#include "moert/kernels/RouterCommon.cuh"

namespace moert::kernels {

namespace detail {

/// One block per layer: a histogram per warp (equal experts of a warp are
/// added once, by __match_any_sync), then their sum. Integer, so exact.
__global__ void expertCountsKernel(RouterLayers<const int64_t *> experts,
                                   int layerBase, int64_t entries, int E,
                                   int64_t *counts) {
  __shared__ int histogram[32][kRouterMaxExperts];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  for (int i = threadIdx.x; i < 32 * kRouterMaxExperts; i += blockDim.x)
    histogram[i / kRouterMaxExperts][i % kRouterMaxExperts] = 0;
  __syncthreads();
  const int64_t *x = experts.p[blockIdx.x];
  for (int64_t base = int64_t(warp) * 32; base < entries;
       base += int64_t(warps) * 32) {
    int64_t i = base + lane;
    int64_t v = i < entries ? x[i] : -1;
    int key = v >= 0 && v < E ? static_cast<int>(v) : -1 - lane;
    unsigned same = __match_any_sync(kRouterFullMask, key);
    if (key >= 0 && lane == __ffs(same) - 1)
      histogram[warp][key] += __popc(same);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int64_t n = 0;
    for (int w = 0; w < warps; ++w)
      n += histogram[w][e];
    counts[int64_t(layerBase + blockIdx.x) * E + e] = n;
  }
}

} // namespace detail

/// counts[l·E + e] (overwritten) = the (token, slot) pairs of layer l (host
/// array of device pointers to [tokens, k]) routed to expert e.
inline void expertCounts(const Context &ctx, const int64_t *const *experts,
                         int64_t layers, int64_t tokens, int64_t k, int64_t E,
                         int64_t *counts) {
  using namespace detail;
  routerCheckLayers("expertCounts", layers, tokens, E);
  forLayerChunks(experts, layers, [&](int first, int count, auto chunk) {
    expertCountsKernel<<<count, 1024, 0, ctx.stream>>>(
        chunk, first, tokens * k, static_cast<int>(E), counts);
    MOERT_CUDA_CHECK(cudaGetLastError());
  });
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_EXPERT_COUNTS_CUH
