//===- Experts.cuh - moe.experts and its gradient (dropless) ----*- CUDA -*-===//
//
// The SwiGLU expert MLPs of a Mixture-of-Experts layer, dropless:
//
//   out[t] = Σ_j gates[t,j] · down[e] · (silu(g) ⊙ u),   e = experts[t,j],
//   g, u   = the gate and up rows of gate_up[e] · x[t]
//
// gate_up is [E, 2I, H]: `concatenated` has the gate rows at 0..I-1 and the
// up rows at I..2I-1; `interleaved` (onnxruntime's swiglu_fusion = 1) has gate
// row i at 2i and up row i at 2i+1. down is [E, H, I].
//
// Algorithm (token permutation + one GEMM per expert):
//
//  1. Routing. The tokens·k (token, slot) pairs, pair q = t·k + j, are sorted
//     stably by expert: perm[p] = q of the p-th row of the permuted order,
//     pos[q] = p, so the rows of expert e are [offset[e], offset[e] + n_e) in
//     the order (expert, token, slot). Deterministic, no float atomics:
//     a count kernel (per block of 2048 pairs, a shared-memory histogram),
//     a scan kernel (per-expert totals, exclusive offsets over experts and
//     per-block bases), and a scatter kernel that ranks each pair within its
//     block with __match_any_sync and per-warp histograms. Expert ids
//     outside [0, E) (rejected by the host before a step) are clamped so
//     they can never index out of bounds. The E counts go to the pinned
//     Context::hostCounts and the host synchronises on ctx.stream: the GEMMs
//     need the group sizes on the host. A kernel writes them into the
//     mapped pinned buffer (no copy engine: see copyCountsToHost).
//  2. Gather X[p] = input[perm[p] / k] into a contiguous permuted buffer.
//  3. Per expert with n_e > 0 rows: H1_e = X_e · gate_up[e]ᵀ ([n_e, 2I]).
//  4. A = silu(g) ⊙ u, one fused element-wise kernel (one block per row).
//  5. Per expert: Y_e = A_e · down[e]ᵀ ([n_e, H]), written over X.
//  6. Combine: out[t] = Σ_j gates[t,j] · Y[pos[t·k+j]], one thread per
//     output element summing its k slots in slot order (deterministic).
//
// Gradient (steps 1-2 are recomputed, and step 3 unless the forward kept
// H1 in `saved`, moe.experts' second result: rows in the permuted order):
//   dO_perm[p] = dOut[perm[p] / k] (gathered, not gated),
//   dA'_e = dO_e · down[e] ([n_e, I]), the un-gated gradient of A, then one
//   fused kernel per row p (pair q = perm[p], gate = gates[q]):
//     a = silu(g)·u (recomputed from H1, rounded like the forward's A),
//     dGates[q] = Σ_i dA'[p,i] · a_i          (= dOut[t] · Y[p], the
//                                              un-gated expert output),
//     da = gate · dA', dg = da·u·σ(g)·(1 + g·(1 − σ(g))), du = da·g·σ(g)
//     written over H1 in place (same columns as g and u), and A[p] ← gate · a.
//   Then per expert: dDown[e] = dO_eᵀ · (gate·A)_e (= dY_eᵀ · A_e with
//   dY = gate · dOut), dGateUp[e] = dH1_eᵀ · X_e, dX_e = dH1_e · gate_up[e]
//   (written over dO_e); experts with no rows get zero gradients (memset);
//   finally dInput[t] = Σ_j dX[pos[t·k+j]] in slot order. Every output is
//   overwritten. Computing dGates from dA' and A avoids recomputing Y.
//
// GEMMs: one per expert with rows, through gemmCublasEx (Gemm.cuh says why
// not cuBLASLt: its heuristic's picks for these shapes measured slower).
// The weight gradients on one configured cuBLASLt algorithm (algorithm 66,
// tile 128x160, the fastest at every row count when timed alone) were
// 1.9% faster in the fp32-weight-gradient backward but no faster in the
// step, and were dropped (docs/benchmarks.md, "The experts' weight
// gradients on one configured algorithm").
// cuBLAS's grouped GEMM (cublasGemmGroupedBatchedEx, one call per GEMM kind)
// was tried and dropped: at Mixtral 8x7B's shape (8192 tokens, top-2 of 8,
// hidden 4096, ffn 14336, bf16, H200, cuBLAS 13.1) the forward took 22.9 ms
// and the backward 30.3 ms against 7.6 and 17.6 ms for the loop, and it
// rejects bf16 inputs with fp32 outputs (the fp32 weight gradients).
//
// Precision: all buffers are T (bf16 in bf16 mode, like PyTorch bf16
// training); GEMMs accumulate in fp32 (Gemm.cuh), element-wise math and
// the combine/dGates sums are fp32, rounded once on store.
//
// Scratch (each 256-byte aligned, in this order; N = tokens · k,
// B = ceil(N / 2048)):
//   blockCounts int32 [B, E]   per-block counts, then per-block bases
//   counts      int64 [E]      tokens per expert (copied to hostCounts)
//   perm, pos   int32 [N] each
//   X           T [N, H]       gathered input; Y (forward)
//   dO          T [N, H]       gathered dOut; dX (backward only)
//   H1          T [N, 2I]      gate/up projections; dH1 (backward)
//   A           T [N, I]       activation; gate · activation (backward)
//   dA          T [N, I]       un-gated activation gradient (backward only)
// The forward takes only blockCounts..X, H1 and A; expertsScratchBytes
// returns the backward's total, which bounds both.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_EXPERTS_CUH
#define MOERT_KERNELS_EXPERTS_CUH

