//===- ThreadCommunicator.h - A world of ranks as threads -------*- C++ -*-===//
//
// The second Communicator: W ranks run as W threads of one process, each
// with its own buffers and CUDA stream, and a collective copies between
// the ranks' buffers. It exists to test: NCCL refuses two ranks on one GPU,
// and this runs the partitioned programs of any W on one GPU (the driver's
// --simulate-ranks) and the collectives' unit tests on the CPU. NCCL stays
// the production path (moert/NcclCommunicator.h).
//
// Every call of a group meets the same call of the group's other ranks at
// a rendezvous shared in the process (matched by call order, as NCCL's are;
// ranks that call different collectives, types or counts all fail, naming
// both). The ranks are then ordered through the streams, never by waiting
// on the GPU: a rank records an event behind its earlier work, the others'
// streams wait for it before they copy from its buffers, and its stream
// waits for theirs to finish reading before it goes on. All-gather,
// all-to-all and broadcast pull the peers' bytes with cudaMemcpyAsync on
// the receiver's stream. The sums (all-reduce, reduce-scatter) are done on
// the host: every rank stages its input in host memory, then adds the
// ranks' values in rank order in double precision (integers exactly) and
// rounds once, so every rank gets the same bits whatever the threads'
// timing, like the reference executor's simulated ranks; they synchronise
// the rank's stream. Nothing of it can be captured into a CUDA graph.
//
// In host memory (ThreadMemory::Host) buffers are host pointers, streams
// are ignored and no CUDA call is made, so the unit tests run without a GPU.
// abort() on any rank aborts the group for all: the pending and the later
// calls of every rank fail. So do ranks that disagree, and a rank that
// waits for the others longer than the world's timeout (the driver's is
// MOERT_COLLECTIVE_TIMEOUT's, as the NCCL watchdog's): a simulated world
// fails instead of hanging.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_THREADCOMMUNICATOR_H
#define MOERT_THREADCOMMUNICATOR_H

#include "moert/Communicator.h"

#include <chrono>
#include <memory>
#include <vector>

namespace moert {

/// Where the buffers of a thread world's collectives are.
enum class ThreadMemory {
  Device, ///< device buffers of the current CUDA device, on streams
  Host,   ///< host buffers; streams ignored, no CUDA call
};

/// A world of `size` ranks as threads of this process, named "world":
/// `out[r]` is rank r's communicator, to be used by one thread (which must
/// have the same CUDA device current as the others in device memory). A
/// rank that waits longer than `timeout` (0: no limit) for the others in
/// one call aborts the group, naming the ranks that did not arrive.
Status createThreadWorld(int size, ThreadMemory memory,
                         std::vector<std::unique_ptr<Communicator>> &out,
                         std::chrono::milliseconds timeout =
                             std::chrono::milliseconds(0));

} // namespace moert

#endif // MOERT_THREADCOMMUNICATOR_H
