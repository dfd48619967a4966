//===- RouterBalanced.cuh - Balanced routing -------------------*- CUDA -*-===//
//
// Routing that gives every expert its capacity: fp64 softmax per token, a
// stable radix sort (cub) of all (token, expert) pairs by probability
// descending, then one warp assigns greedily with capacity T·k/E (the first
// T·k mod E experts one more), 32 pairs a step when they do not interact,
// and one pair at a time otherwise; then, in token order, each token left
// short takes its best expert with room, or a full expert's slot from the
// first token that can move to its best expert with room; finally each
// token's list is stably sorted by probability and renormalised.
//
// Scratch: probabilities [T·E] f64, sort keys 2·[T·E] u64, pair ids
// 2·[T·E] i32, counts [T] u8, cub's storage.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_ROUTER_BALANCED_CUH
#define MOERT_KERNELS_ROUTER_BALANCED_CUH

#include "moert/kernels/RouterCommon.cuh"

#include <cub/device/device_radix_sort.cuh>

#include <climits>

namespace moert::kernels {

namespace detail {

/// Balanced routing keeps per-token counts in shared memory up to this many
/// tokens, in scratch beyond.
constexpr int64_t kBalancedSharedTokens = 32768;

/// fp64 softmax of each row (max, then the sum in expert order), the sort
/// keys (~bits of p: ascending order is p descending) and pair ids t·E + e.
template <class T>
__global__ void balancedProbabilitiesKernel(const T *logits, int64_t tokens,
                                            int E, double *probs,
                                            unsigned long long *keys,
                                            int *ids) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < tokens;
       t += int64_t(gridDim.x) * blockDim.x) {
    const T *row = logits + t * E;
    double m = toFloat(row[0]);
    for (int e = 1; e < E; ++e)
      m = fmax(m, static_cast<double>(toFloat(row[e])));
    double total = 0.0;
    for (int e = 0; e < E; ++e)
      total += exp(static_cast<double>(toFloat(row[e])) - m);
    for (int e = 0; e < E; ++e) {
      double p = exp(static_cast<double>(toFloat(row[e])) - m) / total;
      int64_t i = t * E + e;
      probs[i] = p;
      keys[i] = ~static_cast<unsigned long long>(__double_as_longlong(p));
      ids[i] = static_cast<int>(i);
    }
  }
}

/// The experts token u holds, as bits (E <= 64).
__device__ inline unsigned long long balancedHeld(const int64_t *experts,
                                                  const unsigned char *count,
                                                  int64_t u, int k) {
  const int64_t *list = experts + u * k;
  int n = count[u];
  unsigned long long bits = 0;
  for (int j = 0; j < n; ++j)
    bits |= 1ull << list[j];
  return bits;
}

/// u's most probable expert (ties to the lower index) that has room and
/// that u does not hold (`held`), or -1.
__device__ inline int balancedBestFree(const double *probs,
                                       const int *capacity, int64_t u,
                                       unsigned long long held, int E) {
  int best = -1;
  double bestP = 0.0;
  for (int f = 0; f < E; ++f) {
    if (capacity[f] <= 0 || ((held >> f) & 1ull))
      continue;
    double p = probs[u * E + f];
    if (best < 0 || p > bestP) {
      best = f;
      bestP = p;
    }
  }
  return best;
}

