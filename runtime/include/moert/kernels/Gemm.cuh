//===- Gemm.cuh - Row-major GEMMs on cuBLASLt -------------------*- CUDA -*-===//
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
// The products run through cublasLtMatmul. The first time a GEMM is seen
// (its types, transposes, m, n, k, leading dimensions, batch count and
// strides, whether beta is zero, and the alignment of its pointers) its plan
// is made: the matmul and matrix-layout descriptors and the algorithm the
// cuBLASLt heuristic picks for a workspace of Blas::workspaceBytes. Plans
// are cached in the context's Blas, so steady-state calls and the captures
// of a step's CUDA graphs (moert/StepGraphs.h, which capture from the second
// step on) query no heuristic and allocate nothing. A shape for which the
// heuristic offers no algorithm (none in the GPU tests; the fallback keeps
// odd shapes working) runs through cublasGemmEx instead. A plan's parts
// (gemmDescriptors, gemmHeuristic, gemmRun) are what ExpertsTest
// --bench-gemm-algos and --bench-gemm-rows time every offered algorithm
// with; gemmAlgoAttribute names an algorithm by its configuration.
//
// gemmCublasEx is the same product through cublasGemmEx (cuBLAS's own
// kernel selection). The experts' per-expert GEMMs use it (Experts.cuh): at
// Mixtral 8x7B's shape on an H200 (cuBLAS 13.1) the cuBLASLt heuristic's
// picks for those ~2000-row products were slower (experts forward 8.80 vs
// 7.62 ms, backward 17.92 vs 17.63 ms; ExpertsTest --bench), while a plain
// 8192x4096x14336 bf16 GEMM runs as fast or faster on cuBLASLt (NT 1.334 vs
// 1.340 ms, NN 1.281 vs 1.285, TN 1.281 vs 1.314).
//
// Blas holds the library state of one Context: the cuBLASLt handle, the
// cuBLAS handle (gemmCublasEx and the fallback above), one workspace both
// use (safe: both run on ctx.stream, in order) and the plan cache.
// createBlas/destroyBlas make and free all of it; whoever creates a Context
// (the driver, the GPU tests) calls them once.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_GEMM_CUH
#define MOERT_KERNELS_GEMM_CUH

#include "moert/kernels/Blas.h"
#include "moert/kernels/Common.cuh"

#include <array>
#include <map>
#include <vector>

namespace moert::kernels {

template <class T> constexpr cudaDataType_t dataType();
template <> constexpr cudaDataType_t dataType<float>() { return CUDA_R_32F; }
template <> constexpr cudaDataType_t dataType<bf16>() { return CUDA_R_16BF; }

inline cublasOperation_t op(bool trans) {
  return trans ? CUBLAS_OP_T : CUBLAS_OP_N;
}

namespace detail {

inline Blas &blasOf(const Context &ctx) {
  if (!ctx.blas) {
    std::fprintf(stderr,
                 "moert: gemm: Context::blas is not set (createBlas)\n");
    std::exit(1);
  }
  return *ctx.blas;
}

/// The largest power of two, at most 256, dividing the address of `p` and
/// every batch stride `strideBytes` from it.
inline int64_t gemmAlignment(const void *p, int64_t strideBytes) {
  uint64_t bits = reinterpret_cast<uintptr_t>(p) | 256u |
                  static_cast<uint64_t>(strideBytes);
  return static_cast<int64_t>(bits & (~bits + 1));
}

/// A column-major layout of `rows` x `cols` with leading dimension `ld`,
/// `batch` of them `stride` elements apart.
inline cublasLtMatrixLayout_t gemmLayout(cudaDataType_t type, int64_t rows,
                                         int64_t cols, int64_t ld,
                                         int64_t batch, int64_t stride) {
  cublasLtMatrixLayout_t layout = nullptr;
  MOERT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(
      &layout, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols),
      ld));
  if (batch > 1) {
    int32_t count = static_cast<int32_t>(batch);
    MOERT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
        layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    MOERT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
        layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
        sizeof(stride)));
  }
  return layout;
}

/// The descriptors of `key`'s product (see GemmPlanKey), no algorithm yet.
/// In cuBLASLt's column-major terms A is our B and B our A (the file
/// comment).
inline GemmPlan gemmDescriptors(const GemmPlanKey &key) {
  const auto typeA = static_cast<cudaDataType_t>(key[0]),
             typeC = static_cast<cudaDataType_t>(key[1]);
  const bool transA = key[2], transB = key[3];
  const int64_t m = key[4], n = key[5], k = key[6], lda = key[7],
                ldb = key[8], ldc = key[9], batch = key[10];
  GemmPlan plan;
  MOERT_CUBLAS_CHECK(
      cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  int32_t opA = op(transB), opB = op(transA);
  MOERT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
      plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)));
  MOERT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
      plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(opB)));
  plan.a = gemmLayout(typeA, transB ? k : n, transB ? n : k, ldb, batch,
                      key[12]);
  plan.b = gemmLayout(typeA, transA ? m : k, transA ? k : m, lda, batch,
                      key[11]);
  plan.c = gemmLayout(typeC, n, m, ldc, batch, key[13]);
  return plan;
}

