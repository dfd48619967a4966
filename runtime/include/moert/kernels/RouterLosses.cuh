//===- RouterLosses.cuh - The router losses --------------------*- CUDA -*-===//
//
// Hugging Face's Mixtral load-balancing loss (moe.load_balancing_loss and its
// gradient) and the router z-loss (moe.router_z_loss and its gradient). The
// losses concatenate all layers' tokens (n = layers · tokens rows);
// per-block partial sums go to scratch and one block reduces them in a fixed
// order, so they are deterministic (no float atomics). Gradients overwrite
// their outputs.
//
// Scratch: per-block partials (P = layers · ceil(T/1024)): [P·E] f64,
// [P·E] i32, [P] f64, and [E] f64.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_ROUTER_LOSSES_CUH
#define MOERT_KERNELS_ROUTER_LOSSES_CUH

#include "moert/kernels/RouterCommon.cuh"

namespace moert::kernels {

namespace detail {

/// Deterministic sum over a block in fp64; every thread gets it. `shared`
/// holds 32 doubles.
__device__ inline double routerBlockSumDouble(double v, double *shared) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(kRouterFullMask, v, o);
  __syncthreads();
  if (lane == 0)
    shared[warp] = v;
  __syncthreads();
  int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? shared[lane] : 0.0;
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(kRouterFullMask, v, o);
  return v;
}

/// Block (b, l) of layer layerBase + l: over its tokens
/// [b·1024, (b+1)·1024), per expert the sum of the softmax and the number of
/// top-k choices, into slot (layerBase + l)·gridDim.x + b of the partials.
template <class T>
__global__ void loadBalancingPartialKernel(RouterLayers<const T *> logits,
                                           int layerBase, int64_t tokens,
                                           int E, int k, int W,
                                           double *probPartial,
                                           int *countPartial) {
  // groups·E <= 512: E <= W when E <= 32, else W = 32 and 8 groups.
  __shared__ double sharedProb[512];
  __shared__ int sharedCount[512];
  const T *x = logits.p[blockIdx.y];
  int g = threadIdx.x & (W - 1), group = threadIdx.x / W;
  int groups = blockDim.x / W;
  int64_t first = blockIdx.x * kRouterLossTokensPerBlock;
  int64_t last = min(tokens, first + kRouterLossTokensPerBlock);
  double prob[2] = {0.0, 0.0};
  int count[2] = {0, 0};
  MOERT_ROUTER_FOR_TOKENS(t, first + group, groups, last) {
    bool ok = t < last;
    RouterRow r = routerLoadRow(x, ok ? t : 0, ok, E, W, g);
    float p[2];
    routerSoftmax(r, W, p);
    int rank[2];
    float top;
    routerTopK(r.x, r, k, W, rank, top);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      prob[i] += p[i];
      count[i] += rank[i] >= 0;
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    int e = g + i * W;
    if (e < E) {
      sharedProb[group * E + e] = prob[i];
      sharedCount[group * E + e] = count[i];
    }
  }
  __syncthreads();
  if (threadIdx.x < E) {
    double sum = 0.0;
    int n = 0;
    for (int b = 0; b < groups; ++b) {
      sum += sharedProb[b * E + threadIdx.x];
      n += sharedCount[b * E + threadIdx.x];
    }
    int64_t slot =
        (int64_t(layerBase + blockIdx.y) * gridDim.x + blockIdx.x) * E +
        threadIdx.x;
    probPartial[slot] = sum;
    countPartial[slot] = n;
  }
}

/// One block (1024 threads): fraction[e] = count[e] / rows and
/// probability[e] = prob[e] / rows over all partials. Writes the loss
/// E · sum_e fraction·probability, or (for the gradient) the centred
/// fractions fraction[e] - mean(fraction).
__global__ void loadBalancingReduceKernel(const double *probPartial,
                                          const int *countPartial,
                                          int64_t partials, int E,
                                          double rows, float *loss,
                                          double *centred) {
  __shared__ double sums[1024];
  __shared__ long long counts[1024];
  __shared__ double fraction[kRouterMaxExperts], probability[kRouterMaxExperts];
  const int tid = threadIdx.x, G = blockDim.x / E;
  if (tid < G * E) {
    int e = tid % E, g = tid / E;
    double s = 0.0;
    long long c = 0;
    for (int64_t b = g; b < partials; b += G) {
      s += probPartial[b * E + e];
      c += countPartial[b * E + e];
    }
    sums[tid] = s;
    counts[tid] = c;
  }
  __syncthreads();
  if (tid < E) {
    double s = 0.0;
    long long c = 0;
    for (int g = 0; g < G; ++g) {
      s += sums[g * E + tid];
      c += counts[g * E + tid];
    }
    fraction[tid] = static_cast<double>(c) / rows;
    probability[tid] = s / rows;
  }
  __syncthreads();
  if (tid == 0) {
    if (loss) {
      double total = 0.0;
      for (int e = 0; e < E; ++e)
        total += fraction[e] * probability[e];
      *loss = static_cast<float>(total * E);
    }
    if (centred) {
      double mean = 0.0;
      for (int e = 0; e < E; ++e)
        mean += fraction[e];
      mean /= E;
      for (int e = 0; e < E; ++e)
        centred[e] = fraction[e] - mean;
    }
  }
}

/// d/dlogits of scale·loss = coef · p · (f - sum p·f), coef = scale·E/rows,
/// with f centred (the same in exact arithmetic, since sum p = 1; in fp32 it
/// keeps the small differences of fractions exact).
template <class T>
__global__ void loadBalancingGradKernel(RouterLayers<const T *> logits,
                                        RouterLayers<T *> dLogits,
                                        int64_t tokens, int E, int W,
                                        const double *centred, float coef) {
  const T *x = logits.p[blockIdx.y];
  T *dx = dLogits.p[blockIdx.y];
  int g = threadIdx.x & (W - 1);
  int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  int64_t groups = int64_t(gridDim.x) * blockDim.x / W;
  float f[2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
    f[i] = g + i * W < E ? static_cast<float>(centred[g + i * W]) : 0.0f;
  MOERT_ROUTER_FOR_TOKENS(t, id / W, groups, tokens) {
    bool ok = t < tokens;
    RouterRow r = routerLoadRow(x, ok ? t : 0, ok, E, W, g);
    float p[2];
    routerSoftmax(r, W, p);
    float inner = routerGroupSum(p[0] * f[0] + p[1] * f[1], W);
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (r.valid[i])
        dx[t * E + r.e[i]] = fromFloat<T>(coef * p[i] * (f[i] - inner));
  }
}

/// Block (b, l): sum of logsumexp² over its tokens into slot
/// (layerBase + l)·gridDim.x + b.
template <class T>
__global__ void zLossPartialKernel(RouterLayers<const T *> logits,
                                   int layerBase, int64_t tokens, int E,
                                   int W, double *partial) {
  __shared__ double sharedZ[kRouterThreads];
  const T *x = logits.p[blockIdx.y];
  int g = threadIdx.x & (W - 1), group = threadIdx.x / W;
  int groups = blockDim.x / W;
  int64_t first = blockIdx.x * kRouterLossTokensPerBlock;
  int64_t last = min(tokens, first + kRouterLossTokensPerBlock);
  double sum = 0.0;
  MOERT_ROUTER_FOR_TOKENS(t, first + group, groups, last) {
    bool ok = t < last;
    RouterRow r = routerLoadRow(x, ok ? t : 0, ok, E, W, g);
    float z = routerLogSumExp(r, W);
    if (ok)
      sum += static_cast<double>(z) * z;
  }
  if (g == 0)
    sharedZ[group] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int b = 0; b < groups; ++b)
      total += sharedZ[b];
    partial[int64_t(layerBase + blockIdx.y) * gridDim.x + blockIdx.x] = total;
  }
}

