//===- Attention.cuh - moe.attention and its gradient -----------*- CUDA -*-===//
//
// Grouped-query scaled-dot-product attention (docs/Dialects/Moe.md,
// moe.attention / moe.attention_grad). q is [B, S, N, D], k and v are
// [B, S, KV, D], out is [B, S, N, D]; query head h reads key/value head
// g = h / G with G = N / KV. For query position i and key position j:
//
//   visible(i, j) = !causal || (j <= i && (window < 0 || i - j < window))
//   P[i, :]       = softmax over the visible j of scale · q_i · k_j
//   out_i         = Σ_j P[i, j] · v_j
//
// The window (a sliding window, `window >= 0`) only applies together with
// `causal`, exactly like the reference. With causal and window == 0 no key
// is visible: the reference divides 0 by 0 there; these kernels write zeros
// (outputs and gradients).
//
// Algorithm: GEMMs on cuBLAS with the scores materialised in scratch, fp32
// softmax in a fused row kernel.
//
//  1. Layout. q (and dOut) are copied to the grouped layout [B, KV, S, G, D],
//     k and v to [B, KV, S, D]. In that layout the G query heads of one
//     (batch, kv head) "pair" form one row-major matrix of S·G rows (row
//     s·G + j is position s of head g·G + j) that shares that pair's K and
//     V, and every pair is a fixed stride apart: each product below is one
//     strided-batched GEMM over the pairs, and the sum over a group's query
//     heads in dK and dV falls out of the GEMM's inner dimension.
//  2. Query row blocks. Positions [r0, r1) (R = 256 or fewer, see
//     attentionPlan) of a chunk of pairs at a time. With `causal` the block
//     only needs keys [lo, hi) with hi = r1 and lo = 0, or with a window
//     lo = r0 − window + 1 rounded down to a multiple of 16 (alignment):
//     fully masked key ranges are never computed (≈ half the square).
//  3. Forward, per block: Sc = scale · log2(e) · Q_blk K[lo:hi]ᵀ (fp32 out;
//     base-2 scores so the softmax uses exp2), a row kernel (one warp per
//     row) computes the exact masked softmax in fp32 (one online max/sum
//     pass over the visible columns, one writing pass) and writes P in T
//     (masked columns 0), then O_blk = P V[lo:hi].
//  4. Backward, per block (nothing saved from the forward): Sc as above,
//     dP = dO_blk V[lo:hi]ᵀ (fp32), a fused row kernel recomputes P and
//     writes P and dS = scale · P ⊙ (dP − rowsum(P ⊙ dP)) in T (the row sum
//     comes from the same online pass as the softmax statistics), then
//       dV[lo:hi] += Pᵀ dO_blk     (fp32 accumulator, beta = 1)
//       dQ_blk     = dS K[lo:hi]
//       dK[lo:hi] += dSᵀ Q_blk     (fp32 accumulator, beta = 1)
//     Blocks run in order on one stream: the results are deterministic.
//  5. Results are copied back to [B, S, N, D] / [B, S, KV, D] (and rounded
//     to T once, from the fp32 accumulators for dK and dV).
//
// Scratch (each piece 256-byte aligned, in this order): Qp, dOp (backward),
// Op/dQp, Kp, Vp in T; dK, dV accumulators (backward) in fp32; then per
// block Sc and dP (backward) in fp32, P and dS (backward) in T, each
// chunk · R · G · roundUp(S, 8) elements. attentionScratchBytes is the
// backward's (larger) need; the block size R and the pair chunk are chosen so
// the four per-block buffers stay within attentionScoreBudget bytes
// (768 MiB): for B=4, S=2048, N=32, KV=8, D=128 in bf16 that is R = 256,
// all 32 pairs in one chunk, 1056 MiB of scratch in all (the forward alone
// uses 544 MiB). Measured there on an H200, causal: forward 1.30 ms,
// backward 2.96 ms (about half of each in the row kernels, which are
// bound by memory: the fp32 scores make the round trip through HBM); a
// 512 MiB budget (R = 128, 672 MiB scratch) costs about 9% more time.
//
// Precision: GEMMs accumulate in fp32 (no TF32), the softmax and dS are fp32;
// in bf16 mode P and dS are rounded to bf16 as GEMM operands (as flash
// attention does), the scores and dP stay fp32.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_ATTENTION_CUH
#define MOERT_KERNELS_ATTENTION_CUH

