//===- CrossEntropy.cuh - lm head fused with cross-entropy ------*- CUDA -*-===//
//
// moe.lm_head_cross_entropy: next-token cross-entropy of logits = h · Wᵀ
// ([B, S, V]); position t of a sequence predicts labels[t + 1], the last
// position and labels equal to ignore_index do not count, the mean is over
// the counted targets (0 when none). The logits exist only for a chunk of
// rows at a time, in fp32 ([chunk, V] in scratch): per chunk one GEMM, then
// one block per row computes logsumexp and the target's logit (forward), or
// softmax − onehot scaled by scale/count (backward), followed by the two
// GEMMs of the gradient. The backward writes dLogits in T over the fp32
// logits, row r at the start of its fp32 row (leading dimension 4V /
// sizeof(T) elements): a row of at most kLogitsRowInRegisters entries is
// read once into registers, a longer one twice (one online max-and-sum
// pass, then tiles written after all of a tile is read). dW is written
// directly when all rows make one chunk, else accumulated over the chunks
// in fp32 and cast (ScratchBytes.h: crossEntropyChunk). A chunk's fp32
// logits take at most 512 MiB (4096 rows of a 32000 vocabulary), or all
// rows' when they fit in that plus the accumulator they spare (8192 rows
// of 32000 beside a 4096-wide lm head: one 1000 MiB chunk).
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

/// The row's loss, (m + log sum) − z[target], or 0 without a target.
__device__ inline float rowLossOf(float m, float sum, float zTarget,
                                  int64_t target) {
  return target < 0 ? 0.0f : (m + logf(sum)) - zTarget;
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
    rowLoss[row] = rowLossOf(m, sum, target < 0 ? 0.0f : z[target], target);
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

/// Threads of the logits-gradient kernels, and the four-entry groups of a
/// row each of them holds in registers (rows up to kLogitsRowInRegisters
/// entries, V a multiple of 4).
constexpr int kLogitsGradThreads = 512;
constexpr int kLogitsGroupsPerThread = 16;
constexpr int64_t kLogitsRowInRegisters =
    int64_t(kLogitsGradThreads) * kLogitsGroupsPerThread * 4;

/// dLogits[r] = (softmax(logits[r]) − onehot(target)) · scale / count, in T,
/// written over the fp32 row (row r of dLogits starts where logits row r
/// does), and, unless rowLoss is null, rowLoss[r] as rowLossKernel computes
/// it. The row is read once, in 16-byte groups into registers: V a
/// multiple of 4, at most kLogitsRowInRegisters.
template <class T>
__global__ void __launch_bounds__(kLogitsGradThreads, 1)
    logitsGradKernel(float *logits, const int64_t *labels, int64_t firstRow,
                     int64_t S, int64_t V, int64_t ignoreIndex, float scale,
                     const float *count, float *rowLoss) {
  __shared__ float shared[32];
  int64_t row = firstRow + blockIdx.x;
  float *z = logits + blockIdx.x * V;
  T *d = reinterpret_cast<T *>(z);
  // 32-bit indices: V ≤ kLogitsRowInRegisters.
  int target = static_cast<int>(targetOf(labels, row, S, V, ignoreIndex));
  int groups = static_cast<int>(V / 4);
  Vec4 e[kLogitsGroupsPerThread];
  float m = -INFINITY, zTarget = 0.0f;
  if (target >= 0 && threadIdx.x == 0)
    zTarget = z[target];
  // Thread x holds groups x, x + 512, ...: one base address, constant
  // offsets.
  const float *mine = z + 4 * threadIdx.x;
#pragma unroll
  for (int i = 0; i < kLogitsGroupsPerThread; ++i) {
    int g = threadIdx.x + i * kLogitsGradThreads;
    e[i] = target >= 0 && g < groups
               ? load4(mine + 4 * i * kLogitsGradThreads)
               : Vec4{{-INFINITY, -INFINITY, -INFINITY, -INFINITY}};
#pragma unroll
    for (int j = 0; j < 4; ++j)
      m = fmaxf(m, e[i].v[j]);
  }
  // Every read of the row is done once a thread passes the reductions'
  // barriers; the writes below may then overwrite it.
  m = blockMax(m, shared);
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kLogitsGroupsPerThread; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      e[i].v[j] = target >= 0 ? __expf(e[i].v[j] - m) : 0.0f;
      sum += e[i].v[j];
    }
  sum = blockSum(sum, shared);
  if (rowLoss && threadIdx.x == 0)
    rowLoss[row] = rowLossOf(m, sum, zTarget, target);
  float factor = target >= 0 ? scale / *count / sum : 0.0f;
#pragma unroll
  for (int i = 0; i < kLogitsGroupsPerThread; ++i) {
    int g = threadIdx.x + i * kLogitsGradThreads;
    if (g >= groups)
      continue;
#pragma unroll
    for (int j = 0; j < 4; ++j)
      e[i].v[j] = 4 * g + j == target ? e[i].v[j] * factor - scale / *count
                                      : e[i].v[j] * factor;
    store4(d + 4 * g, e[i]);
  }
}