#include "moert/kernels/Gemm.cuh"

#include <climits>
#include <vector>

namespace moert::kernels {

/// The library the per-expert GEMMs run on (see the file comment). The
/// program keeps the default; ExpertsTest checks both and its --bench times
/// both. (With Lt, every new per-expert row count adds a cuBLASLt plan.)
enum class ExpertsGemmLibrary { CublasGemmEx, Lt };
inline ExpertsGemmLibrary expertsGemmLibrary =
    ExpertsGemmLibrary::CublasGemmEx;

namespace detail {

__global__ void copyCountsKernel(int64_t *host, const int64_t *device,
                                 int64_t n) {
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    host[i] = device[i];
}

/// Copies `n` device int64 into pinned host memory `host` on ctx.stream
/// with a kernel (pinned memory is mapped under unified addressing), not a
/// copy engine: a small device-to-host copy queued behind an activation
/// offload's copy on the engine would wait for all of it
/// (moert/kernels/Offload.h), and with it the host.
inline void copyCountsToHost(const Context &ctx, int64_t *host,
                             const int64_t *device, int64_t n) {
  copyCountsKernel<<<1, 256, 0, ctx.stream>>>(host, device, n);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

constexpr int kExpertsRouteWarps = kExpertsRouteThreads / 32;
constexpr int kExpertsRowThreads = 256;

__device__ inline int64_t expertsClamp(int64_t e, int64_t E) {
  return e < 0 ? 0 : (e >= E ? E - 1 : e);
}

/// blockCounts[b, e] = pairs of block b's chunk routed to expert e.
__global__ void expertsCountKernel(const int64_t *experts, int64_t pairs,
                                   int64_t E, int *blockCounts) {
  extern __shared__ int expertsHist[];
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x)
    expertsHist[e] = 0;
  __syncthreads();
  int64_t begin = blockIdx.x * kExpertsRouteChunk;
  int64_t end = begin + kExpertsRouteChunk < pairs ? begin + kExpertsRouteChunk
                                                   : pairs;
  for (int64_t q = begin + threadIdx.x; q < end; q += blockDim.x)
    atomicAdd(&expertsHist[expertsClamp(experts[q], E)], 1);
  __syncthreads();
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x)
    blockCounts[blockIdx.x * E + e] = expertsHist[e];
}

/// One block: counts[e] = Σ_b blockCounts[b, e]; then blockCounts[b, e] is
/// replaced by the first permuted row of block b's pairs of expert e
/// (offset[e] + Σ_{b' < b} blockCounts[b', e]).
__global__ void expertsScanKernel(int *blockCounts, int64_t blocks, int64_t E,
                                  int64_t *counts) {
  extern __shared__ long long expertsOffsets[];
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    long long total = 0;
    for (int64_t b = 0; b < blocks; ++b)
      total += blockCounts[b * E + e];
    expertsOffsets[e] = total;
    counts[e] = total;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    long long run = 0;
    for (int64_t e = 0; e < E; ++e) {
      long long c = expertsOffsets[e];
      expertsOffsets[e] = run;
      run += c;
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    long long run = expertsOffsets[e];
    for (int64_t b = 0; b < blocks; ++b) {
      int c = blockCounts[b * E + e];
      blockCounts[b * E + e] = static_cast<int>(run);
      run += c;
    }
  }
}

/// perm[p] = q and pos[q] = p, stable in q within each expert. Block b
/// walks its chunk in tiles of kExpertsRouteThreads pairs, in order; a pair's
/// row is its expert's running base + the same-expert pairs of earlier warps
/// of the tile + its rank among the same-expert lanes of its warp.
__global__ void expertsScatterKernel(const int64_t *experts, int64_t pairs,
                                     int64_t E, const int *blockBase,
                                     int *perm, int *pos) {
  extern __shared__ int expertsShared[];
  int *base = expertsShared;          // [E]
  int *warpHist = expertsShared + E;  // [kExpertsRouteWarps, E]
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x)
    base[e] = blockBase[blockIdx.x * E + e];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t chunk = blockIdx.x * kExpertsRouteChunk;
  for (int tile = 0; tile < kExpertsRouteTiles; ++tile) {
    int64_t tileStart = chunk + int64_t(tile) * kExpertsRouteThreads;
    if (tileStart >= pairs) // uniform over the block
      break;
    for (int64_t i = threadIdx.x; i < kExpertsRouteWarps * E; i += blockDim.x)
      warpHist[i] = 0;
    __syncthreads();
    int64_t q = tileStart + threadIdx.x;
    bool valid = q < pairs;
    long long e = valid ? expertsClamp(experts[q], E) : -1;
    unsigned peers = __match_any_sync(0xffffffffu, e);
    int rank = __popc(peers & ((1u << lane) - 1u));
    if (valid && rank == 0)
      warpHist[warp * E + e] = __popc(peers);
    __syncthreads();
    if (valid) {
      int row = base[e] + rank;
      for (int w = 0; w < warp; ++w)
        row += warpHist[w * E + e];
      perm[row] = static_cast<int>(q);
      pos[q] = row;
    }
    __syncthreads();
    for (int64_t x = threadIdx.x; x < E; x += blockDim.x) {
      int s = 0;
      for (int w = 0; w < kExpertsRouteWarps; ++w)
        s += warpHist[w * E + x];
      base[x] += s;
    }
    __syncthreads();
  }
}

