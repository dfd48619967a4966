//===- Router.cuh - Training routing, router losses, expert counts -*- CUDA -*-===//
//
// moe.router (training routing) and moe.router_grad, Hugging Face's Mixtral
// load-balancing loss (moe.load_balancing_loss and its gradient), the router
// z-loss (moe.router_z_loss and its gradient) and moe.expert_counts.
// Logits are [tokens, E] (E <= 64), gates and expert indices [tokens, k]
// (k <= E), expert indices int64. Gradients overwrite their outputs.
//
// Per-token work is done by a group of W lanes of one warp (W = the next
// power of two >= E, at most 32; a lane owns experts g and g + W), so a row
// is read coalesced and its softmax and top-k are warp shuffles. Top-k
// compares the logits themselves (the softmax is monotonic), ties to the
// lower expert index; the renormalised gates are exp(x - x_top1) over the
// sum of those of the chosen experts (the softmax denominator cancels).
//
//   AuxLoss, None  one kernel, top-k as above.
//   Sinkhorn       Megatron-Core: cost = exp(logits) in fp64 (scratch); one
//                  1024-thread block alternates the row and column scalings
//                  d0, d1 in fp64 until the mean change of d1 is <= 1e-4 (at
//                  most 10001 sweeps), then a per-token kernel takes the
//                  top-k of float(d1·cost·d0) and gates with the softmax
//                  (the sigmoid when k = 1), not renormalised. fp64 here so
//                  that the number of sweeps, which decides the choice,
//                  is the oracle's.
//   Balanced       fp64 softmax per token, a stable radix sort (cub) of all
//                  (token, expert) pairs by probability descending, then one
//                  warp assigns greedily with capacity T·k/E (the first
//                  T·k mod E experts one more), 32 pairs a step when they do
//                  not interact, and one pair at a time otherwise; then, in
//                  token order, each token left short takes its best expert
//                  with room, or a full expert's slot from the first token
//                  that can move to its best expert with room; finally each
//                  token's list is stably sorted by probability and
//                  renormalised.
//
// routerGrad: softmax backward of dp, where dp = dGates at the chosen
// experts (Sinkhorn), through the renormalisation (the other modes), and for
// Sinkhorn with k = 1 the sigmoid's derivative at the chosen expert only.
// The losses concatenate all layers' tokens (n = layers · tokens rows);
// per-block partial sums go to scratch and one block reduces them in a
// fixed order, so they are deterministic (no float atomics). Layer pointer
// arrays are host arrays: they travel by value in kernel parameters, 64
// layers per launch.
//
// Scratch (routerScratchBytes is the most any of these needs):
//   router Sinkhorn   cost [T·E] f64, d0 [T] f64, d1 [E] f64
//   router Balanced   probabilities [T·E] f64, sort keys 2·[T·E] u64,
//                     pair ids 2·[T·E] i32, counts [T] u8, cub's storage
//   losses            per-block partials (P = layers · ceil(T/1024)):
//                     [P·E] f64, [P·E] i32, [P] f64, and [E] f64
//   routerGrad, expertCounts: none.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_ROUTER_CUH
#define MOERT_KERNELS_ROUTER_CUH

#include "moert/kernels/Common.cuh"

#include <cub/device/device_radix_sort.cuh>

#include <climits>

namespace moert::kernels {

/// The load-balancing modes of moe.router.
enum class Routing { AuxLoss, Sinkhorn, Balanced, None };

namespace detail {

constexpr unsigned kRouterFullMask = 0xffffffffu;
constexpr int kRouterThreads = 256;
constexpr int kRouterMaxExperts = 64;
constexpr int64_t kRouterLossTokensPerBlock = 1024;
constexpr int kRouterLayersPerLaunch = 64;
constexpr double kSinkhornTolerance = 1e-4;
constexpr double kSinkhornEpsilon = 1e-8;
constexpr int kSinkhornMaxIteration = 10000;
constexpr int kSinkhornThreads = 1024;
/// Balanced routing keeps per-token counts in shared memory up to this many
/// tokens, in scratch beyond.
constexpr int64_t kBalancedSharedTokens = 32768;

/// Pointers of up to kRouterLayersPerLaunch layers, passed by value.
template <class P> struct RouterLayers {
  P p[kRouterLayersPerLaunch];
};

/// Lanes per token: the next power of two >= E, at most 32.
inline int routerGroupWidth(int64_t E) {
  int w = 1;
  while (w < E && w < 32)
    w <<= 1;
  return w;
}

inline void routerCheckShape(const char *what, int64_t E, int64_t k) {
  if (E < 1 || E > kRouterMaxExperts || k < 1 || k > E) {
    std::fprintf(stderr,
                 "moert: %s: needs 1 <= k <= E <= %d, got E = %lld, k = %lld\n",
                 what, kRouterMaxExperts, static_cast<long long>(E),
                 static_cast<long long>(k));
    std::exit(1);
  }
}

/// Blocks of kRouterThreads for one W-lane group per token.
inline int routerGroupBlocks(int64_t tokens, int W) {
  return blocksFor(tokens * W, kRouterThreads);
}

//===----------------------------------------------------------------------===//
// Group primitives: all lanes of the warp execute them (W divides 32 and
// xor offsets below W stay inside the group). Every lane of a group ends
// with the same bits (IEEE addition and max are commutative).
//===----------------------------------------------------------------------===//

__device__ inline float routerGroupSum(float v, int W) {
  for (int o = W >> 1; o > 0; o >>= 1)
    v += __shfl_xor_sync(kRouterFullMask, v, o);
  return v;
}

__device__ inline float routerGroupMax(float v, int W) {
  for (int o = W >> 1; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kRouterFullMask, v, o));
  return v;
}

/// The largest `v` of the group, ties to the lower `index`.
__device__ inline void routerGroupArgMax(float &v, int &index, int W) {
  for (int o = W >> 1; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(kRouterFullMask, v, o);
    int oi = __shfl_xor_sync(kRouterFullMask, index, o);
    if (ov > v || (ov == v && oi < index)) {
      v = ov;
      index = oi;
    }
  }
}

/// One token's row as its group holds it: lane g owns experts g and g + W.
struct RouterRow {
  float x[2];
  int e[2];
  bool valid[2];
};

template <class T>
__device__ inline RouterRow routerLoadRow(const T *logits, int64_t t, bool ok,
                                          int E, int W, int g) {
  RouterRow r;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    r.e[i] = g + i * W;
    r.valid[i] = ok && r.e[i] < E;
    r.x[i] = r.valid[i] ? toFloat(logits[t * E + r.e[i]]) : -INFINITY;
  }
  return r;
}

