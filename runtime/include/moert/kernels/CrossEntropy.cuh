//===- CrossEntropy.cuh - lm head fused with cross-entropy ------*- CUDA -*-===//
//
// moe.lm_head_cross_entropy: next-token cross-entropy of logits = h · Wᵀ
// ([B, S, V]); position t of a sequence predicts labels[t + 1], the last
// position and labels equal to ignore_index do not count, the mean is over
// the counted targets (0 when none). The logits exist only for a chunk of
// rows at a time, in fp32 ([chunk, V] in scratch): per chunk one GEMM, then
// one block per row computes logsumexp and the target's logit (forward), or
// softmax − onehot scaled by scale/count in place (backward), followed by
// the two GEMMs of the gradient. dW accumulates over chunks in fp32. A
// chunk's fp32 logits take at most 512 MiB (4096 rows of a 32000 vocabulary).
// The backward can also produce the loss (moe.lm_head_cross_entropy_with_grad:
// the logits are then computed once for both).
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_CROSSENTROPY_CUH
#define MOERT_KERNELS_CROSSENTROPY_CUH

#include "moert/kernels/Gemm.cuh"

namespace moert::kernels {

namespace detail {
/// The target of row r (b, t): labels[b, t + 1], or -1 when it does not
/// count.
__device__ inline int64_t targetOf(const int64_t *labels, int64_t row,
                                   int64_t S, int64_t V, int64_t ignoreIndex) {
  int64_t t = row % S;
  if (t + 1 >= S)
    return -1;
  int64_t target = labels[row + 1];
  if (target == ignoreIndex || target < 0 || target >= V)
    return -1;
  return target;
}

__global__ void countTargetsKernel(const int64_t *labels, int64_t rows,
                                   int64_t S, int64_t V, int64_t ignoreIndex,
                                   float *count) {
  __shared__ float shared[32];
  float c = 0.0f;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x)
    c += targetOf(labels, r, S, V, ignoreIndex) >= 0 ? 1.0f : 0.0f;
  c = blockSum(c, shared);
  if (threadIdx.x == 0)
    *count = c;
}

/// rowLoss[r] = logsumexp(logits[r]) − logits[r, target] (0 if no target).
__global__ void rowLossKernel(const float *logits, const int64_t *labels,
                              int64_t firstRow, int64_t S, int64_t V,
                              int64_t ignoreIndex, float *rowLoss) {
  __shared__ float shared[32];
  int64_t row = firstRow + blockIdx.x;
  const float *z = logits + blockIdx.x * V;
  int64_t target = targetOf(labels, row, S, V, ignoreIndex);
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
    m = fmaxf(m, z[v]);
  m = blockMax(m, shared);
  float sum = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
    sum += __expf(z[v] - m);
  sum = blockSum(sum, shared);
  if (threadIdx.x == 0)
    rowLoss[row] = target < 0 ? 0.0f : (m + logf(sum)) - z[target];
}

/// loss = Σ rowLoss / count, one block, fixed order.
__global__ void meanLossKernel(const float *rowLoss, int64_t rows,
                               const float *count, float *loss) {
  __shared__ float shared[32];
  float s = 0.0f;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x)
    s += rowLoss[r];
  s = blockSum(s, shared);
  if (threadIdx.x == 0)
    *loss = *count > 0.0f ? s / *count : 0.0f;
}

/// dLogits[r] = (softmax(logits[r]) − onehot(target)) · scale / count, in T,
/// and, unless rowLoss is null, rowLoss[r] as rowLossKernel computes it.
template <class T>
__global__ void logitsGradKernel(const float *logits, const int64_t *labels,
                                 int64_t firstRow, int64_t S, int64_t V,
                                 int64_t ignoreIndex, float scale,
                                 const float *count, T *dLogits,
                                 float *rowLoss) {
  __shared__ float shared[32];
  int64_t row = firstRow + blockIdx.x;
  const float *z = logits + blockIdx.x * V;
  T *d = dLogits + blockIdx.x * V;
  int64_t target = targetOf(labels, row, S, V, ignoreIndex);
  if (target < 0) {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
      d[v] = fromFloat<T>(0.0f);
    if (rowLoss && threadIdx.x == 0)
      rowLoss[row] = 0.0f;
    return;
  }
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
    m = fmaxf(m, z[v]);
  m = blockMax(m, shared);
  float sum = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
    sum += __expf(z[v] - m);
  sum = blockSum(sum, shared);
  if (rowLoss && threadIdx.x == 0)
    rowLoss[row] = (m + logf(sum)) - z[target];
  float factor = scale / *count / sum;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    float g = __expf(z[v] - m) * factor;
    if (v == target)
      g -= scale / *count;
    d[v] = fromFloat<T>(g);
  }
}
} // namespace detail

