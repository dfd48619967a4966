//===- Bootstrap.cpp - Who am I in the job? -------------------------------===//
//
// See moert/Bootstrap.h. The launchers are tried in a fixed order (torchrun,
// Slurm, Open MPI); the first whose rank variable is set decides.
//
//===----------------------------------------------------------------------===//

#include "moert/Bootstrap.h"

#include <cstdlib>

using namespace moert;

namespace {

struct LauncherVars {
  const char *launcher;
  const char *rank;
  const char *worldSize;
  const char *localRank;
  const char *localWorldSize;
};

constexpr LauncherVars kLaunchers[] = {
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
     "SLURM_NTASKS_PER_NODE"},
    {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
     "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"},
};

/// Parses a non-negative decimal integer; `required` says whether absence is
/// an error.
bool readInt(const EnvLookup &env, const char *name, bool required, int &out,
             std::string &error) {
  std::string value;
  if (!env(name, value)) {
    if (required)
      error = std::string(name) + " is not set";
    return !required;
  }
  char *end = nullptr;
  long parsed = std::strtol(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || parsed < 0 || parsed > (1 << 24)) {
    error =
        std::string(name) + "='" + value + "' is not a non-negative integer";
    return false;
  }
  out = static_cast<int>(parsed);
  return true;
}

} // namespace

EnvLookup moert::processEnvironment() {
  return [](const char *name, std::string &value) {
    const char *v = std::getenv(name);
    if (!v)
      return false;
    value = v;
    return true;
  };
}

bool moert::detectRank(const EnvLookup &env, RankInfo &info,
                       std::string &error) {
  info = RankInfo();
  std::string unused;
  for (const LauncherVars &vars : kLaunchers) {
    if (!env(vars.rank, unused))
      continue;
    info.launcher = vars.launcher;
    // Slurm's SLURM_NTASKS_PER_NODE may read "8(x2)"; only the plain form is
    // accepted, and its absence means one task per node is not assumed.
    if (!readInt(env, vars.rank, true, info.rank, error) ||
        !readInt(env, vars.worldSize, true, info.worldSize, error) ||
        !readInt(env, vars.localRank, false, info.localRank, error) ||
        !readInt(env, vars.localWorldSize, false, info.localWorldSize, error))
      return false;
    if (info.worldSize == 0 || info.rank >= info.worldSize) {
      error = std::string(vars.rank) + "=" + std::to_string(info.rank) +
              " is not a rank of a world of " + vars.worldSize + "=" +
              std::to_string(info.worldSize);
      return false;
    }
    if (info.localRank >= info.localWorldSize &&
        env(vars.localWorldSize, unused)) {
      error = std::string(vars.localRank) + "=" +
              std::to_string(info.localRank) + " is not below " +
              vars.localWorldSize + "=" + std::to_string(info.localWorldSize);
      return false;
    }
    if (!env(vars.localWorldSize, unused))
      info.localWorldSize = info.worldSize;
    env("MASTER_ADDR", info.masterAddr);
    if (!readInt(env, "MASTER_PORT", false, info.masterPort, error))
      return false;
    return true;
  }
  return true; // No launcher: a single-rank job.
}
