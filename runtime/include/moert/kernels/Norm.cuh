//===- Norm.cuh - RMSNorm forward and backward ------------------*- CUDA -*-===//
//
// moe.rms_norm: y = x · rsqrt(mean(x²) + ε) · w over the last dimension, one
// block per row, statistics in fp32, one rounding on store; addRmsNorm also
// computes and stores x = a + b first (the residual add before a norm).
// moe.rms_norm_grad: dx from the row's statistics recomputed; dw summed over
// rows deterministically: per-block partial sums of kNormRowsPerBlock rows
// into scratch, then one reduction over the partials in block order.
//
// Where a row is a whole number of 16-byte packs (8 bf16 or 4 fp32), the
// pointers are 16-byte aligned and a row fits in 4 packs per thread (hidden
// up to 8192 bf16 or 4096 fp32), the kernels hold the row in registers,
// load and store it 16 bytes at a time, and the gradient keeps its dw
// partials in registers and reduces two rows per block-wide sum; other
// shapes take the element-wise kernels. Both sum in fp32 and round once on
// store; they differ only in the order of a row's sum of squares.
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

/// The packs of 16 bytes each thread holds for rows of `hidden` elements
/// (1, 2 or 4), or 0 where the vector kernels do not apply.
template <class T>
int normPacks(int64_t hidden, std::initializer_list<const void *> pointers) {
  constexpr int kWidth = kPackWidth<T>;
  if (hidden % kWidth != 0 || !aligned16(pointers))
    return 0;
  int64_t perThread = (hidden / kWidth + kNormThreads - 1) / kNormThreads;
  return perThread <= 1 ? 1 : perThread <= 2 ? 2 : perThread <= 4 ? 4 : 0;
}

/// One row per block, held in registers: y = x · rsqrt(mean(x²) + ε) · w;
/// with `b`, x = a + b rounded to T is stored to `sum` first (addRmsNorm).
template <class T, int kPacks, bool kAdd>
__global__ void __launch_bounds__(kNormThreads)
    rmsNormPackedKernel(const T *a, const T *b, const T *w, int64_t hidden,
                        float epsilon, T *sum, T *y) {
  constexpr int kWidth = kPackWidth<T>;
  using P = Pack<T, kWidth>;
  __shared__ float shared[32];
  const int64_t packs = hidden / kWidth, base = blockIdx.x * packs;
  float v[kPacks][kWidth];
  float ss = 0.0f;
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    int64_t j = threadIdx.x + p * kNormThreads;
    if (j >= packs)
      continue;
    P x = reinterpret_cast<const P *>(a)[base + j];
    if constexpr (kAdd) {
      P other = reinterpret_cast<const P *>(b)[base + j];
#pragma unroll
      for (int e = 0; e < kWidth; ++e)
        x.x[e] = fromFloat<T>(toFloat(x.x[e]) + toFloat(other.x[e]));
      reinterpret_cast<P *>(sum)[base + j] = x;
    }
#pragma unroll
    for (int e = 0; e < kWidth; ++e) {
      v[p][e] = toFloat(x.x[e]);
      ss += v[p][e] * v[p][e];
    }
  }
  ss = blockSum(ss, shared);
  float r = rsqrtf(ss / hidden + epsilon);
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    int64_t j = threadIdx.x + p * kNormThreads;
    if (j >= packs)
      continue;
    P weight = reinterpret_cast<const P *>(w)[j], out;
#pragma unroll
    for (int e = 0; e < kWidth; ++e)
      out.x[e] = fromFloat<T>(v[p][e] * r * toFloat(weight.x[e]));
    reinterpret_cast<P *>(y)[base + j] = out;
  }
}

/// The sums of four values over the block; every thread gets them.
/// `shared` holds 32 float4s.
__device__ inline float4 blockSum4(float4 v, float4 *shared) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v.x = warpSum(v.x);
  v.y = warpSum(v.y);
  v.z = warpSum(v.z);
  v.w = warpSum(v.w);
  __syncthreads();
  if (lane == 0)
    shared[warp] = v;
  __syncthreads();
  int warps = (blockDim.x + 31) >> 5;
  float4 s = lane < warps ? shared[lane] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  return make_float4(warpSum(s.x), warpSum(s.y), warpSum(s.z), warpSum(s.w));
}

