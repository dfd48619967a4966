//===- Embedding.cuh - Token embedding lookup and its gradient --*- CUDA -*-===//
//
// moe.embedding gathers rows of the table; moe.embedding_grad scatter-adds
// the output gradient back into a [vocab, hidden] table gradient. The
// scatter accumulates in fp32 with atomics (order-dependent in the last bit,
// like PyTorch's embedding backward) and rounds to the gradient's type once.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_EMBEDDING_CUH
#define MOERT_KERNELS_EMBEDDING_CUH

#include "moert/kernels/Common.cuh"

namespace moert::kernels {

namespace detail {
template <class T>
__global__ void embeddingKernel(const T *table, const int64_t *ids,
                                int64_t tokens, int64_t hidden, int64_t vocab,
                                T *out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
       i < tokens * hidden; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t t = i / hidden, h = i % hidden;
    int64_t id = ids[t];
    // Out-of-range ids were rejected by the host when the batch was read;
    // clamp so a bad id can never read outside the table.
    id = id < 0 ? 0 : (id >= vocab ? vocab - 1 : id);
    out[i] = table[id * hidden + h];
  }
}

__global__ void embeddingGradKernel(const int64_t *ids, const float *dOutF,
                                    const bf16 *dOutB, int64_t tokens,
                                    int64_t hidden, int64_t vocab,
                                    float *dTable) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
       i < tokens * hidden; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t t = i / hidden, h = i % hidden;
    int64_t id = ids[t];
    if (id < 0 || id >= vocab)
      continue;
    float g = dOutF ? dOutF[i] : __bfloat162float(dOutB[i]);
    atomicAdd(&dTable[id * hidden + h], g);
  }
}
} // namespace detail

/// out[t, :] = table[ids[t], :] for `tokens` ids.
template <class T>
void embedding(const Context &ctx, const T *table, const int64_t *ids,
               int64_t tokens, int64_t hidden, int64_t vocab, T *out) {
  detail::embeddingKernel<<<blocksFor(tokens * hidden), 256, 0, ctx.stream>>>(
      table, ids, tokens, hidden, vocab, out);
}

/// dTable = Σ over tokens of dOut[t] scattered to row ids[t] (overwrites);
/// dTable is T or fp32.
template <class T, class TW>
void embeddingGrad(const Context &ctx, const int64_t *ids, const T *dOut,
                   int64_t tokens, int64_t hidden, int64_t vocab, TW *dTable) {
  float *accumulator;
  if constexpr (sizeof(TW) == 4) {
    accumulator = reinterpret_cast<float *>(dTable);
  } else {
    int64_t offset = 0;
    accumulator = scratchAt<float>(ctx, offset, vocab * hidden);
  }
  MOERT_CUDA_CHECK(cudaMemsetAsync(accumulator, 0, vocab * hidden * 4,
                                   ctx.stream));
  const float *dOutF = nullptr;
  const bf16 *dOutB = nullptr;
  if constexpr (sizeof(T) == 4)
    dOutF = reinterpret_cast<const float *>(dOut);
  else
    dOutB = reinterpret_cast<const bf16 *>(dOut);
  detail::embeddingGradKernel<<<blocksFor(tokens * hidden), 256, 0,
                                ctx.stream>>>(ids, dOutF, dOutB, tokens,
                                              hidden, vocab, accumulator);
  if constexpr (sizeof(TW) != 4)
    castFromFloat<<<blocksFor(vocab * hidden), 256, 0, ctx.stream>>>(
        accumulator, vocab * hidden, dTable);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_EMBEDDING_CUH