/// One block: loss = sum of the partials / rows.
__global__ void zLossReduceKernel(const double *partial, int64_t partials,
                                  double rows, float *loss) {
  __shared__ double shared[32];
  double s = 0.0;
  for (int64_t b = threadIdx.x; b < partials; b += blockDim.x)
    s += partial[b];
  s = routerBlockSumDouble(s, shared);
  if (threadIdx.x == 0)
    *loss = static_cast<float>(s / rows);
}

/// d/dlogits of scale·zloss = coef · z · p, coef = 2·scale/rows.
template <class T>
__global__ void zLossGradKernel(RouterLayers<const T *> logits,
                                RouterLayers<T *> dLogits, int64_t tokens,
                                int E, int W, float coef) {
  const T *x = logits.p[blockIdx.y];
  T *dx = dLogits.p[blockIdx.y];
  int g = threadIdx.x & (W - 1);
  int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  int64_t groups = int64_t(gridDim.x) * blockDim.x / W;
  MOERT_ROUTER_FOR_TOKENS(t, id / W, groups, tokens) {
    bool ok = t < tokens;
    RouterRow r = routerLoadRow(x, ok ? t : 0, ok, E, W, g);
    float z = routerLogSumExp(r, W);
    float p[2];
    routerSoftmax(r, W, p);
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (r.valid[i])
        dx[t * E + r.e[i]] = fromFloat<T>(coef * z * p[i]);
  }
}

