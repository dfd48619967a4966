//===- Offload.h - Saved activations in pinned host memory ------*- C++ -*-===//
//
// Activation offloading on the GPU (moe.offload and moe.fetch, printed by
// the CUDA printer): the program's pinned host region, holding the
// offloaded activations at the offsets moe-plan-memory chose, and two
// streams beside the compute stream. A device-to-host copy runs on the
// offload stream after an event the compute stream records where the
// moe.offload is (after the value's last forward reader); the compute
// stream waits for it at its moe.offload_join, until which the memory plan
// holds the value's bytes. No other device-to-host copy may share the
// compute stream's critical path with these copies: a copy engine runs its
// queue in order, so a small copy the host waits for would wait for the
// offload copies ahead of it (the experts write their group sizes into
// mapped pinned memory with a kernel instead, Experts.cuh). A
// host-to-device copy runs on the fetch stream after an event recorded
// where the moe.fetch is (`activation_loading_horizon` layers ahead of the
// backward that reads it) and after its offload; the compute stream waits
// for it right before the first reader. Every call is made outside a
// captured CUDA graph segment (the printer ends the segment around them).
//
// Both directions are timed: a copy's own time (start to end on its
// stream) and the time the compute stream waited for it (from where the
// join or the reader's wait was enqueued to the copy's end, when positive).
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_OFFLOAD_H
#define MOERT_KERNELS_OFFLOAD_H

#include "moert/kernels/Context.h"

#include <array>
#include <vector>

namespace moert::kernels {

/// The offloading state of one rank's program.
struct ActivationOffload {
  cudaStream_t offloadStream = nullptr, fetchStream = nullptr;
  /// The pinned host region (cudaHostAlloc), `hostBytes` long.
  char *host = nullptr;
  int64_t hostBytes = 0;
  /// Per offload: [0] recorded on the compute stream at the moe.offload,
  /// [1] the copy's start and [2] its end on the offload stream, [3] the
  /// compute stream's join (timed).
  std::vector<std::array<cudaEvent_t, 4>> offloadEvents;
  /// Per offload this step: whether it ran, whether it was joined.
  std::vector<char> offloadRan, offloadJoined;
  /// Per fetch: [0] recorded on the compute stream at the moe.fetch, [1]
  /// the copy's start and [2] its end on the fetch stream, [3] the compute
  /// stream's wait for it (timed).
  std::vector<std::array<cudaEvent_t, 4>> fetchEvents;
  /// The bytes of each fetch; bytes moved to the host in this step.
  std::vector<int64_t> fetchBytes;
  int64_t offloadedBytes = 0;
};

/// What one step's transfers did (readOffloadTimes).
struct OffloadStepTimes {
  int64_t offloadedBytes = 0, fetchedBytes = 0;
  /// The fetch copies' time on the fetch stream, summed.
  double fetchMilliseconds = 0;
  /// The time the compute stream waited for fetches, summed.
  double waitMilliseconds = 0;
  /// The offload copies' time on the offload stream, summed.
  double offloadMilliseconds = 0;
  /// The time the compute stream waited at moe.offload_join, summed.
  double joinWaitMilliseconds = 0;
};

/// Creates the streams and the pinned host region of `hostBytes` bytes.
ActivationOffload *createActivationOffload(int64_t hostBytes);
/// Frees what createActivationOffload made.
void destroyActivationOffload(ActivationOffload *offload);
/// Reads the transfers of the step that just ended (its streams are
/// synchronised) and starts counting the next one.
OffloadStepTimes readOffloadTimes(ActivationOffload &offload);

/// Offload `id`: copies `bytes` from `device` to the host region at
/// `hostOffset`, on the offload stream, after the compute stream's work so
/// far.
void offloadToHost(const Context &ctx, int id, const void *device,
                   int64_t hostOffset, int64_t bytes);
/// The compute stream waits for offload `id`'s copy to end.
void joinOffload(const Context &ctx, int id);
/// The fetch stream waits for offload `id`'s copy to end (before a fetch
/// into bytes that offload reads).
void fetchAfterOffload(const Context &ctx, int id);
/// Fetch `id`: copies `bytes` from the host region at `hostOffset` to
/// `device` on the fetch stream, after the compute stream's work so far
/// and after offload `offloadId`, which wrote them.
void fetchFromHost(const Context &ctx, int id, int offloadId, void *device,
                   int64_t hostOffset, int64_t bytes);
/// The compute stream waits for fetch `id`'s copy to end.
void joinFetch(const Context &ctx, int id);

} // namespace moert::kernels

#endif // MOERT_KERNELS_OFFLOAD_H
