//===- ExpertParallel.cuh - Routed collectives and global routing statistics -*- CUDA -*-===//
//
// What expert parallelism's ops (docs/Dialects/Moe.md, Expert parallelism)
// lower to on a rank, through the Communicator of their group (Context::mesh)
// on ctx.stream. The oracle is the reference executor
// (lib/Reference/ExpertParallel.cpp): the same rows in the same order, the
// same sums.
//
// moe.dispatch, all_to_all dispatcher:
//   1. the rank's (token, slot) pairs are sorted stably by global expert
//      (Experts.cuh's routing: perm, pos, the E counts, read by the host),
//      so what goes to group rank d is one contiguous block ordered by
//      (local expert, slot), and gathered into a send buffer (and the gates);
//   2. the [E] counts are all-gathered over the group ([P, E]) and read by
//      the host: the rows it receives from each source;
//   3. Communicator::allToAllV of the rows (and of the gates) into a
//      staging buffer of per-source blocks;
//   4. the blocks are copied into the dispatch order (local expert, source,
//      slot), the local experts filled in, the [P, L] counts written.
//   The host waits on the stream once (the exchanged counts, which hold the
//   rank's own); the row count it returns is what the local experts run on.
// moe.dispatch, all_gather dispatcher: the group's tokens, expert choices
// (and gates) are all-gathered, sorted stably by expert over the group's
// slots (source-major), and the rank keeps its experts' range: the same
// rows in the same order. One host wait (the routing's counts).
// moe.combine, all_to_all: the reverse. `experts` is routed again (what
// comes back from each destination, in the routing's order) and the host
// reads its counts with the [P, L] counts (what goes back to each source)
// in one wait; each token's k slots are summed in slot order in fp64 and
// rounded once, as the reference does.
// moe.combine, all_gather: the rank scatter-adds its rows into a zero
// [P·T, d] buffer of the group's tokens (fp64 per token, rounded once) and
// reduce-scatters it over the group. One host wait.
// moe.token_shuffle: the group's tokens are all-gathered and each rank
// takes its rows of the permutation π(seed, step) (docs/partitioning.md),
// computed on the device by one thread from the step counter in device
// memory, once per step (the step's later shuffles find it in the rank's
// buffers): no host wait.
// moe.target_count, moe.load_balancing_stats, _loss_from_stats and
// _stats_grad are local kernels (their all-reduce is a shard.all_reduce).
//
// The counts the host reads go through pinned memory of the calling
// thread (a rank's thread), grown as needed. Scratch: each op's
// ...ScratchBytes, from the receive bound the memory plan reserves.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_EXPERT_PARALLEL_CUH
#define MOERT_KERNELS_EXPERT_PARALLEL_CUH

#include "moert/CounterRng.h"
#include "moert/kernels/Collectives.cuh"
#include "moert/kernels/Experts.cuh"
#include "moert/kernels/RouterLosses.cuh"

#include <vector>