#include "moert/kernels/Gemm.cuh"

#include <algorithm>
#include <cmath>

namespace moert::kernels {

namespace detail {

constexpr int kAttentionRowWarps = 8; // warps (rows) per block of the row kernel
/// Vector loads (of the scores, and of dP) in flight per lane in the row
/// kernel: more for the forward, which streams one array.
template <bool kGrad> constexpr int kAttentionUnroll = kGrad ? 4 : 8;
/// The score GEMMs fold log2(e) into their alpha so the row kernel can use
/// exp2: softmax(x) = 2^(x·log2 e − max) / Σ 2^(…).
constexpr float kAttentionLog2e = 1.4426950408889634f;

/// Keys [lo, hi) that query positions [r0, r1) can see (lo rounded down to
/// a multiple of 16 so that GEMM operands stay aligned).
inline void attentionKeyRange(int64_t S, bool causal, int64_t window,
                              int64_t r0, int64_t r1, int64_t &lo,
                              int64_t &hi) {
  if (!causal) {
    lo = 0;
    hi = S;
    return;
  }
  hi = r1;
  lo = window >= 0 ? std::max<int64_t>(0, r0 - window + 1) : 0;
  lo = lo / 16 * 16;
}

/// out[a0][a2][a1][x] = in[a0][a1][a2][x] (swap the middle two axes),
/// converting the element type; V elements per thread (V divides X). I is
/// the index type (32-bit where the sizes allow: cheaper divisions).
template <class TI, class TO, int V, class I>
__global__ void attentionSwapKernel(const TI *__restrict__ in, I A1, I A2,
                                    I X, I total, TO *__restrict__ out) {
  const I step = static_cast<I>(gridDim.x) * blockDim.x * V;
  for (I o = (static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
       o < total; o += step) {
    I x = o % X, t = o / X;
    I a1 = t % A1;
    t /= A1;
    I a2 = t % A2, a0 = t / A2;
    I i = ((a0 * A1 + a1) * A2 + a2) * X + x;
    Pack<TI, V> a =
        *reinterpret_cast<const Pack<TI, V> *>(in + i);
    Pack<TO, V> b;
#pragma unroll
    for (int e = 0; e < V; ++e)
      b.x[e] = fromFloat<TO>(toFloat(a.x[e]));
    *reinterpret_cast<Pack<TO, V> *>(out + o) = b;
  }
}

template <class TI, class TO, int V>
void attentionSwapLaunch(const Context &ctx, const TI *in, int64_t A1,
                         int64_t A2, int64_t X, int64_t total, TO *out) {
  // 32-bit indices when every index (and the loop's last step past the
  // end) stays below 2^32.
  int blocks = blocksFor(total / V);
  if (total + static_cast<int64_t>(blocks) * 256 * V <
      (static_cast<int64_t>(1) << 32))
    attentionSwapKernel<TI, TO, V, uint32_t><<<blocks, 256, 0, ctx.stream>>>(
        in, static_cast<uint32_t>(A1), static_cast<uint32_t>(A2),
        static_cast<uint32_t>(X), static_cast<uint32_t>(total), out);
  else
    attentionSwapKernel<TI, TO, V, int64_t><<<blocks, 256, 0, ctx.stream>>>(
        in, A1, A2, X, total, out);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// [A0, A1, A2, X] -> [A0, A2, A1, X] on ctx.stream.
template <class TI, class TO>
void attentionSwap(const Context &ctx, const TI *in, int64_t A0, int64_t A1,
                   int64_t A2, int64_t X, TO *out) {
  int64_t total = A0 * A1 * A2 * X;
  if (total == 0)
    return;
  auto aligned = [&](int v) {
    return X % v == 0 &&
           reinterpret_cast<uintptr_t>(in) % (v * sizeof(TI)) == 0 &&
           reinterpret_cast<uintptr_t>(out) % (v * sizeof(TO)) == 0;
  };
  if constexpr (sizeof(TI) == 2 && sizeof(TO) == 2) {
    if (aligned(8)) {
      attentionSwapLaunch<TI, TO, 8>(ctx, in, A1, A2, X, total, out);
      return;
    }
  }
  if (aligned(4))
    attentionSwapLaunch<TI, TO, 4>(ctx, in, A1, A2, X, total, out);
  else
    attentionSwapLaunch<TI, TO, 1>(ctx, in, A1, A2, X, total, out);
}

__device__ inline void attentionStore4(float *p, float a, float b, float c,
                                       float d) {
  *reinterpret_cast<float4 *>(p) = make_float4(a, b, c, d);
}
__device__ inline void attentionStore4(bf16 *p, float a, float b, float c,
                                       float d) {
  Pack<__nv_bfloat162, 2> v;
  v.x[0] = __floats2bfloat162_rn(a, b);
  v.x[1] = __floats2bfloat162_rn(c, d);
  *reinterpret_cast<Pack<__nv_bfloat162, 2> *>(p) = v;
}

/// Running softmax statistics of base-2 scores: m the maximum,
/// l = Σ 2^(x − m) and a = Σ 2^(x − m) · dp over the elements seen.
/// Elements come in batches of N (masked ones as x = -inf, dp = 0): one
/// rescale per batch, one exp2 per element, no divergent branch per element.
struct AttentionStats {
  float m = -INFINITY, l = 0.0f, a = 0.0f;
  template <int N>
  __device__ void add(const float (&x)[N], const float (&dp)[N]) {
    float bm = x[0];
#pragma unroll
    for (int i = 1; i < N; ++i)
      bm = fmaxf(bm, x[i]);
    if (bm == -INFINITY) // nothing visible in this batch
      return;
    if (bm > m) {
      float f = exp2f(m - bm); // 0 when m is -inf
      l *= f;
      a *= f;
      m = bm;
    }
#pragma unroll
    for (int i = 0; i < N; ++i) {
      float e = exp2f(x[i] - m);
      l += e;
      a += e * dp[i];
    }
  }
};

/// One warp per score row of base-2 scores (scale · log2 e · q·k). Rows are `ld` floats apart (the blocks of the
/// chunk's pairs are contiguous, `rowsPerPair` rows each); row r is query
/// position r0 + (r % rowsPerPair) / G, its columns are keys lo + c for
/// c in [0, L). Writes P (and with kGrad, dS from dP) over [0, L) in T,
/// masked entries 0. Reads only the visible columns of the scores.
template <class T, bool kGrad>
__global__ void __launch_bounds__(kAttentionRowWarps * 32)
    attentionRowKernel(const float *__restrict__ scores,
                       const float *__restrict__ dP, T *__restrict__ P,
                       T *__restrict__ dS, int64_t rows, int64_t rowsPerPair,
                       int64_t ld, int64_t L, int64_t lo, int64_t r0,
                       int64_t G, int64_t S, bool causal, int64_t window,
                       float scale) {
  int lane = threadIdx.x & 31;
  int64_t row = static_cast<int64_t>(blockIdx.x) * kAttentionRowWarps +
                (threadIdx.x >> 5);
  if (row >= rows)
    return;
  int64_t s = r0 + (row % rowsPerPair) / G;
  int64_t vlo = 0, vhi = S;
  if (causal) {
    vhi = s + 1;
    vlo = window >= 0 ? max(static_cast<int64_t>(0), s - window + 1) : 0;
  }
  // Visible columns [cBeg, cEnd) of [0, L).
  int64_t cBeg = max(vlo - lo, static_cast<int64_t>(0));
  int64_t cEnd = min(vhi - lo, L);
  const float *x = scores + row * ld;
  const float *g = kGrad ? dP + row * ld : nullptr;

  constexpr int U = kAttentionUnroll<kGrad>;
  // Pass 1: statistics over the visible columns, four at a time; each lane
  // issues kAttentionUnroll vector loads before using them (memory-level
  // parallelism). Columns fit in int: L <= S, which cuBLAS takes as int.
  const int first = static_cast<int>(cBeg & ~int64_t(3)) + lane * 4;
  const int vBeg = static_cast<int>(cBeg), vEnd = static_cast<int>(cEnd);
  AttentionStats st;
  for (int base = first; base < vEnd; base += 128 * U) {
    float4 xv[U], gv[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      int c = base + u * 128;
      xv[u] = gv[u] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (c < vEnd) {
        xv[u] = *reinterpret_cast<const float4 *>(x + c);
        if (kGrad)
          gv[u] = *reinterpret_cast<const float4 *>(g + c);
      }
    }
    float xs[4 * U], gs[4 * U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = base + u * 128;
      const float xv4[4] = {xv[u].x, xv[u].y, xv[u].z, xv[u].w};
      const float gv4[4] = {gv[u].x, gv[u].y, gv[u].z, gv[u].w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        bool visible = c + e >= vBeg && c + e < vEnd;
        xs[4 * u + e] = visible ? xv4[e] : -INFINITY;
        gs[4 * u + e] = visible ? gv4[e] : 0.0f;
      }
    }
    st.add(xs, gs);
  }
  // Combine the lanes.
  const float M = warpMax(st.m);
  const float f = st.m == -INFINITY ? 0.0f : exp2f(st.m - M);
  const float l = warpSum(st.l * f);
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  const float inner = kGrad ? warpSum(st.a * f) * inv : 0.0f;

  // Pass 2: write P (and dS) over every column, 0 where masked; loads
  // batched like pass 1 (only 4-column groups with a visible column).
  T *pr = P + row * ld;
  T *dr = kGrad ? dS + row * ld : nullptr;
  const int cols = static_cast<int>(L);
  for (int base = lane * 4; base < cols; base += 128 * U) {
    float4 xv[U], gv[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      int c = base + u * 128;
      xv[u] = gv[u] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (c < cols && c + 3 >= vBeg && c < vEnd && l > 0.0f) {
        xv[u] = *reinterpret_cast<const float4 *>(x + c);
        if (kGrad)
          gv[u] = *reinterpret_cast<const float4 *>(g + c);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      int c = base + u * 128;
      if (c >= cols)
        continue;
      const float xs[4] = {xv[u].x, xv[u].y, xv[u].z, xv[u].w};
      const float gs[4] = {gv[u].x, gv[u].y, gv[u].z, gv[u].w};
      float p[4], d[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        bool visible = c + e >= vBeg && c + e < vEnd && l > 0.0f;
        p[e] = visible ? exp2f(xs[e] - M) * inv : 0.0f;
        d[e] = kGrad && visible ? p[e] * (gs[e] - inner) * scale : 0.0f;
      }
      attentionStore4(pr + c, p[0], p[1], p[2], p[3]);
      if (kGrad)
        attentionStore4(dr + c, d[0], d[1], d[2], d[3]);
    }
  }
}

template <class T, bool kGrad>
void attentionRows(const Context &ctx, const float *scores, const float *dP,
                   T *P, T *dS, int64_t rows, int64_t rowsPerPair, int64_t ld,
                   int64_t L, int64_t lo, int64_t r0, int64_t G, int64_t S,
                   bool causal, int64_t window, float scale) {
  int64_t blocks = (rows + kAttentionRowWarps - 1) / kAttentionRowWarps;
  attentionRowKernel<T, kGrad><<<static_cast<unsigned>(blocks),
                                 kAttentionRowWarps * 32, 0, ctx.stream>>>(
      scores, dP, P, dS, rows, rowsPerPair, ld, L, lo, r0, G, S, causal,
      window, scale);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

} // namespace detail

/// Grouped-query attention forward: out [B, S, N, D] (overwritten).
template <class T>
void attention(const Context &ctx, const T *q, const T *k, const T *v,
               int64_t B, int64_t S, int64_t N, int64_t KV, int64_t D,
               float scale, bool causal, int64_t window, T *out) {
  if (B * S * N * D == 0)
    return;
  if (KV <= 0 || N % KV != 0) {
    std::fprintf(stderr, "moert: attention needs N (%lld) a multiple of KV "
                 "(%lld)\n", static_cast<long long>(N),
                 static_cast<long long>(KV));
    std::exit(1);
  }
  if (causal && window == 0) { // nothing visible
    MOERT_CUDA_CHECK(
        cudaMemsetAsync(out, 0, B * S * N * D * sizeof(T), ctx.stream));
    return;
  }
  const detail::AttentionPlan p = detail::attentionPlan(B, S, N, KV, sizeof(T));
  const int64_t G = p.G, pairs = p.pairs;
  const int64_t qStride = S * G * D, kStride = S * D; // per pair
  int64_t offset = 0;
  T *Qp = scratchAt<T>(ctx, offset, B * S * N * D);
  T *Op = scratchAt<T>(ctx, offset, B * S * N * D);
  T *Kp = scratchAt<T>(ctx, offset, B * S * KV * D);
  T *Vp = scratchAt<T>(ctx, offset, B * S * KV * D);
  const int64_t blockElems = p.chunk * p.rows * G * p.ldMax;
  float *Sc = scratchAt<float>(ctx, offset, blockElems);
  T *P = scratchAt<T>(ctx, offset, blockElems);

  detail::attentionSwap(ctx, q, B, S, KV, G * D, Qp);
  detail::attentionSwap(ctx, k, B, S, KV, D, Kp);
  detail::attentionSwap(ctx, v, B, S, KV, D, Vp);

  for (int64_t p0 = 0; p0 < pairs; p0 += p.chunk) {
    const int64_t np = std::min(p.chunk, pairs - p0);
    for (int64_t r0 = 0; r0 < S; r0 += p.rows) {
      const int64_t r1 = std::min(S, r0 + p.rows);
      const int64_t m = (r1 - r0) * G;
      int64_t lo, hi;
      detail::attentionKeyRange(S, causal, window, r0, r1, lo, hi);
      const int64_t L = hi - lo, ld = detail::attentionRoundUp(L, 8);
      const T *qb = Qp + p0 * qStride + r0 * G * D;
      const T *kb = Kp + p0 * kStride + lo * D;
      const T *vb = Vp + p0 * kStride + lo * D;
      gemmStridedBatched<T, float>(ctx, false, true, m, L, D,
                                   scale * detail::kAttentionLog2e, qb, D,
                                   qStride, kb, D, kStride, 0.0f, Sc, ld,
                                   m * ld, np);
      detail::attentionRows<T, false>(ctx, Sc, nullptr, P, nullptr, np * m, m,
                                      ld, L, lo, r0, G, S, causal, window,
                                      scale);
      gemmStridedBatched<T, T>(ctx, false, false, m, D, L, 1.0f, P, ld, m * ld,
                               vb, D, kStride, 0.0f,
                               Op + p0 * qStride + r0 * G * D, D, qStride, np);
    }
  }
  detail::attentionSwap(ctx, Op, B, KV, S, G * D, out);
}

/// Gradients of attention() (overwritten): dq [B, S, N, D], dk and dv
/// [B, S, KV, D] (summed over each kv head's query heads).
template <class T>
void attentionGrad(const Context &ctx, const T *q, const T *k, const T *v,
                   const T *dOut, int64_t B, int64_t S, int64_t N, int64_t KV,
                   int64_t D, float scale, bool causal, int64_t window, T *dq,
                   T *dk, T *dv) {
  if (B * S * N * D == 0)
    return;
  if (KV <= 0 || N % KV != 0) {
    std::fprintf(stderr, "moert: attentionGrad needs N (%lld) a multiple of "
                 "KV (%lld)\n", static_cast<long long>(N),
                 static_cast<long long>(KV));
    std::exit(1);
  }
  if (causal && window == 0) { // nothing visible: all gradients vanish
    MOERT_CUDA_CHECK(
        cudaMemsetAsync(dq, 0, B * S * N * D * sizeof(T), ctx.stream));
    MOERT_CUDA_CHECK(
        cudaMemsetAsync(dk, 0, B * S * KV * D * sizeof(T), ctx.stream));
    MOERT_CUDA_CHECK(
        cudaMemsetAsync(dv, 0, B * S * KV * D * sizeof(T), ctx.stream));
    return;
  }
  const detail::AttentionPlan p = detail::attentionPlan(B, S, N, KV, sizeof(T));
  const int64_t G = p.G, pairs = p.pairs;
  const int64_t qStride = S * G * D, kStride = S * D; // per pair
  int64_t offset = 0;
  T *Qp = scratchAt<T>(ctx, offset, B * S * N * D);
  T *dOp = scratchAt<T>(ctx, offset, B * S * N * D);
  T *dQp = scratchAt<T>(ctx, offset, B * S * N * D);
  T *Kp = scratchAt<T>(ctx, offset, B * S * KV * D);
  T *Vp = scratchAt<T>(ctx, offset, B * S * KV * D);
  float *dKa = scratchAt<float>(ctx, offset, B * S * KV * D);
  float *dVa = scratchAt<float>(ctx, offset, B * S * KV * D);
  const int64_t blockElems = p.chunk * p.rows * G * p.ldMax;
  float *Sc = scratchAt<float>(ctx, offset, blockElems);
  float *dP = scratchAt<float>(ctx, offset, blockElems);
  T *P = scratchAt<T>(ctx, offset, blockElems);
  T *dS = scratchAt<T>(ctx, offset, blockElems);

  detail::attentionSwap(ctx, q, B, S, KV, G * D, Qp);
  detail::attentionSwap(ctx, dOut, B, S, KV, G * D, dOp);
  detail::attentionSwap(ctx, k, B, S, KV, D, Kp);
  detail::attentionSwap(ctx, v, B, S, KV, D, Vp);
  MOERT_CUDA_CHECK(cudaMemsetAsync(dKa, 0, B * S * KV * D * sizeof(float),
                                   ctx.stream));
  MOERT_CUDA_CHECK(cudaMemsetAsync(dVa, 0, B * S * KV * D * sizeof(float),
                                   ctx.stream));

  for (int64_t p0 = 0; p0 < pairs; p0 += p.chunk) {
    const int64_t np = std::min(p.chunk, pairs - p0);
    for (int64_t r0 = 0; r0 < S; r0 += p.rows) {
      const int64_t r1 = std::min(S, r0 + p.rows);
      const int64_t m = (r1 - r0) * G;
      int64_t lo, hi;
      detail::attentionKeyRange(S, causal, window, r0, r1, lo, hi);
      const int64_t L = hi - lo, ld = detail::attentionRoundUp(L, 8);
      const T *qb = Qp + p0 * qStride + r0 * G * D;
      const T *dob = dOp + p0 * qStride + r0 * G * D;
      const T *kb = Kp + p0 * kStride + lo * D;
      const T *vb = Vp + p0 * kStride + lo * D;
      // Scores and dP = dO Vᵀ, fp32.
      gemmStridedBatched<T, float>(ctx, false, true, m, L, D,
                                   scale * detail::kAttentionLog2e, qb, D,
                                   qStride, kb, D, kStride, 0.0f, Sc, ld,
                                   m * ld, np);
      gemmStridedBatched<T, float>(ctx, false, true, m, L, D, 1.0f, dob, D,
                                   qStride, vb, D, kStride, 0.0f, dP, ld,
                                   m * ld, np);
      detail::attentionRows<T, true>(ctx, Sc, dP, P, dS, np * m, m, ld, L, lo,
                                     r0, G, S, causal, window, scale);
      // dV[lo:hi] += Pᵀ dO_blk.
      gemmStridedBatched<T, float>(ctx, true, false, L, D, m, 1.0f, P, ld,
                                   m * ld, dob, D, qStride, 1.0f,
                                   dVa + p0 * kStride + lo * D, D, kStride, np);
      // dQ_blk = dS K[lo:hi].
      gemmStridedBatched<T, T>(ctx, false, false, m, D, L, 1.0f, dS, ld,
                               m * ld, kb, D, kStride, 0.0f,
                               dQp + p0 * qStride + r0 * G * D, D, qStride,
                               np);
      // dK[lo:hi] += dSᵀ Q_blk.
      gemmStridedBatched<T, float>(ctx, true, false, L, D, m, 1.0f, dS, ld,
                                   m * ld, qb, D, qStride, 1.0f,
                                   dKa + p0 * kStride + lo * D, D, kStride, np);
    }
  }
  detail::attentionSwap(ctx, dQp, B, KV, S, G * D, dq);
  detail::attentionSwap(ctx, dKa, B, KV, S, D, dk);
  detail::attentionSwap(ctx, dVa, B, KV, S, D, dv);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_ATTENTION_CUH
