//===- StepGraphs.cpp - The training step's segments as CUDA graphs -------===//
//
// See moert/StepGraphs.h.
//
//===----------------------------------------------------------------------===//

#include "moert/StepGraphs.h"

#include <cstdio>

using namespace moert;

namespace {
GraphMode currentMode = GraphMode::Warmup;
} // namespace

GraphMode moert::graphMode() { return currentMode; }

void moert::setGraphMode(GraphMode mode) { currentMode = mode; }

void moert::runSegment(const kernels::Context &ctx, Segment &segment,
                       SegmentFn fn, char *state, char *arena, char *inputs) {
  if (currentMode != GraphMode::Replay || ctx.profiler) {
    fn(ctx, state, arena, inputs);
    return;
  }
  if (!segment.exec) {
    cudaGraph_t graph = nullptr;
    cudaError_t status =
        cudaStreamBeginCapture(ctx.stream, cudaStreamCaptureModeThreadLocal);
    if (status == cudaSuccess) {
      fn(ctx, state, arena, inputs);
      status = cudaStreamEndCapture(ctx.stream, &graph);
    }
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
}