/// p = softmax of the row (0 where not valid).
__device__ inline void routerSoftmax(const RouterRow &r, int W, float p[2]) {
  float m = routerGroupMax(fmaxf(r.x[0], r.x[1]), W);
  float q[2], local = 0.0f;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    q[i] = r.valid[i] ? expf(r.x[i] - m) : 0.0f;
    local += q[i];
  }
  float sum = routerGroupSum(local, W);
#pragma unroll
  for (int i = 0; i < 2; ++i)
    p[i] = r.valid[i] ? q[i] / sum : 0.0f;
}

/// logsumexp of the row.
__device__ inline float routerLogSumExp(const RouterRow &r, int W) {
  float m = routerGroupMax(fmaxf(r.x[0], r.x[1]), W);
  float local = 0.0f;
#pragma unroll
  for (int i = 0; i < 2; ++i)
    local += r.valid[i] ? expf(r.x[i] - m) : 0.0f;
  return m + logf(routerGroupSum(local, W));
}

/// rank[i] = the position of expert e[i] among the k largest `score`s of the
/// row (ties to the lower expert), or -1. `top` is the largest score.
__device__ inline void routerTopK(const float score[2], const RouterRow &r,
                                  int k, int W, int rank[2], float &top) {
  bool open[2] = {r.valid[0], r.valid[1]};
  rank[0] = rank[1] = -1;
  top = -INFINITY;
  for (int j = 0; j < k; ++j) {
    float best = -INFINITY;
    int index = INT_MAX;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (open[i] && (index == INT_MAX || score[i] > best)) {
        best = score[i];
        index = r.e[i];
      }
    routerGroupArgMax(best, index, W);
    if (j == 0)
      top = best;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (open[i] && r.e[i] == index) {
        open[i] = false;
        rank[i] = j;
      }
  }
}

//===----------------------------------------------------------------------===//
// Routing: top-k (AuxLoss, None)
//===----------------------------------------------------------------------===//

/// Loop header of the per-token kernels: group `group` takes tokens
/// group, group + groups, ...; the whole warp loops while any group has one.
#define MOERT_ROUTER_FOR_TOKENS(t, first, stride, end)                         \
  for (int64_t t = (first); __any_sync(kRouterFullMask, t < (end));           \
       t += (stride))

template <class T>
__global__ void routerTopKKernel(const T *logits, int64_t tokens, int E, int k,
                                 int W, T *gates, int64_t *experts) {
  int g = threadIdx.x & (W - 1);
  int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  int64_t groups = int64_t(gridDim.x) * blockDim.x / W;
  MOERT_ROUTER_FOR_TOKENS(t, id / W, groups, tokens) {
    bool ok = t < tokens;
    RouterRow r = routerLoadRow(logits, ok ? t : 0, ok, E, W, g);
    int rank[2];
    float top;
    routerTopK(r.x, r, k, W, rank, top);
    // p_j / sum_chosen p = exp(x_j - top) / sum_chosen exp(x - top).
    float w[2], local = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      w[i] = rank[i] >= 0 ? expf(r.x[i] - top) : 0.0f;
      local += w[i];
    }
    float sum = routerGroupSum(local, W);
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (rank[i] >= 0) {
        experts[t * k + rank[i]] = r.e[i];
        gates[t * k + rank[i]] = fromFloat<T>(w[i] / sum);
      }
  }
}

//===----------------------------------------------------------------------===//
// Routing: Sinkhorn
//===----------------------------------------------------------------------===//

template <class T>
__global__ void sinkhornCostKernel(const T *logits, int64_t n, double *cost) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    cost[i] = exp(static_cast<double>(toFloat(logits[i])));
}