namespace moert::kernels {

namespace detail {

/// `n` int64 of pinned host memory of the calling thread (grown as
/// needed; every rank runs on its own thread).
inline int64_t *expertParallelHostCounts(int64_t n) {
  thread_local int64_t *buffer = nullptr;
  thread_local int64_t size = 0;
  if (n > size) {
    if (buffer)
      MOERT_CUDA_CHECK(cudaFreeHost(buffer));
    MOERT_CUDA_CHECK(cudaMallocHost(&buffer, n * sizeof(int64_t)));
    size = n;
  }
  return buffer;
}

/// Copies `n` device int64 to the thread's pinned buffer and waits.
inline const int64_t *readCounts(const Context &ctx, const int64_t *device,
                                 int64_t n) {
  int64_t *host = expertParallelHostCounts(n);
  copyCountsToHost(ctx, host, device, n);
  MOERT_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  return host;
}

__global__ void fillIndexKernel(int64_t *out, int64_t n, int64_t value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = value;
}

inline void fillIndex(const Context &ctx, int64_t *out, int64_t n,
                      int64_t value) {
  if (n == 0)
    return;
  fillIndexKernel<<<blocksFor(n), 256, 0, ctx.stream>>>(out, n, value);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// counts[s, l] = the slots of source s (slots [s·S, (s+1)·S) of the
/// group's) that chose expert first + l.
__global__ void sourceCountsKernel(const int64_t *experts, int64_t P,
                                   int64_t S, int64_t L, int64_t first,
                                   int64_t *counts) {
  int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= P * L)
    return;
  int64_t s = i / L, l = i % L, n = 0;
  for (int64_t q = s * S; q < (s + 1) * S; ++q)
    n += experts[q] == first + l;
  counts[i] = n;
}

/// out[t, c] = Σ_j rows[pos[t·k + j] - rowBase, c] over the slots j whose
/// expert is in [first, last) (all slots when experts is null), in slot
/// order in fp64, rounded once.
template <class T>
__global__ void sumSlotsKernel(const T *rows, const int *pos,
                               const int64_t *experts, int64_t tokens,
                               int64_t k, int64_t width, int64_t first,
                               int64_t last, int64_t rowBase, T *out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
       i < tokens * width; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t t = i / width, c = i % width;
    double sum = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      int64_t q = t * k + j;
      if (experts && (experts[q] < first || experts[q] >= last))
        continue;
      sum += static_cast<double>(toFloat(rows[(pos[q] - rowBase) * width + c]));
    }
    out[i] = fromFloat<T>(static_cast<float>(sum));
  }
}

/// One thread: the rows the shuffle's output reads, for π(seed, *step) of
/// [0, n) (docs/partitioning.md): forward[m] = π[m], inverse[π[m]] = m.
/// `key` holds (step, seed, n) of what the buffers hold; a step's later
/// shuffles find it and return at once.
__global__ void tokenPermutationKernel(const int64_t *step, uint64_t seed,
                                       int64_t n, int64_t *key,
                                       int64_t *forward, int64_t *inverse) {
  const int64_t s = static_cast<int64_t>(seed);
  if (key[0] == *step && key[1] == s && key[2] == n)
    return;
  for (int64_t i = 0; i < n; ++i)
    forward[i] = i;
  uint64_t stream =
      splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(*step));
  for (int64_t i = n - 1; i > 0; --i) {
    int64_t j = static_cast<int64_t>(
        splitmix64(stream ^ static_cast<uint64_t>(i)) %
        static_cast<uint64_t>(i + 1));
    int64_t swap = forward[i];
    forward[i] = forward[j];
    forward[j] = swap;
  }
  for (int64_t m = 0; m < n; ++m)
    inverse[forward[m]] = m;
  key[0] = *step;
  key[1] = s;
  key[2] = n;
}

/// The calling thread's (a rank's) device buffers of the shuffle's
/// permutation, kept across ops and steps: the key, forward and inverse
/// rows of up to `capacity` group tokens.
struct TokenPermutation {
  int64_t *key = nullptr, *forward = nullptr, *inverse = nullptr;
  int64_t capacity = 0;
  ~TokenPermutation() {
    // The process may be tearing the device down already: nothing to check.
    cudaFree(key);
  }
};

inline TokenPermutation &tokenPermutation(const Context &ctx, int64_t n) {
  thread_local TokenPermutation p;
  if (n > p.capacity) {
    if (p.key)
      MOERT_CUDA_CHECK(cudaFree(p.key));
    MOERT_CUDA_CHECK(cudaMalloc(&p.key, (3 + 2 * n) * sizeof(int64_t)));
    // n = -1 never matches: the first shuffle computes.
    MOERT_CUDA_CHECK(cudaMemsetAsync(p.key, 0xff, 3 * sizeof(int64_t),
                                     ctx.stream));
    p.forward = p.key + 3;
    p.inverse = p.forward + n;
    p.capacity = n;
  }
  return p;
}

