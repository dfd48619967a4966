//===- CollectiveTimes.h - Time spent in each group's collectives -*- C++ -*-=//
//
// The driver's measure of the time a rank's collectives take, per group: a
// Communicator that wraps another (and every group split from it) and
// records an event before and after each collective it passes on, on the
// collective's stream. Collectives enqueued while the stream is captured
// into a CUDA graph are not timed (an event of a graph's replay is not this
// call's), so with graphs on, only the steps that run eagerly (the first
// of a run, a profiled one) count them. The time is the stream's, from the
// rank's view: it includes waiting for the group's slowest rank. Besides
// the time per group it keeps, per group and collective, the calls, the
// bytes (nccl-tests' "size": what an all-reduce or broadcast reduces or
// sends, an all-gather's whole result, a reduce-scatter's whole input, the
// bytes an all-to-all sends, the rank's own included) and the bus bandwidth
// by nccl-tests' factors, so a step's profile says what each collective
// moved and how fast.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_COLLECTIVETIMES_H
#define MOERT_COLLECTIVETIMES_H

#include "moert/Communicator.h"

#include <memory>
#include <string>
#include <vector>

namespace moert {

/// One group's collectives since the last collect().
struct GroupTime {
  std::string group;
  int calls = 0;
  double milliseconds = 0;
};

/// One kind of collective of one group since the last collect().
struct CollectiveTime {
  std::string group;
  std::string collective; ///< all_reduce, all_gather, ..., barrier
  int groupSize = 1;
  int calls = 0;
  double milliseconds = 0;
  double bytes = 0;
  /// bytes / time scaled by nccl-tests' bus factor for the collective and
  /// group size (all_reduce 2(n-1)/n; all_gather, reduce_scatter and
  /// all_to_all (n-1)/n; broadcast 1; barrier 0), in GB/s.
  double busGbPerSecond() const;
};

/// The timed collectives of one rank; used by the rank's thread only.
class CollectiveTimes {
public:
  CollectiveTimes();
  ~CollectiveTimes();
  CollectiveTimes(const CollectiveTimes &) = delete;
  CollectiveTimes &operator=(const CollectiveTimes &) = delete;

  /// `comm`, timed here, and every group later split from it; `comm` must
  /// outlive the result, and this must outlive both.
  std::unique_ptr<Communicator> wrap(Communicator &comm);

  /// The groups' times since the last call, in the order the groups were
  /// wrapped, leaving out groups with no timed call, and, when given, the
  /// same calls per group and collective (in the order of their first
  /// call). Call when the streams of the timed collectives are
  /// synchronised.
  Status collect(std::vector<GroupTime> &times,
                 std::vector<CollectiveTime> *byCollective = nullptr);

  /// Where the timed communicators record their calls.
  struct Pending;

private:
  std::unique_ptr<Pending> pending;
};

} // namespace moert

#endif // MOERT_COLLECTIVETIMES_H
