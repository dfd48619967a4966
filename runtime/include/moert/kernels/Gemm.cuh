//===- Gemm.cuh - Row-major GEMMs on cuBLAS ---------------------*- CUDA -*-===//
//
// Every matrix product of a compiled step goes through these wrappers:
//
//   C[m, n] = alpha * op(A) * op(B) + beta * C      (row-major)
//
// where op(A) is [m, k] (A stored [m, k], or [k, m] when transA), op(B) is
// [k, n] (B stored [k, n], or [n, k] when transB), and lda/ldb/ldc are the
// row strides in elements. Inputs are fp32 or bf16; accumulation is always
// fp32 (CUBLAS_COMPUTE_32F: no TF32, so fp32 mode matches the reference);
// C may be fp32 or bf16. cuBLAS is column-major, so each call computes
// C^T = op(B)^T op(A)^T.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_GEMM_CUH
#define MOERT_KERNELS_GEMM_CUH

#include "moert/kernels/Common.cuh"

namespace moert::kernels {

template <class T> constexpr cudaDataType_t dataType();
template <> constexpr cudaDataType_t dataType<float>() { return CUDA_R_32F; }
template <> constexpr cudaDataType_t dataType<bf16>() { return CUDA_R_16BF; }

inline cublasOperation_t op(bool trans) {
  return trans ? CUBLAS_OP_T : CUBLAS_OP_N;
}

/// One GEMM (see the file comment).
template <class TA, class TC>
void gemm(const Context &ctx, bool transA, bool transB, int64_t m, int64_t n,
          int64_t k, float alpha, const TA *A, int64_t lda, const TA *B,
          int64_t ldb, float beta, TC *C, int64_t ldc) {
  if (m == 0 || n == 0)
    return;
  MOERT_CUBLAS_CHECK(cublasGemmEx(
      ctx.blas, op(transB), op(transA), static_cast<int>(n),
      static_cast<int>(m), static_cast<int>(k), &alpha, B, dataType<TA>(),
      static_cast<int>(ldb), A, dataType<TA>(), static_cast<int>(lda), &beta,
      C, dataType<TC>(), static_cast<int>(ldc), CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT));
}

/// `batch` GEMMs whose operands are `strideA/B/C` elements apart.
template <class TA, class TC>
void gemmStridedBatched(const Context &ctx, bool transA, bool transB,
                        int64_t m, int64_t n, int64_t k, float alpha,
                        const TA *A, int64_t lda, int64_t strideA,
                        const TA *B, int64_t ldb, int64_t strideB, float beta,
                        TC *C, int64_t ldc, int64_t strideC, int64_t batch) {
  if (m == 0 || n == 0 || batch == 0)
    return;
  MOERT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      ctx.blas, op(transB), op(transA), static_cast<int>(n),
      static_cast<int>(m), static_cast<int>(k), &alpha, B, dataType<TA>(),
      static_cast<int>(ldb), strideB, A, dataType<TA>(),
      static_cast<int>(lda), strideA, &beta, C, dataType<TC>(),
      static_cast<int>(ldc), strideC, static_cast<int>(batch),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/// `batch` GEMMs with operands given by device arrays of pointers.
template <class TA, class TC>
void gemmBatched(const Context &ctx, bool transA, bool transB, int64_t m,
                 int64_t n, int64_t k, float alpha, const TA *const *A,
                 int64_t lda, const TA *const *B, int64_t ldb, float beta,
                 TC *const *C, int64_t ldc, int64_t batch) {
  if (m == 0 || n == 0 || batch == 0)
    return;
  MOERT_CUBLAS_CHECK(cublasGemmBatchedEx(
      ctx.blas, op(transB), op(transA), static_cast<int>(n),
      static_cast<int>(m), static_cast<int>(k), &alpha,
      reinterpret_cast<const void *const *>(B), dataType<TA>(),
      static_cast<int>(ldb), reinterpret_cast<const void *const *>(A),
      dataType<TA>(), static_cast<int>(lda), &beta,
      reinterpret_cast<void *const *>(C), dataType<TC>(),
      static_cast<int>(ldc), static_cast<int>(batch), CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT));
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_GEMM_CUH
