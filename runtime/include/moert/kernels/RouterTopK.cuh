//===- RouterTopK.cuh - Top-k routing (aux_loss, none) ---------*- CUDA -*-===//
//
// Routing by top-k of the logits, for the aux_loss and none modes: the
// renormalised gates are exp(x - x_top1) over the sum of those of the chosen
// experts (the softmax denominator cancels). Scratch: none.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_ROUTER_TOP_K_CUH
#define MOERT_KERNELS_ROUTER_TOP_K_CUH

#include "moert/kernels/RouterCommon.cuh"

namespace moert::kernels {

namespace detail {

template <class T>
__global__ void routerTopKKernel(const T *logits, int64_t tokens, int E, int k,
                                 int W, T *gates, int64_t *experts) {
  int g = threadIdx.x & (W - 1);
  int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  int64_t groups = int64_t(gridDim.x) * blockDim.x / W;
  MOERT_ROUTER_FOR_TOKENS(t, id / W, groups, tokens) {
    bool ok = t < tokens;
    RouterRow r = routerLoadRow(logits, ok ? t : 0, ok, E, W, g);
    int rank[2];
    float top;
    routerTopK(r.x, r, k, W, rank, top);
    // p_j / sum_chosen p = exp(x_j - top) / sum_chosen exp(x - top).
    float w[2], local = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      w[i] = rank[i] >= 0 ? expf(r.x[i] - top) : 0.0f;
      local += w[i];
    }
    float sum = routerGroupSum(local, W);
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (rank[i] >= 0) {
        experts[t * k + rank[i]] = r.e[i];
        gates[t * k + rank[i]] = fromFloat<T>(w[i] / sum);
      }
  }
}

/// Top-k routing (AuxLoss, None): one kernel.
template <class T>
void routeTopK(const Context &ctx, const T *logits, int64_t tokens, int E,
               int k, int W, T *gates, int64_t *experts) {
  routerTopKKernel<T><<<routerGroupBlocks(tokens, W), kRouterThreads, 0,
                        ctx.stream>>>(logits, tokens, E, k, W, gates,
                                      experts);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

} // namespace detail

} // namespace moert::kernels

#endif // MOERT_KERNELS_ROUTER_TOP_K_CUH
