//===- Norm.cuh - RMSNorm forward and backward ------------------*- CUDA -*-===//
//
// moe.rms_norm: y = x · rsqrt(mean(x²) + ε) · w over the last dimension, one
// block per row, statistics in fp32, one rounding on store; addRmsNorm also
// computes and stores x = a + b first (the residual add before a norm).
// moe.rms_norm_grad: dx from the row's statistics recomputed; dw summed over
// rows deterministically: per-block partial sums of `rowsPerBlock` rows into
// scratch, then one reduction over the partials.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_NORM_CUH
#define MOERT_KERNELS_NORM_CUH

#include "moert/kernels/Common.cuh"

namespace moert::kernels {

namespace detail {
constexpr int kNormThreads = 256;

template <class T>
__global__ void rmsNormKernel(const T *x, const T *w, int64_t hidden,
                              float epsilon, T *y) {
  __shared__ float shared[32];
  const T *row = x + blockIdx.x * hidden;
  float sum = 0.0f;
  for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
    float v = toFloat(row[h]);
    sum += v * v;
  }
  sum = blockSum(sum, shared);
  float r = rsqrtf(sum / hidden + epsilon);
  for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x)
    y[blockIdx.x * hidden + h] =
        fromFloat<T>(toFloat(row[h]) * r * toFloat(w[h]));
}

/// sum = a + b (stored, rounded to T), y = rmsNorm(sum) · w, one row per
/// block: the residual add fused into the norm that reads it.
template <class T>
__global__ void addRmsNormKernel(const T *a, const T *b, const T *w,
                                 int64_t hidden, float epsilon, T *sum, T *y) {
  __shared__ float shared[32];
  int64_t base = blockIdx.x * hidden;
  float ss = 0.0f;
  for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
    T s = fromFloat<T>(toFloat(a[base + h]) + toFloat(b[base + h]));
    sum[base + h] = s;
    float v = toFloat(s);
    ss += v * v;
  }
  ss = blockSum(ss, shared);
  float r = rsqrtf(ss / hidden + epsilon);
  // Each thread reads back only the elements it wrote.
  for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x)
    y[base + h] = fromFloat<T>(toFloat(sum[base + h]) * r * toFloat(w[h]));
}

/// Rows [blockIdx.x * rowsPerBlock, ...): dx, and this block's partial dw
/// into partial[blockIdx.x * hidden + h].
template <class T>
__global__ void rmsNormGradKernel(const T *x, const T *w, const T *dy,
                                  int64_t rows, int64_t hidden, float epsilon,
                                  T *dx, float *partial) {
  __shared__ float shared[32];
  int64_t first = blockIdx.x * kNormRowsPerBlock;
  int64_t last = min(rows, first + kNormRowsPerBlock);
  // Each thread owns a strided set of columns and accumulates their partial
  // dw over the block's rows in this block's row of `partial`.
  for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x)
    partial[blockIdx.x * hidden + h] = 0.0f;
  for (int64_t r0 = first; r0 < last; ++r0) {
    const T *xr = x + r0 * hidden, *dyr = dy + r0 * hidden;
    float ss = 0.0f, dot = 0.0f;
    for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
      float xv = toFloat(xr[h]), g = toFloat(dyr[h]) * toFloat(w[h]);
      ss += xv * xv;
      dot += g * xv;
    }
    ss = blockSum(ss, shared);
    dot = blockSum(dot, shared);
    float r = rsqrtf(ss / hidden + epsilon);
    float c = r * r * r * dot / hidden;
    for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
      float xv = toFloat(xr[h]), d = toFloat(dyr[h]);
      dx[r0 * hidden + h] = fromFloat<T>(d * toFloat(w[h]) * r - c * xv);
      partial[blockIdx.x * hidden + h] += d * xv * r;
    }
  }
}

template <class T>
__global__ void sumPartialsKernel(const float *partial, int64_t blocks,
                                  int64_t hidden, T *out) {
  for (int64_t h = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; h < hidden;
       h += int64_t(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int64_t b = 0; b < blocks; ++b)
      sum += partial[b * hidden + h];
    out[h] = fromFloat<T>(sum);
  }
}
} // namespace detail

template <class T>
void rmsNorm(const Context &ctx, const T *x, const T *w, int64_t rows,
             int64_t hidden, float epsilon, T *y) {
  if (rows == 0)
    return;
  detail::rmsNormKernel<<<rows, detail::kNormThreads, 0, ctx.stream>>>(
      x, w, hidden, epsilon, y);
}

/// sum = a + b and y = rmsNorm(sum) · w in one pass (moe.rms_norm of an
/// arith.addf, fused by the printer).
template <class T>
void addRmsNorm(const Context &ctx, const T *a, const T *b, const T *w,
                int64_t rows, int64_t hidden, float epsilon, T *sum, T *y) {
  if (rows == 0)
    return;
  detail::addRmsNormKernel<<<rows, detail::kNormThreads, 0, ctx.stream>>>(
      a, b, w, hidden, epsilon, sum, y);
}

/// dx (overwrite) and dw (overwrite, T or fp32) of y = rmsNorm(x) · w.
template <class T, class TW>
void rmsNormGrad(const Context &ctx, const T *x, const T *w, const T *dy,
                 int64_t rows, int64_t hidden, float epsilon, T *dx, TW *dw) {
  int64_t blocks = (rows + detail::kNormRowsPerBlock - 1) /
                   detail::kNormRowsPerBlock;
  int64_t offset = 0;
  float *partial = scratchAt<float>(ctx, offset, blocks * hidden);
  if (blocks > 0)
    detail::rmsNormGradKernel<<<blocks, detail::kNormThreads, 0,
                                ctx.stream>>>(x, w, dy, rows, hidden, epsilon,
                                              dx, partial);
  detail::sumPartialsKernel<<<blocksFor(hidden), 256, 0, ctx.stream>>>(
      partial, blocks, hidden, dw);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_NORM_CUH