/// rmsNormGradKernel with each row in registers, two rows per step (one
/// block-wide sum for both rows' statistics) and the block's dw partial in
/// registers until its one store.
template <class T, int kPacks>
__global__ void __launch_bounds__(kNormThreads)
    rmsNormGradPackedKernel(const T *x, const T *w, const T *dy, int64_t rows,
                            int64_t hidden, float epsilon, T *dx,
                            float *partial) {
  constexpr int kWidth = kPackWidth<T>;
  using P = Pack<T, kWidth>;
  __shared__ float4 shared[32];
  const int64_t packs = hidden / kWidth;
  const int64_t first = blockIdx.x * kNormRowsPerBlock;
  const int64_t last = min(rows, first + kNormRowsPerBlock);
  float weight[kPacks][kWidth], dw[kPacks][kWidth];
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    int64_t j = threadIdx.x + p * kNormThreads;
    P wp = j < packs ? reinterpret_cast<const P *>(w)[j] : P{};
#pragma unroll
    for (int e = 0; e < kWidth; ++e) {
      weight[p][e] = j < packs ? toFloat(wp.x[e]) : 0.0f;
      dw[p][e] = 0.0f;
    }
  }
  for (int64_t r0 = first; r0 < last; r0 += 2) {
    const bool second = r0 + 1 < last;
    float xv[2][kPacks][kWidth], d[2][kPacks][kWidth];
    float4 stats = make_float4(0.0f, 0.0f, 0.0f, 0.0f); // ss0 dot0 ss1 dot1
#pragma unroll
    for (int q = 0; q < 2; ++q) {
#pragma unroll
      for (int p = 0; p < kPacks; ++p) {
        int64_t j = threadIdx.x + p * kNormThreads;
        bool live = j < packs && (q == 0 || second);
        P xp = live ? reinterpret_cast<const P *>(x)[(r0 + q) * packs + j]
                    : P{};
        P dp = live ? reinterpret_cast<const P *>(dy)[(r0 + q) * packs + j]
                    : P{};
#pragma unroll
        for (int e = 0; e < kWidth; ++e) {
          xv[q][p][e] = live ? toFloat(xp.x[e]) : 0.0f;
          d[q][p][e] = live ? toFloat(dp.x[e]) : 0.0f;
          float g = d[q][p][e] * weight[p][e];
          if (q == 0) {
            stats.x += xv[q][p][e] * xv[q][p][e];
            stats.y += g * xv[q][p][e];
          } else {
            stats.z += xv[q][p][e] * xv[q][p][e];
            stats.w += g * xv[q][p][e];
          }
        }
      }
    }
    stats = blockSum4(stats, shared);
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      if (q == 1 && !second)
        break;
      float ss = q == 0 ? stats.x : stats.z, dot = q == 0 ? stats.y : stats.w;
      float r = rsqrtf(ss / hidden + epsilon);
      float c = r * r * r * dot / hidden;
#pragma unroll
      for (int p = 0; p < kPacks; ++p) {
        int64_t j = threadIdx.x + p * kNormThreads;
        if (j >= packs)
          continue;
        P out;
#pragma unroll
        for (int e = 0; e < kWidth; ++e) {
          out.x[e] = fromFloat<T>(d[q][p][e] * weight[p][e] * r -
                                  c * xv[q][p][e]);
          dw[p][e] += d[q][p][e] * xv[q][p][e] * r;
        }
        reinterpret_cast<P *>(dx)[(r0 + q) * packs + j] = out;
      }
    }
  }
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    int64_t j = threadIdx.x + p * kNormThreads;
    if (j >= packs)
      continue;
    Pack<float, 4> *row =
        reinterpret_cast<Pack<float, 4> *>(partial + blockIdx.x * hidden);
