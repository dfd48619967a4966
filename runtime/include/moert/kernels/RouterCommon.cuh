//===- RouterCommon.cuh - What the router kernels share --------*- CUDA -*-===//
//
// The building blocks of the router's kernels (Router.cuh and the headers it
// includes, RouterLosses.cuh, ExpertCounts.cuh). Logits are [tokens, E]
// (E <= 64), gates and expert indices [tokens, k] (k <= E), expert indices
// int64.
//
// Per-token work is done by a group of W lanes of one warp (W = the next
// power of two >= E, at most 32; a lane owns experts g and g + W), so a row
// is read coalesced and its softmax and top-k are warp shuffles. Top-k
// compares the logits themselves (the softmax is monotonic), ties to the
// lower expert index. Layer pointer arrays are host arrays: they travel by
// value in kernel parameters, 64 layers per launch.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_ROUTER_COMMON_CUH
#define MOERT_KERNELS_ROUTER_COMMON_CUH

#include "moert/kernels/Common.cuh"

namespace moert::kernels {

namespace detail {

constexpr unsigned kRouterFullMask = 0xffffffffu;
constexpr int kRouterThreads = 256;
constexpr int kRouterMaxExperts = 64;
constexpr int kRouterLayersPerLaunch = 64;

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

/// Loop header of the per-token kernels: group `group` takes tokens
/// group, group + groups, ...; the whole warp loops while any group has one.
#define MOERT_ROUTER_FOR_TOKENS(t, first, stride, end)                         \
  for (int64_t t = (first); __any_sync(kRouterFullMask, t < (end));           \
       t += (stride))

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

} // namespace moert::kernels

#endif // MOERT_KERNELS_ROUTER_COMMON_CUH
