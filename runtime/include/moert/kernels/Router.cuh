//===- Router.cuh - moe.router and moe.router_grad -------------*- CUDA -*-===//
//
// moe.router (training routing) and moe.router_grad. router() dispatches on
// the load-balancing mode (moert/Routing.h) to the mode's kernels:
//
//   AuxLoss, None  RouterTopK.cuh
//   Sinkhorn       RouterSinkhorn.cuh
//   Balanced       RouterBalanced.cuh
//
// routerGrad: softmax backward of dp, where dp = dGates at the chosen
// experts (Sinkhorn), through the renormalisation (the other modes), and for
// Sinkhorn with k = 1 the sigmoid's derivative at the chosen expert only.
// Gradients overwrite their outputs. routerScratchBytes covers the router
// and the losses of RouterLosses.cuh, which a step runs on the same scratch.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_ROUTER_CUH
#define MOERT_KERNELS_ROUTER_CUH

#include "moert/Routing.h"
#include "moert/kernels/RouterBalanced.cuh"
#include "moert/kernels/RouterLosses.cuh"
#include "moert/kernels/RouterSinkhorn.cuh"
#include "moert/kernels/RouterTopK.cuh"

namespace moert::kernels {

namespace detail {

/// dLogits of one token: with D[e] = sum of dGates over slots choosing e and
/// M[e] their number, dp = D (Sinkhorn) or (D - M·dot)/s with s = sum of
/// the chosen p and dot = sum p·D / s (renormalised gates); then
/// p·(dp - sum p·dp). Sinkhorn with k = 1: dGates·σ(1-σ) at the expert;
/// the other modes with k = 1: 0 (the gate is p/p = 1).
template <class T>
__global__ void routerGradKernel(const T *logits, const int64_t *experts,
                                 const T *dGates, int64_t tokens, int E,
                                 int k, int W, int mode, T *dLogits) {
  const bool sinkhorn = mode == static_cast<int>(Routing::Sinkhorn);
  int g = threadIdx.x & (W - 1);
  int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  int64_t groups = int64_t(gridDim.x) * blockDim.x / W;
  MOERT_ROUTER_FOR_TOKENS(t, id / W, groups, tokens) {
    bool ok = t < tokens;
    int64_t row = ok ? t : 0;
    RouterRow r = routerLoadRow(logits, row, ok, E, W, g);
    const int64_t *chosen = experts + row * k;
    const T *dg = dGates + row * k;
    if (sinkhorn && k == 1) {
      int64_t c = ok ? chosen[0] : -1;
      float d = ok ? toFloat(dg[0]) : 0.0f;
#pragma unroll
      for (int i = 0; i < 2; ++i)
        if (r.valid[i]) {
          float v = 0.0f;
          if (r.e[i] == c) {
            float s = 1.0f / (1.0f + expf(-r.x[i]));
            v = d * s * (1.0f - s);
          }
          dLogits[row * E + r.e[i]] = fromFloat<T>(v);
        }
      continue;
    }
    if (!sinkhorn && k == 1) {
      // One renormalised gate is 1 whatever the logits: the gradient is 0.
#pragma unroll
      for (int i = 0; i < 2; ++i)
        if (r.valid[i])
          dLogits[row * E + r.e[i]] = fromFloat<T>(0.0f);
      continue;
    }
    float p[2];
    routerSoftmax(r, W, p);
    float D[2] = {0.0f, 0.0f}, M[2] = {0.0f, 0.0f};
    if (ok)
      for (int j = 0; j < k; ++j) {
        int64_t c = chosen[j];
        float d = toFloat(dg[j]);
#pragma unroll
        for (int i = 0; i < 2; ++i)
          if (r.e[i] == c) {
            D[i] += d;
            M[i] += 1.0f;
          }
      }
    float dp[2];
    if (sinkhorn) {
      dp[0] = D[0];
      dp[1] = D[1];
    } else {
      float s = routerGroupSum(M[0] * p[0] + M[1] * p[1], W);
      float dot = routerGroupSum(p[0] * D[0] + p[1] * D[1], W) / s;
#pragma unroll
      for (int i = 0; i < 2; ++i)
        dp[i] = (D[i] - M[i] * dot) / s;
    }
    float inner = routerGroupSum(p[0] * dp[0] + p[1] * dp[1], W);
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (r.valid[i])
        dLogits[row * E + r.e[i]] = fromFloat<T>(p[i] * (dp[i] - inner));
  }
}

} // namespace detail

/// The most scratch any function of this file needs for these sizes (the
/// router with `k`, the losses with `layers`; either may be 1), with the
/// balanced router's sort storage as CUB sizes it on this GPU.
inline int64_t routerScratchBytes(int64_t tokens, int64_t E, int64_t k,
                                  int64_t layers) {
  int64_t sortBytes = tokens > 0 && E > 0
                          ? static_cast<int64_t>(
                                detail::balancedSortBytes(tokens * E))
                          : 0;
  return routerScratchBytes(tokens, E, k, layers, sortBytes);
}

/// gates [tokens, k] and experts [tokens, k] of logits [tokens, E], routed
/// for training as `mode` defines (see the file comment).
template <class T>
void router(const Context &ctx, const T *logits, int64_t tokens, int64_t E,
            int64_t k, Routing mode, T *gates, int64_t *experts) {
  using namespace detail;
  if (tokens <= 0)
    return;
  routerCheckShape("router", E, k);
  const int W = routerGroupWidth(E);
  const int e = static_cast<int>(E), kk = static_cast<int>(k);
  switch (mode) {
  case Routing::AuxLoss:
  case Routing::None:
    routeTopK(ctx, logits, tokens, e, kk, W, gates, experts);
    return;
  case Routing::Sinkhorn:
    routeSinkhorn(ctx, logits, tokens, e, kk, W, gates, experts);
    return;
  case Routing::Balanced:
    routeBalanced(ctx, logits, tokens, e, kk, gates, experts);
    return;
  }
}

/// dLogits [tokens, E] (overwritten) from dGates [tokens, k] for the gates
/// `router` computed with `experts`.
template <class T>
void routerGrad(const Context &ctx, const T *logits, const int64_t *experts,
                const T *dGates, int64_t tokens, int64_t E, int64_t k,
                Routing mode, T *dLogits) {
  using namespace detail;
  if (tokens <= 0)
    return;
  routerCheckShape("routerGrad", E, k);
  const int W = routerGroupWidth(E);
  routerGradKernel<T><<<routerGroupBlocks(tokens, W), kRouterThreads, 0,
                        ctx.stream>>>(
      logits, experts, dGates, tokens, static_cast<int>(E),
      static_cast<int>(k), W, static_cast<int>(mode), dLogits);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_ROUTER_CUH
