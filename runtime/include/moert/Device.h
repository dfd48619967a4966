//===- Device.h - GPU and NCCL facts for a rank -----------------*- C++ -*-===//
//
// What a rank program can see of its GPUs and of NCCL. Built only with CUDA
// and NCCL (MOERT_HAVE_CUDA).
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_DEVICE_H
#define MOERT_DEVICE_H

#include "moert/Status.h"

#include <string>
#include <vector>

namespace moert {

struct DeviceInfo {
  int ncclVersion = 0; ///< As ncclGetVersion reports it, e.g. 22803.
  int deviceCount = 0;
  std::vector<std::string> names; ///< One line per device.
};

/// Fills `info`; a failure names the call, file and line.
Status queryDevices(DeviceInfo &info);

} // namespace moert

#endif // MOERT_DEVICE_H
