//===- ExpertParallel.h - Routed collectives on simulated ranks -*- C++ -*-===//
//
// The reference execution of moe.dispatch, moe.combine and
// moe.token_shuffle: the data-dependent collectives of expert parallelism,
// run by one rank of an expert group through the in-process Communicator.
// Each follows the op's definition in dialects/Moe/IR/MoeOps.td with the
// communication its `dispatcher` names (counts first, then a variable
// all-to-all; or an all-gather of the group's tokens and a reduce-scatter),
// so both dispatchers are exercised, and both give the same result.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_REFERENCE_EXPERTPARALLEL_H
#define MOEC_REFERENCE_EXPERTPARALLEL_H

#include "moec/Reference/Communicator.h"
#include "moec/Support/HostTensor.h"

#include <cstdint>
#include <string>
#include <vector>

namespace moec::reference {

/// One rank's view of its expert group.
struct ExpertGroup {
  Communicator *communicator = nullptr;
  int64_t rank = 0;            ///< global rank
  std::vector<int64_t> ranks;  ///< the group's ranks, in group-rank order
  int64_t groupRank = 0;       ///< this rank's position in `ranks`
  int64_t size() const { return static_cast<int64_t>(ranks.size()); }
};

enum class DispatchKind { AllToAll, AllGather };

/// moe.dispatch: `input` [..., hidden], `experts` [..., k] (global expert
/// indices), optional `gates` [..., k]. Sets `rows` [R, hidden],
/// `rowExperts` [R, 1] (local expert), `counts` [P, numLocalExperts] and,
/// with gates, `rowGates` [R, 1].
bool dispatch(const ExpertGroup &group, DispatchKind kind,
              const HostTensor &input, const HostTensor &experts,
              const HostTensor *gates, int64_t numLocalExperts,
              HostTensor &rows, HostTensor &rowExperts, HostTensor &counts,
              HostTensor *rowGates, std::string &error);

/// moe.combine: `rows` [R, d] in dispatch order back to their slots of
/// `experts` [..., k], summed per token: `out` [..., d].
bool combine(const ExpertGroup &group, DispatchKind kind,
             const HostTensor &rows, const HostTensor &experts,
             const HostTensor &counts, HostTensor &out, std::string &error);

/// The permutation of `n` group tokens that moe.token_shuffle applies for
/// (`seed`, `step`): a Fisher-Yates shuffle driven by splitmix64.
std::vector<int64_t> tokenPermutation(uint64_t seed, int64_t step, int64_t n);

/// moe.token_shuffle of `input` [tokens..., hidden] (every member has the
/// same number of tokens).
bool tokenShuffle(const ExpertGroup &group, const HostTensor &input,
                  uint64_t seed, int64_t step, bool inverse, HostTensor &out,
                  std::string &error);

} // namespace moec::reference

#endif // MOEC_REFERENCE_EXPERTPARALLEL_H
