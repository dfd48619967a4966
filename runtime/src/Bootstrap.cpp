//===- Bootstrap.cpp - Who am I in the job? -------------------------------===//
//
// See moert/Bootstrap.h. The launchers are tried in a fixed order (torchrun,
// Slurm, Open MPI); the first whose rank variable is set decides.
//
//===----------------------------------------------------------------------===//

#include "moert/Bootstrap.h"

#include <cstdlib>
#include <tuple>

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
Status readInt(const EnvLookup &env, const char *name, bool required,
               int &out) {
  std::string value;
  if (!env(name, value)) {
    if (required)
      return Status::failure(std::string(name) + " is not set");
    return Status::success();
  }
  char *end = nullptr;
  long parsed = std::strtol(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || parsed < 0 || parsed > (1 << 24))
    return Status::failure(std::string(name) + "='" + value +
                           "' is not a non-negative integer");
  out = static_cast<int>(parsed);
  return Status::success();
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

Status moert::detectRank(const EnvLookup &env, RankInfo &info) {
  info = RankInfo();
  std::string unused;
  for (const LauncherVars &vars : kLaunchers) {
    if (!env(vars.rank, unused))
      continue;
    info.launcher = vars.launcher;
    // Slurm's SLURM_NTASKS_PER_NODE may read "8(x2)"; only the plain form is
    // accepted, and its absence means one task per node is not assumed.
    for (auto [name, required, field] :
         {std::tuple(vars.rank, true, &info.rank),
          std::tuple(vars.worldSize, true, &info.worldSize),
          std::tuple(vars.localRank, false, &info.localRank),
          std::tuple(vars.localWorldSize, false, &info.localWorldSize)})
      if (Status read = readInt(env, name, required, *field); !read.ok())
        return read;
    if (info.worldSize == 0 || info.rank >= info.worldSize)
      return Status::failure(std::string(vars.rank) + "=" +
                             std::to_string(info.rank) +
                             " is not a rank of a world of " + vars.worldSize +
                             "=" + std::to_string(info.worldSize));
    if (info.localRank >= info.localWorldSize &&
        env(vars.localWorldSize, unused))
      return Status::failure(std::string(vars.localRank) + "=" +
                             std::to_string(info.localRank) + " is not below " +
                             vars.localWorldSize + "=" +
                             std::to_string(info.localWorldSize));
    if (!env(vars.localWorldSize, unused))
      info.localWorldSize = info.worldSize;
    env("MASTER_ADDR", info.masterAddr);
    return readInt(env, "MASTER_PORT", false, info.masterPort);
  }
  return Status::success(); // No launcher: a single-rank job.
}

Status moert::readSecondsVariable(const EnvLookup &env, const char *name,
                                  bool allowZero,
                                  std::chrono::milliseconds &value) {
  std::string text;
  if (!env(name, text))
    return Status::success();
  char *end = nullptr;
  double seconds = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(seconds >= 0) || seconds > 1e6 ||
      (seconds == 0 && !allowZero))
    return Status::failure(std::string(name) + "='" + text + "' is not a " +
                           (allowZero ? "non-negative" : "positive") +
                           " number of seconds");
  value = std::chrono::milliseconds(static_cast<long long>(seconds * 1000));
  return Status::success();
}