/// One warp. Greedy: the pairs in `order` (probability descending, ties by
/// pair id) each go to their token while it has fewer than k experts and
/// the expert has capacity. Then, in token order, every token still short
/// takes, in its order of probability, the first expert it lacks that has
/// room, or whose slot a token u (the first in token order) holding it
/// gives up by moving to u's best expert with room; one expert a round
/// until it has k. Lists are left in assignment order (a moved token's
/// new expert takes the old one's place).
__global__ void __launch_bounds__(32)
    balancedAssignKernel(const int *order, const double *probs,
                         int64_t tokens, int E, int k,
                         unsigned char *scratchCounts, int64_t *experts) {
  extern __shared__ unsigned char sharedCounts[];
  __shared__ int capacity[kRouterMaxExperts];
  __shared__ int byProbability[kRouterMaxExperts];
  unsigned char *count = scratchCounts ? scratchCounts : sharedCounts;
  const int lane = threadIdx.x;
  const int64_t slots = tokens * k, pairs = tokens * E;
  for (int64_t t = lane; t < tokens; t += 32)
    count[t] = 0;
  for (int e = lane; e < E; e += 32)
    capacity[e] = static_cast<int>(slots / E + (e < slots % E ? 1 : 0));
  __syncwarp();

  // Greedy pass, 32 pairs a step. The pairs that can still be taken (token
  // short, expert with room: neither comes back) are all taken when no
  // token and no expert among them would overflow; else one at a time.
  int64_t left = slots;
  int next = lane < pairs ? order[lane] : 0; // the next step's pair, early
  for (int64_t base = 0; base < pairs && left > 0; base += 32) {
    int64_t i = base + lane;
    bool in = i < pairs;
    int pair = in ? next : 0;
    if (i + 32 < pairs)
      next = order[i + 32];
    int t = pair / E, e = pair % E;
    int have = in ? count[t] : k;
    int room = in ? capacity[e] : 0;
    bool candidate = in && have < k && room > 0;
    unsigned candidates = __ballot_sync(kRouterFullMask, candidate);
    if (candidates == 0)
      continue;
    unsigned sameToken =
        __match_any_sync(kRouterFullMask, candidate ? t : -1 - lane);
    unsigned sameExpert =
        __match_any_sync(kRouterFullMask, candidate ? e : -1 - lane);
    bool fits = !candidate || (__popc(sameToken) <= k - have &&
                               __popc(sameExpert) <= room);
    if (__all_sync(kRouterFullMask, fits)) {
      if (candidate) {
        unsigned below = (1u << lane) - 1u;
        experts[int64_t(t) * k + have + __popc(sameToken & below)] = e;
        if ((sameToken & below) == 0)
          count[t] = static_cast<unsigned char>(have + __popc(sameToken));
        if ((sameExpert & below) == 0)
          capacity[e] = room - __popc(sameExpert);
      }
      left -= __popc(candidates);
    } else {
      int taken = 0;
      for (int j = 0; j < 32; ++j) {
        int tj = __shfl_sync(kRouterFullMask, t, j);
        int ej = __shfl_sync(kRouterFullMask, e, j);
        if (lane == 0 && ((candidates >> j) & 1u)) {
          int c = count[tj];
          if (c < k && capacity[ej] > 0) {
            experts[int64_t(tj) * k + c] = ej;
            count[tj] = static_cast<unsigned char>(c + 1);
            --capacity[ej];
            ++taken;
          }
        }
      }
      left -= __shfl_sync(kRouterFullMask, taken, 0);
    }
    __syncwarp();
  }

  // Exchange pass. Decisions are warp-uniform (every lane reads the same
  // state); one lane writes, after a warp barrier.
  for (int64_t base = 0; base < tokens; base += 32) {
    int64_t mine = base + lane;
    unsigned shortOnes =
        __ballot_sync(kRouterFullMask, mine < tokens && count[mine] < k);
    while (shortOnes) {
      int64_t t = base + __ffs(shortOnes) - 1;
      shortOnes &= shortOnes - 1;
      const double *pt = probs + t * E;
      for (int e = lane; e < E; e += 32) {
        double pe = pt[e];
        int r = 0;
        for (int f = 0; f < E; ++f)
          r += pt[f] > pe || (pt[f] == pe && f < e);
        byProbability[r] = e;
      }
      __syncwarp();
      for (;;) {
        int have = count[t];
        if (have >= k)
          break;
        unsigned long long heldT = balancedHeld(experts, count, t, k);
        int chosen = -1;
        for (int r = 0; r < E && chosen < 0; ++r) {
          int e = byProbability[r];
          if ((heldT >> e) & 1ull)
            continue;
          int room = capacity[e];
          __syncwarp();
          if (room > 0) {
            if (lane == 0)
              capacity[e] = room - 1;
            chosen = e;
          } else {
            for (int64_t ub = 0; ub < tokens && chosen < 0; ub += 32) {
              int64_t u = ub + lane;
              unsigned long long heldU =
                  u < tokens && u != t ? balancedHeld(experts, count, u, k)
                                       : 0ull;
              int f = (heldU >> e) & 1ull
                          ? balancedBestFree(probs, capacity, u, heldU, E)
                          : -1;
              unsigned found = __ballot_sync(kRouterFullMask, f >= 0);
              if (found) {
                if (lane == __ffs(found) - 1) {
                  int64_t *list = experts + u * k;
                  int j = 0;
                  while (list[j] != e)
                    ++j;
                  list[j] = f;
                  --capacity[f];
                }
                chosen = e;
              }
            }
          }
          __syncwarp();
        }
        if (chosen < 0) {
          // Unreachable (see the op's definition: a short token always
          // finds an exchange); keep the routing valid regardless.
          for (int r = 0; r < E && chosen < 0; ++r)
            if (!((heldT >> byProbability[r]) & 1ull))
              chosen = byProbability[r];
          __syncwarp();
        }
        if (lane == 0) {
          experts[t * k + have] = chosen;
          count[t] = static_cast<unsigned char>(have + 1);
        }
        __syncwarp();
      }
    }
  }
}