/// One block of kSinkhornThreads: the scalings d0 [T] (scratch) and d1 [E].
/// d0[t] = (1/T) / (sum_e d1[e] cost[t,e] + eps);
/// d1[e] = (1/E) / (sum_t d0[t] cost[t,e] + eps), repeated while the mean
/// |d1_old - d1| > tolerance (at most iterations 0..kSinkhornMaxIteration).
__global__ void __launch_bounds__(kSinkhornThreads)
    sinkhornScaleKernel(const double *cost, int64_t tokens, int E, double *d0,
                        double *d1Out) {
  __shared__ double d1[kRouterMaxExperts], d1Old[kRouterMaxExperts];
  __shared__ double part[kSinkhornThreads];
  __shared__ int again;
  const int tid = threadIdx.x;
  const int G = blockDim.x / E; // token strides of the column sums
  const double invT = 1.0 / static_cast<double>(tokens);
  const double invE = 1.0 / static_cast<double>(E);
  if (tid < E)
    d1[tid] = d1Old[tid] = 1.0;
  __syncthreads();
  for (int iteration = 0;; ++iteration) {
    // Rows: the sum over experts in order, as the definition writes it.
    for (int64_t t = tid; t < tokens; t += blockDim.x) {
      const double *row = cost + t * E;
      double sum = 0.0;
      for (int e = 0; e < E; ++e)
        sum += d1[e] * row[e];
      d0[t] = invT / (sum + kSinkhornEpsilon);
    }
    __syncthreads();
    // Columns: thread (g, e) sums tokens g, g + G, ...; then by g in order.
    if (tid < G * E) {
      int e = tid % E, g = tid / E;
      double sum = 0.0;
      for (int64_t t = g; t < tokens; t += G)
        sum += d0[t] * cost[t * E + e];
      part[tid] = sum;
    }
    __syncthreads();
    if (tid < E) {
      double sum = 0.0;
      for (int g = 0; g < G; ++g)
        sum += part[g * E + tid];
      d1[tid] = invE / (sum + kSinkhornEpsilon);
    }
    __syncthreads();
    if (tid == 0) {
      double change = 0.0;
      for (int e = 0; e < E; ++e)
        change += fabs(d1Old[e] - d1[e]);
      change /= E;
      for (int e = 0; e < E; ++e)
        d1Old[e] = d1[e];
      again = change > kSinkhornTolerance && iteration < kSinkhornMaxIteration;
    }
    __syncthreads();
    if (!again)
      break;
  }
  if (tid < E)
    d1Out[tid] = d1[tid];
}

