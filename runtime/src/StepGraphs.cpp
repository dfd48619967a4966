//===- StepGraphs.cpp - The training step's segments as CUDA graphs -------===//
//
// See moert/StepGraphs.h.
//
//===----------------------------------------------------------------------===//

#include "moert/StepGraphs.h"
#include "moert/Mesh.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace moert;

namespace {
GraphMode currentMode = GraphMode::Warmup;
/// The collectives of the segment this thread captures; null when none.
thread_local std::vector<std::string> *captured = nullptr;
} // namespace

void moert::noteCapturedCollective(const std::string &what) {
  if (captured &&
      std::find(captured->begin(), captured->end(), what) == captured->end())
    captured->push_back(what);
}

GraphMode moert::graphMode() { return currentMode; }

void moert::setGraphMode(GraphMode mode) { currentMode = mode; }

void moert::runSegment(const kernels::Context &ctx, Segment &segment,
                       SegmentFn fn, char *state, char *arena, char *inputs) {
  if (currentMode != GraphMode::Replay || ctx.profiler ||
      ctx.refreshParameterCopies) {
    fn(ctx, state, arena, inputs);
    return;
  }
  if (!segment.exec) {
    cudaGraph_t graph = nullptr;
    std::vector<std::string> collectives;
    cudaError_t status =
        cudaStreamBeginCapture(ctx.stream, cudaStreamCaptureModeThreadLocal);
    if (status == cudaSuccess) {
      captured = &collectives;
      fn(ctx, state, arena, inputs);
      captured = nullptr;
      status = cudaStreamEndCapture(ctx.stream, &graph);
    }
    segment.collectives.clear();
    for (const std::string &what : collectives)
      segment.collectives +=
          (segment.collectives.empty() ? "" : ", ") + what;
    if (status == cudaSuccess)
      status = cudaGraphInstantiate(&segment.exec, graph, 0);
    if (graph)
      cudaGraphDestroy(graph);
    if (status != cudaSuccess) {
      (void)cudaGetLastError(); // capture errors are not sticky
      std::fprintf(stderr,
                   "moert: capturing a step segment as a CUDA graph failed "
                   "(%s); running without graphs\n",
                   cudaGetErrorString(status));
      segment.exec = nullptr;
      currentMode = GraphMode::Off;
      fn(ctx, state, arena, inputs);
      return;
    }
  }
  MOERT_CUDA_CHECK(cudaGraphLaunch(segment.exec, ctx.stream));
  if (ctx.mesh && !segment.collectives.empty()) {
    Status watched = ctx.mesh->group(meshAxes({0, 1, 2}))
                         .watchStream("a CUDA graph of the step holding " +
                                          segment.collectives,
                                      ctx.stream);
    if (!watched.ok()) {
      std::fprintf(stderr, "error: %s\n", watched.message().c_str());
      std::exit(1);
    }
  }
}