template <class T, int V>
__device__ inline void expertsLoad(const T *p, float *f) {
  Pack<T, V> pack = *reinterpret_cast<const Pack<T, V> *>(p);
#pragma unroll
  for (int i = 0; i < V; ++i)
    f[i] = toFloat(pack.x[i]);
}

template <class T, int V>
__device__ inline void expertsStore(T *p, const float *f) {
  Pack<T, V> pack;
#pragma unroll
  for (int i = 0; i < V; ++i)
    pack.x[i] = fromFloat<T>(f[i]);
  *reinterpret_cast<Pack<T, V> *>(p) = pack;
}

/// dst[p, :] = src[perm[p] / k, :] for `rows` rows of `H` = cols · V.
template <class T, int V>
__global__ void expertsGatherKernel(const T *src, const int *perm,
                                    int64_t rows, int64_t cols, int64_t k,
                                    T *dst) {
  using P = Pack<T, V>;
  const P *s = reinterpret_cast<const P *>(src);
  P *d = reinterpret_cast<P *>(dst);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
       i < rows * cols; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t p = i / cols, c = i - p * cols;
    int64_t t = perm[p] / k;
    d[i] = s[t * cols + c];
  }
}

/// Loads g and u for the V consecutive activation columns i..i+V-1 of row r.
template <class T, int V, bool Interleaved>
__device__ inline void expertsLoadGateUp(const T *r, int64_t I, int64_t i,
                                         float *g, float *u) {
  if constexpr (Interleaved) {
    float w[2 * V];
    expertsLoad<T, V>(r + 2 * i, w);
    expertsLoad<T, V>(r + 2 * i + V, w + V);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      g[v] = w[2 * v];
      u[v] = w[2 * v + 1];
    }
  } else {
    expertsLoad<T, V>(r + i, g);
    expertsLoad<T, V>(r + I + i, u);
  }
}