/// Experts: top-k of float(d1[e] · cost[t,e] · d0[t]); gates: softmax of the
/// logits there (sigmoid when k = 1), not renormalised.
template <class T>
__global__ void sinkhornSelectKernel(const T *logits, const double *cost,
                                     const double *d0, const double *d1,
                                     int64_t tokens, int E, int k, int W,
                                     T *gates, int64_t *experts) {
  int g = threadIdx.x & (W - 1);
  int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  int64_t groups = int64_t(gridDim.x) * blockDim.x / W;
  MOERT_ROUTER_FOR_TOKENS(t, id / W, groups, tokens) {
    bool ok = t < tokens;
    int64_t row = ok ? t : 0;
    RouterRow r = routerLoadRow(logits, row, ok, E, W, g);
    float score[2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
      score[i] = r.valid[i] ? static_cast<float>(d1[r.e[i]] *
                                                 cost[row * E + r.e[i]] *
                                                 d0[row])
                            : -INFINITY;
    int rank[2];
    float top;
    routerTopK(score, r, k, W, rank, top);
    float gate[2];
    if (k == 1) {
#pragma unroll
      for (int i = 0; i < 2; ++i)
        gate[i] = 1.0f / (1.0f + expf(-r.x[i]));
    } else {
      routerSoftmax(r, W, gate);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (rank[i] >= 0) {
        experts[t * k + rank[i]] = r.e[i];
        gates[t * k + rank[i]] = fromFloat<T>(gate[i]);
      }
  }
}

//===----------------------------------------------------------------------===//
// Routing: balanced
//===----------------------------------------------------------------------===//

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

//===----------------------------------------------------------------------===//
// Router gradient
//===----------------------------------------------------------------------===//

/// dLogits of one token: with D[e] = sum of dGates over slots choosing e and
/// M[e] their number, dp = D (Sinkhorn) or (D - M·dot)/s with s = sum of
/// the chosen p and dot = sum p·D / s (renormalised gates); then
/// p·(dp - sum p·dp). Sinkhorn with k = 1: dGates·σ(1-σ) at the expert;
/// the other modes with k = 1: 0 (the gate is p/p = 1).
template <class T>
__global__ void routerGradKernel(const T *logits, const int64_t *experts,
                                 const T *dGates, int64_t tokens, int E,
                                 int k, int W, int mode, T *dLogits) {
  const bool sinkhorn = mode == static_cast<int>(Routing::Sinkhorn);
  int g = threadIdx.x & (W - 1);
  int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  int64_t groups = int64_t(gridDim.x) * blockDim.x / W;
  MOERT_ROUTER_FOR_TOKENS(t, id / W, groups, tokens) {
    bool ok = t < tokens;
    int64_t row = ok ? t : 0;
    RouterRow r = routerLoadRow(logits, row, ok, E, W, g);
    const int64_t *chosen = experts + row * k;
    const T *dg = dGates + row * k;
    if (sinkhorn && k == 1) {
      int64_t c = ok ? chosen[0] : -1;
      float d = ok ? toFloat(dg[0]) : 0.0f;
#pragma unroll
      for (int i = 0; i < 2; ++i)
        if (r.valid[i]) {
          float v = 0.0f;
          if (r.e[i] == c) {
            float s = 1.0f / (1.0f + expf(-r.x[i]));
            v = d * s * (1.0f - s);
          }
          dLogits[row * E + r.e[i]] = fromFloat<T>(v);
        }
      continue;
    }
    if (!sinkhorn && k == 1) {
      // One renormalised gate is 1 whatever the logits: the gradient is 0.
#pragma unroll
      for (int i = 0; i < 2; ++i)
        if (r.valid[i])
          dLogits[row * E + r.e[i]] = fromFloat<T>(0.0f);
      continue;
    }
    float p[2];
    routerSoftmax(r, W, p);
    float D[2] = {0.0f, 0.0f}, M[2] = {0.0f, 0.0f};
    if (ok)
      for (int j = 0; j < k; ++j) {
        int64_t c = chosen[j];
        float d = toFloat(dg[j]);
#pragma unroll
        for (int i = 0; i < 2; ++i)
          if (r.e[i] == c) {
            D[i] += d;
            M[i] += 1.0f;
          }
      }
    float dp[2];
    if (sinkhorn) {
      dp[0] = D[0];
      dp[1] = D[1];
    } else {
      float s = routerGroupSum(M[0] * p[0] + M[1] * p[1], W);
      float dot = routerGroupSum(p[0] * D[0] + p[1] * D[1], W) / s;
#pragma unroll
      for (int i = 0; i < 2; ++i)
        dp[i] = (D[i] - M[i] * dot) / s;
    }
    float inner = routerGroupSum(p[0] * dp[0] + p[1] * dp[1], W);
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (r.valid[i])
        dLogits[row * E + r.e[i]] = fromFloat<T>(p[i] * (dp[i] - inner));
  }
}

//===----------------------------------------------------------------------===//
// Losses
//===----------------------------------------------------------------------===//

/// Deterministic sum over a block in fp64; every thread gets it. `shared`
/// holds 32 doubles.
__device__ inline double routerBlockSumDouble(double v, double *shared) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(kRouterFullMask, v, o);
  __syncthreads();
  if (lane == 0)
    shared[warp] = v;
  __syncthreads();
  int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? shared[lane] : 0.0;
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(kRouterFullMask, v, o);
  return v;
}

/// Block (b, l) of layer layerBase + l: over its tokens
/// [b·1024, (b+1)·1024), per expert the sum of the softmax and the number of
/// top-k choices, into slot (layerBase + l)·gridDim.x + b of the partials.
template <class T>
__global__ void loadBalancingPartialKernel(RouterLayers<const T *> logits,
                                           int layerBase, int64_t tokens,
                                           int E, int k, int W,
                                           double *probPartial,
                                           int *countPartial) {
  // groups·E <= 512: E <= W when E <= 32, else W = 32 and 8 groups.
  __shared__ double sharedProb[512];
  __shared__ int sharedCount[512];
  const T *x = logits.p[blockIdx.y];
  int g = threadIdx.x & (W - 1), group = threadIdx.x / W;
  int groups = blockDim.x / W;
  int64_t first = blockIdx.x * kRouterLossTokensPerBlock;
  int64_t last = min(tokens, first + kRouterLossTokensPerBlock);
  double prob[2] = {0.0, 0.0};
  int count[2] = {0, 0};
  MOERT_ROUTER_FOR_TOKENS(t, first + group, groups, last) {
    bool ok = t < last;
    RouterRow r = routerLoadRow(x, ok ? t : 0, ok, E, W, g);
    float p[2];
    routerSoftmax(r, W, p);
    int rank[2];
    float top;
    routerTopK(r.x, r, k, W, rank, top);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      prob[i] += p[i];
      count[i] += rank[i] >= 0;
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    int e = g + i * W;
    if (e < E) {
      sharedProb[group * E + e] = prob[i];
      sharedCount[group * E + e] = count[i];
    }
  }
  __syncthreads();
  if (threadIdx.x < E) {
    double sum = 0.0;
    int n = 0;
    for (int b = 0; b < groups; ++b) {
      sum += sharedProb[b * E + threadIdx.x];
      n += sharedCount[b * E + threadIdx.x];
    }
    int64_t slot =
        (int64_t(layerBase + blockIdx.y) * gridDim.x + blockIdx.x) * E +
        threadIdx.x;
    probPartial[slot] = sum;
    countPartial[slot] = n;
  }
}

/// One block (1024 threads): fraction[e] = count[e] / rows and
/// probability[e] = prob[e] / rows over all partials. Writes the loss
/// E · sum_e fraction·probability, or (for the gradient) the centred
/// fractions fraction[e] - mean(fraction).
__global__ void loadBalancingReduceKernel(const double *probPartial,
                                          const int *countPartial,
                                          int64_t partials, int E,
                                          double rows, float *loss,
                                          double *centred) {
  __shared__ double sums[1024];
  __shared__ long long counts[1024];
  __shared__ double fraction[kRouterMaxExperts], probability[kRouterMaxExperts];
  const int tid = threadIdx.x, G = blockDim.x / E;
  if (tid < G * E) {
    int e = tid % E, g = tid / E;
    double s = 0.0;
    long long c = 0;
    for (int64_t b = g; b < partials; b += G) {
      s += probPartial[b * E + e];
      c += countPartial[b * E + e];
    }
    sums[tid] = s;
    counts[tid] = c;
  }
  __syncthreads();
  if (tid < E) {
    double s = 0.0;
    long long c = 0;
    for (int g = 0; g < G; ++g) {
      s += sums[g * E + tid];
      c += counts[g * E + tid];
    }
    fraction[tid] = static_cast<double>(c) / rows;
    probability[tid] = s / rows;
  }
  __syncthreads();
  if (tid == 0) {
    if (loss) {
      double total = 0.0;
      for (int e = 0; e < E; ++e)
        total += fraction[e] * probability[e];
      *loss = static_cast<float>(total * E);
    }
    if (centred) {
      double mean = 0.0;
      for (int e = 0; e < E; ++e)
        mean += fraction[e];
      mean /= E;
      for (int e = 0; e < E; ++e)
        centred[e] = fraction[e] - mean;
    }
  }
}

/// d/dlogits of scale·loss = coef · p · (f - sum p·f), coef = scale·E/rows,
/// with f centred (the same in exact arithmetic, since sum p = 1; in fp32 it
/// keeps the small differences of fractions exact).
template <class T>
__global__ void loadBalancingGradKernel(RouterLayers<const T *> logits,
                                        RouterLayers<T *> dLogits,
                                        int64_t tokens, int E, int W,
                                        const double *centred, float coef) {
  const T *x = logits.p[blockIdx.y];
  T *dx = dLogits.p[blockIdx.y];
  int g = threadIdx.x & (W - 1);
  int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  int64_t groups = int64_t(gridDim.x) * blockDim.x / W;
  float f[2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
    f[i] = g + i * W < E ? static_cast<float>(centred[g + i * W]) : 0.0f;
  MOERT_ROUTER_FOR_TOKENS(t, id / W, groups, tokens) {
    bool ok = t < tokens;
    RouterRow r = routerLoadRow(x, ok ? t : 0, ok, E, W, g);
    float p[2];
    routerSoftmax(r, W, p);
    float inner = routerGroupSum(p[0] * f[0] + p[1] * f[1], W);
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (r.valid[i])
        dx[t * E + r.e[i]] = fromFloat<T>(coef * p[i] * (f[i] - inner));
  }
}

/// Block (b, l): sum of logsumexp² over its tokens into slot
/// (layerBase + l)·gridDim.x + b.
template <class T>
__global__ void zLossPartialKernel(RouterLayers<const T *> logits,
                                   int layerBase, int64_t tokens, int E,
                                   int W, double *partial) {
  __shared__ double sharedZ[kRouterThreads];
  const T *x = logits.p[blockIdx.y];
  int g = threadIdx.x & (W - 1), group = threadIdx.x / W;
  int groups = blockDim.x / W;
  int64_t first = blockIdx.x * kRouterLossTokensPerBlock;
  int64_t last = min(tokens, first + kRouterLossTokensPerBlock);
  double sum = 0.0;
  MOERT_ROUTER_FOR_TOKENS(t, first + group, groups, last) {
    bool ok = t < last;
    RouterRow r = routerLoadRow(x, ok ? t : 0, ok, E, W, g);
    float z = routerLogSumExp(r, W);
    if (ok)
      sum += static_cast<double>(z) * z;
  }
  if (g == 0)
    sharedZ[group] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int b = 0; b < groups; ++b)
      total += sharedZ[b];
    partial[int64_t(layerBase + blockIdx.y) * gridDim.x + blockIdx.x] = total;
  }
}

