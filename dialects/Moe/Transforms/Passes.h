//===- Passes.h - moe dialect passes ----------------------------*- C++ -*-===//
//
// Declarations and registration of the passes on `moe` IR.
//
//===----------------------------------------------------------------------===//

#ifndef DIALECTS_MOE_TRANSFORMS_PASSES_H
#define DIALECTS_MOE_TRANSFORMS_PASSES_H

#include "dialects/Moe/IR/MoeOps.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Pass/Pass.h"

#include <map>
#include <set>

namespace mlir::moe {

/// A pass-option modifier that accepts every value of a dialect enum by its
/// name, so that a pass option can be typed by the enum and a new value
/// needs nothing here.
template <typename Enum, uint32_t maxValue,
          std::optional<Enum> (*symbolize)(uint32_t),
          llvm::StringRef (*stringify)(Enum)>
struct EnumNames {
  template <typename Opt>
  void apply(Opt &option) const {
    for (uint32_t value = 0; value <= maxValue; ++value)
      if (std::optional<Enum> e = symbolize(value))
        option.getParser().addLiteralOption(stringify(*e), *e, "");
  }
};

/// The names of LoadBalancing, for pass options.
using LoadBalancingNames =
    EnumNames<LoadBalancing, getMaxEnumValForLoadBalancing(),
              symbolizeLoadBalancing, stringifyLoadBalancing>;
/// The names of ActivationCheckpointing, for pass options.
using ActivationCheckpointingNames =
    EnumNames<ActivationCheckpointing,
              getMaxEnumValForActivationCheckpointing(),
              symbolizeActivationCheckpointing,
              stringifyActivationCheckpointing>;

/// The most bytes of moe-plan-memory's buffers alive at once in `func`
/// (what the pass records as `moe.arena_live_bytes`): the arena's lower
/// bound, computed on any single-block step with static shapes. Fails with
/// the pass's diagnostic at an op it cannot size.
FailureOr<int64_t> arenaLiveBytes(func::FuncOp func);

/// What moe-offload-activations moved for one decoder layer's backward.
struct OffloadedLayer {
  int64_t values = 0; ///< buffers moved
  int64_t bytes = 0;  ///< their bytes (static shapes)
};

/// The rewrite of moe-offload-activations on `func` with `horizon`: moves
/// the values each decoder layer's backward reads first (only for the
/// layers in `layers`, when given) to host memory and back. Returns what
/// it moved per layer (the layer's N); fails with a diagnostic at `func`.
FailureOr<std::map<int64_t, OffloadedLayer>>
offloadActivations(func::FuncOp func, int64_t horizon,
                   const std::set<int64_t> *layers = nullptr);

/// What moe-keep-param-copies kept: bf16 casts of parameters marked
/// `moe.persistent_copy` (the backend's storage, not the arena's), casts
/// merged into them, and the kept copies' bytes (static shapes).
struct KeptParamCopies {
  int64_t copies = 0;
  int64_t merged = 0;
  int64_t bytes = 0;
};

/// The rewrite of moe-keep-param-copies on `func`.
KeptParamCopies keepParamCopies(func::FuncOp func);

/// Fails with a diagnostic at `func` unless `horizon`
/// (activation_loading_horizon) is at least 1.
LogicalResult verifyLoadingHorizon(func::FuncOp func, int64_t horizon);

#define GEN_PASS_DECL
#include "dialects/Moe/Transforms/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "dialects/Moe/Transforms/Passes.h.inc"

} // namespace mlir::moe

#endif // DIALECTS_MOE_TRANSFORMS_PASSES_H