struct RouterLossScratch {
  double *probPartial;
  int *countPartial;
  double *zPartial;
  double *centred;
};

inline RouterLossScratch lossScratch(const Context &ctx, int64_t layers,
                                     int64_t tokens, int64_t E) {
  int64_t partials = layers * routerLossBlocks(tokens), offset = 0;
  RouterLossScratch s;
  s.probPartial = scratchAt<double>(ctx, offset, partials * E);
  s.countPartial = scratchAt<int>(ctx, offset, partials * E);
  s.zPartial = scratchAt<double>(ctx, offset, partials);
  s.centred = scratchAt<double>(ctx, offset, E);
  return s;
}

/// Launches loadBalancingPartialKernel over `layers` layers' logits (host
/// array of device pointers, each [tokens, E]) into `s`'s partials; returns
/// their number per expert (layers · routerLossBlocks(tokens)). The
/// load-balancing loss, its gradient and the statistics of a partitioned
/// step (ExpertParallel.cuh) all reduce these partials.
template <class T>
int64_t launchLoadBalancingPartials(const Context &ctx,
                                    const T *const *logits, int64_t layers,
                                    int64_t tokens, int64_t E, int64_t k,
                                    const RouterLossScratch &s) {
  const int W = routerGroupWidth(E);
  const int64_t blocks = routerLossBlocks(tokens);
  forLayerChunks(logits, layers, [&](int first, int count, auto chunk) {
    loadBalancingPartialKernel<T>
        <<<dim3(static_cast<unsigned>(blocks), count), kRouterThreads, 0,
           ctx.stream>>>(chunk, first, tokens, static_cast<int>(E),
                         static_cast<int>(k), W, s.probPartial,
                         s.countPartial);
    MOERT_CUDA_CHECK(cudaGetLastError());
  });
  return layers * blocks;
}

} // namespace detail

/// Hugging Face's Mixtral load-balancing loss over `layers` layers' logits
/// (host array of device pointers, each [tokens, E]), concatenated over
/// tokens: E · sum_e fraction[e] · probability[e], where fraction[e] is the
/// number of top-k choices of e over n = layers·tokens (so it sums to k) and
/// probability[e] the mean softmax. Writes the device scalar `loss`.
template <class T>
void loadBalancingLoss(const Context &ctx, const T *const *logits,
                       int64_t layers, int64_t tokens, int64_t E, int64_t k,
                       float *loss) {
  using namespace detail;
  routerCheckLayers("loadBalancingLoss", layers, tokens, E);
  routerCheckShape("loadBalancingLoss", E, k);
  if (tokens <= 0) {
    MOERT_CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(float), ctx.stream));
    return;
  }
  RouterLossScratch s = lossScratch(ctx, layers, tokens, E);
  const int64_t partials =
      launchLoadBalancingPartials(ctx, logits, layers, tokens, E, k, s);
  loadBalancingReduceKernel<<<1, 1024, 0, ctx.stream>>>(
      s.probPartial, s.countPartial, partials, static_cast<int>(E),
      static_cast<double>(layers * tokens), loss, nullptr);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// scale · d loss / d logits for each layer (host array of device pointers,