/// out[i, :] = all[source[first + i], :], i < tokens.
template <class T>
__global__ void gatherRowsKernel(const T *all, const int64_t *source,
                                 int64_t first, int64_t tokens, int64_t width,
                                 T *out) {
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
       x < tokens * width; x += int64_t(gridDim.x) * blockDim.x) {
    int64_t i = x / width, c = x % width;
    out[x] = all[source[first + i] * width + c];
  }
}

__global__ void targetCountKernel(const int64_t *labels, int64_t batch,
                                  int64_t seq, int64_t ignoreIndex,
                                  float *count) {
  __shared__ long long partial[256];
  long long n = 0;
  for (int64_t i = threadIdx.x; i < batch * (seq - 1); i += blockDim.x) {
    int64_t b = i / (seq - 1), t = i % (seq - 1);
    n += labels[b * seq + t + 1] != ignoreIndex;
  }
  partial[threadIdx.x] = n;
  __syncthreads();
  if (threadIdx.x == 0) {
    long long total = 0;
    for (int j = 0; j < blockDim.x; ++j)
      total += partial[j];
    *count = static_cast<float>(total);
  }
}

/// stats[e] = choices of expert e, stats[E + e] = its summed softmax, over
/// the partials of loadBalancingPartialKernel, in partial order.
__global__ void loadBalancingStatsKernel(const double *probPartial,
                                         const int *countPartial,
                                         int64_t partials, int E,
                                         float *stats) {
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    double prob = 0.0;
    long long count = 0;
    for (int64_t b = 0; b < partials; ++b) {
      prob += probPartial[b * E + e];
      count += countPartial[b * E + e];
    }
    stats[e] = static_cast<float>(count);
    stats[E + e] = static_cast<float>(prob);
  }
}

/// N = Σ_e stats[0, e] / k rows (0 when the statistics count none).
__device__ inline double statsRows(const float *stats, int E, int k) {
  double slots = 0.0;
  for (int e = 0; e < E; ++e)
    slots += stats[e];
  return slots / k;
}

__global__ void loadBalancingLossFromStatsKernel(const float *stats, int E,
                                                 int k, float *loss) {
  double rows = statsRows(stats, E, k), total = 0.0;
  if (rows > 0.0)
    for (int e = 0; e < E; ++e)
      total += (stats[e] / rows) * (stats[E + e] / rows);
  *loss = static_cast<float>(total * E);
}

/// centred[e] = (f_e - mean f) · scale · E / N, f = stats[0] / N: the
/// gradient kernel's fractions with its coefficient folded in.
__global__ void loadBalancingCentredKernel(const float *stats, int E, int k,
                                           double scale, double *centred) {
  double rows = statsRows(stats, E, k), mean = 0.0;
  if (!(rows > 0.0)) {
    for (int e = 0; e < E; ++e)
      centred[e] = 0.0;
    return;
  }
  for (int e = 0; e < E; ++e)
    mean += stats[e] / rows;
  mean /= E;
  for (int e = 0; e < E; ++e)
    centred[e] = (stats[e] / rows - mean) * scale * E / rows;
}

struct SendPlan {
  std::vector<size_t> sendCounts, sendOffsets, recvCounts, recvOffsets;
};

inline void scaleRows(SendPlan &plan, int64_t width) {
  for (std::vector<size_t> *v : {&plan.sendCounts, &plan.sendOffsets,
                                 &plan.recvCounts, &plan.recvOffsets})
    for (size_t &x : *v)
      x *= static_cast<size_t>(width);
}

} // namespace detail