/// loss (device fp32 scalar) of h [rows = B·S, H] against W [V, H]; the
/// sum over targets is divided by `targetCount` (a device fp32 scalar: the
/// global batch's count in a partitioned step) when given, else by the
/// number of targets in `labels`.
template <class T>
void lmHeadCrossEntropy(const Context &ctx, const T *h, const T *w,
                        const int64_t *labels, int64_t B, int64_t S,
                        int64_t H, int64_t V, int64_t ignoreIndex,
                        float *loss, const float *targetCount = nullptr) {
  int64_t rows = B * S, offset = 0;
  int64_t chunk = detail::crossEntropyChunk(rows, V);
  float *logits = scratchAt<float>(ctx, offset, chunk * V);
  scratchAt<T>(ctx, offset, chunk * V);
  float *rowLoss = scratchAt<float>(ctx, offset, rows);
  float *localCount = scratchAt<float>(ctx, offset, 1);
  const float *count = targetCount ? targetCount : localCount;
  if (!targetCount)
    detail::countTargetsKernel<<<1, 1024, 0, ctx.stream>>>(
        labels, rows, S, V, ignoreIndex, localCount);
  for (int64_t first = 0; first < rows; first += chunk) {
    int64_t n = rows - first < chunk ? rows - first : chunk;
    gemm<T, float>(ctx, false, true, n, V, H, 1.0f, h + first * H, H, w, H,
                   0.0f, logits, V);
    detail::rowLossKernel<<<n, 512, 0, ctx.stream>>>(
        logits, labels, first, S, V, ignoreIndex, rowLoss);
  }
  detail::meanLossKernel<<<1, 1024, 0, ctx.stream>>>(rowLoss, rows, count,
                                                     loss);
}

/// dh (overwrite) and dW (overwrite, T or fp32) of scale × the loss; with a
/// `loss` pointer also the loss (device fp32 scalar), from the same logits;
/// `targetCount` as lmHeadCrossEntropy's.
template <class T, class TW>
void lmHeadCrossEntropyGrad(const Context &ctx, const T *h, const T *w,
                            const int64_t *labels, int64_t B, int64_t S,
                            int64_t H, int64_t V, int64_t ignoreIndex,
                            float scale, T *dh, TW *dw, float *loss = nullptr,
                            const float *targetCount = nullptr) {
  int64_t rows = B * S, offset = 0;
  int64_t chunk = detail::crossEntropyChunk(rows, V);
  float *logits = scratchAt<float>(ctx, offset, chunk * V);
  T *dLogits = scratchAt<T>(ctx, offset, chunk * V);
  float *rowLoss = scratchAt<float>(ctx, offset, rows);
  float *localCount = scratchAt<float>(ctx, offset, 1);
  const float *count = targetCount ? targetCount : localCount;
  float *dwAccumulator = nullptr;
  if constexpr (sizeof(TW) != 4)
    dwAccumulator = scratchAt<float>(ctx, offset, V * H);
  if (!targetCount)
    detail::countTargetsKernel<<<1, 1024, 0, ctx.stream>>>(
        labels, rows, S, V, ignoreIndex, localCount);
  for (int64_t first = 0; first < rows; first += chunk) {
    int64_t n = rows - first < chunk ? rows - first : chunk;
    gemm<T, float>(ctx, false, true, n, V, H, 1.0f, h + first * H, H, w, H,
                   0.0f, logits, V);
    detail::logitsGradKernel<T><<<n, 512, 0, ctx.stream>>>(
        logits, labels, first, S, V, ignoreIndex, scale, count, dLogits,
        loss ? rowLoss : nullptr);
    gemm<T, T>(ctx, false, false, n, H, V, 1.0f, dLogits, V, w, H, 0.0f,
               dh + first * H, H);
    float beta = first == 0 ? 0.0f : 1.0f;
    if constexpr (sizeof(TW) == 4)
      gemm<T, float>(ctx, true, false, V, H, n, 1.0f, dLogits, V,
                     h + first * H, H, beta, reinterpret_cast<float *>(dw), H);
    else
      gemm<T, float>(ctx, true, false, V, H, n, 1.0f, dLogits, V,
                     h + first * H, H, beta, dwAccumulator, H);
  }
  if constexpr (sizeof(TW) != 4)
    castFromFloat<<<blocksFor(V * H), 256, 0, ctx.stream>>>(
        dwAccumulator, V * H, dw);
  if (loss)
    detail::meanLossKernel<<<1, 1024, 0, ctx.stream>>>(rowLoss, rows, count,
                                                       loss);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_CROSSENTROPY_CUH
