//===- Routing.h - The load-balancing modes of moe.router -------*- C++ -*-===//
//
// The one C++ enum of the router's load-balancing modes, shared by the CPU
// reference kernels (lib/Reference) and the GPU kernels
// (moert/kernels/Router.cuh); the two share this declaration and no kernel
// code. The IR spells a mode as the `moe` dialect's attribute
// `#moe.load_balancing<...>`; moec/Support/Routing.h maps that attribute
// to this enum, case for case by value, and checks that both list the same
// modes in the same order under the same names.
//
// One row of MOERT_ROUTINGS per mode: the enumerator and the name the
// dialect attribute and the job configuration use. Plain C++ (host and
// device code may use it); no CUDA, no MLIR.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_ROUTING_H
#define MOERT_ROUTING_H

#include <cstdint>

/// X(Enumerator, name) for every load-balancing mode, in the order of the
/// dialect's `LoadBalancing` cases.
#define MOERT_ROUTINGS(X)                                                      \
  X(AuxLoss, aux_loss)                                                         \
  X(Sinkhorn, sinkhorn)                                                        \
  X(Balanced, balanced)                                                        \
  X(None, none)

namespace moert {

/// The load-balancing modes of moe.router (docs/Dialects/Moe.md).
enum class Routing : uint32_t {
#define MOERT_ROUTING_ENUMERATOR(enumerator, name) enumerator,
  MOERT_ROUTINGS(MOERT_ROUTING_ENUMERATOR)
#undef MOERT_ROUTING_ENUMERATOR
};

/// How many modes there are.
constexpr uint32_t kNumRoutings = 0
#define MOERT_ROUTING_COUNT(enumerator, name) +1
    MOERT_ROUTINGS(MOERT_ROUTING_COUNT)
#undef MOERT_ROUTING_COUNT
    ;

/// The mode's name as `#moe.load_balancing<...>` and the job configuration
/// spell it, e.g. "aux_loss".
constexpr const char *routingName(Routing mode) {
  constexpr const char *kNames[] = {
#define MOERT_ROUTING_NAME(enumerator, name) #name,
      MOERT_ROUTINGS(MOERT_ROUTING_NAME)
#undef MOERT_ROUTING_NAME
  };
  return kNames[static_cast<uint32_t>(mode)];
}

/// The mode as a C++ expression, e.g. "moert::Routing::AuxLoss", for
/// printed programs.
constexpr const char *routingExpression(Routing mode) {
  constexpr const char *kExpressions[] = {
#define MOERT_ROUTING_EXPRESSION(enumerator, name)                             \
  "moert::Routing::" #enumerator,
      MOERT_ROUTINGS(MOERT_ROUTING_EXPRESSION)
#undef MOERT_ROUTING_EXPRESSION
  };
  return kExpressions[static_cast<uint32_t>(mode)];
}

} // namespace moert

#endif // MOERT_ROUTING_H
