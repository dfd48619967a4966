//===- NcclCommunicator.h - The Communicator on NCCL ------------*- C++ -*-===//
//
// moert's production Communicator: one NCCL communicator per group. The
// world's is made from a unique id that rank 0 creates and the launch's
// rendezvous hands to every rank (as NcclUniqueId's bytes); the mesh groups
// are split from it (ncclCommSplit). The all-to-all with per-peer counts is
// one group of ncclSend/ncclRecv. A failed NCCL or CUDA call aborts the
// communicator (ncclCommAbort: the other ranks' pending collectives fail
// instead of hanging), and every later call on it fails too. This header
// does not need NCCL's; the NCCL version moert needs is checked in one
// place (runtime/src/NcclCompat.h).
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_NCCLCOMMUNICATOR_H
#define MOERT_NCCLCOMMUNICATOR_H

#include "moert/Bootstrap.h"
#include "moert/Communicator.h"

#include <array>
#include <chrono>

namespace moert {

/// The bytes of an ncclUniqueId (NCCL_UNIQUE_ID_BYTES).
using NcclUniqueId = std::array<char, 128>;

/// A fresh unique id for a new world; rank 0 makes it once.
Status createNcclUniqueId(NcclUniqueId &id);

/// This process's member, rank `rank` of `size`, of the group that shares
/// `id`, on the current CUDA device, named `group` in messages. Blocks until
/// all `size` ranks have called it.
Status createNcclCommunicator(const NcclUniqueId &id, int rank, int size,
                              const std::string &group,
                              std::unique_ptr<Communicator> &out);

/// The variable that sets the collectives' watchdog timeout, in seconds
/// (0: no watchdog).
inline constexpr const char *kCollectiveTimeoutVariable =
    "MOERT_COLLECTIVE_TIMEOUT";
inline constexpr std::chrono::milliseconds kDefaultCollectiveTimeout =
    std::chrono::minutes(10);

/// The world's communicator, named "world", for the rank `info` describes
/// (detectRank): rank 0 makes the unique id and the rendezvous
/// (moert/Rendezvous.h: MASTER_ADDR, MASTER_PORT, MOERT_JOB_TOKEN,
/// MOERT_RENDEZVOUS_TIMEOUT from `env`) hands it to the others. A one-rank
/// job needs none of those variables and opens no socket. The world and
/// the groups split from it share a watchdog (moert/Watchdog.h) that aborts
/// them all when one of their collectives fails or does not finish within
/// MOERT_COLLECTIVE_TIMEOUT (default 600 s).
Status createWorldCommunicator(const RankInfo &info, const EnvLookup &env,
                               std::unique_ptr<Communicator> &out);

} // namespace moert

#endif // MOERT_NCCLCOMMUNICATOR_H
