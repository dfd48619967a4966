//===- StepGraphs.h - The training step's segments as CUDA graphs -*- C++ -*-===//
//
// A compiled step is a sequence of segments (fixed launches on fixed
// buffers: one CUDA graph each) and of ops that read values back to the host
// in the middle of the step (the experts' group sizes) and run as they are
// in between. runSegment() runs one segment:
//
//   - eagerly while graphs are off (`--no-graphs`), during the warm-up step
//     (the first step of a run: libraries pick algorithms and allocate
//     there, which a capture must not see), in a profiled step (its
//     per-op events belong on the stream), and in a step that refreshes
//     the kept parameter copies (Context::refreshParameterCopies: launches
//     the replayed graphs do not hold);
//   - otherwise, the first time, it captures the segment's launches into a
//     graph and instantiates it; every time, it launches the graph.
//
// A capture that fails is reported once and the program goes on without
// graphs: the failed capture ran nothing, so the segment then runs eagerly.
// The collectives a capture records are not watched one by one (an event of
// the capture is not the replay's): NCCL's communicator names each in the
// capture (noteCapturedCollective), and every replay of a segment that holds
// some is watched through the mesh's world group as one unit named by them,
// so that a peer that dies during a replay is reported, naming them.
// Compiled into the runtime library (runtime/src/StepGraphs.cpp); printed
// programs call runSegment, the driver sets the mode.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_STEPGRAPHS_H
#define MOERT_STEPGRAPHS_H

#include "moert/kernels/Context.h"

#include <string>

namespace moert {

/// How runSegment() runs segments; set by the driver between steps.
enum class GraphMode {
  Off,    ///< never capture (--no-graphs, or a capture failed)
  Warmup, ///< run eagerly this step, capture later
  Replay, ///< capture once, then replay
};

/// The mode runSegment() follows (Warmup until set).
GraphMode graphMode();
void setGraphMode(GraphMode mode);

/// One segment's instantiated graph, once captured.
struct Segment {
  cudaGraphExec_t exec = nullptr;
  /// The collectives captured in it ("all_to_all in group 'expert', ...").
  std::string collectives;
};

/// Called by a communicator for a collective enqueued while this thread
/// captures a segment: the segment's replays are watched as holding it.
void noteCapturedCollective(const std::string &what);

using SegmentFn = void (*)(const kernels::Context &, char *state, char *arena,
                           char *inputs);

/// Runs `fn` on the context's stream as the mode says (see the file
/// comment), capturing it into `segment` the first time it replays.
void runSegment(const kernels::Context &ctx, Segment &segment, SegmentFn fn,
                char *state, char *arena, char *inputs);

} // namespace moert

#endif // MOERT_STEPGRAPHS_H