/// moe.dispatch with the all_to_all dispatcher (see the file comment):
/// input [tokens, H], experts and gates (may be null) [tokens, k] over the
/// group's P·L experts; writes rows [R, H], rowExperts [R, 1], counts
/// [P, L] and rowGates [R, 1] and returns R (at most rowBound).
template <class T>
int64_t dispatchAllToAll(const Context &ctx, MeshAxes axes, int64_t P,
                         const T *input, const int64_t *experts,
                         const T *gates, int64_t tokens, int64_t k, int64_t H,
                         int64_t L, int64_t rowBound, T *rows,
                         int64_t *rowExperts, int64_t *counts, T *rowGates) {
  Communicator &group = meshGroup(ctx, axes, P, "moe.dispatch");
  const int64_t E = P * L, pairs = tokens * k, me = group.rank();
  int64_t offset = 0;
  detail::ExpertsRouting r =
      detail::expertsRouteOnDevice(ctx, experts, pairs, E, offset);
  T *sendRows = scratchAt<T>(ctx, offset, pairs * H);
  T *sendGates = scratchAt<T>(ctx, offset, pairs);
  int64_t *groupCounts = scratchAt<int64_t>(ctx, offset, P * E);
  T *recvRows = scratchAt<T>(ctx, offset, rowBound * H);
  T *recvGates = scratchAt<T>(ctx, offset, rowBound);
  detail::expertsGather(ctx, input, r.perm, pairs, H, k, sendRows);
  if (gates)
    detail::expertsGather(ctx, gates, r.perm, pairs, 1, 1, sendGates);
  checkCollective(group.allGather(r.deviceCounts, groupCounts, E,
                                  DataType::I64, ctx.stream),
                  "moe.dispatch");
  // One host wait: the group's counts hold this rank's own.
  const int64_t *all = detail::readCounts(ctx, groupCounts, P * E);
  detail::expertsSetCounts(r, all + me * E, pairs, E);
  auto received = [&](int64_t s, int64_t l) { return all[s * E + me * L + l]; };
  detail::SendPlan plan;
  size_t total = 0;
  for (int64_t d = 0; d < P; ++d) {
    plan.sendOffsets.push_back(r.offsets[d * L]);
    plan.sendCounts.push_back(r.offsets[(d + 1) * L] - r.offsets[d * L]);
    size_t n = 0;
    for (int64_t l = 0; l < L; ++l)
      n += received(d, l);
    plan.recvOffsets.push_back(total);
    plan.recvCounts.push_back(n);
    total += n;
  }
  if (static_cast<int64_t>(total) > rowBound) {
    std::fprintf(stderr, "moert: moe.dispatch: %zu rows received, the bound "
                         "is %lld\n",
                 total, static_cast<long long>(rowBound));
    std::exit(1);
  }
  if (gates) {
    checkCollective(group.allToAllV(sendGates, plan.sendCounts,
                                    plan.sendOffsets, recvGates,
                                    plan.recvCounts, plan.recvOffsets,
                                    dataTypeOf<T>(), ctx.stream),
                    "moe.dispatch");
  }
  detail::scaleRows(plan, H);
  checkCollective(group.allToAllV(sendRows, plan.sendCounts, plan.sendOffsets,
                                  recvRows, plan.recvCounts, plan.recvOffsets,
                                  dataTypeOf<T>(), ctx.stream),
                  "moe.dispatch");
  // Per-source blocks (local expert, slot) into (local expert, source, slot).
  int64_t row = 0;
  for (int64_t l = 0; l < L; ++l)
    for (int64_t s = 0; s < P; ++s) {
      int64_t n = received(s, l), at = plan.recvOffsets[s] / H;
      for (int64_t m = 0; m < l; ++m)
        at += received(s, m);
      if (n == 0)
        continue;
      MOERT_CUDA_CHECK(cudaMemcpyAsync(rows + row * H, recvRows + at * H,
                                       n * H * sizeof(T),
                                       cudaMemcpyDeviceToDevice, ctx.stream));
      if (gates)
        MOERT_CUDA_CHECK(cudaMemcpyAsync(rowGates + row, recvGates + at,
                                         n * sizeof(T),
                                         cudaMemcpyDeviceToDevice,
                                         ctx.stream));
      detail::fillIndex(ctx, rowExperts + row, n, l);
      row += n;
    }
  MOERT_CUDA_CHECK(cudaMemcpy2DAsync(
      counts, L * sizeof(int64_t), groupCounts + me * L, E * sizeof(int64_t),
      L * sizeof(int64_t), P, cudaMemcpyDeviceToDevice, ctx.stream));
  return row;
}

