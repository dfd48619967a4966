//===- Cudnn.cpp - cuDNN SDPA graphs for compiled programs ------------------===//
//
// Implements moert/Cudnn.h with the cuDNN frontend's graph API. Compiled
// once into the moert_cudnn library (the frontend is header-only and slow to
// compile); see the header for the layout, masks and caching.
//
//===----------------------------------------------------------------------===//

#include "moert/Cudnn.h"
#include "moert/kernels/ScratchBytes.h"

#include <cudnn_frontend.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

namespace fe = cudnn_frontend;

namespace moert {
namespace {

enum SdpaKind { kForward, kForwardWithStats, kBackward };

/// B, S, N, KV, D, causal, window, the scale's bits, the kind.
using SdpaKey = std::array<int64_t, 9>;

/// A built graph and the tensors its variant pack names.
struct SdpaGraph {
  std::shared_ptr<fe::graph::Graph> graph;
  std::shared_ptr<fe::graph::Tensor_attributes> q, k, v, o, stats, dO, dq, dk,
      dv;
  int64_t workspaceBytes = 0;
};

SdpaKey keyOf(const SdpaShape &s, SdpaKind kind) {
  uint32_t bits;
  std::memcpy(&bits, &s.scale, sizeof(bits));
  return {s.B,        s.S, s.N, s.KV, s.D, s.causal ? 1 : 0,
          s.causal ? s.window : -1, bits, kind};
}

[[noreturn]] void fail(const SdpaShape &s, SdpaKind kind, const char *what,
                       const std::string &message) {
  static const char *kinds[] = {"forward", "forward with statistics",
                                "backward"};
  std::fprintf(stderr,
               "moert: cuDNN SDPA %s (bf16 B %lld S %lld N %lld KV %lld "
               "D %lld%s, window %lld): %s failed: %s\n",
               kinds[kind], (long long)s.B, (long long)s.S, (long long)s.N,
               (long long)s.KV, (long long)s.D, s.causal ? " causal" : "",
               (long long)s.window, what, message.c_str());
  std::exit(1);
}

} // namespace

struct Cudnn {
  cudnnHandle_t handle = nullptr;
  std::map<SdpaKey, SdpaGraph> graphs;
  /// Shapes cuDNN declined, with its reason.
  std::map<SdpaKey, std::string> unsupported;
  /// The backward on cuDNN's deterministic algorithm (createCudnn).
  bool deterministic = false;
};

Cudnn *createCudnn(cudaStream_t stream, bool deterministic) {
  auto *cudnn = new Cudnn;
  cudnn->deterministic = deterministic;
  cudnnStatus_t status = cudnnCreate(&cudnn->handle);
  if (status == CUDNN_STATUS_SUCCESS)
    status = cudnnSetStream(cudnn->handle, stream);
  if (status != CUDNN_STATUS_SUCCESS) {
    std::fprintf(stderr, "moert: cannot create a cuDNN handle: %s\n",
                 cudnnGetErrorString(status));
    std::exit(1);
  }
  return cudnn;
}

void destroyCudnn(Cudnn *cudnn) {
  if (!cudnn)
    return;
  cudnn->graphs.clear();
  cudnnDestroy(cudnn->handle);
  delete cudnn;
}

namespace {

/// The graph of `kind` for `s`, built and cached on first use; null (and
/// the reason in Cudnn::unsupported) where cuDNN declines the shape.
const SdpaGraph *tryGraph(Cudnn *cudnn, const SdpaShape &s, SdpaKind kind) {
  if (!cudnn) {
    std::fprintf(stderr, "moert: bf16 attention needs a cuDNN handle "
                         "(createCudnn)\n");
    std::exit(1);
  }
  SdpaKey key = keyOf(s, kind);
  auto found = cudnn->graphs.find(key);
  if (found != cudnn->graphs.end())
    return &found->second;
  if (cudnn->unsupported.count(key))
    return nullptr;

  const int64_t B = s.B, S = s.S, N = s.N, KV = s.KV, D = s.D;
  SdpaGraph g;
  g.graph = std::make_shared<fe::graph::Graph>();
  g.graph->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  // [B, S, H, D] buffers seen as (B, H, S, D).
  auto input = [&](const char *name, int64_t H) {
    return g.graph->tensor(fe::graph::Tensor_attributes()
                               .set_name(name)
                               .set_dim({B, H, S, D})
                               .set_stride({S * H * D, D, H * D, 1}));
  };
  auto output = [&](std::shared_ptr<fe::graph::Tensor_attributes> &t,
                    int64_t H) {
    t->set_output(true).set_dim({B, H, S, D}).set_stride(
        {S * H * D, D, H * D, 1});
  };
  auto mask = [&](auto &options) {
    if (!s.causal)
      return;
    options.set_causal_mask(true);
    if (s.window > 0)
      options.set_diagonal_band_left_bound(static_cast<int>(s.window));
  };
  g.q = input("q", N);
  g.k = input("k", KV);
  g.v = input("v", KV);
  if (kind != kBackward) {
    auto options = fe::graph::SDPA_attributes()
                       .set_name("sdpa")
                       .set_generate_stats(kind == kForwardWithStats)
                       .set_attn_scale(s.scale);
    mask(options);
    auto [o, stats] = g.graph->sdpa(g.q, g.k, g.v, options);
    g.o = o;
    output(g.o, N);
    if (kind == kForwardWithStats) {
      g.stats = stats;
      g.stats->set_output(true).set_data_type(fe::DataType_t::FLOAT);
    }
  } else {
    g.o = input("o", N);
    g.dO = input("dO", N);
    g.stats = g.graph->tensor(fe::graph::Tensor_attributes()
                                  .set_name("stats")
                                  .set_dim({B, N, S, 1})
                                  .set_stride({N * S, S, 1, 1})
                                  .set_data_type(fe::DataType_t::FLOAT));
    auto options = fe::graph::SDPA_backward_attributes()
                       .set_name("sdpa_backward")
                       .set_attn_scale(s.scale)
                       .set_deterministic_algorithm(cudnn->deterministic);
    mask(options);
    auto [dq, dk, dv] = g.graph->sdpa_backward(g.q, g.k, g.v, g.o, g.dO,
                                               g.stats, options);
    g.dq = dq;
    g.dk = dk;
    g.dv = dv;
    output(g.dq, N);
    output(g.dk, KV);
    output(g.dv, KV);
  }

  // Up to check_support a failure means "not this shape"; after it, an
  // error.
  auto declined = [&](fe::error_t status, const char *what) {
    if (status.is_good())
      return false;
    cudnn->unsupported.emplace(key,
                               std::string(what) + ": " + status.get_message());
    return true;
  };
  if (declined(g.graph->validate(), "validate") ||
      declined(g.graph->build_operation_graph(cudnn->handle),
               "build_operation_graph") ||
      declined(g.graph->create_execution_plans({fe::HeurMode_t::A}),
               "create_execution_plans") ||
      declined(g.graph->check_support(cudnn->handle), "check_support"))
    return nullptr;
  auto check = [&](fe::error_t status, const char *what) {
    if (status.is_bad())
      fail(s, kind, what, status.get_message());
  };
  check(g.graph->build_plans(cudnn->handle), "build_plans");
  check(g.graph->get_workspace_size(g.workspaceBytes), "get_workspace_size");
  return &cudnn->graphs.emplace(key, std::move(g)).first->second;
}

/// tryGraph for a shape sdpaSupported accepted.
const SdpaGraph &graphFor(Cudnn *cudnn, const SdpaShape &s, SdpaKind kind) {
  if (const SdpaGraph *g = tryGraph(cudnn, s, kind))
    return *g;
  fail(s, kind, "building the graph", cudnn->unsupported[keyOf(s, kind)]);
}

int64_t piece(int64_t bytes) { return (bytes + 255) / 256 * 256; }

/// Carves `bytes` out of scratch at `offset` (256-byte aligned).
char *carve(const SdpaShape &s, SdpaKind kind, char *scratch,
            int64_t scratchBytes, int64_t &offset, int64_t bytes) {
  char *p = scratch + offset;
  offset += piece(bytes);
  if (offset > scratchBytes)
    fail(s, kind, "scratch",
         "needs " + std::to_string(offset) + " bytes, the program has " +
             std::to_string(scratchBytes));
  return p;
}

void execute(Cudnn *cudnn, const SdpaShape &s, SdpaKind kind,
             const SdpaGraph &g, std::unordered_map<int64_t, void *> &pack,
             void *workspace) {
  fe::error_t status = g.graph->execute(cudnn->handle, pack, workspace);
  if (status.is_bad())
    fail(s, kind, "execute", status.get_message());
}

} // namespace

bool sdpaSupported(Cudnn *cudnn, const SdpaShape &s, std::string *why) {
  for (SdpaKind kind : {kForward, kForwardWithStats, kBackward})
    if (!tryGraph(cudnn, s, kind)) {
      if (why)
        *why = cudnn->unsupported[keyOf(s, kind)];
      return false;
    }
  return true;
}

int64_t sdpaScratchBytes(Cudnn *cudnn, const SdpaShape &s) {
  int64_t forward = graphFor(cudnn, s, kForward).workspaceBytes;
  int64_t workspace =
      std::max(graphFor(cudnn, s, kForwardWithStats).workspaceBytes,
               graphFor(cudnn, s, kBackward).workspaceBytes);
  int64_t backward =
      kernels::attentionCudnnBufferBytes(s.B, s.S, s.N, s.D) + piece(workspace);
  return std::max(piece(forward), backward);
}

namespace {
/// Runs the forward graph (with statistics where `stats` is not null).
void runForward(Cudnn *cudnn, const SdpaShape &s, const void *q,
                const void *k, const void *v, void *out, void *stats,
                void *workspace) {
  SdpaKind kind = stats ? kForwardWithStats : kForward;
  const SdpaGraph &g = graphFor(cudnn, s, kind);
  std::unordered_map<int64_t, void *> pack = {
      {g.q->get_uid(), const_cast<void *>(q)},
      {g.k->get_uid(), const_cast<void *>(k)},
      {g.v->get_uid(), const_cast<void *>(v)},
      {g.o->get_uid(), out}};
  if (stats)
    pack.emplace(g.stats->get_uid(), stats);
  execute(cudnn, s, kind, g, pack, workspace);
}
} // namespace

void sdpaForward(Cudnn *cudnn, const SdpaShape &s, const void *q,
                 const void *k, const void *v, void *out, float *stats,
                 void *scratch, int64_t scratchBytes) {
  SdpaKind kind = stats ? kForwardWithStats : kForward;
  int64_t offset = 0;
  char *workspace = carve(s, kind, static_cast<char *>(scratch), scratchBytes,
                          offset, graphFor(cudnn, s, kind).workspaceBytes);
  runForward(cudnn, s, q, k, v, out, stats, workspace);
}

void sdpaBackward(Cudnn *cudnn, const SdpaShape &s, const void *q,
                  const void *k, const void *v, const void *dOut,
                  const void *out, const float *stats, void *dq, void *dk,
                  void *dv, void *scratch, int64_t scratchBytes) {
  char *base = static_cast<char *>(scratch);
  int64_t offset = 0;
  if (!out || !stats) {
    // No saved forward: rerun it with statistics into scratch. Its
    // workspace and the backward's share the bytes after O and the stats.
    char *o = carve(s, kBackward, base, scratchBytes, offset,
                    s.B * s.S * s.N * s.D * 2);
    char *lse =
        carve(s, kBackward, base, scratchBytes, offset, s.B * s.N * s.S * 4);
    int64_t workspaceAt = offset;
    char *workspace =
        carve(s, kForwardWithStats, base, scratchBytes, offset,
              graphFor(cudnn, s, kForwardWithStats).workspaceBytes);
    runForward(cudnn, s, q, k, v, o, lse, workspace);
    out = o;
    stats = reinterpret_cast<const float *>(lse);
    offset = workspaceAt;
  }
  const SdpaGraph &b = graphFor(cudnn, s, kBackward);
  char *workspace =
      carve(s, kBackward, base, scratchBytes, offset, b.workspaceBytes);
  std::unordered_map<int64_t, void *> backward = {
      {b.q->get_uid(), const_cast<void *>(q)},
      {b.k->get_uid(), const_cast<void *>(k)},
      {b.v->get_uid(), const_cast<void *>(v)},
      {b.o->get_uid(), const_cast<void *>(out)},
      {b.dO->get_uid(), const_cast<void *>(dOut)},
      {b.stats->get_uid(), const_cast<float *>(stats)},
      {b.dq->get_uid(), dq},
      {b.dk->get_uid(), dk},
      {b.dv->get_uid(), dv}};
  execute(cudnn, s, kBackward, b, backward, workspace);
}

} // namespace moert
