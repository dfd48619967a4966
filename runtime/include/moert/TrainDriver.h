//===- TrainDriver.h - The host side of a compiled training program -*- C++ -*-//
//
// A program printed by `moec compile` describes itself in a TrainProgram
// (buffer layout, parameters, where each metric lands, the step function)
// and calls runTrainProgram from main. The driver, compiled into the
// runtime library (runtime/src/TrainDriver.cpp) and linked into every
// program, owns everything around the step: the command line, device
// allocation, parameter initialisation or resumption from a checkpoint,
// token blocks from a file, the learning-rate schedule, per-step metrics,
// checkpoints and the final summary line that benchmark scripts parse.
// Host-only C++ on the CUDA runtime; no MLIR.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_TRAINDRIVER_H
#define MOERT_TRAINDRIVER_H

#include "moert/Bootstrap.h"
#include "moert/Mesh.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

namespace moert {

namespace kernels {
struct Context; // moert/kernels/Context.h
} // namespace kernels

/// One parameter in the state region: its values and its two AdamW moments.
struct ParameterInfo {
  const char *name;
  std::vector<int64_t> shape;
  int64_t offset, expAvgOffset, expAvgSqOffset; ///< bytes into the state
  int64_t count;
  int elementBytes; ///< 4: fp32 (master weights), 2: bf16 (a bf16 model)
  /// How the block this rank holds (`shape`) sits in the global parameter
  /// (docs/partitioning.md, Layout): an expert parameter (`expertLocal`)
  /// holds experts [p·E/P, (p+1)·E/P) of the global E in its dim 0, p its
  /// expert-group coordinate; along `chunkDim` it is chunk h of the shard
  /// group (global rows [h·c, h·c + c) clipped to `globalShape`, c =
  /// shape[chunkDim], the rest zero padding), -1 when not chunked. A
  /// one-rank program leaves globalShape empty: the block is the parameter.
  std::vector<int64_t> globalShape;
  int chunkDim = -1;
  bool expertLocal = false;
};

/// Where a scalar output of the step is: an arena offset, or a constant
/// when the compiler folded it (offset -1).
struct MetricSlot {
  int64_t offset;
  float constant;
};

/// One tensor the step checks under --check-numerics: what it is (a
/// parameter by name, or an op's result with the op's name and location as
/// the IR has them) and its type.
struct NumericsCheck {
  const char *what, *type;
};

/// What a printed program tells the driver about itself: sizes, offsets,
/// the metrics' slots, and the functions that set up and run the step.
struct TrainProgram {
  const char *model = "";
  int64_t batch = 0, seq = 0, vocab = 0;
  int64_t stateBytes = 0, arenaBytes = 0, inputBytes = 0;
  /// The last bytes of the state region hold values derived from the
  /// parameters (the bf16 copies AdamW keeps, moe-keep-param-copies):
  /// checkpoints leave them out, the first step of a run recomputes them.
  int64_t derivedStateBytes = 0;
  /// The pinned host memory of the offloaded activations (moe.offload,
  /// moert/kernels/Offload.h); 0 when the step offloads none.
  int64_t hostActivationBytes = 0;
  int64_t inputIdsOffset = 0, labelsOffset = 0, stepOffset = 0, lrOffset = 0;
  const ParameterInfo *parameters = nullptr;
  int numParameters = 0;
  MetricSlot loss{}, ceLoss{}, auxLoss{}, zLoss{}, gradNorm{}, expertCounts{};
  int64_t countLayers = 0, countExperts = 0;
  /// The mesh the step was partitioned for (1x1x1: a one-GPU program); the
  /// driver gives the step a MeshGroups of this shape (Context::mesh).
  MeshShape mesh{};
  /// How a partitioned program makes its world under a launcher:
  /// moert::createWorldCommunicator (moert/NcclCommunicator.h). The printed
  /// program sets it, so that only partitioned programs link NCCL; null in
  /// a one-rank program (and a partitioned one without it can only run
  /// --simulate-ranks).
  Status (*createWorld)(const RankInfo &, const EnvLookup &,
                        std::unique_ptr<Communicator> &) = nullptr;
  double modelFlops = 0;
  /// Libraries beyond cuBLAS the step uses (cuDNN), on the Context's
  /// stream; null when none.
  void (*openLibraries)(kernels::Context &) = nullptr;
  /// The kernels' scratch, from the libraries' plans where they have them.
  int64_t (*scratchBytes)(const kernels::Context &) = nullptr;
  /// The collectives' scratch of a partitioned program (Context::
  /// collectiveScratch); null: its collectives need none.
  int64_t (*collectiveScratchBytes)(const kernels::Context &) = nullptr;
  /// The gradient reductions' scratch (Context::gradientScratch); null:
  /// they need none.
  int64_t (*gradientScratchBytes)(const kernels::Context &) = nullptr;
  void (*setup)(char *state, char *arena, char *inputs) = nullptr;
  void (*initParams)(char *state, uint64_t seed, cudaStream_t stream) = nullptr;
  /// A partitioned program's initialisation of the blocks this rank holds,
  /// placed by the rank's coordinates on `mesh`; when set, the driver calls
  /// it instead of initParams on a mesh of more than one rank.
  void (*initRankParams)(char *state, uint64_t seed, const MeshGroups &mesh,
                         cudaStream_t stream) = nullptr;
  void (*step)(const kernels::Context &, char *state, char *arena,
               char *inputs) = nullptr;
  /// A program that keeps fp32 masters split into their bf16 copies and
  /// remainders (store_param_remainders) rebuilds the masters' fp32 slots
  /// of the state from them; the driver calls it before it reads the
  /// parameters (checkpoints, Hugging Face exports, --dump-dir), once
  /// after a step. The remainders live in those slots: the next step
  /// splits again (Context::refreshParameterCopies). Null in other
  /// programs, whose state is current after every step.
  void (*syncMasters)(const kernels::Context &) = nullptr;
  /// The step's numerics checks in program order (Context::nonfiniteCounts
  /// has one counter for each).
  const NumericsCheck *numericsChecks = nullptr;
  int numNumericsChecks = 0;
};

/// Runs the training program `program` with the command line `argv` (see
/// runtime/src/TrainDriver.cpp for the options); returns the exit status.
/// A partitioned program runs as one rank of a launched job, or, with
/// `--simulate-ranks W`, as all W ranks on threads of this process on the
/// current GPU: then setup, initParams and step are called from W threads
/// at once, each with its own buffers and Context, so whatever the program
/// keeps between setup and step outside those buffers must be per thread
/// (thread_local), and its steps run without CUDA graphs.
int runTrainProgram(const TrainProgram &program, int argc, char **argv);

} // namespace moert

#endif // MOERT_TRAINDRIVER_H
