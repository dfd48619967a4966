//===- ParamInit.h - Sharding-invariant parameter initialisation -*- C++ -*-===//
//
// `delayed_param`: every element of every parameter is a pure function of
// (seed, parameter name, element index), with the index row-major in the
// full, unsharded parameter, so the global parameters are the same for
// every (world size, expert-parallel degree, hybrid-shard degree). Hugging
// Face's Mixtral initialisers: normal(0, initializer_range) for linear,
// embedding and expert weights, ones for RMSNorm weights.
//
// The generator is the runtime's (moert/CounterRng.h), so the reference
// executor and the GPU initialisation kernels draw every element with the
// same arithmetic without either side depending on the other.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_SUPPORT_PARAMINIT_H
#define MOEC_SUPPORT_PARAMINIT_H

#include "moert/CounterRng.h"

namespace moec {

using moert::ParamNormalStream;

} // namespace moec

#endif // MOEC_SUPPORT_PARAMINIT_H