/// Frees what gemmDescriptors made (nothing for a cublasGemmEx plan).
inline void gemmDestroyDescriptors(GemmPlan &plan) {
  if (plan.desc) {
    MOERT_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan.a));
    MOERT_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan.b));
    MOERT_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan.c));
    MOERT_CUBLAS_CHECK(cublasLtMatmulDescDestroy(plan.desc));
  }
  plan = GemmPlan{};
}

/// Up to `count` algorithms the cuBLASLt heuristic offers for `plan`
/// (made from `key`) within Blas::workspaceBytes, its best guess first;
/// none when it offers nothing.
inline std::vector<cublasLtMatmulAlgo_t>
gemmHeuristic(const Blas &blas, const GemmPlan &plan, const GemmPlanKey &key,
              int count) {
  cublasLtMatmulPreference_t preference = nullptr;
  MOERT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  uint64_t workspace = static_cast<uint64_t>(blas.workspaceBytes);
  MOERT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
      sizeof(workspace)));
  const std::pair<cublasLtMatmulPreferenceAttributes_t, int64_t> alignments[] =
      {{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key[16]},
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key[15]},
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key[17]},
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key[17]}};
  for (const auto &[attribute, bytes] : alignments) {
    uint32_t value = static_cast<uint32_t>(bytes);
    MOERT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        preference, attribute, &value, sizeof(value)));
  }
  std::vector<cublasLtMatmulHeuristicResult_t> results(count);
  int returned = 0;
  cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      blas.lt, plan.desc, plan.a, plan.b, plan.c, plan.c, preference, count,
      results.data(), &returned);
  MOERT_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(preference));
  std::vector<cublasLtMatmulAlgo_t> algos;
  if (status != CUBLAS_STATUS_SUCCESS)
    return algos;
  for (int i = 0; i < returned; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS)
      algos.push_back(results[i].algo);
  return algos;
}

/// The product of `key` through `plan` (its algorithm, or cublasGemmEx),
/// D = alpha · op(A) op(B) + beta · C; pointers as gemmLt's. The kernels
/// pass D = C; for a cublasGemmEx plan D's own contents are C.
inline void gemmRun(const Blas &blas, cudaStream_t stream,
                    const GemmPlanKey &key, const GemmPlan &plan, float alpha,
                    const void *A, const void *B, float beta, const void *C,
                    void *D) {
  if (plan.useGemmEx) {
    const auto typeA = static_cast<cudaDataType_t>(key[0]),
               typeC = static_cast<cudaDataType_t>(key[1]);
    MOERT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        blas.cublas, op(key[3]), op(key[2]), static_cast<int>(key[5]),
        static_cast<int>(key[4]), static_cast<int>(key[6]), &alpha, B, typeA,
        static_cast<int>(key[8]), key[12], A, typeA, static_cast<int>(key[7]),
        key[11], &beta, D, typeC, static_cast<int>(key[9]), key[13],
        static_cast<int>(key[10]), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return;
  }
  MOERT_CUBLAS_CHECK(cublasLtMatmul(
      blas.lt, plan.desc, &alpha, B, plan.a, A, plan.b, &beta, C, plan.c, D,
      plan.c, &plan.algo, blas.workspace,
      static_cast<size_t>(blas.workspaceBytes), stream));
}

/// The configuration attribute `attribute` of `algo` (0 if unreadable),
/// read at its own width (cublasLt.h: the inner and cluster shapes are
/// 16-bit, the rest 32-bit; a read of another size is refused).
inline uint32_t gemmAlgoAttribute(const cublasLtMatmulAlgo_t &algo,
                                  cublasLtMatmulAlgoConfigAttributes_t
                                      attribute) {
  auto read = [&](auto value) -> uint32_t {
    size_t written = 0;
    return cublasLtMatmulAlgoConfigGetAttribute(&algo, attribute, &value,
                                                sizeof(value), &written) ==
                   CUBLAS_STATUS_SUCCESS
               ? value
               : 0;
  };
  if (attribute == CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID ||
      attribute == CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID)
    return read(uint16_t{0});
  return read(uint32_t{0});
}