/// One block: loss = sum of the partials / rows.
__global__ void zLossReduceKernel(const double *partial, int64_t partials,
                                  double rows, float *loss) {
  __shared__ double shared[32];
  double s = 0.0;
  for (int64_t b = threadIdx.x; b < partials; b += blockDim.x)
    s += partial[b];
  s = routerBlockSumDouble(s, shared);
  if (threadIdx.x == 0)
    *loss = static_cast<float>(s / rows);
}

/// d/dlogits of scale·zloss = coef · z · p, coef = 2·scale/rows.
template <class T>
__global__ void zLossGradKernel(RouterLayers<const T *> logits,
                                RouterLayers<T *> dLogits, int64_t tokens,
                                int E, int W, float coef) {
  const T *x = logits.p[blockIdx.y];
  T *dx = dLogits.p[blockIdx.y];
  int g = threadIdx.x & (W - 1);
  int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  int64_t groups = int64_t(gridDim.x) * blockDim.x / W;
  MOERT_ROUTER_FOR_TOKENS(t, id / W, groups, tokens) {
    bool ok = t < tokens;
    RouterRow r = routerLoadRow(x, ok ? t : 0, ok, E, W, g);
    float z = routerLogSumExp(r, W);
    float p[2];
    routerSoftmax(r, W, p);
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (r.valid[i])
        dx[t * E + r.e[i]] = fromFloat<T>(coef * z * p[i]);
  }
}

