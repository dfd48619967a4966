//===- Pipelines.h - moec's named pass pipelines ----------------*- C++ -*-===//
//
// The pass pipelines the drivers run, built in one place so that `moec`,
// `moec-opt` and the tests run exactly the same thing. The training
// pipelines take their options from a TrainingJob: the one place a job's
// keys become pass options.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PIPELINES_PIPELINES_H
#define MOEC_PIPELINES_PIPELINES_H

#include "dialects/Moe/Transforms/Passes.h"
#include "moec/Support/TrainingJob.h"
#include "mlir/Pass/PassManager.h"

namespace moec {

/// Raises an imported ONNX forward to moe ops and cleans up:
/// moe-raise-onnx, canonicalize, cse. With `requireComplete`, any ONNX node
/// left unraised is an error.
void buildImportPipeline(mlir::OpPassManager &pm, bool requireComplete);

/// moe-build-train-step's options for `job`.
mlir::moe::BuildTrainStepOptions getTrainStepOptions(const TrainingJob &job);

/// Builds the training step from a raised forward (moe-build-train-step with
/// `options`), then canonicalize, cse, moe-widen-weight-grads (into the
/// readers with `bf16WeightGrads`: job key grad_dtype bf16),
/// moe-fuse-loss-grad and, unless `recomputeExperts`,
/// moe-save-expert-activations.
void buildTrainStepPipeline(mlir::OpPassManager &pm,
                            const mlir::moe::BuildTrainStepOptions &options,
                            bool recomputeExperts = false,
                            bool bf16WeightGrads = false);

/// Whether `job` trains on more than one rank, asks for an expert or
/// shard axis, or keeps one-rank collectives (keep_one_rank_collectives):
/// its step must then be partitioned (buildPartitionPipeline).
bool isPartitioned(const TrainingJob &job);

/// Partitions a static-shaped step for `job`'s mesh (world_size,
/// expert_parallel_degree, hybrid_shard_degree, sharding_strategy):
/// moe-expert-parallel (with the job's dispatcher, global_token_shuffle and
/// random_seed), then moe-hybrid-shard, both keeping one-rank collectives
/// when keep_one_rank_collectives says so. The result is the SPMD program
/// every rank runs (docs/partitioning.md); an invalid layout fails with the
/// rule and the numbers.
void buildPartitionPipeline(mlir::OpPassManager &pm, const TrainingJob &job);

/// `moe-train-pipeline`: from a raised @forward to the @init_params and
/// static-shaped @train_step and @eval_step of `job`, as the reference
/// executor runs them: moe-build-init-params, the train-step pipeline,
/// moe-specialize-shapes, and for a partitioned job
/// (isPartitioned) the partition pipeline, before
/// moe-save-expert-activations, then moe-checkpoint-activations with the
/// job's activation_checkpointing and memory budget. With
/// `returnGradients` the step also returns every parameter's gradient.
void buildTrainPipeline(mlir::OpPassManager &pm, const TrainingJob &job,
                        bool returnGradients = false);

/// `moe-compile-pipeline`: the train pipeline, with what a one-GPU program
/// needs: moe-save-attention-stats (bf16 attention on cuDNN, when
/// `cudnnAttention`) before moe-checkpoint-activations, then
/// moe-fuse-elementwise, moe-keep-param-copies (unless
/// the job says keep_param_copies false), moe-plan-memory, then the
/// preparation for the printer: moe-fuse-add-rms-norm and moe-group-adamw.
void buildCompilePipeline(mlir::OpPassManager &pm, const TrainingJob &job,
                          bool cudnnAttention);

/// Registers the pipelines above with the global pass registry
/// (`moe-import-pipeline`, `moe-train-pipeline`, `moe-compile-pipeline`;
/// the last two take every job key as an option, spelt with dashes).
void registerPipelines();

} // namespace moec

#endif // MOEC_PIPELINES_PIPELINES_H
