//===- Bootstrap.h - Who am I in the job? -----------------------*- C++ -*-===//
//
// Every rank program starts by finding its place in the job from the
// environment its launcher set: torchrun (RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), Slurm's srun (SLURM_PROCID,
// SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE) or Open MPI's mpirun
// (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK,
// OMPI_COMM_WORLD_LOCAL_SIZE). With none of them set, it is a single-rank
// job.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_BOOTSTRAP_H
#define MOERT_BOOTSTRAP_H

#include "moert/Status.h"

#include <chrono>
#include <functional>
#include <string>

namespace moert {

struct RankInfo {
  int rank = 0;
  int worldSize = 1;
  int localRank = 0;
  int localWorldSize = 1;
  std::string launcher = "single"; ///< torchrun, slurm, openmpi or single.
  std::string masterAddr;          ///< Empty unless the launcher set it.
  int masterPort = 0;
};

/// Reads one environment variable; returns false when it is not set.
using EnvLookup = std::function<bool(const char *name, std::string &value)>;

/// The process environment, for detectRank.
EnvLookup processEnvironment();

/// Fills `info` from the environment. Fails, naming the variable and its
/// value, when a variable is not a number, a rank is out of range, or a
/// launcher's variables are only partly set.
Status detectRank(const EnvLookup &env, RankInfo &info);

/// Reads a duration in seconds (a decimal number, fractions allowed) from
/// the variable `name`; leaves `value` as it is when the variable is not
/// set. Fails, naming the variable and its value, when it is not a number,
/// is negative, is zero and `allowZero` is false, or exceeds 10^6 s.
Status readSecondsVariable(const EnvLookup &env, const char *name,
                           bool allowZero, std::chrono::milliseconds &value);

} // namespace moert

#endif // MOERT_BOOTSTRAP_H
