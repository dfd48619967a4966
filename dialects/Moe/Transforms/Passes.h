//===- Passes.h - moe dialect passes ----------------------------*- C++ -*-===//
//
// Declarations and registration of the passes on `moe` IR.
//
//===----------------------------------------------------------------------===//

#ifndef DIALECTS_MOE_TRANSFORMS_PASSES_H
#define DIALECTS_MOE_TRANSFORMS_PASSES_H

#include "dialects/Moe/IR/MoeOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Pass/Pass.h"

namespace mlir::moe {

/// A pass-option modifier that accepts every LoadBalancing value by its name
/// in the dialect, so that a pass option can be typed by the enum and a new
/// mode needs nothing here.
struct LoadBalancingNames {
  template <typename Opt>
  void apply(Opt &option) const {
    for (uint32_t value = 0; value <= getMaxEnumValForLoadBalancing(); ++value)
      if (std::optional<LoadBalancing> mode = symbolizeLoadBalancing(value))
        option.getParser().addLiteralOption(stringifyLoadBalancing(*mode),
                                            *mode, "");
  }
};

#define GEN_PASS_DECL
#include "dialects/Moe/Transforms/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "dialects/Moe/Transforms/Passes.h.inc"

} // namespace mlir::moe

#endif // DIALECTS_MOE_TRANSFORMS_PASSES_H
