//===- Cuda.h - Emit CUDA C++ from moe IR -----------------------*- C++ -*-===//
//
// The CUDA printer: writes one self-contained .cu host program for the
// functions of a module it can emit. It only prints; it never changes the
// IR, and fails with a diagnostic at the first op it cannot emit.
//
// So far it emits @init_params (delayed_param on the GPU): one kernel
// launch per moe.param_init, all parameters in one device arena, and a host
// main that takes `--seed N [--dump DIR]` and writes each parameter as raw
// little-endian fp32 (`DIR/<name>.bin`) plus `DIR/manifest.tsv` (name,
// shape, arena offset, kind, std), which python -m moec.check_init compares
// with the generator's numpy twin.
//
// It also emits the training program: the specialised, memory-planned
// @train_step as one launch per op of the moert kernel library
// (runtime/include/moert/kernels) or of an element-wise kernel it generates,
// @init_params into the state region, and a main that hands both to the
// runtime's training driver (runtime/include/moert/TrainDriver.h). See
// docs/cuda-backend.md.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_TARGET_CUDA_H
#define MOEC_TARGET_CUDA_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/raw_ostream.h"

#include <string>

namespace moec {

/// Prints the CUDA program of `module`'s @init_params to `os`.
mlir::LogicalResult emitCudaInitProgram(mlir::ModuleOp module,
                                        llvm::raw_ostream &os);

struct CudaTrainProgramOptions {
  /// Printed into the program and its banner.
  std::string modelName;
  /// bf16 attention on cuDNN's fused SDPA (moert/kernels/AttentionCudnn.cuh;
  /// the program then links moert_cudnn, cuDNN and NVRTC) instead of the
  /// GEMM kernels of Attention.cuh. fp32 attention always uses the latter.
  bool cudnnAttention = false;
  /// After each op that launches on the step's stream, a count of the inf
  /// and NaN elements of each floating-point result
  /// (moert/kernels/Numerics.cuh) and the table that names the op: what the
  /// program's --check-numerics runs (docs/reliability.md). Off, the
  /// program holds no trace of it.
  bool checkNumerics = false;
  /// Every fp32 master with a kept bf16 copy (moe-keep-param-copies) is
  /// kept as that copy and a 16-bit remainder (moert/MasterSplit.h): its
  /// AdamW group runs adamwRemainders, the run's first step splits the
  /// masters (splitStepMasters) and the program's syncMasters rebuilds them
  /// where the driver saves them. One-rank programs only. The job key
  /// `store_param_remainders`.
  bool storeParamRemainders = false;
};

/// What the printed training program allocates and computes per step.
struct CudaTrainProgramSummary {
  int64_t stateBytes = 0; ///< parameters, AdamW moments, kept copies
  int64_t derivedStateBytes = 0; ///< of which bf16 copies (not checkpointed)
  /// The master elements kept as copy + remainder (store_param_remainders;
  /// the remainders in the masters' own slots: no bytes of their own).
  int64_t splitMasterElements = 0;
  int64_t arenaBytes = 0; ///< every intermediate (moe-plan-memory)
  int64_t inputBytes = 0; ///< token ids, labels, step, learning rate
  /// The pinned host memory of the offloaded activations (moe.offload).
  int64_t hostActivationBytes = 0;
  /// The kernels' scratch (moe::stepScratchNeeds): the largest need of
  /// the step's ops, and of its collectives on the collective stream's own
  /// buffer (0 without one).
  int64_t scratchBytes = 0;
  int64_t collectiveScratchBytes = 0;
  /// What scratchBytes leaves out, which only the GPU knows and the
  /// program adds at run time: cuDNN's SDPA workspace, CUB's sort storage
  /// of the balanced router (moe::ScratchUncounted).
  bool uncountedCudnnWorkspace = false, uncountedSortStorage = false;
  double modelFlops = 0;  ///< DESIGN.md §5's model FLOPs per step
  bool usesCudnn = false; ///< some attention op runs on cuDNN
};

/// Prints the CUDA training program of `module` (@train_step after
/// moe-specialize-shapes, moe-plan-memory, moe-fuse-add-rms-norm and
/// moe-group-adamw, and @init_params) to `os`.
mlir::LogicalResult
emitCudaTrainProgram(mlir::ModuleOp module,
                     const CudaTrainProgramOptions &options,
                     llvm::raw_ostream &os, CudaTrainProgramSummary &summary);

} // namespace moec

#endif // MOEC_TARGET_CUDA_H
