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
Status failure(const char *file, int line, const std::string &call,
               const char *why) {
  return Status::failure(std::string(file) + ":" + std::to_string(line) + ": " +
                         call + " failed: " + why);
}

} // namespace

Status moert::queryDevices(DeviceInfo &info) {
  int ncclVersion = 0;
  if (ncclResult_t r = ncclGetVersion(&ncclVersion); r != ncclSuccess)
    return failure(__FILE__, __LINE__, "ncclGetVersion", ncclGetErrorString(r));
  info.ncclVersion = ncclVersion;
  if (cudaError_t r = cudaGetDeviceCount(&info.deviceCount); r != cudaSuccess) {
    info.deviceCount = 0;
    return failure(__FILE__, __LINE__, "cudaGetDeviceCount",
                   cudaGetErrorString(r));
  }
  for (int d = 0; d < info.deviceCount; ++d) {
    cudaDeviceProp prop;
    if (cudaError_t r = cudaGetDeviceProperties(&prop, d); r != cudaSuccess) {
      return failure(__FILE__, __LINE__,
                     "cudaGetDeviceProperties(" + std::to_string(d) + ")",
                     cudaGetErrorString(r));
    }
    char line[512];
    std::snprintf(line, sizeof(line), "%s (sm_%d%d, %.1f GiB)", prop.name,
                  prop.major, prop.minor,
                  prop.totalGlobalMem / double(1 << 30));
    info.names.push_back(line);
  }
  return Status::success();
}