/// moe.dispatch with the all_gather dispatcher: the same results as
/// dispatchAllToAll.
template <class T>
int64_t dispatchAllGather(const Context &ctx, MeshAxes axes, int64_t P,
                          const T *input, const int64_t *experts,
                          const T *gates, int64_t tokens, int64_t k,
                          int64_t H, int64_t L, int64_t rowBound, T *rows,
                          int64_t *rowExperts, int64_t *counts, T *rowGates) {
  Communicator &group = meshGroup(ctx, axes, P, "moe.dispatch");
  const int64_t E = P * L, pairs = tokens * k, me = group.rank();
  int64_t offset = 0;
  T *allInput = scratchAt<T>(ctx, offset, P * tokens * H);
  int64_t *allExperts = scratchAt<int64_t>(ctx, offset, P * pairs);
  T *allGates = scratchAt<T>(ctx, offset, P * pairs);
  checkCollective(group.allGather(input, allInput, tokens * H,
                                  dataTypeOf<T>(), ctx.stream),
                  "moe.dispatch");
  checkCollective(group.allGather(experts, allExperts, pairs, DataType::I64,
                                  ctx.stream),
                  "moe.dispatch");
  if (gates)
    checkCollective(group.allGather(gates, allGates, pairs, dataTypeOf<T>(),
                                    ctx.stream),
                    "moe.dispatch");
  detail::ExpertsRouting r =
      detail::expertsRoute(ctx, allExperts, P * pairs, E, offset);
  int64_t start = r.offsets[me * L], n = r.offsets[(me + 1) * L] - start;
  if (n > rowBound) {
    std::fprintf(stderr, "moert: moe.dispatch: %lld rows received, the "
                         "bound is %lld\n",
                 static_cast<long long>(n), static_cast<long long>(rowBound));
    std::exit(1);
  }
  detail::expertsGather(ctx, allInput, r.perm + start, n, H, k, rows);
  if (gates)
    detail::expertsGather(ctx, allGates, r.perm + start, n, 1, 1, rowGates);
  for (int64_t l = 0; l < L; ++l)
    detail::fillIndex(ctx, rowExperts + (r.offsets[me * L + l] - start),
                      r.counts[me * L + l], l);
  detail::sourceCountsKernel<<<blocksFor(P * L), 256, 0, ctx.stream>>>(
      allExperts, P, pairs, L, me * L, counts);
  MOERT_CUDA_CHECK(cudaGetLastError());
  return n;
}

