//===- Plan.h - Memory, communication and time of a training step -*- C++ -*-===//
//
// A TrainingPlan is everything `moec plan` reports about one training job
// before it runs: the mesh and its groups, the placement of every parameter,
// per-rank memory broken down by what holds it, every collective of one
// training step with its group and bytes, and an estimated step time. The
// model behind each number is written down in docs/plan.md; the partitioning
// passes are meant to allocate exactly the persistent bytes stated here
// (bf16 and fp32 parameter shards, fp32 gradient shards, AdamW states).
//
// recommend() enumerates every valid (expert_parallel_degree,
// hybrid_shard_degree, activation checkpointing) for a world size and ranks
// those that fit by estimated step time.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PLAN_PLAN_H
#define MOEC_PLAN_PLAN_H

#include "moec/Plan/Mesh.h"
#include "moec/Plan/Model.h"
#include "moec/Plan/Placement.h"
#include "moec/Plan/Program.h"

#include "llvm/ADT/STLFunctionalExtras.h"

namespace moec::plan {

/// The precision a plan assumes: with the job's `bf16`, bf16 compute copies
/// of fp32 master weights, fp32 gradients (reduced in fp32) and fp32 AdamW
/// states; without, fp32 everywhere.
llvm::StringRef getPrecisionName(const TrainingJob &job);

/// What the planner assumes about one GPU and its links.
struct GpuSpec {
  std::string name;
  /// Device memory, bytes (as nvidia-smi reports it).
  int64_t memoryBytes = 0;
  /// Dense bf16 tensor-core peak, FLOP/s.
  double peakFlops = 0;
  /// HBM bandwidth, bytes/s.
  double memoryBandwidth = 0;
  /// Bandwidth per GPU and direction inside a node (NVLink), bytes/s.
  double intraNodeBandwidth = 0;
  /// Bandwidth per GPU and direction between nodes (InfiniBand/EFA), bytes/s.
  double interNodeBandwidth = 0;
};

/// The names of the built-in GPUs.
llvm::ArrayRef<llvm::StringRef> gpuNames();
/// A built-in GPU, or nothing.
std::optional<GpuSpec> getGpu(llvm::StringRef name);

/// How much of the hardware's peak a step reaches.
struct Efficiency {
  /// Fraction of peak FLOP/s the GEMMs and attention reach.
  double compute = 0.5;
  /// Fraction of the link bandwidth NCCL reaches (bus bandwidth / link).
  double communication = 0.7;
  /// Memory the planner cannot place: CUDA context, NCCL and library
  /// workspaces, allocator slack.
  int64_t reservedBytes = int64_t(1) << 30;
};

/// One rank's memory at its peak, bytes.
struct MemoryBreakdown {
  /// bf16 compute copies of the rank's parameter shards (persistent).
  int64_t computeParams = 0;
  /// Parameters all-gathered over the shard group and live at the peak: the
  /// unit being computed and the one prefetched.
  int64_t gatheredParams = 0;
  /// fp32 master copies of the rank's parameter shards (persistent).
  int64_t masterParams = 0;
  /// fp32 gradient shards (persistent).
  int64_t gradients = 0;
  /// One unit's unsharded gradients as the backward produces them.
  int64_t unshardedGradients = 0;
  /// AdamW first and second moments, fp32 (persistent).
  int64_t optimizerStates = 0;
  /// Saved activations at the end of the forward, plus what the chosen
  /// checkpointing recomputes for one layer.
  int64_t activations = 0;
  /// With activation offloading (sm_activation_offloading): the kept
  /// activations in pinned host memory, every layer's; not in total().
  /// `activations` then holds those of the layers on the device at once
  /// (the layer in its backward and the `activation_loading_horizon`
  /// layers fetched ahead) and the recomputed ones.
  int64_t hostActivations = 0;
  /// All-to-all send/receive buffers sized for the worst dropless routing,
  /// and the fp32 reduce-scatter input of one unit.
  int64_t communicationBuffers = 0;
  /// Activation gradients of one layer's backward plus the reserved bytes.
  int64_t workspace = 0;

  /// The parameter, gradient and optimizer bytes that live for the whole run.
  int64_t persistent() const;
  int64_t total() const;
};

/// One kind of collective call in a training step.
struct Collective {
  /// What it moves, e.g. "decoder-layer parameters (forward)".
  std::string what;
  CollectiveKind kind;
  GroupKind group;
  int64_t groupSize = 1;
  /// Whether a group of this kind spans nodes (then the inter-node bandwidth
  /// bounds it).
  bool crossesNodes = false;
  /// Buffer per rank and call: the gathered output, the reduce-scatter input,
  /// the all-reduce buffer, or the all-to-all send buffer.
  int64_t bytes = 0;
  /// Bytes each rank sends per call (ring algorithms; balanced routing).
  int64_t bytesSent = 0;
  /// Calls per optimizer step.
  int64_t count = 0;
  /// Whether it runs beside compute (parameter and gradient traffic) rather
  /// than on the critical path (token dispatch and combine).
  bool overlapped = false;
  /// Estimated seconds per optimizer step, all calls.
  double seconds = 0;
  /// Whether the bytes and calls are the partitioned program's
  /// (ProgramFootprint) rather than the analytic model's.
  bool fromProgram = false;
};

/// The estimated time of one optimizer step.
struct StepEstimate {
  int64_t gradientAccumulation = 1;
  /// Tokens per optimizer step over all ranks.
  int64_t tokens = 0;
  /// DESIGN.md §5's model FLOPs for the rank's tokens, per optimizer step.
  double modelFlopsPerRank = 0;
  /// Model FLOPs plus what checkpointing recomputes.
  double hardwareFlopsPerRank = 0;
  double computeSeconds = 0;
  /// All-to-all time (never hidden).
  double dispatchSeconds = 0;
  /// Parameter and gradient traffic, and the part of it compute cannot hide.
  double shardingSeconds = 0;
  double exposedShardingSeconds = 0;
  double optimizerSeconds = 0;
  double stepSeconds = 0;
  double tokensPerSecond = 0;
  double modelTflopsPerGpu = 0;
};

/// What the compiled rank program allocates for its step, bytes: moec
/// compile's memory plan (docs/cuda-backend.md), which the program
/// allocates once. `moec plan` measures it for a model file (the compile
/// pipeline and the CUDA printer on the shapes, no weights); the analytic
/// memory model above estimates it.
struct ProgramMemory {
  /// Parameters, AdamW moments and the kept bf16 parameter copies.
  int64_t state = 0;
  /// Every intermediate, the gradient shards included (moe-plan-memory).
  int64_t arena = 0;
  /// Token ids, labels, step and learning rate.
  int64_t inputs = 0;
  /// The kernels' scratch and the collective stream's.
  int64_t scratch = 0;

