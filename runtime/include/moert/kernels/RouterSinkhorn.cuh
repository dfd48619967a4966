//===- RouterSinkhorn.cuh - Sinkhorn routing -------------------*- CUDA -*-===//
//
// Megatron-Core's Sinkhorn routing: cost = exp(logits) in fp64 (scratch);
// one 1024-thread block alternates the row and column scalings d0, d1 in
// fp64 until the mean change of d1 is <= 1e-4 (at most 10001 sweeps), then a
// per-token kernel takes the top-k of float(d1·cost·d0) and gates with the
// softmax (the sigmoid when k = 1), not renormalised. fp64 here so that the
// number of sweeps, which decides the choice, is the oracle's.
//
// Scratch: cost [T·E] f64, d0 [T] f64, d1 [E] f64.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_ROUTER_SINKHORN_CUH
#define MOERT_KERNELS_ROUTER_SINKHORN_CUH

#include "moert/kernels/RouterCommon.cuh"

namespace moert::kernels {

namespace detail {

constexpr double kSinkhornTolerance = 1e-4;
constexpr double kSinkhornEpsilon = 1e-8;
constexpr int kSinkhornMaxIteration = 10000;
constexpr int kSinkhornThreads = 1024;

template <class T>
__global__ void sinkhornCostKernel(const T *logits, int64_t n, double *cost) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    cost[i] = exp(static_cast<double>(toFloat(logits[i])));
}

/// One block of kSinkhornThreads: the scalings d0 [T] (scratch) and d1 [E].
/// d0[t] = (1/T) / (sum_e d1[e] cost[t,e] + eps);
/// d1[e] = (1/E) / (sum_t d0[t] cost[t,e] + eps), repeated while the mean
/// |d1_old - d1| > tolerance (at most iterations 0..kSinkhornMaxIteration).
__global__ void __launch_bounds__(kSinkhornThreads)
    sinkhornScaleKernel(const double *cost, int64_t tokens, int E, double *d0,
                        double *d1Out) {
  __shared__ double d1[kRouterMaxExperts], d1Old[kRouterMaxExperts];
  __shared__ double part[kSinkhornThreads];
  __shared__ int again;
  const int tid = threadIdx.x;
  const int G = blockDim.x / E; // token strides of the column sums
  const double invT = 1.0 / static_cast<double>(tokens);
  const double invE = 1.0 / static_cast<double>(E);
  if (tid < E)
    d1[tid] = d1Old[tid] = 1.0;
  __syncthreads();
  for (int iteration = 0;; ++iteration) {
    // Rows: the sum over experts in order, as the definition writes it.
    for (int64_t t = tid; t < tokens; t += blockDim.x) {
      const double *row = cost + t * E;
      double sum = 0.0;
      for (int e = 0; e < E; ++e)
        sum += d1[e] * row[e];
      d0[t] = invT / (sum + kSinkhornEpsilon);
    }
    __syncthreads();
    // Columns: thread (g, e) sums tokens g, g + G, ...; then by g in order.
    if (tid < G * E) {
      int e = tid % E, g = tid / E;
      double sum = 0.0;
      for (int64_t t = g; t < tokens; t += G)
        sum += d0[t] * cost[t * E + e];
      part[tid] = sum;
    }
    __syncthreads();
    if (tid < E) {
      double sum = 0.0;
      for (int g = 0; g < G; ++g)
        sum += part[g * E + tid];
      d1[tid] = invE / (sum + kSinkhornEpsilon);
    }
    __syncthreads();
    if (tid == 0) {
      double change = 0.0;
      for (int e = 0; e < E; ++e)
        change += fabs(d1Old[e] - d1[e]);
      change /= E;
      for (int e = 0; e < E; ++e)
        d1Old[e] = d1[e];
      again = change > kSinkhornTolerance && iteration < kSinkhornMaxIteration;
    }
    __syncthreads();
    if (!again)
      break;
  }
  if (tid < E)
    d1Out[tid] = d1[tid];
}

/// Experts: top-k of float(d1[e] · cost[t,e] · d0[t]); gates: softmax of the
/// logits there (sigmoid when k = 1), not renormalised.
template <class T>
__global__ void sinkhornSelectKernel(const T *logits, const double *cost,
                                     const double *d0, const double *d1,
                                     int64_t tokens, int E, int k, int W,
                                     T *gates, int64_t *experts) {
  int g = threadIdx.x & (W - 1);
  int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  int64_t groups = int64_t(gridDim.x) * blockDim.x / W;
  MOERT_ROUTER_FOR_TOKENS(t, id / W, groups, tokens) {
    bool ok = t < tokens;
    int64_t row = ok ? t : 0;
    RouterRow r = routerLoadRow(logits, row, ok, E, W, g);
    float score[2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
      score[i] = r.valid[i] ? static_cast<float>(d1[r.e[i]] *
                                                 cost[row * E + r.e[i]] *
                                                 d0[row])
                            : -INFINITY;
    int rank[2];
    float top;
    routerTopK(score, r, k, W, rank, top);
    float gate[2];
    if (k == 1) {
#pragma unroll
      for (int i = 0; i < 2; ++i)
        gate[i] = 1.0f / (1.0f + expf(-r.x[i]));
    } else {
      routerSoftmax(r, W, gate);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (rank[i] >= 0) {
        experts[t * k + rank[i]] = r.e[i];
        gates[t * k + rank[i]] = fromFloat<T>(gate[i]);
      }
  }
}

/// Sinkhorn routing: the cost, the scalings, the selection.
template <class T>
void routeSinkhorn(const Context &ctx, const T *logits, int64_t tokens, int e,
                   int kk, int W, T *gates, int64_t *experts) {
  const int64_t E = e;
  int64_t offset = 0;
  double *cost = scratchAt<double>(ctx, offset, tokens * E);
  double *d0 = scratchAt<double>(ctx, offset, tokens);
  double *d1 = scratchAt<double>(ctx, offset, E);
  sinkhornCostKernel<T><<<blocksFor(tokens * E), 256, 0, ctx.stream>>>(
      logits, tokens * E, cost);
  MOERT_CUDA_CHECK(cudaGetLastError());
  sinkhornScaleKernel<<<1, kSinkhornThreads, 0, ctx.stream>>>(cost, tokens,
                                                              e, d0, d1);
  MOERT_CUDA_CHECK(cudaGetLastError());
  sinkhornSelectKernel<T><<<routerGroupBlocks(tokens, W), kRouterThreads, 0,
                            ctx.stream>>>(logits, cost, d0, d1, tokens, e,
                                          kk, W, gates, experts);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

} // namespace detail

} // namespace moert::kernels

#endif // MOERT_KERNELS_ROUTER_SINKHORN_CUH
