//===- StepGraphs.h - The training step's segments as CUDA graphs -*- C++ -*-===//
//
// A compiled step is a sequence of segments (fixed launches on fixed
// buffers: one CUDA graph each) and of ops that read values back to the host
// in the middle of the step (the experts' group sizes) and run as they are
// in between. runSegment() runs one segment:
//
//   - eagerly while graphs are off (`--no-graphs`), during the warm-up step
//     (the first step of a run: libraries pick algorithms and allocate
//     there, which a capture must not see), and in a profiled step (its
//     per-op events belong on the stream);
//   - otherwise, the first time, it captures the segment's launches into a
//     graph and instantiates it; every time, it launches the graph.
//
// A capture that fails is reported once and the program goes on without
// graphs: the failed capture ran nothing, so the segment then runs eagerly.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_STEPGRAPHS_H
#define MOERT_STEPGRAPHS_H

#include "moert/kernels/Common.cuh"

#include <cstdio>

namespace moert {

/// How runSegment() runs segments; set by the driver between steps.
enum class GraphMode {
  Off,     ///< never capture (--no-graphs, or a capture failed)
  Warmup,  ///< run eagerly this step, capture later
  Replay,  ///< capture once, then replay
};
inline GraphMode graphMode = GraphMode::Warmup;

/// One segment's instantiated graph, once captured.
struct Segment {
  cudaGraphExec_t exec = nullptr;
};

using SegmentFn = void (*)(const kernels::Context &, char *state,
                           char *arena, char *inputs);

inline void runSegment(const kernels::Context &ctx, Segment &segment,
                       SegmentFn fn, char *state, char *arena, char *inputs) {
  if (graphMode != GraphMode::Replay || ctx.profiler) {
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
      graphMode = GraphMode::Off;
      fn(ctx, state, arena, inputs);
      return;
    }
  }
  MOERT_CUDA_CHECK(cudaGraphLaunch(segment.exec, ctx.stream));
}

} // namespace moert

#endif // MOERT_STEPGRAPHS_H
