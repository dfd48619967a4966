//===- AttentionCudnn.cuh - bf16 moe.attention on cuDNN SDPA -----*- CUDA -*-===//
//
// The same operation as Attention.cuh (grouped-query attention, causal and
// sliding-window masks; q [B, S, N, D], k and v [B, S, KV, D]) for bf16,
// through cuDNN's fused scaled-dot-product attention (moert/Cudnn.h, in the
// moert_cudnn library: programs that include this header link it, cuDNN
// and NVRTC). cuDNN has no fp32 SDPA, so fp32 programs keep Attention.cuh,
// which is also what the fp32 reference check runs.
//
// These wrappers give the cuDNN path Attention.cuh's signatures and the
// Context's cuDNN state and scratch. The cases cuDNN is not asked about
// (empty shapes; causal with window 0, where no key is visible) and the
// shapes it declines (S = 1, for one) go to Attention.cuh's kernels;
// attentionCudnnScratchBytes says so on stderr, with cuDNN's reason.
//
// Measured at B 4, S 2048, N 32, KV 8, D 128, causal, on an H200: see
// docs/cuda-backend.md (`AttentionTest --bench` times both kernels).
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_ATTENTIONCUDNN_CUH
#define MOERT_KERNELS_ATTENTIONCUDNN_CUH

#include "moert/Cudnn.h"
#include "moert/kernels/Attention.cuh"

namespace moert::kernels {

namespace detail {
inline SdpaShape sdpaShape(int64_t B, int64_t S, int64_t N, int64_t KV,
                           int64_t D, float scale, bool causal,
                           int64_t window) {
  return {B, S, N, KV, D, scale, causal, causal ? window : -1};
}
/// Shapes Attention.cuh answers without a kernel: no element, or causal
/// with window 0 (nothing visible: zeros).
inline bool sdpaTrivial(const SdpaShape &s) {
  return s.B * s.S * s.N * s.D == 0 || (s.causal && s.window == 0);
}
} // namespace detail

/// Scratch bytes attentionCudnn() and attentionGradCudnn() need. Builds the
/// shape's cuDNN graphs (ctx.cudnn must be set).
inline int64_t attentionCudnnScratchBytes(const Context &ctx, int64_t B,
                                          int64_t S, int64_t N, int64_t KV,
                                          int64_t D, float scale, bool causal,
                                          int64_t window) {
  SdpaShape shape = detail::sdpaShape(B, S, N, KV, D, scale, causal, window);
  if (detail::sdpaTrivial(shape))
    return attentionScratchBytes(B, S, N, KV, D, sizeof(bf16));
  std::string why;
  if (sdpaSupported(ctx.cudnn, shape, &why))
    return sdpaScratchBytes(ctx.cudnn, shape);
  std::fprintf(stderr,
               "moert: cuDNN declines attention B %lld S %lld N %lld KV %lld "
               "D %lld (%s); it runs on the GEMM kernels\n",
               (long long)B, (long long)S, (long long)N, (long long)KV,
               (long long)D, why.c_str());
  return attentionScratchBytes(B, S, N, KV, D, sizeof(bf16));
}

/// Whether attention of this shape runs on cuDNN: not for the cases
/// Attention.cuh answers without a kernel (no element; causal with window
/// 0, nothing visible: zeros) nor for shapes cuDNN declines.
inline bool attentionOnCudnn(const Context &ctx, const SdpaShape &shape) {
  return !detail::sdpaTrivial(shape) && sdpaSupported(ctx.cudnn, shape);
}

/// Grouped-query attention forward in bf16: out [B, S, N, D] (overwritten)
/// and, with `stats` (moe.attention's optional result), each query row's
/// log-sum-exp, fp32 [B, N, S]. On the GEMM fallback the stats are not
/// written; the fallback's backward does not read them.
inline void attentionCudnn(const Context &ctx, const bf16 *q, const bf16 *k,
                           const bf16 *v, int64_t B, int64_t S, int64_t N,
                           int64_t KV, int64_t D, float scale, bool causal,
                           int64_t window, bf16 *out, float *stats = nullptr) {
  SdpaShape shape = detail::sdpaShape(B, S, N, KV, D, scale, causal, window);
  if (!attentionOnCudnn(ctx, shape))
    return attention<bf16>(ctx, q, k, v, B, S, N, KV, D, scale, causal,
                           window, out);
  sdpaForward(ctx.cudnn, shape, q, k, v, out, stats, ctx.scratch,
              ctx.scratchBytes);
}

/// Gradients of attentionCudnn() (overwritten): dq [B, S, N, D], dk and dv
/// [B, S, KV, D] (summed over each kv head's query heads). `out` and
/// `stats` are the forward's (moe.attention_grad's `saved`), or null: then
/// the forward is rerun first.
inline void attentionGradCudnn(const Context &ctx, const bf16 *q,
                               const bf16 *k, const bf16 *v, const bf16 *dOut,
                               int64_t B, int64_t S, int64_t N, int64_t KV,
                               int64_t D, float scale, bool causal,
                               int64_t window, bf16 *dq, bf16 *dk, bf16 *dv,
                               const bf16 *out = nullptr,
                               const float *stats = nullptr) {
  SdpaShape shape = detail::sdpaShape(B, S, N, KV, D, scale, causal, window);
  if (!attentionOnCudnn(ctx, shape))
    return attentionGrad<bf16>(ctx, q, k, v, dOut, B, S, N, KV, D, scale,
                               causal, window, dq, dk, dv);
  sdpaBackward(ctx.cudnn, shape, q, k, v, dOut, out, stats, dq, dk, dv,
               ctx.scratch, ctx.scratchBytes);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_ATTENTIONCUDNN_CUH
