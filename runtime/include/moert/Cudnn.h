//===- Cudnn.h - cuDNN's fused attention for compiled programs ----*- C++ -*-===//
//
// The plain C++ side of bf16 attention through cuDNN's scaled-dot-product
// attention (flash attention: the scores never leave the SM), built with the
// header-only cuDNN frontend (PyPI `nvidia-cudnn-frontend`). The frontend's
// headers take minutes to compile, so they are compiled once, into the
// `moert_cudnn` library (runtime/src/Cudnn.cpp), which programs with bf16
// attention link; programs include the launch wrappers of
// moert/kernels/AttentionCudnn.cuh, not this file's implementation.
//
// Layout: cuDNN takes each tensor as (batch, heads, seq, dim) with strides,
// so moec's [B, S, heads, D] buffers are passed as they are (strides
// S·H·D, D, H·D, 1): no transposes. GQA is native (K and V have KV heads;
// the backward's dK and dV are summed over each group's query heads).
// Masks: `causal` is cuDNN's top-left diagonal band with right bound 0; a
// window W > 0 adds the left bound W (key j visible from query i iff
// i − W < j ≤ i), exactly moe.attention's visible(i, j). The caller handles
// empty shapes and causal with window 0 (nothing visible).
//
// Graphs are built once per shape and kind on first use (cuDNN's heuristic
// picks the engine then) and cached in the Cudnn object; sdpaSupported and
// sdpaScratchBytes build them, so a program knows every workspace before it
// allocates. Executing a built graph neither synchronises nor allocates: it
// can be captured in a CUDA graph. A shape cuDNN declines (S = 1, head dims
// it lacks kernels for) is reported by sdpaSupported; any later cuDNN
// failure ends the program with cuDNN's message and the shape.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_CUDNN_H
#define MOERT_CUDNN_H

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace moert {

/// A cuDNN handle on one stream and the SDPA graphs built on it.
struct Cudnn;

/// `deterministic`: the SDPA backward on cuDNN's deterministic algorithm
/// (the same dQ, dK, dV bits every run; its default accumulates in an
/// order that varies from run to run); a shape whose deterministic
/// backward cuDNN declines runs on moert's GEMM kernels, which are
/// deterministic.
Cudnn *createCudnn(cudaStream_t stream, bool deterministic = false);
/// Frees what createCudnn made (null is fine).
void destroyCudnn(Cudnn *cudnn);

/// One attention problem: q [B, S, N, D], k and v [B, S, KV, D], bf16.
struct SdpaShape {
  int64_t B, S, N, KV, D;
  float scale;
  bool causal;
  int64_t window; ///< < 0: none; only with `causal`
};

/// Whether cuDNN runs `shape`, forward and backward (builds the graphs);
/// if not, `why` (when given) gets cuDNN's reason.
bool sdpaSupported(Cudnn *cudnn, const SdpaShape &shape,
                   std::string *why = nullptr);

/// Scratch bytes sdpaForward and sdpaBackward need (the backward's: its O
/// and statistics, and the larger workspace of its two graphs).
int64_t sdpaScratchBytes(Cudnn *cudnn, const SdpaShape &shape);

/// out [B, S, N, D] = attention(q, k, v), bf16 buffers on the stream; with
/// `stats` (else null) also each query row's log-sum-exp, fp32 [B, N, S].
void sdpaForward(Cudnn *cudnn, const SdpaShape &shape, const void *q,
                 const void *k, const void *v, void *out, float *stats,
                 void *scratch, int64_t scratchBytes);

/// dq [B, S, N, D], dk and dv [B, S, KV, D] (overwritten), from the
/// forward's `out` and `stats` (moe-save-attention-stats); where they are
/// null this first reruns the forward with statistics into scratch (one
/// extra forward, 2 of the pair's 7 attention GEMM FLOPs).
void sdpaBackward(Cudnn *cudnn, const SdpaShape &shape, const void *q,
                  const void *k, const void *v, const void *dOut,
                  const void *out, const float *stats, void *dq, void *dk,
                  void *dv, void *scratch, int64_t scratchBytes);

} // namespace moert

#endif // MOERT_CUDNN_H
