//===- Embedding.cuh - Token embedding lookup and its gradient --*- CUDA -*-===//
//
// moe.embedding gathers rows of the table (a block per row, 16-byte
// accesses where a row is whole packs); moe.embedding_grad sums the
// output gradient's rows into a [vocab, hidden] table gradient:
// dTable[v] = Σ dOut[t] over the tokens t with ids[t] = v, in token order,
// in fp32, rounded to the gradient's type once; rows no token names are
// zero. Deterministic (the same bits every run, whatever the scheduling)
// and one pass over dOut and dTable: the tokens are counting-sorted by id,
// stably, in four small kernels over the ids (ScratchBytes.h,
// embeddingScratchBytes, for their buffers):
//
//  1. per tile of kEmbeddingTile tokens, the histogram of its ids over the
//     vocabulary, hist [tiles, vocab] (integer atomics: exact);
//  2. per id, the counts of the earlier tiles (exclusive, in place) and the
//     id's total;
//  3. one block: the exclusive scan of the totals, start [vocab + 1];
//  4. per tile: each token's rank among the tile's earlier tokens of its id
//     (shared memory), order[start[id] + earlier tiles + rank] = t;
//
// then one block per vocabulary row sums its tokens' rows in that order.
// Ids outside [0, vocab) (rejected by the host before a step) are skipped.
// A row named by many tokens is summed by one block: a batch of one
// repeated id takes one SM through all of dOut.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_EMBEDDING_CUH
#define MOERT_KERNELS_EMBEDDING_CUH

#include "moert/kernels/Common.cuh"

#include <climits>

namespace moert::kernels {

namespace detail {
/// out[t] = table[ids[t]], one block per row (grid-stride over rows),
/// kWidth elements per access (16 bytes where the rows are whole packs).
template <class T, int kWidth>
__global__ void embeddingKernel(const T *table, const int64_t *ids,
                                int64_t tokens, int64_t hidden, int64_t vocab,
                                T *out) {
  using P = Pack<T, kWidth>;
  int64_t packs = hidden / kWidth;
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    int64_t id = ids[t];
    // Out-of-range ids were rejected by the host when the batch was read;
    // clamp so a bad id can never read outside the table.
    id = id < 0 ? 0 : (id >= vocab ? vocab - 1 : id);
    const P *src = reinterpret_cast<const P *>(table + id * hidden);
    P *dst = reinterpret_cast<P *>(out + t * hidden);
    for (int64_t c = threadIdx.x; c < packs; c += blockDim.x)
      dst[c] = src[c];
  }
}

/// Whether the id names a row.
__device__ inline bool validId(int64_t id, int64_t vocab) {
  return id >= 0 && id < vocab;
}

/// Step 1: hist[tile, id] counts the tile's tokens of each id.
__global__ void embeddingHistogramKernel(const int64_t *ids, int64_t tokens,
                                         int64_t vocab, int *hist) {
  int64_t first = blockIdx.x * kEmbeddingTile;
  for (int64_t t = first + threadIdx.x;
       t < tokens && t < first + kEmbeddingTile; t += blockDim.x) {
    int64_t id = ids[t];
    if (validId(id, vocab))
      atomicAdd(&hist[blockIdx.x * vocab + id], 1);
  }
}

/// Step 2: hist[tile, v] becomes the count of v in the tiles before, and
/// start[v] v's total.
__global__ void embeddingTilePrefixKernel(int *hist, int64_t tiles,
                                          int64_t vocab, int *start) {
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < vocab;
       v += int64_t(gridDim.x) * blockDim.x) {
    int run = 0;
    for (int64_t tile = 0; tile < tiles; ++tile) {
      int count = hist[tile * vocab + v];
      hist[tile * vocab + v] = run;
      run += count;
    }
    start[v] = run;
  }
}

/// Step 3, one block of kEmbeddingScanThreads: start[0, vocab] becomes the
/// exclusive scan of the totals in start[0, vocab), each thread taking
/// consecutive entries.
__global__ void embeddingScanKernel(int *start, int64_t vocab) {
  __shared__ int partial[kEmbeddingScanThreads];
  int64_t per = (vocab + blockDim.x - 1) / blockDim.x;
  int64_t begin = threadIdx.x * per;
  int64_t end = begin + per < vocab ? begin + per : vocab;
  int sum = 0;
  for (int64_t v = begin; v < end; ++v)
    sum += start[v];
  partial[threadIdx.x] = sum;
  __syncthreads();
  // Inclusive scan of the threads' sums (Hillis-Steele).
  for (int stride = 1; stride < kEmbeddingScanThreads; stride *= 2) {
    int add = int(threadIdx.x) >= stride ? partial[threadIdx.x - stride] : 0;
    __syncthreads();
    partial[threadIdx.x] += add;
    __syncthreads();
  }
  int run = partial[threadIdx.x] - sum;
  for (int64_t v = begin; v < end; ++v) {
    int count = start[v];
    start[v] = run;
    run += count;
  }
  if (threadIdx.x == kEmbeddingScanThreads - 1)
    start[vocab] = partial[threadIdx.x];
}

