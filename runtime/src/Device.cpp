//===- Device.cpp - GPU and NCCL facts for a rank -------------------------===//
//
// Queries the CUDA devices and the NCCL library a rank program runs with.
// Every call's status is checked and reported with file and line.
//
//===----------------------------------------------------------------------===//

#include "moert/Device.h"

#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <nccl.h>

using namespace moert;

bool moert::queryDevices(DeviceInfo &info, std::string &error) {
  int ncclVersion = 0;
  if (ncclResult_t r = ncclGetVersion(&ncclVersion); r != ncclSuccess) {
    error = fmt::format("{}:{}: ncclGetVersion failed: {}", __FILE__,
                        __LINE__, ncclGetErrorString(r));
    return false;
  }
  info.ncclVersion = ncclVersion;
  if (cudaError_t r = cudaGetDeviceCount(&info.deviceCount);
      r != cudaSuccess) {
    error = fmt::format("{}:{}: cudaGetDeviceCount failed: {}", __FILE__,
                        __LINE__, cudaGetErrorString(r));
    info.deviceCount = 0;
    return false;
  }
  for (int d = 0; d < info.deviceCount; ++d) {
    cudaDeviceProp prop;
    if (cudaError_t r = cudaGetDeviceProperties(&prop, d); r != cudaSuccess) {
      error = fmt::format("{}:{}: cudaGetDeviceProperties({}) failed: {}",
                          __FILE__, __LINE__, d, cudaGetErrorString(r));
      return false;
    }
    info.names.push_back(fmt::format("{} (sm_{}{}, {:.1f} GiB)", prop.name,
                                     prop.major, prop.minor,
                                     prop.totalGlobalMem / double(1 << 30)));
  }
  return true;
}
