//===- moert-info.cpp - Print what a rank program would see ---------------===//
//
// Prints the rank's place in the job (from the launcher's environment) and,
// when built with CUDA, its GPUs and the NCCL version. Exits 1 with the
// reason when the environment is inconsistent.
//
//===----------------------------------------------------------------------===//

#include "moert/Bootstrap.h"
#ifdef MOERT_HAVE_CUDA
#include "moert/Device.h"
#endif

#include <fmt/format.h>

int main() {
  moert::RankInfo info;
  if (moert::Status status =
          moert::detectRank(moert::processEnvironment(), info);
      !status.ok()) {
    fmt::print(stderr, "moert-info: {}\n", status.message());
    return 1;
  }
  fmt::print("launcher {}: rank {} of {}, local rank {} of {}\n", info.launcher,
             info.rank, info.worldSize, info.localRank, info.localWorldSize);
#ifdef MOERT_HAVE_CUDA
  moert::DeviceInfo devices;
  if (moert::Status status = moert::queryDevices(devices); !status.ok()) {
    fmt::print("no usable GPU: {}\n", status.message());
    return 0;
  }
  fmt::print("NCCL {}; {} GPU(s)\n", devices.ncclVersion, devices.deviceCount);
  for (const std::string &name : devices.names)
    fmt::print("  {}\n", name);
#else
  fmt::print("built without CUDA\n");
#endif
  return 0;
}