template <class T, int V, bool Interleaved>
__device__ inline void expertsStoreGateUp(T *r, int64_t I, int64_t i,
                                          const float *g, const float *u) {
  if constexpr (Interleaved) {
    float w[2 * V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      w[2 * v] = g[v];
      w[2 * v + 1] = u[v];
    }
    expertsStore<T, V>(r + 2 * i, w);
    expertsStore<T, V>(r + 2 * i + V, w + V);
  } else {
    expertsStore<T, V>(r + i, g);
    expertsStore<T, V>(r + I + i, u);
  }
}

__device__ inline float expertsSigmoid(float g) {
  return 1.0f / (1.0f + expf(-g));
}

/// a[p, i] = silu(g) · u, one block per row of h1 [rows, 2I].
template <class T, int V, bool Interleaved>
__global__ void expertsSwigluKernel(const T *h1, int64_t rows, int64_t I,
                                    T *a) {
  for (int64_t p = blockIdx.x; p < rows; p += gridDim.x) {
    const T *r = h1 + p * 2 * I;
    T *o = a + p * I;
    for (int64_t i = int64_t(threadIdx.x) * V; i < I;
         i += int64_t(blockDim.x) * V) {
      float g[V], u[V], out[V];
      expertsLoadGateUp<T, V, Interleaved>(r, I, i, g, u);
#pragma unroll
      for (int v = 0; v < V; ++v)
        out[v] = g[v] * expertsSigmoid(g[v]) * u[v];
      expertsStore<T, V>(o + i, out);
    }
  }
}

/// The fused SwiGLU backward of one permuted row per block (see the file
/// comment): dH1 from the projections h1In into h1 (in place when they are
/// the same buffer), a ← gate · silu(g)·u, dGates[perm[p]].
template <class T, int V, bool Interleaved>
__global__ void expertsSwigluGradKernel(const T *h1In, T *h1, const T *dA,
                                        const T *gates, const int *perm,
                                        int64_t rows, int64_t I, T *a,
                                        T *dGates) {
  __shared__ float shared[32];
  for (int64_t p = blockIdx.x; p < rows; p += gridDim.x) {
    int64_t q = perm[p];
    float gate = toFloat(gates[q]);
    const T *rin = h1In + p * 2 * I;
    T *r = h1 + p * 2 * I;
    const T *dr = dA + p * I;
    T *ar = a + p * I;
    float dot = 0.0f;
    for (int64_t i = int64_t(threadIdx.x) * V; i < I;
         i += int64_t(blockDim.x) * V) {
      float g[V], u[V], d[V], ga[V];
      expertsLoadGateUp<T, V, Interleaved>(rin, I, i, g, u);
      expertsLoad<T, V>(dr + i, d);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        float s = expertsSigmoid(g[v]);
        // The activation as the forward stored it (rounded to T).
        float act = toFloat(fromFloat<T>(g[v] * s * u[v]));
        dot += d[v] * act;
        ga[v] = gate * act;
        float da = gate * d[v];
        float dg = da * u[v] * s * (1.0f + g[v] * (1.0f - s));
        float du = da * g[v] * s;
        g[v] = dg;
        u[v] = du;
      }
      expertsStoreGateUp<T, V, Interleaved>(r, I, i, g, u);
      expertsStore<T, V>(ar + i, ga);
    }
    dot = blockSum(dot, shared);
    if (threadIdx.x == 0)
      dGates[q] = fromFloat<T>(dot);
  }
}

