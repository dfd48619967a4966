//===- Communicator.h - In-process collectives for simulated ranks -*- C++ -*-===//
//
// The communicator the reference executor uses when it runs one SPMD program
// on W simulated ranks in one process, one thread per rank. It implements
// every collective the partitioned IR can contain, on flat buffers as NCCL
// does: all-reduce (sum), all-gather (of contributions of any size, zero
// included), reduce-scatter (sum) and all-to-all with a count per peer.
//
// A group is the list of its ranks in increasing order; a member's position
// in that list is its group rank. The k-th collective a rank calls on a group
// meets the k-th call of every other member on the same group, so groups that
// share ranks may interleave freely. Results never depend on thread timing:
// contributions are copied into a shared exchange, and every reduction adds
// them in group-rank order (in fp64 for floats, rounded once to fp32).
//
// When one rank fails it calls abort(); every rank waiting in, or later
// entering, a collective then fails instead of waiting forever.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_REFERENCE_COMMUNICATOR_H
#define MOEC_REFERENCE_COMMUNICATOR_H

#include "moec/Support/HostTensor.h"

#include "llvm/ADT/ArrayRef.h"

#include <condition_variable>
#include <functional>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace moec::reference {

class Communicator {
public:
  /// A communicator for ranks 0..worldSize-1.
  explicit Communicator(int64_t worldSize);

  int64_t worldSize() const { return static_cast<int64_t>(sequence.size()); }

  /// Replaces `data` on every member of `group` by the element-wise sum of
  /// the members' `data`. All members pass the same element kind and count.
  bool allReduceSum(int64_t rank, llvm::ArrayRef<int64_t> group,
                    HostTensor &data, std::string &error);

  /// Sets `output` to the members' `input` elements concatenated in group
  /// order, as a 1-D tensor. Contributions may differ in size, zero included.
  bool allGather(int64_t rank, llvm::ArrayRef<int64_t> group,
                 const HostTensor &input, HostTensor &output,
                 std::string &error);

  /// Splits every member's `input` into group-size equal chunks and sets
  /// `output` (1-D) on group rank i to the sum of the members' chunks i. All
  /// members pass the same element count, a multiple of the group size.
  bool reduceScatterSum(int64_t rank, llvm::ArrayRef<int64_t> group,
                        const HostTensor &input, HostTensor &output,
                        std::string &error);

  /// `sends[j]` goes to group rank j; `receives[j]` (1-D) is what group rank
  /// j sent to this rank. Counts are per pair and may be zero.
  bool allToAll(int64_t rank, llvm::ArrayRef<int64_t> group,
                const std::vector<HostTensor> &sends,
                std::vector<HostTensor> &receives, std::string &error);

  /// Marks the communicator failed because `rank` failed: every collective
  /// in progress or started later returns false with a message naming it.
  void abort(int64_t rank);

private:
  enum class Collective { AllReduce, AllGather, ReduceScatter, AllToAll };

  /// One meeting of a group: the members' contributions, by group rank.
  struct Exchange {
    Collective collective;
    std::vector<std::vector<HostTensor>> contributions;
    int64_t arrived = 0;
    int64_t departed = 0;
  };
  using ExchangeKey = std::pair<std::vector<int64_t>, uint64_t>;

  /// Deposits `contribution` for `rank`, waits until every member of `group`
  /// has deposited, calls `read` on all contributions, then leaves. Fails on
  /// an invalid group, a collective that differs between members, or abort.
  bool exchange(int64_t rank, llvm::ArrayRef<int64_t> group,
                Collective collective, std::vector<HostTensor> contribution,
                const std::function<bool(
                    const std::vector<std::vector<HostTensor>> &, int64_t,
                    std::string &)> &read,
                std::string &error);

  std::mutex mutex;
  std::condition_variable arrivals;
  std::map<ExchangeKey, Exchange> exchanges;
  /// Per rank, how many collectives it has called on each group. Each entry
  /// is touched only by its own rank's thread.
  std::vector<std::map<std::vector<int64_t>, uint64_t>> sequence;
  /// The rank that aborted, or -1.
  int64_t abortedBy = -1;
};

} // namespace moec::reference

#endif // MOEC_REFERENCE_COMMUNICATOR_H