/// logitsGradKernel for the other rows (longer than kLogitsRowInRegisters,
/// or V not a multiple of 4): one online pass for the max and the sum of
/// exponentials, then the row in tiles of blockDim entries, each tile read
/// whole before any of it is written (the writes of a tile land at or
/// before it, never on a later tile).
template <class T>
__global__ void __launch_bounds__(kLogitsGradThreads)
    logitsGradLongKernel(float *logits, const int64_t *labels,
                         int64_t firstRow, int64_t S, int64_t V,
                         int64_t ignoreIndex, float scale, const float *count,
                         float *rowLoss) {
  __shared__ float shared[32];
  int64_t row = firstRow + blockIdx.x;
  float *z = logits + blockIdx.x * V;
  T *d = reinterpret_cast<T *>(z);
  int64_t target = targetOf(labels, row, S, V, ignoreIndex);
  float m = -INFINITY, sum = 0.0f, zTarget = 0.0f;
  if (target >= 0) {
    if (threadIdx.x == 0)
      zTarget = z[target];
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      float x = z[v];
      if (x > m) {
        sum = sum * __expf(m - x) + 1.0f;
        m = x;
      } else {
        sum += __expf(x - m);
      }
    }
  }
  float rowMax = blockMax(m, shared);
  sum = blockSum(m == -INFINITY ? 0.0f : sum * __expf(m - rowMax), shared);
  m = rowMax;
  if (rowLoss && threadIdx.x == 0)
    rowLoss[row] = rowLossOf(m, sum, zTarget, target);
  float factor = target >= 0 ? scale / *count / sum : 0.0f;
  for (int64_t base = 0; base < V; base += blockDim.x) {
    int64_t v = base + threadIdx.x;
    float g = 0.0f;
    if (v < V && target >= 0)
      g = __expf(z[v] - m) * factor - (v == target ? scale / *count : 0.0f);
    __syncthreads();
    if (v < V)
      d[v] = fromFloat<T>(g);
  }
}

/// Launches the logits-gradient kernel for `n` rows of V.
template <class T>
void launchLogitsGrad(const Context &ctx, float *logits, const int64_t *labels,
                      int64_t firstRow, int64_t n, int64_t S, int64_t V,
                      int64_t ignoreIndex, float scale, const float *count,
                      float *rowLoss) {
  if (V <= kLogitsRowInRegisters && V % 4 == 0)
    logitsGradKernel<T><<<n, kLogitsGradThreads, 0, ctx.stream>>>(
        logits, labels, firstRow, S, V, ignoreIndex, scale, count, rowLoss);
  else
    logitsGradLongKernel<T><<<n, kLogitsGradThreads, 0, ctx.stream>>>(
        logits, labels, firstRow, S, V, ignoreIndex, scale, count, rowLoss);
  MOERT_CUDA_CHECK(cudaGetLastError());
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
  int64_t chunk = detail::crossEntropyChunk(rows, H, V, sizeof(T));
  float *logits = scratchAt<float>(ctx, offset, chunk * V);
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
  int64_t chunk = detail::crossEntropyChunk(rows, H, V, sizeof(T));
  float *logits = scratchAt<float>(ctx, offset, chunk * V);
  // dLogits overwrite the logits, each row where its fp32 row starts.
  const T *dLogits = reinterpret_cast<const T *>(logits);
  int64_t ldd = V * 4 / int64_t(sizeof(T));
  float *rowLoss = scratchAt<float>(ctx, offset, rows);
  float *localCount = scratchAt<float>(ctx, offset, 1);
  const float *count = targetCount ? targetCount : localCount;
  // Several chunks of a narrower dW sum in fp32 first (one rounding).
  constexpr bool narrowDw = sizeof(TW) != 4;
  float *dwAccumulator = nullptr;
  if (narrowDw && chunk < rows)
    dwAccumulator = scratchAt<float>(ctx, offset, V * H);
  if (!targetCount)
    detail::countTargetsKernel<<<1, 1024, 0, ctx.stream>>>(
        labels, rows, S, V, ignoreIndex, localCount);
  for (int64_t first = 0; first < rows; first += chunk) {
    int64_t n = rows - first < chunk ? rows - first : chunk;
    gemm<T, float>(ctx, false, true, n, V, H, 1.0f, h + first * H, H, w, H,
                   0.0f, logits, V);
    detail::launchLogitsGrad<T>(ctx, logits, labels, first, n, S, V,
                                ignoreIndex, scale, count,
                                loss ? rowLoss : nullptr);
    gemm<T, T>(ctx, false, false, n, H, V, 1.0f, dLogits, ldd, w, H, 0.0f,
               dh + first * H, H);
    float beta = first == 0 ? 0.0f : 1.0f;
    if (dwAccumulator)
      gemm<T, float>(ctx, true, false, V, H, n, 1.0f, dLogits, ldd,
                     h + first * H, H, beta, dwAccumulator, H);
    else
      gemm<T, TW>(ctx, true, false, V, H, n, 1.0f, dLogits, ldd,
                  h + first * H, H, beta, dw, H);
  }
  if (dwAccumulator)
    castFromFloat<<<blocksFor(V * H), 256, 0, ctx.stream>>>(dwAccumulator,
                                                            V * H, dw);
  if (loss)
    detail::meanLossKernel<<<1, 1024, 0, ctx.stream>>>(rowLoss, rows, count,
                                                       loss);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_CROSSENTROPY_CUH