/// out[t, :] = Σ_j w_j · rowsBuf[pos[t·k + j], :], w_j = gates[t·k + j] or 1
/// when gates is null; slots summed in order, in fp32.
template <class T, int V>
__global__ void expertsCombineKernel(const T *rowsBuf, const int *pos,
                                     const T *gates, int64_t tokens,
                                     int64_t H, int64_t k, T *out) {
  int64_t cols = H / V;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
       i < tokens * cols; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t t = i / cols, c = (i - t * cols) * V;
    float acc[V];
#pragma unroll
    for (int v = 0; v < V; ++v)
      acc[v] = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      int64_t q = t * k + j;
      int64_t p = pos[q];
      float w = gates ? toFloat(gates[q]) : 1.0f;
      float y[V];
      expertsLoad<T, V>(rowsBuf + p * H + c, y);
#pragma unroll
      for (int v = 0; v < V; ++v)
        acc[v] += w * y[v];
    }
    expertsStore<T, V>(out + t * H + c, acc);
  }
}

/// Elements per 16-byte access.
template <class T> constexpr int expertsVec() {
  return static_cast<int>(16 / sizeof(T));
}

inline bool expertsAligned16(const void *p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

inline int expertsRowGrid(int64_t rows) {
  return rows > (1 << 20) ? (1 << 20) : static_cast<int>(rows);
}

inline void expertsZero(const Context &ctx, void *p, int64_t bytes) {
  if (bytes > 0)
    MOERT_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, ctx.stream));
}

/// The permutation of the tokens·k pairs (see the file comment) and the
/// group sizes on the host.
struct ExpertsRouting {
  int *perm = nullptr;
  int *pos = nullptr;
  int64_t *deviceCounts = nullptr; // [E] in scratch
  std::vector<int64_t> counts, offsets; // host; offsets has E + 1 entries
};

/// The routing's kernels: perm, pos and the device counts; the host
/// vectors stay empty until expertsSetCounts.
inline ExpertsRouting expertsRouteOnDevice(const Context &ctx,
                                          const int64_t *experts,
                                          int64_t pairs, int64_t E,
                                          int64_t &offset) {
  if (pairs > INT_MAX) {
    std::fprintf(stderr, "moert: experts: %lld (token, slot) pairs exceed "
                         "the 32-bit permutation\n",
                 static_cast<long long>(pairs));
    std::exit(1);
  }
  int64_t blocks = (pairs + kExpertsRouteChunk - 1) / kExpertsRouteChunk;
  ExpertsRouting r;
  int *blockCounts = scratchAt<int>(ctx, offset, blocks * E);
  int64_t *counts = scratchAt<int64_t>(ctx, offset, E);
  r.deviceCounts = counts;
  r.perm = scratchAt<int>(ctx, offset, pairs);
  r.pos = scratchAt<int>(ctx, offset, pairs);

  size_t histBytes = static_cast<size_t>(E) * sizeof(int);
  size_t scanBytes = static_cast<size_t>(E) * sizeof(long long);
  size_t scatterBytes =
      static_cast<size_t>(E) * (1 + kExpertsRouteWarps) * sizeof(int);
  size_t largest = scanBytes > scatterBytes ? scanBytes : scatterBytes;
  if (largest > 48 * 1024) {
    MOERT_CUDA_CHECK(cudaFuncSetAttribute(
        expertsCountKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(histBytes)));
    MOERT_CUDA_CHECK(cudaFuncSetAttribute(
        expertsScanKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(scanBytes)));
    MOERT_CUDA_CHECK(cudaFuncSetAttribute(
        expertsScatterKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(scatterBytes)));
  }
  expertsCountKernel<<<static_cast<unsigned>(blocks), kExpertsRouteThreads,
                       histBytes, ctx.stream>>>(experts, pairs, E,
                                                blockCounts);
  MOERT_CUDA_CHECK(cudaGetLastError());
  expertsScanKernel<<<1, 256, scanBytes, ctx.stream>>>(blockCounts, blocks, E,
                                                       counts);
  MOERT_CUDA_CHECK(cudaGetLastError());
  expertsScatterKernel<<<static_cast<unsigned>(blocks), kExpertsRouteThreads,
                         scatterBytes, ctx.stream>>>(experts, pairs, E,
                                                     blockCounts, r.perm,
                                                     r.pos);
  MOERT_CUDA_CHECK(cudaGetLastError());
  return r;
}

