//===- ScratchBytes.h - The kernels' scratch sizes, host-only ---*- C++ -*-===//
//
// How many bytes of scratch (Context::scratch) each kernel of the library
// needs for given sizes: pure functions of the sizes and of the constants
// that decide the kernels' work split, in plain C++17 without CUDA, so that
// the compiler (the CUDA printer and moe-checkpoint-activations) counts the
// scratch a program will allocate with the very formulas the kernels carve
// it with. The kernel headers (*.cuh) include this file and keep using
// these functions and constants; a layout change is made here once.
//
// Two needs are known only on the GPU, and are parameters here:
//   - cuDNN's SDPA workspace (AttentionCudnn.cuh): the compiler counts the
//     buffers the cuDNN path carves beside it (attentionCudnnBufferBytes);
//   - CUB's radix-sort storage of the balanced router (RouterBalanced.cuh):
//     the compiler counts the router's other buffers (sortBytes = 0).
// The program's start-up check of the device's free memory covers both.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_SCRATCHBYTES_H
#define MOERT_KERNELS_SCRATCHBYTES_H

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace moert::kernels {

namespace detail {

/// `bytes` rounded up to the 256-byte pieces scratchAt hands out.
inline int64_t expertsAlign(int64_t bytes) { return (bytes + 255) / 256 * 256; }

/// The experts' routing kernels: threads per block and (token, slot) pairs
/// per thread; one block routes kExpertsRouteChunk pairs.
constexpr int kExpertsRouteThreads = 256;
constexpr int kExpertsRouteTiles = 8;
constexpr int64_t kExpertsRouteChunk =
    int64_t(kExpertsRouteThreads) * kExpertsRouteTiles;

/// Tokens per tile of the embedding gradient's counting sort (Embedding.cuh:
/// one block of this many threads ranks a tile), and the threads of its
/// scan.
constexpr int kEmbeddingTile = 1024;
constexpr int kEmbeddingScanThreads = 1024;

inline int64_t embeddingTiles(int64_t tokens) {
  return (tokens + kEmbeddingTile - 1) / kEmbeddingTile;
}

/// Rows of one block of rmsNormGrad's per-block partial sums of dw.
constexpr int64_t kNormRowsPerBlock = 32;

/// Bytes a chunk's fp32 logits may take in the cross-entropy kernels (a
/// tuning knob; tests lower it to exercise several chunks).
inline int64_t crossEntropyLogitsBudget = int64_t(512) << 20;

/// Rows per chunk of the cross-entropy kernels: as many as keep the fp32
/// logits of a chunk within the budget (bigger chunks make bigger, faster
/// GEMMs), a multiple of 16, at most all rows. All rows make one chunk when
/// their logits fit in the budget plus the fp32 dW accumulator that several
/// chunks of `elementBytes`-wide (2: bf16) rows reserve
/// (crossEntropyScratchBytes reserves it by the compute width; the kernel
/// uses it only for a dW narrower than fp32): one chunk needs no
/// accumulator and never takes more scratch than several.
inline int64_t crossEntropyChunk(int64_t rows, int64_t H, int64_t V,
                                 int64_t elementBytes) {
  int64_t accumulator = elementBytes != 4 ? V * H * 4 : 0;
  if (rows * V * 4 <= crossEntropyLogitsBudget + accumulator)
    return rows;
  int64_t chunk = crossEntropyLogitsBudget / (4 * V);
  chunk = chunk < 16 ? 16 : chunk / 16 * 16;
  return rows < chunk ? rows : chunk;
}

/// Query positions per block of the attention GEMM kernels, at most.
constexpr int64_t kAttentionMaxRows = 256;

inline int64_t attentionRoundUp(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

} // namespace detail

/// Bytes the per-block score buffers of the attention GEMM kernels (Sc, dP,
/// P, dS) may take together; decides the query block size and how many
/// pairs go in one chunk. A tuning knob (the tests lower it to exercise
/// small blocks and chunking); it must not change between
/// attentionScratchBytes and the calls.
inline int64_t attentionScoreBudget = int64_t(768) << 20;

namespace detail {

/// How attention() and attentionGrad() split the work.
struct AttentionPlan {
  int64_t G = 1;      // query heads per kv head
  int64_t pairs = 0;  // B · KV
  int64_t rows = 1;   // R: query positions per block
  int64_t chunk = 1;  // pairs per chunk
  int64_t ldMax = 8;  // largest row stride of the score buffers
};

inline AttentionPlan attentionPlan(int64_t B, int64_t S, int64_t N,
                                   int64_t KV, int64_t elementBytes) {
  AttentionPlan p;
  p.G = KV > 0 ? N / KV : 1;
  p.pairs = B * KV;
  p.ldMax = attentionRoundUp(std::max<int64_t>(S, 1), 8);
  // Bytes of the four score buffers per query position of one pair.
  int64_t perPosition = p.G * p.ldMax * (2 * 4 + 2 * elementBytes);
  int64_t budget = attentionScoreBudget;
  p.rows = std::max<int64_t>(1, std::min<int64_t>(S, kAttentionMaxRows));
  if (p.pairs * p.rows * perPosition > budget) {
    int64_t fit = budget / std::max<int64_t>(1, p.pairs * perPosition);
    p.rows = fit >= 64 ? fit / 64 * 64
                       : std::max<int64_t>(1, std::min<int64_t>(S, 64));
  }
  p.chunk = std::max<int64_t>(1, p.pairs);
  if (p.chunk * p.rows * perPosition > budget)
    p.chunk = std::max<int64_t>(1, budget / (p.rows * perPosition));
  return p;
}

/// Moves `offset` past `bytes` of scratch as scratchAt does (256-byte
/// aligned): the router's scratch-size functions repeat its layouts.
inline void routerReserve(int64_t &offset, int64_t bytes) {
  offset = (offset + 255) / 256 * 256 + bytes;
}

/// Tokens per block of the router losses' partial sums.
constexpr int64_t kRouterLossTokensPerBlock = 1024;

inline int64_t routerLossBlocks(int64_t tokens) {
  int64_t b = (tokens + kRouterLossTokensPerBlock - 1) /
              kRouterLossTokensPerBlock;
  return b < 1 ? 1 : b;
}

/// Sinkhorn routing: the cost, the scalings.
inline int64_t sinkhornScratchEnd(int64_t tokens, int64_t E) {
  int64_t offset = 0;
  routerReserve(offset, tokens * E * 8); // cost
  routerReserve(offset, tokens * 8);     // d0
  routerReserve(offset, E * 8);          // d1
  return offset;
}

/// Balanced routing, with `sortBytes` of CUB's radix-sort storage
/// (balancedSortBytes, known on the GPU only).
inline int64_t balancedScratchEnd(int64_t tokens, int64_t E,
                                  int64_t sortBytes) {
  int64_t n = tokens * E, offset = 0;
  routerReserve(offset, n * 8); // probabilities
  routerReserve(offset, n * 8); // keys
  routerReserve(offset, n * 8); // keys, sorted
  routerReserve(offset, n * 4); // pair ids
  routerReserve(offset, n * 4); // pair ids, sorted
  routerReserve(offset, tokens); // per-token counts
  routerReserve(offset, sortBytes);
  return offset;
}

/// The router losses' partial sums over `layers` layers.
inline int64_t lossScratchEnd(int64_t layers, int64_t tokens, int64_t E) {
  int64_t partials = layers * routerLossBlocks(tokens), offset = 0;
  routerReserve(offset, partials * E * 8);
  routerReserve(offset, partials * E * 4);
  routerReserve(offset, partials * 8);
  routerReserve(offset, E * 8);
  return offset;
}

} // namespace detail

/// Scratch bytes of experts and expertsGrad (the backward's layout, which
/// contains the forward's; see Experts.cuh).
inline int64_t expertsScratchBytes(int64_t tokens, int64_t H, int64_t I,
                                   int64_t E, int64_t k,
                                   int64_t elementBytes) {
  using detail::expertsAlign;
  int64_t pairs = tokens * k;
  int64_t blocks =
      (pairs + detail::kExpertsRouteChunk - 1) / detail::kExpertsRouteChunk;
  int64_t bytes = 256;
  bytes += expertsAlign(blocks * E * 4);
  bytes += expertsAlign(E * 8);
  bytes += 2 * expertsAlign(pairs * 4);
  bytes += 2 * expertsAlign(pairs * H * elementBytes);  // X, dO
  bytes += expertsAlign(pairs * 2 * I * elementBytes);  // H1
  bytes += 2 * expertsAlign(pairs * I * elementBytes);  // A, dA
  return bytes;
}

/// Scratch of dispatchAllToAll: the routing, the send rows and gates, the
/// group's counts and the staged received rows and gates (`rowBound` rows).
inline int64_t dispatchScratchBytes(int64_t tokens, int64_t k, int64_t H,
                                    int64_t P, int64_t L, int64_t rowBound,
                                    int64_t elementBytes) {
  using detail::expertsAlign;
  int64_t pairs = tokens * k, E = P * L;
  int64_t blocks =
      (pairs + detail::kExpertsRouteChunk - 1) / detail::kExpertsRouteChunk;
  // The all-gather dispatcher routes the group's P·pairs slots.
  int64_t groupBlocks = (P * pairs + detail::kExpertsRouteChunk - 1) /
                        detail::kExpertsRouteChunk;
  int64_t allToAll = 256 + expertsAlign(blocks * E * 4) + expertsAlign(E * 8) +
                     2 * expertsAlign(pairs * 4) +
                     expertsAlign(pairs * H * elementBytes) +
                     expertsAlign(pairs * elementBytes) + expertsAlign(P * E * 8) +
                     expertsAlign(rowBound * H * elementBytes) +
                     expertsAlign(rowBound * elementBytes);
  int64_t allGather = 256 + expertsAlign(P * tokens * H * elementBytes) +
                      expertsAlign(P * pairs * 8) +
                      expertsAlign(P * pairs * elementBytes) +
                      expertsAlign(groupBlocks * E * 4) + expertsAlign(E * 8) +
                      2 * expertsAlign(P * pairs * 4);
  return allToAll > allGather ? allToAll : allGather;
}

/// Scratch of combineAllToAll and combineAllGather (either dispatcher).
inline int64_t combineScratchBytes(int64_t tokens, int64_t k, int64_t width,
                                   int64_t P, int64_t L, int64_t rowBound,
                                   int64_t elementBytes) {
  using detail::expertsAlign;
  int64_t pairs = tokens * k, E = P * L;
  int64_t groupBlocks = (P * pairs + detail::kExpertsRouteChunk - 1) /
                        detail::kExpertsRouteChunk;
  int64_t route = expertsAlign(groupBlocks * E * 4) + expertsAlign(E * 8) +
                  2 * expertsAlign(P * pairs * 4);
  int64_t allToAll = 256 + route + expertsAlign(pairs * width * elementBytes) +
                     expertsAlign(rowBound * width * elementBytes);
  int64_t allGather = 256 + route + expertsAlign(P * pairs * 8) +
                      expertsAlign(P * tokens * width * elementBytes);
  return allToAll > allGather ? allToAll : allGather;
}

/// Scratch of tokenShuffle.
inline int64_t tokenShuffleScratchBytes(int64_t tokens, int64_t width,
                                        int64_t P, int64_t elementBytes) {
  using detail::expertsAlign;
  return 256 + expertsAlign(P * tokens * width * elementBytes);
}

/// Scratch bytes of a gather or scatter along a dimension with `outer`
/// elements before it, over a group of G, of `local` elements per rank.
inline int64_t collectiveScratchBytes(int64_t outer, int64_t G, int64_t local,
                                      int64_t elementBytes) {
  return outer > 1 ? G * local * elementBytes : 0;
}

/// Scratch of the lm head fused with cross-entropy, forward and backward
/// (CrossEntropy.cuh: dLogits in T overwrite the fp32 logits in place).
inline int64_t crossEntropyScratchBytes(int64_t rows, int64_t H, int64_t V,
                                        int64_t elementBytes) {
  int64_t chunk = detail::crossEntropyChunk(rows, H, V, elementBytes);
  int64_t bytes = chunk * V * 4 + 256;          // fp32 logits, then dLogits
  bytes += rows * 4 + 256 + 256;                // row losses, count
  if (elementBytes != 4 && chunk < rows)
    bytes += V * H * 4 + 256;                   // fp32 dW accumulator
  return bytes;
}

/// Scratch bytes attention() and attentionGrad() need (the gradient's, the
/// larger); see Attention.cuh for the layout.
inline int64_t attentionScratchBytes(int64_t B, int64_t S, int64_t N,
                                     int64_t KV, int64_t D,
                                     int64_t elementBytes) {
  detail::AttentionPlan p = detail::attentionPlan(B, S, N, KV, elementBytes);
  auto piece = [](int64_t bytes) { return (bytes + 255) / 256 * 256; };
  int64_t qBytes = B * S * N * D * elementBytes;
  int64_t kBytes = B * S * KV * D * elementBytes;
  int64_t accBytes = B * S * KV * D * 4;
  int64_t block = p.chunk * p.rows * p.G * p.ldMax;
  return 256 + 3 * piece(qBytes) + 2 * piece(kBytes) + 2 * piece(accBytes) +
         2 * piece(block * 4) + 2 * piece(block * elementBytes);
}

/// The scratch the cuDNN attention backward carves beside cuDNN's own
/// workspace (moert/Cudnn.h): the recomputed bf16 output and its fp32
/// log-sum-exp, for a step that did not keep them.
inline int64_t attentionCudnnBufferBytes(int64_t B, int64_t S, int64_t N,
                                         int64_t D) {
  using detail::expertsAlign;
  return expertsAlign(B * S * N * D * 2) + expertsAlign(B * N * S * 4);
}

/// Scratch of embeddingGrad (Embedding.cuh): the per-tile histograms
/// [tiles, vocab], the rows' starts [vocab + 1] and the token order
/// [tokens], int32 each.
inline int64_t embeddingScratchBytes(int64_t tokens, int64_t vocab) {
  using detail::expertsAlign;
  return expertsAlign(detail::embeddingTiles(tokens) * vocab * 4) +
         expertsAlign((vocab + 1) * 4) + expertsAlign(tokens * 4);
}

inline int64_t rmsNormScratchBytes(int64_t rows, int64_t hidden) {
  int64_t blocks = (rows + detail::kNormRowsPerBlock - 1) /
                   detail::kNormRowsPerBlock;
  return blocks * hidden * 4 + 256;
}

/// The most scratch any router function needs for these sizes (the router
/// with `k`, the losses with `layers`; either may be 1), with `sortBytes`
/// of CUB's storage for the balanced router's sort.
inline int64_t routerScratchBytes(int64_t tokens, int64_t E, int64_t k,
                                  int64_t layers, int64_t sortBytes) {
  (void)k;
  if (tokens <= 0 || E <= 0)
    return 0;
  int64_t bytes = detail::sinkhornScratchEnd(tokens, E);
  int64_t balanced = detail::balancedScratchEnd(tokens, E, sortBytes);
  int64_t losses = detail::lossScratchEnd(layers < 1 ? 1 : layers, tokens, E);
  if (balanced > bytes)
    bytes = balanced;
  if (losses > bytes)
    bytes = losses;
  return bytes;
}

/// Elements per chunk of a multi-tensor launch (TensorGroup).
constexpr int64_t kTensorGroupChunk = int64_t(1) << 16;

/// The chunks of a multi-tensor launch over a tensor of `count` elements.
inline int64_t tensorGroupChunks(int64_t count) {
  return (count + kTensorGroupChunk - 1) / kTensorGroupChunk;
}

/// Scratch of globalNorm over a TensorGroup of `chunks` chunks.
inline int64_t globalNormScratchBytes(int64_t chunks) {
  return chunks * 8 + 256;
}

/// `bytes`, a scratch formula's value at run time, after checking that it
/// is the `planned` bytes the compiler computed from the same formula for
/// `op`: the plan moec compile reports is the program's.
inline int64_t plannedScratchBytes(int64_t bytes, int64_t planned,
                                   const char *op) {
  if (bytes != planned) {
    std::fprintf(stderr,
                 "moert: %s needs %lld bytes of scratch at run time but the "
                 "compiler planned %lld (its kernel headers differ from "
                 "this program's)\n",
                 op, static_cast<long long>(bytes),
                 static_cast<long long>(planned));
    std::exit(1);
  }
  return bytes;
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_SCRATCHBYTES_H
