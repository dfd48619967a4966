//===- NcclCompat.h - The NCCL that moert builds against --------*- C++ -*-===//
//
// Every dependence of the runtime on NCCL's version, in one place: the
// oldest NCCL whose API the communicator uses (ncclCommSplit came with
// 2.18; ncclBfloat16, ncclGetLastError and grouped send/receive are
// older), the check that the library loaded at run time is not from an
// older minor release than the headers (patch releases keep the ABI: a
// runtime built against 2.28.9 runs on 2.28.3, as GPU machines with the
// system's NCCL have), and the mapping of moert's element types to NCCL's.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_SRC_NCCLCOMPAT_H
#define MOERT_SRC_NCCLCOMPAT_H

#include "moert/Communicator.h"
#include "moert/NcclCommunicator.h"

#include <nccl.h>

#if !defined(NCCL_VERSION_CODE) || NCCL_VERSION_CODE < NCCL_VERSION(2, 18, 0)
#error "moert needs NCCL 2.18 or newer (ncclCommSplit)"
#endif

static_assert(sizeof(ncclUniqueId) == sizeof(moert::NcclUniqueId),
              "NcclUniqueId must hold an ncclUniqueId's bytes");

namespace moert::nccl {

/// Fails when the NCCL loaded at run time is from an older major.minor
/// release than the headers this runtime was compiled with.
inline Status checkLibraryVersion() {
  int version = 0;
  if (ncclResult_t r = ncclGetVersion(&version); r != ncclSuccess)
    return Status::failure(std::string(__FILE__) + ":" +
                           std::to_string(__LINE__) +
                           ": ncclGetVersion failed: " + ncclGetErrorString(r));
  constexpr int oldest = NCCL_VERSION(NCCL_MAJOR, NCCL_MINOR, 0);
  if (version < oldest)
    return Status::failure("the NCCL library loaded at run time is version " +
                           std::to_string(version) + ", older than " +
                           std::to_string(oldest) + " (moert was built with " +
                           std::to_string(NCCL_VERSION_CODE) + ")");
  return Status::success();
}

/// NCCL's type for `type`.
inline ncclDataType_t dataType(DataType type) {
  switch (type) {
  case DataType::F32:
    return ncclFloat32;
  case DataType::BF16:
    return ncclBfloat16;
  case DataType::I32:
    return ncclInt32;
  case DataType::I64:
    return ncclInt64;
  }
  return ncclFloat32;
}

} // namespace moert::nccl

#endif // MOERT_SRC_NCCLCOMPAT_H
