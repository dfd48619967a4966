//===- TrainingJob.h - The options of one training job ----------*- C++ -*-===//
//
// A TrainingJob is everything a user says about a training run, read once:
// the batch, the precision recipe, the MoE and optimizer options, the
// initialisation and the parallel layout. Keys follow SMP's names
// (DESIGN.md §1); a config file (`--config train.json`) spells them as JSON
// keys, a command line as flags with dashes (`--micro-batch-size 4`), a pass
// pipeline as options (`moe-compile-pipeline{micro-batch-size=4}`). All
// three go through one reader: a value of the wrong type, out of range or
// unknown is an error naming the key, the value and the rule.
//
// Reading checks each value on its own and the rules between keys
// (validate()); whether a consumer implements a value is a separate check
// (checkImplemented()): `moec plan` plans parallel degrees that `moec
// compile` refuses until the partitioning passes exist.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_SUPPORT_TRAININGJOB_H
#define MOEC_SUPPORT_TRAININGJOB_H

#include "dialects/Moe/IR/MoeDialect.h"
#include "moec/Support/CustomOps.h"

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/JSON.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace moec {

/// SMP's `sharding_strategy`: how model states are sharded along the
/// data-parallel ranks of one expert-parallel slice (W/P of them).
enum class ShardingStrategy {
  /// Shard over all W/P ranks (H = W/P, R = 1).
  FullShard,
  /// Shard over H ranks, replicate over R = W/(P·H) groups.
  HybridShard,
  /// Replicate everything (H = 1).
  NoShard,
};
/// The number of ShardingStrategy values (0 .. kNumShardingStrategies - 1).
inline constexpr unsigned kNumShardingStrategies = 3;

llvm::StringRef stringifyShardingStrategy(ShardingStrategy strategy);
std::optional<ShardingStrategy> symbolizeShardingStrategy(llvm::StringRef);

/// `activation_checkpointing`: what the backward recomputes (none,
/// selective, full, auto); the dialect's enum, which
/// moe-checkpoint-activations takes. SMP's boolean spelling is accepted:
/// true is full, false is none.
using ActivationCheckpointing = mlir::moe::ActivationCheckpointing;
using mlir::moe::stringifyActivationCheckpointing;
using mlir::moe::symbolizeActivationCheckpointing;

/// `param_dtype`: the element type of the parameters, their gradients and
/// the AdamW moments.
enum class ParamDtype {
  /// fp32 master weights (with `bf16`: bf16 compute copies of them).
  Fp32,
  /// bf16 parameters and states, no masters (needs `bf16`).
  Bf16,
};

llvm::StringRef stringifyParamDtype(ParamDtype dtype);
std::optional<ParamDtype> symbolizeParamDtype(llvm::StringRef name);

/// moec's limits on a job's sizes (world_size and the degrees; tokens per
/// rank, micro_batch_size times seq_length): far beyond any real job, and
/// small enough that every count and byte size derived from them fits in
/// int64. The keys are refused above them by name.
constexpr int64_t kMaxRanks = int64_t(1) << 16;
constexpr int64_t kMaxTokensPerRank = int64_t(1) << 30;

/// One training job. The defaults are `moec train`'s and `moec compile`'s.
struct TrainingJob {
  // --- The batch -----------------------------------------------------------
  /// `micro_batch_size`: sequences per rank and step.
  int64_t microBatchSize = 2;
  /// `seq_length`: tokens per sequence.
  int64_t seqLength = 64;
  /// `global_batch_size`: sequences per optimizer step over all ranks; 0
  /// means world_size times micro_batch_size (no gradient accumulation).
  int64_t globalBatchSize = 0;

  // --- Precision -----------------------------------------------------------
  /// `bf16`: forward and backward in bf16.
  bool bf16 = false;
  /// `param_dtype`.
  ParamDtype paramDtype = ParamDtype::Fp32;
  /// `grad_dtype`: the weight gradients under fp32 master weights with bf16
  /// compute: fp32 (accumulated and stored in fp32: moe-widen-weight-grads)
  /// or bf16 (rounded once, as autograd gives them for bf16 compute copies;
  /// the norm and AdamW widen them as they read: its `into-readers`). Only
  /// for unpartitioned steps, which reduce no gradient.
  ParamDtype gradDtype = ParamDtype::Fp32;
  /// `fp8`: fp8 GEMMs (Hopper).
  bool fp8 = false;

  // --- MoE -----------------------------------------------------------------
  /// `moe_load_balancing`: the dialect's enum, so that a new mode is added
  /// in one place.
  mlir::moe::LoadBalancing loadBalancing = mlir::moe::LoadBalancing::aux_loss;
  /// `router_aux_loss_coef`.
  double routerAuxLossCoef = 0.02;
  /// `router_z_loss_coef` (0: no z-loss).
  double routerZLossCoef = 0.0;
  /// `moe_all_to_all_dispatcher`: all-to-all dispatch (false: all-gather
  /// the expert group's tokens, reduce-scatter the results).
  bool moeAllToAllDispatcher = true;
  /// `global_token_shuffle`: permute tokens across an expert group.
  bool globalTokenShuffle = false;

  // --- AdamW ---------------------------------------------------------------
  double weightDecay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double adamEpsilon = 1e-8;
  /// `max_grad_norm` (0: no clipping).
  double maxGradNorm = 1.0;
  /// `skip_nonfinite_steps`: steps whose gradient norm is not finite a run
  /// skips (leaving the optimizer state as it was) before it stops
  /// (moert/NonfiniteSteps.h).
  int64_t skipNonfiniteSteps = 0;

  // --- Initialisation ------------------------------------------------------
  /// `initializer_range`: std of the normal initialisers.
  double initializerRange = 0.02;
  /// `random_seed` (also spelt `seed`).
  int64_t randomSeed = 1234;
  /// `delayed_param`: parameters are created from the seed where they live;
  /// false starts from the model file's weights.
  bool delayedParam = true;

  // --- Memory --------------------------------------------------------------
  /// `recompute_experts`: the experts' backward recomputes gate/up.
  bool recomputeExperts = false;
  /// `keep_param_copies`: bf16 copies of fp32 masters kept across steps.
  bool keepParamCopies = true;
  /// `store_param_remainders`: the compiled program keeps each fp32 master
  /// that has a kept bf16 copy as that copy and the low 16 bits of its
  /// fp32 pattern (moert/MasterSplit.h), which AdamW reads and writes
  /// instead of the master (4 bytes an update instead of 6). Lossless; the
  /// copy rounds ties away from zero. One rank; the fp32 masters are
  /// rebuilt where they are saved.
  bool storeParamRemainders = false;
  ActivationCheckpointing activationCheckpointing =
      ActivationCheckpointing::None;
  /// `memory_budget_gib`: the per-rank memory `activation_checkpointing`
  /// auto fits the step into, GiB; 0 means the GPU's memory less a margin
  /// (defaultMemoryBudgetBytes).
  double memoryBudgetGib = 0.0;
  /// `sm_activation_offloading`: saved activations in host memory.
  bool smActivationOffloading = false;
  /// `activation_loading_horizon`: layers prefetched ahead when offloading.
  int64_t activationLoadingHorizon = 2;
  /// `host_link_gb_per_s`: the pinned host <-> device copy rate, GB/s each
  /// way, that activation_checkpointing auto weighs offloading with; 0
  /// means the H200's measured 55 GB/s (PCIe 5.0 x16).
  double hostLinkGbPerS = 0.0;

  // --- Parallelism ---------------------------------------------------------
  int64_t worldSize = 1;
  /// `expert_parallel_degree` (P).
  int64_t expertParallelDegree = 1;
  /// `hybrid_shard_degree` (H); 0 means automatic.
  int64_t hybridShardDegree = 0;
  ShardingStrategy shardingStrategy = ShardingStrategy::HybridShard;
  /// `keep_one_rank_collectives`: partition the step even for one rank and
  /// keep every collective whose group is one rank (the partitioning passes
  /// otherwise leave them out). For verifying the collective path: a
  /// world_size 1 program then runs all its collectives through a one-rank
  /// NCCL communicator, and can be compared with the one-GPU program.
  bool keepOneRankCollectives = false;

  // --- Checkpoints ---------------------------------------------------------
  /// `checkpoint_dir`: where checkpoints are saved and resumed from.
  std::string checkpointDir;
  /// `init_from`: a Hugging Face Mixtral checkpoint folder the compiled
  /// program starts from instead of the seed (docs/hf-checkpoints.md).
  std::string initFrom;

  // --- Reading the model ---------------------------------------------------
  /// `custom_ops`: what the ops of ONNX domains moec does not know stand
  /// for, `{"DOMAIN::NAME": "KIND"}`, in the model the command is given
  /// (configs do not name the model). A config key only: its flag is
  /// `--custom-op DOMAIN::NAME=KIND`, which `moec import` and `moec run`
  /// take too; the two merge (moec/cli ImportFlags).
  std::vector<CustomOpMapping> customOps;

  /// The keys set explicitly (by a config, a flag or a pipeline option), in
  /// their canonical spelling; the rest hold their defaults.
  std::vector<std::string> explicitKeys;
  /// Whether `key` (canonical spelling) was set explicitly.
  bool isExplicit(llvm::StringRef key) const;

  /// Checks the rules between keys (param_dtype bf16 needs bf16); the error
  /// names the keys and values.
  llvm::Error validate() const;

  /// Every key and its value, as a config file would spell them.
  llvm::json::Object toJson() const;
};

/// The budget `memory_budget_gib` 0 stands for: the H200's 143,771 MiB (the
/// GPU `moec compile` targets) less 10% for the CUDA context, library
/// workspaces and the allocator.
int64_t defaultMemoryBudgetBytes();

/// The per-rank memory budget of `job` in bytes (memory_budget_gib, or
/// defaultMemoryBudgetBytes() for 0).
int64_t getMemoryBudgetBytes(const TrainingJob &job);

/// One key of a job: its spellings and how it is documented.
struct TrainingJobKey {
  /// The config spelling, e.g. `micro_batch_size`.
  llvm::StringRef name;
  /// The flag and pipeline-option spelling, e.g. `micro-batch-size`; empty
  /// for a key only a config spells (`custom_ops`, whose flag is another
  /// one's).
  std::string flag;
  /// What its value looks like, e.g. `int`, `aux_loss|sinkhorn|...`.
  std::string valueDescription;
  std::string help;
  /// Whether the value is true or false (a flag may then stand alone).
  bool isBool;
  /// The canonical key this one is another spelling of (`random_seed` for
  /// `seed`), or empty.
  llvm::StringRef aliasOf;
};

/// Every key, in documentation order.
llvm::ArrayRef<TrainingJobKey> trainingJobKeys();

/// Sets `key` from a JSON value; `key` is spelt as in a config
/// (`micro_batch_size`) or with dashes (`micro-batch-size`). Errors name the
/// key as spelt, the value and the rule: "micro_batch_size 2.5 must be an
/// integer".
llvm::Error setTrainingJobValue(TrainingJob &job, llvm::StringRef key,
                                const llvm::json::Value &value);

/// Sets `key` from the text of a flag or a pipeline option: a number for
/// numeric keys, true/false (or empty: true) for boolean ones, the name of
/// an enum value, or a string.
llvm::Error setTrainingJobText(TrainingJob &job, llvm::StringRef key,
                               llvm::StringRef text);

/// Reads the JSON object in `path` over `job` (keys it does not name keep
/// their values). Errors start with "config '<path>': ".
llvm::Error readTrainingJobConfig(llvm::StringRef path, TrainingJob &job);

/// Reads the JSON object `text` over `job` as readTrainingJobConfig does,
/// naming `path` in errors.
llvm::Error readTrainingJobConfigText(llvm::StringRef text,
                                      llvm::StringRef path, TrainingJob &job);

/// Who consumes a job: each implements a different part of it.
enum class JobConsumer {
  /// `moec plan`: plans parallel degrees and activation checkpointing.
  Plan,
  /// `moec train --reference`: one process, the CPU reference executor.
  Train,
  /// `moec compile` and moe-compile-pipeline: one-GPU programs.
  Compile,
};

/// Fails on the first option `consumer` reads but does not implement yet,
/// naming it and its value ("fp8 true is not implemented yet by moec
/// compile (bf16 and fp32 only)"), or that does not apply to it: a key of
/// the program's run given to `moec compile` ("... is a setting of the
/// program's run, not of its compilation: give it to train_step when it
/// runs (--seed 7)"), keep_one_rank_collectives given to `moec plan`.
llvm::Error checkImplemented(const TrainingJob &job, JobConsumer consumer);

/// The job's command-line flags: `--config` and one flag per key, named like
/// the key with dashes, in the given subcommands and category. Construct it
/// after the subcommands exist (in main), before parsing.
class TrainingJobFlags {
public:
  TrainingJobFlags(llvm::ArrayRef<llvm::cl::SubCommand *> subcommands,
                   llvm::cl::OptionCategory &category);
  ~TrainingJobFlags();

  /// Reads the config (if `--config` was given) and then the flags over
  /// `job`, and validates the result.
  llvm::Error read(TrainingJob &job) const;

private:
  std::unique_ptr<llvm::cl::opt<std::string>> config;
  /// One per trainingJobKeys() entry, in that order (null for a key that
  /// has no flag).
  std::vector<std::unique_ptr<llvm::cl::opt<std::string>>> flags;
};

} // namespace moec

#endif // MOEC_SUPPORT_TRAININGJOB_H
