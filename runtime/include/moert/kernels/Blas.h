//===- Blas.h - The cuBLASLt and cuBLAS state of a Context ------*- C++ -*-===//
//
// The handles, the workspace and the GEMM plan cache that the GEMM wrappers
// of Gemm.cuh use (see there). createBlas/destroyBlas are compiled into the
// runtime library (runtime/src/Blas.cpp); whoever creates a Context (the
// driver, the GPU tests) calls them once.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_BLAS_H
#define MOERT_KERNELS_BLAS_H

#include "moert/kernels/Context.h"

#include <cublasLt.h>

#include <array>
#include <map>

namespace moert::kernels {

/// Default size of the workspace createBlas allocates (NVIDIA's
/// recommendation for Hopper).
constexpr int64_t kBlasWorkspaceBytes = 32ll << 20;

namespace detail {

/// What identifies a GEMM's plan: data types, transposes, m, n, k, lda, ldb,
/// ldc, batch, strideA/B/C, beta != 0, alignment of A, B and C in bytes.
using GemmPlanKey = std::array<int64_t, 18>;

struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool useGemmEx = false; ///< the heuristic found nothing: cublasGemmEx
};

} // namespace detail

/// The BLAS state of a Context (see the file comment).
struct Blas {
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t cublas = nullptr;
  void *workspace = nullptr;
  int64_t workspaceBytes = 0;
  std::map<detail::GemmPlanKey, detail::GemmPlan> plans;
};

/// Creates the handles (on `stream`), the workspace and an empty plan cache.
Blas *createBlas(cudaStream_t stream,
                 int64_t workspaceBytes = kBlasWorkspaceBytes);

/// Waits for the stream, then frees everything createBlas made.
void destroyBlas(Blas *blas);

} // namespace moert::kernels

#endif // MOERT_KERNELS_BLAS_H
