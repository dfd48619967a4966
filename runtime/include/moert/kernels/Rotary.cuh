//===- Rotary.cuh - Rotary position embedding -------------------*- CUDA -*-===//
//
// moe.rotary on [B, S, N, D], "rotate half": for i < D/2,
//   y[i] = x[i] c - x[i + D/2] s,   y[i + D/2] = x[i + D/2] c + x[i] s,
// angle = position · θ^(-2i/D) with position = s, frequency and angle in fp32
// (as Hugging Face computes them), cos and sin in fp64. moe.rotary_grad is
// the transposed rotation (the same kernel with the sine negated).
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_ROTARY_CUH
#define MOERT_KERNELS_ROTARY_CUH

#include "moert/kernels/Common.cuh"

namespace moert::kernels {

namespace detail {
template <class T>
__global__ void rotaryKernel(const T *x, int64_t B, int64_t S, int64_t N,
                             int64_t D, float theta, float sign, T *y) {
  int64_t half = D / 2, pairs = B * S * N * half;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pairs;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t j = i % half, row = i / half; // row = (b, s, n)
    int64_t s = (row / N) % S;
    float inverseFrequency =
        1.0f / powf(theta, static_cast<float>(2 * j) / static_cast<float>(D));
    double angle = static_cast<double>(static_cast<float>(s) * inverseFrequency);
    double c = cos(angle), sn = sign * sin(angle);
    int64_t base = row * D;
    double x1 = toFloat(x[base + j]), x2 = toFloat(x[base + j + half]);
    y[base + j] = fromFloat<T>(static_cast<float>(x1 * c - x2 * sn));
    y[base + j + half] = fromFloat<T>(static_cast<float>(x2 * c + x1 * sn));
  }
}
} // namespace detail

template <class T>
void rotary(const Context &ctx, const T *x, int64_t B, int64_t S, int64_t N,
            int64_t D, float theta, T *y) {
  detail::rotaryKernel<<<blocksFor(B * S * N * D / 2), 256, 0, ctx.stream>>>(
      x, B, S, N, D, theta, 1.0f, y);
}

template <class T>
void rotaryGrad(const Context &ctx, const T *dy, int64_t B, int64_t S,
                int64_t N, int64_t D, float theta, T *dx) {
  detail::rotaryKernel<<<blocksFor(B * S * N * D / 2), 256, 0, ctx.stream>>>(
      dy, B, S, N, D, theta, -1.0f, dx);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_ROTARY_CUH
