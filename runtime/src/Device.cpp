//===- Device.cpp - GPU and NCCL facts for a rank -------------------------===//
//
// Queries the CUDA devices and the NCCL library a rank program runs with.
// Every call's status is checked and reported with file and line.
//
//===----------------------------------------------------------------------===//

#include "moert/Device.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdio>

using namespace moert;

namespace {

/// "FILE:LINE: CALL failed: WHY".
std::string failure(const char *file, int line, const std::string &call,
                    const char *why) {
  return std::string(file) + ":" + std::to_string(line) + ": " + call +
         " failed: " + why;
}

} // namespace

bool moert::queryDevices(DeviceInfo &info, std::string &error) {
  int ncclVersion = 0;
  if (ncclResult_t r = ncclGetVersion(&ncclVersion); r != ncclSuccess) {
    error =
        failure(__FILE__, __LINE__, "ncclGetVersion", ncclGetErrorString(r));
    return false;
  }
  info.ncclVersion = ncclVersion;
  if (cudaError_t r = cudaGetDeviceCount(&info.deviceCount); r != cudaSuccess) {
    error = failure(__FILE__, __LINE__, "cudaGetDeviceCount",
                    cudaGetErrorString(r));
    info.deviceCount = 0;
    return false;
  }
  for (int d = 0; d < info.deviceCount; ++d) {
    cudaDeviceProp prop;
    if (cudaError_t r = cudaGetDeviceProperties(&prop, d); r != cudaSuccess) {
      error = failure(__FILE__, __LINE__,
                      "cudaGetDeviceProperties(" + std::to_string(d) + ")",
                      cudaGetErrorString(r));
      return false;
    }
    char line[512];
    std::snprintf(line, sizeof(line), "%s (sm_%d%d, %.1f GiB)", prop.name,
                  prop.major, prop.minor,
                  prop.totalGlobalMem / double(1 << 30));
    info.names.push_back(line);
  }
  return true;
}
