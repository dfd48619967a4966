//===- Linear.cuh - moe.linear and its gradient on cuBLAS -------*- CUDA -*-===//
//
// out[rows, N] = x[rows, K] · W[N, K]ᵀ; the gradient is two GEMMs,
// dx = dOut · W and dW = dOutᵀ · x (summed over all rows by the GEMM).
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_LINEAR_CUH
#define MOERT_KERNELS_LINEAR_CUH

#include "moert/kernels/Gemm.cuh"

namespace moert::kernels {

template <class T>
void linear(const Context &ctx, const T *x, const T *w, int64_t rows,
            int64_t K, int64_t N, T *out) {
  gemm<T, T>(ctx, false, true, rows, N, K, 1.0f, x, K, w, K, 0.0f, out, N);
}

/// dw may be wider than T (fp32 for bf16 compute): the GEMM stores its fp32
/// accumulator in dw's type.
template <class T, class TW>
void linearGrad(const Context &ctx, const T *x, const T *w, const T *dOut,
                int64_t rows, int64_t K, int64_t N, T *dx, TW *dw) {
  gemm<T, T>(ctx, false, false, rows, K, N, 1.0f, dOut, N, w, K, 0.0f, dx, K);
  gemm<T, TW>(ctx, true, false, N, K, rows, 1.0f, dOut, N, x, K, 0.0f, dw, K);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_LINEAR_CUH