#pragma unroll
    for (int e = 0; e < kWidth; e += 4)
      row[(j * kWidth + e) / 4] = {{dw[p][e], dw[p][e + 1], dw[p][e + 2],
                                    dw[p][e + 3]}};
  }
}

template <class T>
__global__ void sumPartialsKernel(const float *partial, int64_t blocks,
                                  int64_t hidden, T *out) {
  for (int64_t h = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; h < hidden;
       h += int64_t(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
#pragma unroll 8
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
  switch (detail::normPacks<T>(hidden, {x, w, y})) {
  case 1:
    detail::rmsNormPackedKernel<T, 1, false>
        <<<rows, detail::kNormThreads, 0, ctx.stream>>>(
            x, nullptr, w, hidden, epsilon, nullptr, y);
    break;
  case 2:
    detail::rmsNormPackedKernel<T, 2, false>
        <<<rows, detail::kNormThreads, 0, ctx.stream>>>(
            x, nullptr, w, hidden, epsilon, nullptr, y);
    break;
  case 4:
    detail::rmsNormPackedKernel<T, 4, false>
        <<<rows, detail::kNormThreads, 0, ctx.stream>>>(
            x, nullptr, w, hidden, epsilon, nullptr, y);
    break;
  default:
    detail::rmsNormKernel<<<rows, detail::kNormThreads, 0, ctx.stream>>>(
        x, w, hidden, epsilon, y);
  }
}

/// sum = a + b and y = rmsNorm(sum) · w in one pass (moe.rms_norm of an
/// arith.addf, fused by the printer).
template <class T>
void addRmsNorm(const Context &ctx, const T *a, const T *b, const T *w,
                int64_t rows, int64_t hidden, float epsilon, T *sum, T *y) {
  if (rows == 0)
    return;
  switch (detail::normPacks<T>(hidden, {a, b, w, sum, y})) {
  case 1:
    detail::rmsNormPackedKernel<T, 1, true>
        <<<rows, detail::kNormThreads, 0, ctx.stream>>>(a, b, w, hidden,
                                                         epsilon, sum, y);
    break;
  case 2:
    detail::rmsNormPackedKernel<T, 2, true>
        <<<rows, detail::kNormThreads, 0, ctx.stream>>>(a, b, w, hidden,
                                                         epsilon, sum, y);
    break;
  case 4:
    detail::rmsNormPackedKernel<T, 4, true>
        <<<rows, detail::kNormThreads, 0, ctx.stream>>>(a, b, w, hidden,
                                                         epsilon, sum, y);
    break;
  default:
    detail::addRmsNormKernel<<<rows, detail::kNormThreads, 0, ctx.stream>>>(
        a, b, w, hidden, epsilon, sum, y);
  }
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
    switch (detail::normPacks<T>(hidden, {x, w, dy, dx, partial})) {
    case 1:
      detail::rmsNormGradPackedKernel<T, 1>
          <<<blocks, detail::kNormThreads, 0, ctx.stream>>>(
              x, w, dy, rows, hidden, epsilon, dx, partial);
      break;
    case 2:
      detail::rmsNormGradPackedKernel<T, 2>
          <<<blocks, detail::kNormThreads, 0, ctx.stream>>>(
              x, w, dy, rows, hidden, epsilon, dx, partial);
      break;
    case 4:
      detail::rmsNormGradPackedKernel<T, 4>
          <<<blocks, detail::kNormThreads, 0, ctx.stream>>>(
              x, w, dy, rows, hidden, epsilon, dx, partial);
      break;
    default:
      detail::rmsNormGradKernel<<<blocks, detail::kNormThreads, 0,
                                  ctx.stream>>>(x, w, dy, rows, hidden,
                                                epsilon, dx, partial);
    }
  detail::sumPartialsKernel<<<blocksFor(hidden), 256, 0, ctx.stream>>>(
      partial, blocks, hidden, dw);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_NORM_CUH