#undef MOERT_ROUTER_FOR_TOKENS

//===----------------------------------------------------------------------===//
// Expert counts
//===----------------------------------------------------------------------===//

/// One block per layer: a histogram per warp (equal experts of a warp are
/// added once, by __match_any_sync), then their sum. Integer, so exact.
__global__ void expertCountsKernel(RouterLayers<const int64_t *> experts,
                                   int layerBase, int64_t entries, int E,
                                   int64_t *counts) {
  __shared__ int histogram[32][kRouterMaxExperts];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  for (int i = threadIdx.x; i < 32 * kRouterMaxExperts; i += blockDim.x)
    histogram[i / kRouterMaxExperts][i % kRouterMaxExperts] = 0;
  __syncthreads();
  const int64_t *x = experts.p[blockIdx.x];
  for (int64_t base = int64_t(warp) * 32; base < entries;
       base += int64_t(warps) * 32) {
    int64_t i = base + lane;
    int64_t v = i < entries ? x[i] : -1;
    int key = v >= 0 && v < E ? static_cast<int>(v) : -1 - lane;
    unsigned same = __match_any_sync(kRouterFullMask, key);
    if (key >= 0 && lane == __ffs(same) - 1)
      histogram[warp][key] += __popc(same);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int64_t n = 0;
    for (int w = 0; w < warps; ++w)
      n += histogram[w][e];
    counts[int64_t(layerBase + blockIdx.x) * E + e] = n;
  }
}

//===----------------------------------------------------------------------===//
// Scratch layouts (the host functions take them in this order; the sizes
// repeat scratchAt's arithmetic)
//===----------------------------------------------------------------------===//

inline void routerReserve(int64_t &offset, int64_t bytes) {
  offset = (offset + 255) / 256 * 256 + bytes;
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

inline int64_t sinkhornScratchEnd(int64_t tokens, int64_t E) {
  int64_t offset = 0;
  routerReserve(offset, tokens * E * 8); // cost
  routerReserve(offset, tokens * 8);     // d0
  routerReserve(offset, E * 8);          // d1
  return offset;
}

inline int64_t balancedScratchEnd(int64_t tokens, int64_t E) {
  int64_t n = tokens * E, offset = 0;
  routerReserve(offset, n * 8); // probabilities
  routerReserve(offset, n * 8); // keys
  routerReserve(offset, n * 8); // keys, sorted
  routerReserve(offset, n * 4); // pair ids
  routerReserve(offset, n * 4); // pair ids, sorted
  routerReserve(offset, tokens); // per-token counts
  routerReserve(offset, static_cast<int64_t>(balancedSortBytes(n)));
  return offset;
}

inline int64_t routerLossBlocks(int64_t tokens) {
  int64_t b = (tokens + kRouterLossTokensPerBlock - 1) /
              kRouterLossTokensPerBlock;
  return b < 1 ? 1 : b;
}

struct RouterLossScratch {
  double *probPartial;
  int *countPartial;
  double *zPartial;
  double *centred;
};

inline int64_t lossScratchEnd(int64_t layers, int64_t tokens, int64_t E) {
  int64_t partials = layers * routerLossBlocks(tokens), offset = 0;
  routerReserve(offset, partials * E * 8);
  routerReserve(offset, partials * E * 4);
  routerReserve(offset, partials * 8);
  routerReserve(offset, E * 8);
  return offset;
}

inline RouterLossScratch lossScratch(const Context &ctx, int64_t layers,
                                     int64_t tokens, int64_t E) {
  int64_t partials = layers * routerLossBlocks(tokens), offset = 0;
  RouterLossScratch s;
  s.probPartial = scratchAt<double>(ctx, offset, partials * E);
  s.countPartial = scratchAt<int>(ctx, offset, partials * E);
  s.zPartial = scratchAt<double>(ctx, offset, partials);
  s.centred = scratchAt<double>(ctx, offset, E);
  return s;
}

inline void routerCheckLayers(const char *what, int64_t layers,
                              int64_t tokens, int64_t E) {
  if (layers < 1 || E < 1 || E > kRouterMaxExperts || tokens < 0) {
    std::fprintf(stderr,
                 "moert: %s: needs layers >= 1 and 1 <= E <= %d, got %lld "
                 "layers, E = %lld\n",
                 what, kRouterMaxExperts, static_cast<long long>(layers),
                 static_cast<long long>(E));
    std::exit(1);
  }
}

/// Launches fn(first, count, pointers...) for chunks of at most
/// kRouterLayersPerLaunch layers.
template <class P, class Fn>
inline void forLayerChunks(const P *const *pointers, int64_t layers, Fn fn) {
  for (int64_t first = 0; first < layers; first += kRouterLayersPerLaunch) {
    int count = static_cast<int>(layers - first < kRouterLayersPerLaunch
                                     ? layers - first
                                     : kRouterLayersPerLaunch);
    RouterLayers<const P *> chunk{};
    for (int i = 0; i < count; ++i)
      chunk.p[i] = pointers[first + i];
    fn(static_cast<int>(first), count, chunk);
  }
}

} // namespace detail

