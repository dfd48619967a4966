//===- Rotary.cuh - Rotary position embedding -------------------*- CUDA -*-===//
//
// moe.rotary on [B, S, N, D], "rotate half": for i < D/2,
//   y[i] = x[i] c - x[i + D/2] s,   y[i + D/2] = x[i + D/2] c + x[i] s,
// angle = position · θ^(-2i/D) with position = s, frequency and angle in fp32
// (as Hugging Face computes them), cos and sin in fp64. moe.rotary_grad is
// the transposed rotation (the same kernel with the sine negated).
//
// One block per position (b, s): the D/2 cosines and sines of that position
// are computed once into shared memory and serve its N heads, which the
// block's threads rotate 16 bytes at a time where D/2 is a whole number of
// packs (one element at a time otherwise). Each output is the same
// expression of the same fp64 values on either path.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_ROTARY_CUH
#define MOERT_KERNELS_ROTARY_CUH

#include "moert/kernels/Common.cuh"

namespace moert::kernels {

namespace detail {
constexpr int kRotaryThreads = 128;

/// Block (b, s) of a [B, S] grid rotates the N heads of rows [b, s, :, :],
/// kWidth elements of each half at a time (kWidth divides D / 2). The
/// dynamic shared memory holds D / 2 cosines then D / 2 sines (fp64).
template <class T, int kWidth>
__global__ void __launch_bounds__(kRotaryThreads)
    rotaryKernel(const T *x, int64_t S, int64_t N, int64_t D, float theta,
                 float sign, T *y) {
  extern __shared__ double table[];
  using P = Pack<T, kWidth>;
  const int64_t half = D / 2, position = blockIdx.x % S;
  double *cosines = table, *sines = table + half;
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
    float inverseFrequency =
        1.0f / powf(theta, static_cast<float>(2 * j) / static_cast<float>(D));
    double angle = static_cast<double>(static_cast<float>(position) *
                                       inverseFrequency);
    cosines[j] = cos(angle);
    sines[j] = sign * sin(angle);
  }
  __syncthreads();
  const int64_t packsPerHalf = half / kWidth, base = blockIdx.x * N * D;
  for (int64_t q = threadIdx.x; q < N * packsPerHalf; q += blockDim.x) {
    int64_t n = q / packsPerHalf, j0 = (q % packsPerHalf) * kWidth;
    int64_t first = base + n * D + j0, second = first + half;
    P x1 = *reinterpret_cast<const P *>(x + first),
      x2 = *reinterpret_cast<const P *>(x + second), y1, y2;
#pragma unroll
    for (int e = 0; e < kWidth; ++e) {
      double a = toFloat(x1.x[e]), b = toFloat(x2.x[e]);
      double c = cosines[j0 + e], sn = sines[j0 + e];
      y1.x[e] = fromFloat<T>(static_cast<float>(a * c - b * sn));
      y2.x[e] = fromFloat<T>(static_cast<float>(b * c + a * sn));
    }
    *reinterpret_cast<P *>(y + first) = y1;
    *reinterpret_cast<P *>(y + second) = y2;
  }
}

template <class T>
void launchRotary(const Context &ctx, const T *x, int64_t B, int64_t S,
                  int64_t N, int64_t D, float theta, float sign, T *y) {
  if (B * S == 0 || N == 0 || D < 2)
    return;
  constexpr int kWidth = kPackWidth<T>;
  size_t shared = static_cast<size_t>(D / 2) * 2 * sizeof(double);
  if ((D / 2) % kWidth == 0 && aligned16({x, y}))
    rotaryKernel<T, kWidth><<<B * S, kRotaryThreads, shared, ctx.stream>>>(
        x, S, N, D, theta, sign, y);
  else
    rotaryKernel<T, 1><<<B * S, kRotaryThreads, shared, ctx.stream>>>(
        x, S, N, D, theta, sign, y);
}
} // namespace detail

template <class T>
void rotary(const Context &ctx, const T *x, int64_t B, int64_t S, int64_t N,
            int64_t D, float theta, T *y) {
  detail::launchRotary(ctx, x, B, S, N, D, theta, 1.0f, y);
}

template <class T>
void rotaryGrad(const Context &ctx, const T *dy, int64_t B, int64_t S,
                int64_t N, int64_t D, float theta, T *dx) {
  detail::launchRotary(ctx, dy, B, S, N, D, theta, -1.0f, dx);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_ROTARY_CUH