/// overwritten); the top-k selection is not differentiated.
template <class T>
void loadBalancingLossGrad(const Context &ctx, const T *const *logits,
                           int64_t layers, int64_t tokens, int64_t E,
                           int64_t k, double scale, T *const *dLogits) {
  using namespace detail;
  routerCheckLayers("loadBalancingLossGrad", layers, tokens, E);
  routerCheckShape("loadBalancingLossGrad", E, k);
  if (tokens <= 0)
    return;
  RouterLossScratch s = lossScratch(ctx, layers, tokens, E);
  const int W = routerGroupWidth(E);
  const double rows = static_cast<double>(layers * tokens);
  const int64_t partials =
      launchLoadBalancingPartials(ctx, logits, layers, tokens, E, k, s);
  loadBalancingReduceKernel<<<1, 1024, 0, ctx.stream>>>(
      s.probPartial, s.countPartial, partials, static_cast<int>(E), rows,
      nullptr, s.centred);
  MOERT_CUDA_CHECK(cudaGetLastError());
  const float coef = static_cast<float>(scale * static_cast<double>(E) / rows);
  forLayerChunks(logits, layers, [&](int first, int count, auto chunk) {
    RouterLayers<T *> out{};
    for (int i = 0; i < count; ++i)
      out.p[i] = dLogits[first + i];
    loadBalancingGradKernel<T>
        <<<dim3(routerGroupBlocks(tokens, W), count), kRouterThreads, 0,
           ctx.stream>>>(chunk, out, tokens, static_cast<int>(E), W,
                         s.centred, coef);
    MOERT_CUDA_CHECK(cudaGetLastError());
  });
}

/// Router z-loss: the mean over all tokens of all layers of
/// logsumexp(logits)². Writes the device scalar `loss`.
template <class T>
void routerZLoss(const Context &ctx, const T *const *logits, int64_t layers,
                 int64_t tokens, int64_t E, float *loss) {
  using namespace detail;
  routerCheckLayers("routerZLoss", layers, tokens, E);
  if (tokens <= 0) {
    MOERT_CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(float), ctx.stream));
    return;
  }
  RouterLossScratch s = lossScratch(ctx, layers, tokens, E);
  const int W = routerGroupWidth(E);
  const int64_t blocks = routerLossBlocks(tokens);
  forLayerChunks(logits, layers, [&](int first, int count, auto chunk) {
    zLossPartialKernel<T><<<dim3(static_cast<unsigned>(blocks), count),
                            kRouterThreads, 0, ctx.stream>>>(
        chunk, first, tokens, static_cast<int>(E), W, s.zPartial);
    MOERT_CUDA_CHECK(cudaGetLastError());
  });
  zLossReduceKernel<<<1, 256, 0, ctx.stream>>>(
      s.zPartial, layers * blocks, static_cast<double>(layers * tokens),
      loss);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// scale · d zloss / d logits = scale · 2 · z · softmax / n for each layer
/// (overwritten).
template <class T>
void routerZLossGrad(const Context &ctx, const T *const *logits,
                     int64_t layers, int64_t tokens, int64_t E, double scale,
                     T *const *dLogits) {
  using namespace detail;
  routerCheckLayers("routerZLossGrad", layers, tokens, E);
  if (tokens <= 0)
    return;
  const int W = routerGroupWidth(E);
  const float coef = static_cast<float>(
      2.0 * scale / static_cast<double>(layers * tokens));
  forLayerChunks(logits, layers, [&](int first, int count, auto chunk) {
    RouterLayers<T *> out{};
    for (int i = 0; i < count; ++i)
      out.p[i] = dLogits[first + i];
    zLossGradKernel<T><<<dim3(routerGroupBlocks(tokens, W), count),
                         kRouterThreads, 0, ctx.stream>>>(
        chunk, out, tokens, static_cast<int>(E), W, coef);
    MOERT_CUDA_CHECK(cudaGetLastError());
  });
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_ROUTER_LOSSES_CUH