/// Step 4, one block of kEmbeddingTile threads per tile: each token's
/// place in the stable order by id.
__global__ void __launch_bounds__(kEmbeddingTile)
    embeddingOrderKernel(const int64_t *ids, int64_t tokens, int64_t vocab,
                         const int *hist, const int *start, int *order) {
  __shared__ int64_t tileIds[kEmbeddingTile];
  int64_t t = blockIdx.x * int64_t(kEmbeddingTile) + threadIdx.x;
  int64_t id = t < tokens ? ids[t] : -1;
  tileIds[threadIdx.x] = id;
  __syncthreads();
  if (!validId(id, vocab))
    return;
  int rank = 0;
  for (int j = 0; j < int(threadIdx.x); ++j)
    rank += tileIds[j] == id;
  order[start[id] + hist[blockIdx.x * vocab + id] + rank] = static_cast<int>(t);
}

/// Step 5, one block per vocabulary row: the row's tokens summed in order
/// (zero without any), four columns at a time when kVec4.
template <class T, class TW, bool kVec4>
__global__ void embeddingRowsKernel(const T *dOut, const int *start,
                                    const int *order, int64_t hidden,
                                    TW *dTable) {
  int64_t v = blockIdx.x;
  int first = start[v], last = start[v + 1];
  TW *row = dTable + v * hidden;
  if constexpr (kVec4) {
    for (int64_t h = 4 * threadIdx.x; h < hidden; h += 4 * blockDim.x) {
      Vec4 sum = {{0.0f, 0.0f, 0.0f, 0.0f}};
      for (int i = first; i < last; ++i) {
        Vec4 x = load4(dOut + order[i] * hidden + h);
#pragma unroll
        for (int j = 0; j < 4; ++j)
          sum.v[j] += x.v[j];
      }
      store4(row + h, sum);
    }
  } else {
    for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
      float sum = 0.0f;
      for (int i = first; i < last; ++i)
        sum += toFloat(dOut[order[i] * hidden + h]);
      row[h] = fromFloat<TW>(sum);
    }
  }
}
} // namespace detail

/// out[t, :] = table[ids[t], :] for `tokens` ids.
template <class T>
void embedding(const Context &ctx, const T *table, const int64_t *ids,
               int64_t tokens, int64_t hidden, int64_t vocab, T *out) {
  if (tokens == 0)
    return;
  constexpr int kWidth = kPackWidth<T>;
  int blocks = tokens < 65535 * 16 ? static_cast<int>(tokens) : 65535 * 16;
  if (hidden % kWidth == 0 && aligned16({table, out}))
    detail::embeddingKernel<T, kWidth><<<blocks, 256, 0, ctx.stream>>>(
        table, ids, tokens, hidden, vocab, out);
  else
    detail::embeddingKernel<T, 1><<<blocks, 256, 0, ctx.stream>>>(
        table, ids, tokens, hidden, vocab, out);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// dTable = Σ over tokens of dOut[t] into row ids[t] (overwrites; see the
/// file comment); dTable is T or fp32.
template <class T, class TW>
void embeddingGrad(const Context &ctx, const int64_t *ids, const T *dOut,
                   int64_t tokens, int64_t hidden, int64_t vocab, TW *dTable) {
  if (tokens > INT_MAX) {
    std::fprintf(stderr, "moert: embedding gradient: %lld tokens exceed the "
                         "32-bit token order\n",
                 static_cast<long long>(tokens));
    std::exit(1);
  }
  int64_t tiles = detail::embeddingTiles(tokens), offset = 0;
  int *hist = scratchAt<int>(ctx, offset, tiles * vocab);
  int *start = scratchAt<int>(ctx, offset, vocab + 1);
  int *order = scratchAt<int>(ctx, offset, tokens);
  if (tiles > 0) {
    MOERT_CUDA_CHECK(cudaMemsetAsync(hist, 0, tiles * vocab * sizeof(int),
                                     ctx.stream));
    detail::embeddingHistogramKernel<<<tiles, 256, 0, ctx.stream>>>(
        ids, tokens, vocab, hist);
  }
  detail::embeddingTilePrefixKernel<<<blocksFor(vocab), 256, 0, ctx.stream>>>(
      hist, tiles, vocab, start);
  detail::embeddingScanKernel<<<1, detail::kEmbeddingScanThreads, 0,
                                ctx.stream>>>(start, vocab);
  if (tiles > 0)
    detail::embeddingOrderKernel<<<tiles, detail::kEmbeddingTile, 0,
                                   ctx.stream>>>(ids, tokens, vocab, hist,
                                                 start, order);
  if (hidden % 4 == 0 && aligned16({dOut, dTable}))
    detail::embeddingRowsKernel<T, TW, true>
        <<<vocab, 256, 0, ctx.stream>>>(dOut, start, order, hidden, dTable);
  else
    detail::embeddingRowsKernel<T, TW, false>
        <<<vocab, 256, 0, ctx.stream>>>(dOut, start, order, hidden, dTable);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_EMBEDDING_CUH