/// The most scratch any function of this file needs for these sizes (the
/// router with `k`, the losses with `layers`; either may be 1).
inline int64_t routerScratchBytes(int64_t tokens, int64_t E, int64_t k,
                                  int64_t layers) {
  (void)k;
  if (tokens <= 0 || E <= 0)
    return 0;
  int64_t bytes = detail::sinkhornScratchEnd(tokens, E);
  int64_t balanced = detail::balancedScratchEnd(tokens, E);
  int64_t losses = detail::lossScratchEnd(layers < 1 ? 1 : layers, tokens, E);
  if (balanced > bytes)
    bytes = balanced;
  if (losses > bytes)
    bytes = losses;
  return bytes;
}

/// gates [tokens, k] and experts [tokens, k] of logits [tokens, E], routed
/// for training as `mode` defines (see the file comment).
template <class T>
void router(const Context &ctx, const T *logits, int64_t tokens, int64_t E,
            int64_t k, Routing mode, T *gates, int64_t *experts) {
  using namespace detail;
  if (tokens <= 0)
    return;
  routerCheckShape("router", E, k);
  const int W = routerGroupWidth(E);
  const int e = static_cast<int>(E), kk = static_cast<int>(k);
  switch (mode) {
  case Routing::AuxLoss:
  case Routing::None:
    routerTopKKernel<T><<<routerGroupBlocks(tokens, W), kRouterThreads, 0,
                          ctx.stream>>>(logits, tokens, e, kk, W, gates,
                                        experts);
    MOERT_CUDA_CHECK(cudaGetLastError());
    return;
  case Routing::Sinkhorn: {
    int64_t offset = 0;
    double *cost = scratchAt<double>(ctx, offset, tokens * E);
    double *d0 = scratchAt<double>(ctx, offset, tokens);
    double *d1 = scratchAt<double>(ctx, offset, E);
    sinkhornCostKernel<T><<<blocksFor(tokens * E), 256, 0, ctx.stream>>>(
        logits, tokens * E, cost);
    MOERT_CUDA_CHECK(cudaGetLastError());
    sinkhornScaleKernel<<<1, kSinkhornThreads, 0, ctx.stream>>>(cost, tokens,
                                                                e, d0, d1);
    MOERT_CUDA_CHECK(cudaGetLastError());
    sinkhornSelectKernel<T><<<routerGroupBlocks(tokens, W), kRouterThreads, 0,
                              ctx.stream>>>(logits, cost, d0, d1, tokens, e,
                                            kk, W, gates, experts);
    MOERT_CUDA_CHECK(cudaGetLastError());
    return;
  }
  case Routing::Balanced: {
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
    return;
  }
  }
}

/// dLogits [tokens, E] (overwritten) from dGates [tokens, k] for the gates
/// `router` computed with `experts`.
template <class T>
void routerGrad(const Context &ctx, const T *logits, const int64_t *experts,
                const T *dGates, int64_t tokens, int64_t E, int64_t k,
                Routing mode, T *dLogits) {
  using namespace detail;
  if (tokens <= 0)
    return;
  routerCheckShape("routerGrad", E, k);
  const int W = routerGroupWidth(E);
  routerGradKernel<T><<<routerGroupBlocks(tokens, W), kRouterThreads, 0,
                        ctx.stream>>>(
      logits, experts, dGates, tokens, static_cast<int>(E),
      static_cast<int>(k), W, static_cast<int>(mode), dLogits);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// Hugging Face's Mixtral load-balancing loss over `layers` layers' logits
/// (host array of device pointers, each [tokens, E]), concatenated over
/// tokens: E · sum_e fraction[e] · probability[e], where fraction[e] is the
/// number of top-k choices of e over n = layers·tokens (so it sums to k) and
/// probability[e] the mean softmax. Writes the device scalar `loss`.
template <class T>
void loadBalancingLoss(const Context &ctx, const T *const *logits,
                       int64_t layers, int64_t tokens, int64_t E, int64_t k,
                       float *loss) {
  using namespace detail;
  routerCheckLayers("loadBalancingLoss", layers, tokens, E);
  routerCheckShape("loadBalancingLoss", E, k);
  if (tokens <= 0) {
    MOERT_CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(float), ctx.stream));
    return;
  }
  RouterLossScratch s = lossScratch(ctx, layers, tokens, E);
  const int W = routerGroupWidth(E);
  const int64_t blocks = routerLossBlocks(tokens);
  forLayerChunks(logits, layers, [&](int first, int count, auto chunk) {
    loadBalancingPartialKernel<T>
        <<<dim3(static_cast<unsigned>(blocks), count), kRouterThreads, 0,
           ctx.stream>>>(chunk, first, tokens, static_cast<int>(E),
                         static_cast<int>(k), W, s.probPartial,
                         s.countPartial);
    MOERT_CUDA_CHECK(cudaGetLastError());
  });
  loadBalancingReduceKernel<<<1, 1024, 0, ctx.stream>>>(
      s.probPartial, s.countPartial, layers * blocks, static_cast<int>(E),
      static_cast<double>(layers * tokens), loss, nullptr);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// scale · d loss / d logits for each layer (host array of device pointers,
