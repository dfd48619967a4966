//===- Blas.cpp - The cuBLASLt and cuBLAS state of a Context --------------===//
//
// See moert/kernels/Blas.h.
//
//===----------------------------------------------------------------------===//

#include "moert/kernels/Blas.h"

using namespace moert::kernels;

Blas *moert::kernels::createBlas(cudaStream_t stream, int64_t workspaceBytes) {
  Blas *blas = new Blas;
  blas->stream = stream;
  blas->workspaceBytes = workspaceBytes;
  MOERT_CUBLAS_CHECK(cublasLtCreate(&blas->lt));
  MOERT_CUBLAS_CHECK(cublasCreate(&blas->cublas));
  MOERT_CUBLAS_CHECK(cublasSetStream(blas->cublas, stream));
  MOERT_CUDA_CHECK(cudaMalloc(&blas->workspace, workspaceBytes));
  MOERT_CUBLAS_CHECK(
      cublasSetWorkspace(blas->cublas, blas->workspace, workspaceBytes));
  return blas;
}

void moert::kernels::destroyBlas(Blas *blas) {
  if (!blas)
    return;
  MOERT_CUDA_CHECK(cudaStreamSynchronize(blas->stream));
  for (auto &[key, plan] : blas->plans) {
    if (plan.useGemmEx)
      continue;
    MOERT_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan.a));
    MOERT_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan.b));
    MOERT_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan.c));
    MOERT_CUBLAS_CHECK(cublasLtMatmulDescDestroy(plan.desc));
  }
  MOERT_CUDA_CHECK(cudaFree(blas->workspace));
  MOERT_CUBLAS_CHECK(cublasDestroy(blas->cublas));
  MOERT_CUBLAS_CHECK(cublasLtDestroy(blas->lt));
  delete blas;
}