/// The routing's E counts, read by the host from `host`, and their offsets.
inline void expertsSetCounts(ExpertsRouting &r, const int64_t *host,
                             int64_t pairs, int64_t E) {
  r.counts.assign(host, host + E);
  r.offsets.assign(E + 1, 0);
  for (int64_t e = 0; e < E; ++e)
    r.offsets[e + 1] = r.offsets[e] + r.counts[e];
  if (r.offsets[E] != pairs) {
    std::fprintf(stderr, "moert: experts: routing counted %lld of %lld "
                         "pairs\n",
                 static_cast<long long>(r.offsets[E]),
                 static_cast<long long>(pairs));
    std::exit(1);
  }
}

inline ExpertsRouting expertsRoute(const Context &ctx, const int64_t *experts,
                                   int64_t pairs, int64_t E, int64_t &offset) {
  if (ctx.hostCounts == nullptr) {
    std::fprintf(stderr, "moert: experts: Context::hostCounts is not set\n");
    std::exit(1);
  }
  ExpertsRouting r = expertsRouteOnDevice(ctx, experts, pairs, E, offset);
  // The group sizes, for the per-expert GEMMs.
  copyCountsToHost(ctx, ctx.hostCounts, r.deviceCounts, E);
  MOERT_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  expertsSetCounts(r, ctx.hostCounts, pairs, E);
  return r;
}

