//===- CollectiveTimes.h - Time spent in each group's collectives -*- C++ -*-=//
//
// The driver's measure of the time a rank's collectives take, per group: a
// Communicator that wraps another (and every group split from it) and
// records an event before and after each collective it passes on, on the
// collective's stream. Collectives enqueued while the stream is captured
// into a CUDA graph are not timed (an event of a graph's replay is not this
// call's), so with graphs on, only the steps that run eagerly (the first
// of a run, a profiled one) count them. The time is the stream's, from the
// rank's view: it includes waiting for the group's slowest rank.
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
  /// wrapped, leaving out groups with no timed call. Call when the streams
  /// of the timed collectives are synchronised.
  Status collect(std::vector<GroupTime> &times);

  /// Where the timed communicators record their calls.
  struct Pending;

private:
  std::unique_ptr<Pending> pending;
};

} // namespace moert

#endif // MOERT_COLLECTIVETIMES_H
