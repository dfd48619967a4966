//===- Routing.h - #moe.load_balancing as moert::Routing -------*- C++ -*-===//
//
// The one place where `#moe.load_balancing<...>` becomes the moert::Routing
// that the reference kernels and the GPU kernels take (moert/Routing.h).
// The dialect's `LoadBalancing` cases and MOERT_ROUTINGS list the same modes
// in the same order: the count is checked here at compile time, the names
// by test/lib/Reference/KernelsTest.cpp.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_SUPPORT_ROUTING_H
#define MOEC_SUPPORT_ROUTING_H

#include "dialects/Moe/IR/MoeOps.h"
#include "moert/Routing.h"

namespace moec {

/// The kernels' mode for the dialect's `mode`.
inline moert::Routing routingOf(mlir::moe::LoadBalancing mode) {
  static_assert(mlir::moe::getMaxEnumValForLoadBalancing() + 1 ==
                    moert::kNumRoutings,
                "the dialect's LoadBalancing cases and MOERT_ROUTINGS "
                "(moert/Routing.h) list different modes");
  return static_cast<moert::Routing>(mode);
}

} // namespace moec

#endif // MOEC_SUPPORT_ROUTING_H