/// overwritten); the top-k selection is not differentiated.
template <class T>
void loadBalancingLossGrad(const Context &ctx, const T *const *logits,
                           int64_t layers, int64_t tokens, int64_t E,
                           int64_t k, double scale, T *const *dLogits) {
  using namespace detail;
  routerCheckLayers("loadBalancingLossGrad", layers, tokens, E);
  routerCheckShape("loadBalancingLossGrad", E, k);
  if (tokens <= 0)
    return;
  RouterLossScratch s = lossScratch(ctx, layers, tokens, E);
  const int W = routerGroupWidth(E);
  const int64_t blocks = routerLossBlocks(tokens);
  const double rows = static_cast<double>(layers * tokens);
  forLayerChunks(logits, layers, [&](int first, int count, auto chunk) {
    loadBalancingPartialKernel<T>
        <<<dim3(static_cast<unsigned>(blocks), count), kRouterThreads, 0,
           ctx.stream>>>(chunk, first, tokens, static_cast<int>(E),
                         static_cast<int>(k), W, s.probPartial,
                         s.countPartial);
    MOERT_CUDA_CHECK(cudaGetLastError());
  });
  loadBalancingReduceKernel<<<1, 1024, 0, ctx.stream>>>(
      s.probPartial, s.countPartial, layers * blocks, static_cast<int>(E),
      rows, nullptr, s.centred);
  MOERT_CUDA_CHECK(cudaGetLastError());
  const float coef = static_cast<float>(scale * static_cast<double>(E) / rows);
  forLayerChunks(logits, layers, [&](int first, int count, auto chunk) {
    RouterLayers<T *> out{};
    for (int i = 0; i < count; ++i)
      out.p[i] = dLogits[first + i];
    loadBalancingGradKernel<T>
        <<<dim3(routerGroupBlocks(tokens, W), count), kRouterThreads, 0,
           ctx.stream>>>(chunk, out, tokens, static_cast<int>(E), W,
                         s.centred, coef);
    MOERT_CUDA_CHECK(cudaGetLastError());
  });
}

/// Router z-loss: the mean over all tokens of all layers of
/// logsumexp(logits)². Writes the device scalar `loss`.
template <class T>
void routerZLoss(const Context &ctx, const T *const *logits, int64_t layers,
                 int64_t tokens, int64_t E, float *loss) {
  using namespace detail;
  routerCheckLayers("routerZLoss", layers, tokens, E);
  if (tokens <= 0) {
    MOERT_CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(float), ctx.stream));
    return;
  }
  RouterLossScratch s = lossScratch(ctx, layers, tokens, E);
  const int W = routerGroupWidth(E);
  const int64_t blocks = routerLossBlocks(tokens);
  forLayerChunks(logits, layers, [&](int first, int count, auto chunk) {
    zLossPartialKernel<T><<<dim3(static_cast<unsigned>(blocks), count),
                            kRouterThreads, 0, ctx.stream>>>(
        chunk, first, tokens, static_cast<int>(E), W, s.zPartial);
    MOERT_CUDA_CHECK(cudaGetLastError());
  });
  zLossReduceKernel<<<1, 256, 0, ctx.stream>>>(
      s.zPartial, layers * blocks, static_cast<double>(layers * tokens),
      loss);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// scale · d zloss / d logits = scale · 2 · z · softmax / n for each layer
/// (overwritten).
template <class T>
void routerZLossGrad(const Context &ctx, const T *const *logits,
                     int64_t layers, int64_t tokens, int64_t E, double scale,
                     T *const *dLogits) {
  using namespace detail;
  routerCheckLayers("routerZLossGrad", layers, tokens, E);
  if (tokens <= 0)
    return;
  const int W = routerGroupWidth(E);
  const float coef = static_cast<float>(
      2.0 * scale / static_cast<double>(layers * tokens));
  forLayerChunks(logits, layers, [&](int first, int count, auto chunk) {
    RouterLayers<T *> out{};
    for (int i = 0; i < count; ++i)
      out.p[i] = dLogits[first + i];
    zLossGradKernel<T><<<dim3(routerGroupBlocks(tokens, W), count),
                         kRouterThreads, 0, ctx.stream>>>(
        chunk, out, tokens, static_cast<int>(E), W, coef);
    MOERT_CUDA_CHECK(cudaGetLastError());
  });
}

/// counts[l·E + e] (overwritten) = the (token, slot) pairs of layer l (host
/// array of device pointers to [tokens, k]) routed to expert e.
inline void expertCounts(const Context &ctx, const int64_t *const *experts,
                         int64_t layers, int64_t tokens, int64_t k, int64_t E,
                         int64_t *counts) {
  using namespace detail;
  routerCheckLayers("expertCounts", layers, tokens, E);
  forLayerChunks(experts, layers, [&](int first, int count, auto chunk) {
    expertCountsKernel<<<count, 1024, 0, ctx.stream>>>(
        chunk, first, tokens * k, static_cast<int>(E), counts);
    MOERT_CUDA_CHECK(cudaGetLastError());
  });
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_ROUTER_CUH
