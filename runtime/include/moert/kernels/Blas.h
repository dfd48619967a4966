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
/// ldc, batch, strideA/B/C, beta != 0, alignment of A, B and C in bytes, and
/// the algorithm asked for (0: the heuristic's; else GemmAlgoConfig::key()).
using GemmPlanKey = std::array<int64_t, 19>;

struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool useGemmEx = false; ///< the heuristic found nothing: cublasGemmEx
};

} // namespace detail

/// A cuBLASLt algorithm named by its configuration (the config attributes
/// of cublasLt.h), for a product whose best algorithm was measured
/// (Gemm.cuh, gemmConfigured: the heuristic's candidate with this
/// configuration); only used on GPUs of compute capability `sm` (major · 10
/// + minor).
struct GemmAlgoConfig {
  int32_t sm, id, tile, stages, customOption;
  int64_t key() const {
    return (int64_t(sm) << 48) | (int64_t(id) << 32) | (int64_t(tile) << 16) |
           (int64_t(stages) << 8) | int64_t(customOption);
  }
};

/// The BLAS state of a Context (see the file comment).
struct Blas {
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t cublas = nullptr;
  void *workspace = nullptr;
  int64_t workspaceBytes = 0;
  /// The device's compute capability, major · 10 + minor.
  int computeCapability = 0;
  std::map<detail::GemmPlanKey, detail::GemmPlan> plans;
  /// The configured algorithms found so far (Gemm.cuh, gemmConfigured), by
  /// plan key with k set to 0: a product met again at another k (the
  /// experts' row counts) checks the algorithm found before instead of
  /// querying the heuristic again.
  std::map<detail::GemmPlanKey, cublasLtMatmulAlgo_t> configuredAlgos;
};

/// Creates the handles (on `stream`), the workspace and an empty plan cache.
Blas *createBlas(cudaStream_t stream,
                 int64_t workspaceBytes = kBlasWorkspaceBytes);

/// Waits for the stream, then frees everything createBlas made.
void destroyBlas(Blas *blas);

} // namespace moert::kernels

#endif // MOERT_KERNELS_BLAS_H