/// moe.combine with the all_to_all dispatcher: rows [R, width] in dispatch
/// order back to their slots of experts [tokens, k]; out[t] = Σ_j of the
/// token's slots. `counts` is the dispatch's [P, L].
template <class T>
void combineAllToAll(const Context &ctx, MeshAxes axes, int64_t P,
                     const T *rows, const int64_t *experts,
                     const int64_t *counts, int64_t tokens, int64_t k,
                     int64_t width, int64_t L, int64_t rowBound, T *out) {
  Communicator &group = meshGroup(ctx, axes, P, "moe.combine");
  const int64_t E = P * L, pairs = tokens * k;
  int64_t offset = 0;
  detail::ExpertsRouting r =
      detail::expertsRouteOnDevice(ctx, experts, pairs, E, offset);
  T *back = scratchAt<T>(ctx, offset, pairs * width);
  T *send = scratchAt<T>(ctx, offset, rowBound * width);
  // One host wait: what goes back ([P, L]) and what comes back (the
  // routing's [E]).
  int64_t *host = detail::expertParallelHostCounts(P * L + E);
  detail::copyCountsToHost(ctx, host, counts, P * L);
  detail::copyCountsToHost(ctx, host + P * L, r.deviceCounts, E);
  MOERT_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  detail::expertsSetCounts(r, host + P * L, pairs, E);
  const int64_t *sent = host;
  // The received rows are in (local expert, source) blocks; source s gets
  // its blocks back in local-expert order.
  std::vector<int64_t> blockStart(P * L);
  int64_t row = 0;
  for (int64_t l = 0; l < L; ++l)
    for (int64_t s = 0; s < P; ++s) {
      blockStart[s * L + l] = row;
      row += sent[s * L + l];
    }
  detail::SendPlan plan;
  int64_t at = 0;
  for (int64_t s = 0; s < P; ++s) {
    plan.sendOffsets.push_back(at);
    for (int64_t l = 0; l < L; ++l) {
      int64_t n = sent[s * L + l];
      if (n > 0)
        MOERT_CUDA_CHECK(cudaMemcpyAsync(
            send + at * width, rows + blockStart[s * L + l] * width,
            n * width * sizeof(T), cudaMemcpyDeviceToDevice, ctx.stream));
      at += n;
    }
    plan.sendCounts.push_back(at - plan.sendOffsets.back());
    plan.recvOffsets.push_back(r.offsets[s * L]);
    plan.recvCounts.push_back(r.offsets[(s + 1) * L] - r.offsets[s * L]);
  }
  detail::scaleRows(plan, width);
  checkCollective(group.allToAllV(send, plan.sendCounts, plan.sendOffsets,
                                  back, plan.recvCounts, plan.recvOffsets,
                                  dataTypeOf<T>(), ctx.stream),
                  "moe.combine");
  detail::sumSlotsKernel<T><<<blocksFor(tokens * width), 256, 0,
                              ctx.stream>>>(back, r.pos, nullptr, tokens, k,
                                            width, 0, E, 0, out);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// moe.combine with the all_gather dispatcher: the same result as
/// combineAllToAll.
template <class T>
void combineAllGather(const Context &ctx, MeshAxes axes, int64_t P,
                      const T *rows, const int64_t *experts,
                      const int64_t *counts, int64_t tokens, int64_t k,
                      int64_t width, int64_t L, int64_t rowBound, T *out) {
  (void)counts; // the gathered choices say where every row goes
  (void)rowBound;
  Communicator &group = meshGroup(ctx, axes, P, "moe.combine");
  const int64_t E = P * L, pairs = tokens * k, me = group.rank();
  int64_t offset = 0;
  int64_t *allExperts = scratchAt<int64_t>(ctx, offset, P * pairs);
  T *partial = scratchAt<T>(ctx, offset, P * tokens * width);
  checkCollective(group.allGather(experts, allExperts, pairs, DataType::I64,
                                  ctx.stream),
                  "moe.combine");
  detail::ExpertsRouting r =
      detail::expertsRoute(ctx, allExperts, P * pairs, E, offset);
  detail::sumSlotsKernel<T><<<blocksFor(P * tokens * width), 256, 0,
                              ctx.stream>>>(
      rows, r.pos, allExperts, P * tokens, k, width, me * L, (me + 1) * L,
      r.offsets[me * L], partial);
  MOERT_CUDA_CHECK(cudaGetLastError());
  checkCollective(group.reduceScatterSum(partial, out, tokens * width,
                                         dataTypeOf<T>(), ctx.stream),
                  "moe.combine");
}

/// moe.token_shuffle: input [tokens, width] of this group rank; out its
/// rows of the group's tokens permuted by π(seed, *step) (or the inverse).
/// The permutation is computed once per step (by the step's first
/// shuffle) into device buffers the rank keeps.
template <class T>
void tokenShuffle(const Context &ctx, MeshAxes axes, int64_t P,
                  const T *input, const int64_t *step, uint64_t seed,
                  bool inverse, int64_t tokens, int64_t width, T *out) {
  Communicator &group = meshGroup(ctx, axes, P, "moe.token_shuffle");
  int64_t offset = 0, n = P * tokens;
  T *all = scratchAt<T>(ctx, offset, n * width);
  detail::TokenPermutation &permutation = detail::tokenPermutation(ctx, n);
  checkCollective(group.allGather(input, all, tokens * width, dataTypeOf<T>(),
                                  ctx.stream),
                  "moe.token_shuffle");
  detail::tokenPermutationKernel<<<1, 1, 0, ctx.stream>>>(
      step, seed, n, permutation.key, permutation.forward,
      permutation.inverse);
  MOERT_CUDA_CHECK(cudaGetLastError());
  detail::gatherRowsKernel<T><<<blocksFor(tokens * width), 256, 0,
                                ctx.stream>>>(
      all, inverse ? permutation.inverse : permutation.forward,
      group.rank() * tokens, tokens, width, out);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// moe.target_count: the labels [batch, seq] a next-token loss counts
/// (position t + 1 < seq not ignored), as a float scalar.
inline void targetCount(const Context &ctx, const int64_t *labels,
                        int64_t batch, int64_t seq, int64_t ignoreIndex,
                        float *count) {
  detail::targetCountKernel<<<1, 256, 0, ctx.stream>>>(labels, batch, seq,
                                                       ignoreIndex, count);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// moe.load_balancing_stats over `layers` layers' logits (host array of
/// device pointers, each [tokens, E]): stats [2, E].
template <class T>
void loadBalancingStats(const Context &ctx, const T *const *logits,
                        int64_t layers, int64_t tokens, int64_t E, int64_t k,
                        float *stats) {
  using namespace detail;
  routerCheckLayers("loadBalancingStats", layers, tokens, E);
  routerCheckShape("loadBalancingStats", E, k);
  RouterLossScratch s = lossScratch(ctx, layers, tokens, E);
  const int64_t partials =
      launchLoadBalancingPartials(ctx, logits, layers, tokens, E, k, s);
  loadBalancingStatsKernel<<<1, 256, 0, ctx.stream>>>(
      s.probPartial, s.countPartial, partials, static_cast<int>(E), stats);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// moe.load_balancing_loss_from_stats: E · Σ_e f_e · P_e of stats [2, E].
inline void loadBalancingLossFromStats(const Context &ctx, const float *stats,
                                       int64_t E, int64_t k, float *loss) {
  detail::loadBalancingLossFromStatsKernel<<<1, 1, 0, ctx.stream>>>(
      stats, static_cast<int>(E), static_cast<int>(k), loss);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// moe.load_balancing_stats_grad: scale times the loss's gradient with
/// respect to each layer's logits, from the global stats [2, E].
template <class T>
void loadBalancingStatsGrad(const Context &ctx, const T *const *logits,
                            int64_t layers, int64_t tokens, int64_t E,
                            int64_t k, const float *stats, double scale,
                            T *const *dLogits) {
  using namespace detail;
  routerCheckLayers("loadBalancingStatsGrad", layers, tokens, E);
  routerCheckShape("loadBalancingStatsGrad", E, k);
  RouterLossScratch s = lossScratch(ctx, layers, tokens, E);
  loadBalancingCentredKernel<<<1, 1, 0, ctx.stream>>>(
      stats, static_cast<int>(E), static_cast<int>(k), scale, s.centred);
  MOERT_CUDA_CHECK(cudaGetLastError());
  const int W = routerGroupWidth(E);
  forLayerChunks(logits, layers, [&](int first, int count, auto chunk) {
    RouterLayers<T *> out{};
    for (int i = 0; i < count; ++i)
      out.p[i] = dLogits[first + i];
    loadBalancingGradKernel<T>
        <<<dim3(routerGroupBlocks(tokens, W), count), kRouterThreads, 0,
           ctx.stream>>>(chunk, out, tokens, static_cast<int>(E), W,
                         s.centred, 1.0f);
    MOERT_CUDA_CHECK(cudaGetLastError());
  });
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_EXPERT_PARALLEL_CUH