template <class T>
void expertsGather(const Context &ctx, const T *src, const int *perm,
                   int64_t rows, int64_t H, int64_t k, T *dst) {
  constexpr int V = expertsVec<T>();
  if (H % V == 0 && expertsAligned16(src) && expertsAligned16(dst))
    expertsGatherKernel<T, V><<<blocksFor(rows * (H / V)), 256, 0,
                                ctx.stream>>>(src, perm, rows, H / V, k, dst);
  else
    expertsGatherKernel<T, 1><<<blocksFor(rows * H), 256, 0, ctx.stream>>>(
        src, perm, rows, H, k, dst);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void expertsCombine(const Context &ctx, const T *rowsBuf, const int *pos,
                    const T *gates, int64_t tokens, int64_t H, int64_t k,
                    T *out) {
  constexpr int V = expertsVec<T>();
  if (H % V == 0 && expertsAligned16(rowsBuf) && expertsAligned16(out))
    expertsCombineKernel<T, V><<<blocksFor(tokens * (H / V)), 256, 0,
                                 ctx.stream>>>(rowsBuf, pos, gates, tokens, H,
                                               k, out);
  else
    expertsCombineKernel<T, 1><<<blocksFor(tokens * H), 256, 0,
                                 ctx.stream>>>(rowsBuf, pos, gates, tokens, H,
                                               k, out);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

template <class T, int V>
void expertsSwigluLaunch(const Context &ctx, const T *h1, int64_t rows,
                         int64_t I, bool interleaved, T *a) {
  int grid = expertsRowGrid(rows);
  if (interleaved)
    expertsSwigluKernel<T, V, true>
        <<<grid, kExpertsRowThreads, 0, ctx.stream>>>(h1, rows, I, a);
  else
    expertsSwigluKernel<T, V, false>
        <<<grid, kExpertsRowThreads, 0, ctx.stream>>>(h1, rows, I, a);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void expertsSwiglu(const Context &ctx, const T *h1, int64_t rows, int64_t I,
                   bool interleaved, T *a) {
  constexpr int V = expertsVec<T>();
  if (I % V == 0 && expertsAligned16(h1) && expertsAligned16(a))
    expertsSwigluLaunch<T, V>(ctx, h1, rows, I, interleaved, a);
  else
    expertsSwigluLaunch<T, 1>(ctx, h1, rows, I, interleaved, a);
}

template <class T, int V>
void expertsSwigluGradLaunch(const Context &ctx, const T *h1In, T *h1,
                             const T *dA, const T *gates, const int *perm,
                             int64_t rows, int64_t I, bool interleaved, T *a,
                             T *dGates) {
  int grid = expertsRowGrid(rows);
  if (interleaved)
    expertsSwigluGradKernel<T, V, true>
        <<<grid, kExpertsRowThreads, 0, ctx.stream>>>(
            h1In, h1, dA, gates, perm, rows, I, a, dGates);
  else
    expertsSwigluGradKernel<T, V, false>
        <<<grid, kExpertsRowThreads, 0, ctx.stream>>>(
            h1In, h1, dA, gates, perm, rows, I, a, dGates);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void expertsSwigluGrad(const Context &ctx, const T *h1In, T *h1, const T *dA,
                       const T *gates, const int *perm, int64_t rows,
                       int64_t I, bool interleaved, T *a, T *dGates) {
  constexpr int V = expertsVec<T>();
  if (I % V == 0 && expertsAligned16(h1In) && expertsAligned16(h1) &&
      expertsAligned16(dA) && expertsAligned16(a))
    expertsSwigluGradLaunch<T, V>(ctx, h1In, h1, dA, gates, perm, rows, I,
                                  interleaved, a, dGates);
  else
    expertsSwigluGradLaunch<T, 1>(ctx, h1In, h1, dA, gates, perm, rows, I,
                                  interleaved, a, dGates);
}

/// One expert's GEMM on expertsGemmLibrary.
template <class TA, class TC>
void expertsGemm(const Context &ctx, bool transA, bool transB, int64_t m,
                 int64_t n, int64_t k, const TA *A, int64_t lda, const TA *B,
                 int64_t ldb, TC *C, int64_t ldc) {
  if (expertsGemmLibrary == ExpertsGemmLibrary::Lt)
    gemm<TA, TC>(ctx, transA, transB, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C,
                 ldc);
  else
    gemmCublasEx<TA, TC>(ctx, transA, transB, m, n, k, 1.0f, A, lda, B, ldb,
                         0.0f, C, ldc);
}

} // namespace detail

/// out[t] = Σ_j gates[t,j] · down[e] · (silu(g) ⊙ u), e = experts[t,j]
/// (overwrites out). Synchronises ctx.stream once (the group sizes). With
/// `saved` ([tokens·k, 2I]), the projections H1 are kept there for
/// expertsGrad (moe.experts' second result) instead of in scratch.
template <class T>
void experts(const Context &ctx, const T *input, const T *gates,
             const int64_t *experts, const T *gateUp, const T *down,
             int64_t tokens, int64_t H, int64_t I, int64_t E, int64_t k,
             bool interleaved, T *out, T *saved = nullptr) {
  int64_t pairs = tokens * k;
  if (pairs == 0 || H == 0 || I == 0 || E == 0) {
    detail::expertsZero(ctx, out, tokens * H * int64_t(sizeof(T)));
    return;
  }
  int64_t offset = 0;
  detail::ExpertsRouting r =
      detail::expertsRoute(ctx, experts, pairs, E, offset);
  T *x = scratchAt<T>(ctx, offset, pairs * H); // X, then Y
  T *h1 = scratchAt<T>(ctx, offset, pairs * 2 * I);
  T *a = scratchAt<T>(ctx, offset, pairs * I);
  if (saved)
    h1 = saved;

  detail::expertsGather(ctx, input, r.perm, pairs, H, k, x);
  for (int64_t e = 0; e < E; ++e) {
    int64_t n = r.counts[e], s = r.offsets[e];
    if (n == 0)
      continue;
    detail::expertsGemm<T, T>(ctx, false, true, n, 2 * I, H, x + s * H, H,
                              gateUp + e * 2 * I * H, H, h1 + s * 2 * I,
                              2 * I);
  }
  detail::expertsSwiglu(ctx, h1, pairs, I, interleaved, a);
  for (int64_t e = 0; e < E; ++e) {
    int64_t n = r.counts[e], s = r.offsets[e];
    if (n == 0)
      continue;
    detail::expertsGemm<T, T>(ctx, false, true, n, H, I, a + s * I, I,
                              down + e * H * I, I, x + s * H, H);
  }
  detail::expertsCombine(ctx, x, r.pos, gates, tokens, H, k, out);
}

/// The gradients of experts (all four outputs overwritten). Recomputes the
/// forward's routing and gathered input, and its projections unless they
/// are `saved` (experts' `saved`, read only).
/// dGateUp and dDown are T or fp32 (the GEMMs store their fp32 accumulator).
template <class T, class TW>
void expertsGrad(const Context &ctx, const T *input, const T *gates,
                 const int64_t *experts, const T *gateUp, const T *down,
                 const T *dOut, int64_t tokens, int64_t H, int64_t I,
                 int64_t E, int64_t k, bool interleaved, T *dInput,
                 T *dGates, TW *dGateUp, TW *dDown,
                 const T *saved = nullptr) {
  const int64_t es = sizeof(T), ws = sizeof(TW);
  int64_t pairs = tokens * k;
  if (pairs == 0 || H == 0 || I == 0 || E == 0) {
    detail::expertsZero(ctx, dInput, tokens * H * es);
    detail::expertsZero(ctx, dGates, pairs * es);
    detail::expertsZero(ctx, dGateUp, E * 2 * I * H * ws);
    detail::expertsZero(ctx, dDown, E * H * I * ws);
    return;
  }
  int64_t offset = 0;
  detail::ExpertsRouting r =
      detail::expertsRoute(ctx, experts, pairs, E, offset);
  T *x = scratchAt<T>(ctx, offset, pairs * H);
  T *dO = scratchAt<T>(ctx, offset, pairs * H); // dOut gathered, then dX
  T *h1 = scratchAt<T>(ctx, offset, pairs * 2 * I);
  T *a = scratchAt<T>(ctx, offset, pairs * I);
  T *dA = scratchAt<T>(ctx, offset, pairs * I);

  detail::expertsGather(ctx, input, r.perm, pairs, H, k, x);
  detail::expertsGather(ctx, dOut, r.perm, pairs, H, k, dO);
  for (int64_t e = 0; e < E; ++e) {
    int64_t n = r.counts[e], s = r.offsets[e];
    if (n == 0)
      continue;
    // H1_e = X_e · gate_up[e]ᵀ (unless saved); dA'_e = dO_e · down[e].
    if (!saved)
      detail::expertsGemm<T, T>(ctx, false, true, n, 2 * I, H, x + s * H, H,
                                gateUp + e * 2 * I * H, H, h1 + s * 2 * I,
                                2 * I);
    detail::expertsGemm<T, T>(ctx, false, false, n, I, H, dO + s * H, H,
                              down + e * H * I, I, dA + s * I, I);
  }
  detail::expertsSwigluGrad(ctx, saved ? saved : h1, h1, dA, gates, r.perm,
                            pairs, I, interleaved, a, dGates);
  for (int64_t e = 0; e < E; ++e) {
    int64_t n = r.counts[e], s = r.offsets[e];
    TW *dW2 = dDown + e * H * I, *dW1 = dGateUp + e * 2 * I * H;
    if (n == 0) {
      detail::expertsZero(ctx, dW2, H * I * ws);
      detail::expertsZero(ctx, dW1, 2 * I * H * ws);
      continue;
    }
    // dDown[e] = dO_eᵀ · (gate·A)_e   [H, I]
    detail::expertsGemm<T, TW>(ctx, true, false, H, I, n, dO + s * H, H,
                               a + s * I, I, dW2, I);
    // dGateUp[e] = dH1_eᵀ · X_e       [2I, H]
    detail::expertsGemm<T, TW>(ctx, true, false, 2 * I, H, n, h1 + s * 2 * I,
                               2 * I, x + s * H, H, dW1, H);
    // dX_e = dH1_e · gate_up[e]        [n, H], over dO_e (read above)
    detail::expertsGemm<T, T>(ctx, false, false, n, H, 2 * I, h1 + s * 2 * I,
                              2 * I, gateUp + e * 2 * I * H, H, dO + s * H,
                              H);
  }
  detail::expertsCombine<T>(ctx, dO, r.pos, nullptr, tokens, H, k, dInput);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_EXPERTS_CUH