/// The plan for `key` (see GemmPlanKey), made on first use with the
/// heuristic's first algorithm (cublasGemmEx where it offers none).
inline const GemmPlan &gemmPlan(Blas &blas, const GemmPlanKey &key) {
  auto found = blas.plans.find(key);
  if (found != blas.plans.end())
    return found->second;
  GemmPlan plan = gemmDescriptors(key);
  std::vector<cublasLtMatmulAlgo_t> algos = gemmHeuristic(blas, plan, key, 1);
  if (!algos.empty()) {
    plan.algo = algos[0];
  } else {
    std::fprintf(stderr,
                 "moert: gemm: cuBLASLt has no algorithm for m %lld n %lld "
                 "k %lld (lda %lld ldb %lld ldc %lld, batch %lld); using "
                 "cublasGemmEx\n",
                 (long long)key[4], (long long)key[5], (long long)key[6],
                 (long long)key[7], (long long)key[8], (long long)key[9],
                 (long long)key[10]);
    gemmDestroyDescriptors(plan);
    plan.useGemmEx = true;
  }
  return blas.plans.emplace(key, plan).first->second;
}

/// C = beta · C for the k = 0 products (0 when beta is 0, whatever C held).
template <class TC>
__global__ void gemmScaleKernel(TC *C, int64_t m, int64_t n, int64_t ldc,
                                int64_t strideC, int64_t batch, float beta) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
       i < batch * m * n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t b = i / (m * n), r = (i / n) % m, c = i % n;
    TC *p = C + b * strideC + r * ldc + c;
    *p = fromFloat<TC>(beta == 0.0f ? 0.0f : beta * toFloat(*p));
  }
}

/// `batch` products through a cached plan (batch 1: strides unused).
template <class TA, class TC>
void gemmLt(const Context &ctx, bool transA, bool transB, int64_t m,
            int64_t n, int64_t k, float alpha, const TA *A, int64_t lda,
            int64_t strideA, const TA *B, int64_t ldb, int64_t strideB,
            float beta, TC *C, int64_t ldc, int64_t strideC, int64_t batch) {
  if (k == 0) {
    gemmScaleKernel<TC><<<blocksFor(batch * m * n), 256, 0, ctx.stream>>>(
        C, m, n, ldc, strideC, batch, beta);
    MOERT_CUDA_CHECK(cudaGetLastError());
    return;
  }
  Blas &blas = blasOf(ctx);
  if (batch == 1)
    strideA = strideB = strideC = 0;
  const int64_t sa = sizeof(TA), sc = sizeof(TC);
  GemmPlanKey key = {dataType<TA>(), dataType<TC>(), transA, transB, m, n, k,
                     lda, ldb, ldc, batch, strideA, strideB, strideC,
                     beta != 0.0f, gemmAlignment(A, strideA * sa),
                     gemmAlignment(B, strideB * sa),
                     gemmAlignment(C, strideC * sc)};
  gemmRun(blas, ctx.stream, key, gemmPlan(blas, key), alpha, A, B, beta, C,
          C);
}

} // namespace detail

/// One GEMM (see the file comment).
template <class TA, class TC>
void gemm(const Context &ctx, bool transA, bool transB, int64_t m, int64_t n,
          int64_t k, float alpha, const TA *A, int64_t lda, const TA *B,
          int64_t ldb, float beta, TC *C, int64_t ldc) {
  if (m == 0 || n == 0)
    return;
  detail::gemmLt<TA, TC>(ctx, transA, transB, m, n, k, alpha, A, lda, 0, B,
                         ldb, 0, beta, C, ldc, 0, 1);
}

/// gemm() through cublasGemmEx (see the file comment for who uses it).
template <class TA, class TC>
void gemmCublasEx(const Context &ctx, bool transA, bool transB, int64_t m,
                  int64_t n, int64_t k, float alpha, const TA *A, int64_t lda,
                  const TA *B, int64_t ldb, float beta, TC *C, int64_t ldc) {
  if (m == 0 || n == 0)
    return;
  MOERT_CUBLAS_CHECK(cublasGemmEx(
      detail::blasOf(ctx).cublas, op(transB), op(transA),
      static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
      B, dataType<TA>(), static_cast<int>(ldb), A, dataType<TA>(),
      static_cast<int>(lda), &beta, C, dataType<TC>(), static_cast<int>(ldc),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
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
  detail::gemmLt<TA, TC>(ctx, transA, transB, m, n, k, alpha, A, lda,
                         strideA, B, ldb, strideB, beta, C, ldc, strideC,
                         batch);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_GEMM_CUH