  int64_t total() const { return state + arena + inputs + scratch; }
};

/// The most bytes a compiled step may plan for `job` on `gpu`:
/// `memory_budget_gib`, or 90% of the GPU's memory (what moec compile
/// requires of a step, leaving the rest to the CUDA context, NCCL and the
/// libraries' workspaces).
int64_t programBudgetBytes(const TrainingJob &job, const GpuSpec &gpu);

/// Everything `moec plan` reports.
struct TrainingPlan {
  ModelDescription model;
  Mesh mesh;
  /// The job planned (its parallel degrees as asked; `mesh` has them
  /// resolved).
  TrainingJob training;
  GpuSpec gpu;
  Efficiency efficiency;
  /// Per rank, indexed by rank.
  std::vector<MemoryBreakdown> memory = {};
  /// The rank with the largest total.
  int64_t peakRank = 0;
  bool fits = false;
  std::vector<Collective> collectives = {};
  StepEstimate step = {};
  /// The partitioned program the plan read its per-rank parameter,
  /// gradient and optimizer bytes and its collectives but the token
  /// all-to-alls from, when it had one (makePlan's `program`), and the
  /// analytic model's collectives for comparison.
  std::optional<ProgramFootprint> program = {};
  std::vector<Collective> analyticCollectives = {};
  /// Under activation_checkpointing auto: the budget the plan chose for
  /// (memory_budget_gib, or the GPU's memory), `training` then having the
  /// policy chosen for every layer, the first of none, selective and full
  /// whose plan fits it (full when none does).
  std::optional<int64_t> autoBudgetBytes = {};
  /// The compiled program's memory when the plan measured it (makePlan's
  /// `programMemory`); then `fits` says whether its total is within
  /// `programBudget` (programBudgetBytes) rather than the analytic total
  /// within the GPU's memory.
  std::optional<ProgramMemory> programMemory = {};
  int64_t programBudget = 0;

  /// The placement of the model's parameters (refers into this plan).
  ModelPlacement placement() const { return ModelPlacement(model, mesh); }
  const MemoryBreakdown &peakMemory() const { return memory[peakRank]; }
};

/// Checks the request (mesh rules, batch rules, hardware numbers) and plans
/// `job` on nodes of `gpusPerNode` GPUs; errors name the rule and the
/// values. The plan reads the job's batch, parallel degrees, `bf16` and
/// `activation_checkpointing`. With `program`, the footprint of the job's
/// partitioned @train_step, the per-rank master parameters, gradients and
/// optimizer states and every collective but the token all-to-alls (to
/// which full checkpointing adds a recompute the program does not do yet)
/// are the program's; everything else is the analytic model's
/// (docs/plan.md). With `programMemory`, the compiled program's memory
/// plan for the job (under auto, with the program's own per-layer choice),
/// the plan fits when that does (TrainingPlan::programMemory).
llvm::Expected<TrainingPlan>
makePlan(const ModelDescription &model, const TrainingJob &job,
         int64_t gpusPerNode, const GpuSpec &gpu, const Efficiency &efficiency,
         const ProgramFootprint *program = nullptr,
         const ProgramMemory *programMemory = nullptr);

/// One candidate of recommend().
struct Recommendation {
  TrainingPlan plan;
  /// Why it ranks where it does, in words.
  std::string reason;
};

/// Measures the compiled program of a candidate job (its layout and a
/// fixed checkpointing policy): what `moec compile` would plan for it.
using MeasureProgram =
    llvm::function_ref<llvm::Expected<ProgramMemory>(const TrainingJob &)>;

/// Every valid (P, H, checkpointing) for `job.worldSize` (the strategy
/// follows from H: full_shard for H = W/P, no_shard for H = 1, hybrid_shard
/// between). Those that fit come first, fastest first; then those that do
/// not, smallest memory first. With `measure` (a model file), whether a
/// candidate fits is its compiled program's (programBudgetBytes), measured
/// for every candidate whose parameters and AdamW moments alone leave room
/// in the budget; the others do not fit, unmeasured.
llvm::Expected<std::vector<Recommendation>>
recommend(const ModelDescription &model, const TrainingJob &job,
          int64_t gpusPerNode, const GpuSpec &gpu,
          const Efficiency &efficiency, MeasureProgram measure = nullptr);

} // namespace moec::plan

#endif // MOEC_PLAN_PLAN_H