/// Each token's experts stably sorted by probability, descending; gates are
/// their probabilities over the sum of the chosen.
template <class T>
__global__ void balancedFinishKernel(const double *probs, int64_t tokens,
                                     int E, int k, int64_t *experts,
                                     T *gates) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < tokens;
       t += int64_t(gridDim.x) * blockDim.x) {
    int64_t *list = experts + t * k;
    const double *pt = probs + t * E;
    for (int i = 1; i < k; ++i) {
      int64_t v = list[i];
      double pv = pt[v];
      int j = i - 1;
      while (j >= 0 && pt[list[j]] < pv) {
        list[j + 1] = list[j];
        --j;
      }
      list[j + 1] = v;
    }
    double sum = 0.0;
    for (int j = 0; j < k; ++j)
      sum += pt[list[j]];
    for (int j = 0; j < k; ++j)
      gates[t * k + j] =
          fromFloat<T>(static_cast<float>(pt[list[j]] / sum));
  }
}

/// cub's temporary storage for sorting `n` (key, id) pairs.
inline size_t balancedSortBytes(int64_t n) {
  size_t bytes = 0;
  cub::DoubleBuffer<unsigned long long> keys(nullptr, nullptr);
  cub::DoubleBuffer<int> ids(nullptr, nullptr);
  MOERT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, keys, ids, static_cast<int>(n), 0, 64));
  return bytes;
}

/// Balanced routing: probabilities and sort keys, the sort, the greedy
/// assignment, the per-token order and gates.
template <class T>
void routeBalanced(const Context &ctx, const T *logits, int64_t tokens, int e,
                   int kk, T *gates, int64_t *experts) {
  const int64_t E = e;
  int64_t n = tokens * E;
  if (n > INT_MAX) {
    std::fprintf(stderr, "moert: router: %lld (token, expert) pairs exceed "
                         "the 32-bit pair ids\n",
                 static_cast<long long>(n));
    std::exit(1);
  }
  int64_t offset = 0;
  double *probs = scratchAt<double>(ctx, offset, n);
  unsigned long long *keysA = scratchAt<unsigned long long>(ctx, offset, n);
  unsigned long long *keysB = scratchAt<unsigned long long>(ctx, offset, n);
  int *idsA = scratchAt<int>(ctx, offset, n);
  int *idsB = scratchAt<int>(ctx, offset, n);
  unsigned char *counts = scratchAt<unsigned char>(ctx, offset, tokens);
  size_t sortBytes = balancedSortBytes(n);
  void *sortStorage = scratchAt<char>(ctx, offset,
                                      static_cast<int64_t>(sortBytes));
  balancedProbabilitiesKernel<T><<<blocksFor(tokens), 256, 0, ctx.stream>>>(
      logits, tokens, e, probs, keysA, idsA);
  MOERT_CUDA_CHECK(cudaGetLastError());
  cub::DoubleBuffer<unsigned long long> keys(keysA, keysB);
  cub::DoubleBuffer<int> ids(idsA, idsB);
  MOERT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      sortStorage, sortBytes, keys, ids, static_cast<int>(n), 0, 64,
      ctx.stream));
  bool shared = tokens <= kBalancedSharedTokens;
  balancedAssignKernel<<<1, 32, shared ? static_cast<size_t>(tokens) : 0,
                         ctx.stream>>>(ids.Current(), probs, tokens, e, kk,
                                       shared ? nullptr : counts, experts);
  MOERT_CUDA_CHECK(cudaGetLastError());
  balancedFinishKernel<T><<<blocksFor(tokens), 256, 0, ctx.stream>>>(
      probs, tokens, e, kk, experts, gates);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

} // namespace detail

} // namespace moert::kernels

#endif // MOERT_KERNELS_ROUTER_BALANCED_CUH
