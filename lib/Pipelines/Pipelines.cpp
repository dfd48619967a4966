//===- Pipelines.cpp - moec's named pass pipelines ------------------------===//
//
// Builds the pipelines declared in moec/Pipelines/Pipelines.h. The training
// pipelines read their options from a TrainingJob; registered, they take
// every job key as a pipeline option (the key with dashes) and check it
// with the job's one reader.
//
//===----------------------------------------------------------------------===//

#include "moec/Pipelines/Pipelines.h"

#include "dialects/Moe/Transforms/Passes.h"
#include "moec/Conversion/MoeToShard/Passes.h"
#include "moec/Conversion/OnnxToMoe/Passes.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;
using namespace moec;

void moec::buildImportPipeline(OpPassManager &pm, bool requireComplete) {
  RaiseOnnxOptions options;
  options.requireComplete = requireComplete;
  OpPassManager &funcPm = pm.nest<func::FuncOp>();
  funcPm.addPass(createRaiseOnnx(options));
  funcPm.addPass(createCanonicalizerPass());
  funcPm.addPass(createCSEPass());
  funcPm.addPass(moe::createCanonicalizeParameters());
}

moe::BuildTrainStepOptions moec::getTrainStepOptions(const TrainingJob &job) {
  moe::BuildTrainStepOptions options;
  options.loadBalancing = job.loadBalancing;
  options.auxLossCoef = job.routerAuxLossCoef;
  options.zLossCoef = job.routerZLossCoef;
  options.beta1 = job.beta1;
  options.beta2 = job.beta2;
  options.epsilon = job.adamEpsilon;
  options.weightDecay = job.weightDecay;
  options.maxGradNorm = job.maxGradNorm;
  options.computeType = job.bf16 ? "bf16" : "f32";
  options.paramType = job.paramDtype == ParamDtype::Bf16 ? "bf16" : "f32";
  return options;
}

void moec::buildTrainStepPipeline(OpPassManager &pm,
                                  const moe::BuildTrainStepOptions &options,
                                  bool recomputeExperts,
                                  bool bf16WeightGrads) {
  pm.addPass(moe::createBuildTrainStep(options));
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  moe::WidenWeightGradsOptions widen;
  widen.intoReaders = bf16WeightGrads;
  pm.addNestedPass<func::FuncOp>(moe::createWidenWeightGrads(widen));
  pm.addNestedPass<func::FuncOp>(moe::createFuseLossGrad());
  if (!recomputeExperts)
    pm.addNestedPass<func::FuncOp>(moe::createSaveExpertActivations());
}

bool moec::isPartitioned(const TrainingJob &job) {
  return job.worldSize > 1 || job.expertParallelDegree > 1 ||
         job.hybridShardDegree > 1 || job.keepOneRankCollectives;
}

void moec::buildPartitionPipeline(OpPassManager &pm, const TrainingJob &job) {
  ExpertParallelOptions experts;
  experts.worldSize = job.worldSize;
  experts.expertParallelDegree = job.expertParallelDegree;
  experts.hybridShardDegree = job.hybridShardDegree;
  experts.shardingStrategy = job.shardingStrategy;
  experts.dispatcher = job.moeAllToAllDispatcher
                           ? mlir::moe::Dispatcher::all_to_all
                           : mlir::moe::Dispatcher::all_gather;
  experts.globalTokenShuffle = job.globalTokenShuffle;
  experts.seed = job.randomSeed;
  experts.keepOneRankCollectives = job.keepOneRankCollectives;
  pm.addPass(createExpertParallel(experts));
  HybridShardOptions shard;
  shard.worldSize = job.worldSize;
  shard.expertParallelDegree = job.expertParallelDegree;
  shard.hybridShardDegree = job.hybridShardDegree;
  shard.shardingStrategy = job.shardingStrategy;
  shard.keepOneRankCollectives = job.keepOneRankCollectives;
  pm.addPass(createHybridShard(shard));
  // Parameter gathers one layer ahead of their reader, gradient reductions
  // where the gradient is produced; before moe-checkpoint-activations, whose
  // layers and policy do not depend on where values computed from
  // parameters alone stand, and whose recomputed ops then read gathers that
  // stand before them (docs/partitioning.md, "Overlap").
  pm.addNestedPass<func::FuncOp>(createPrefetchCollectives());
}

/// The train pipeline up to activation checkpointing: initialisation, the
/// step, its shapes and, for a parallel layout, its partitioning.
static void buildStepPipeline(OpPassManager &pm, const TrainingJob &job,
                              bool returnGradients) {
  moe::BuildInitParamsOptions init;
  init.initializerRange = job.initializerRange;
  pm.addPass(moe::createBuildInitParams(init));
  moe::BuildTrainStepOptions step = getTrainStepOptions(job);
  step.returnGradients = returnGradients;
  // moe-expert-parallel splits moe.experts before their activations are
  // saved.
  const bool partitioned = isPartitioned(job);
  buildTrainStepPipeline(pm, step,
                         /*recomputeExperts=*/partitioned ||
                             job.recomputeExperts,
                         /*bf16WeightGrads=*/job.gradDtype == ParamDtype::Bf16);
  moe::SpecializeShapesOptions shapes;
  shapes.batch = job.microBatchSize;
  shapes.seq = job.seqLength;
  pm.addNestedPass<func::FuncOp>(moe::createSpecializeShapes(shapes));
  if (!partitioned)
    return;
  buildPartitionPipeline(pm, job);
  if (!job.recomputeExperts)
    pm.addNestedPass<func::FuncOp>(moe::createSaveExpertActivations());
}

/// moe-checkpoint-activations with the job's policy and budget;
/// `cudnnAttention`: the CUDA program runs bf16 attention on cuDNN (its
/// kernel scratch counts in the budget); `keepParamCopies`:
/// moe-keep-param-copies runs later (its copies count in the budget).
static void addCheckpointActivations(OpPassManager &pm,
                                     const TrainingJob &job,
                                     bool cudnnAttention,
                                     bool keepParamCopies) {
  moe::CheckpointActivationsOptions checkpoint;
  checkpoint.policy = job.activationCheckpointing;
  checkpoint.memoryBudget = getMemoryBudgetBytes(job);
  checkpoint.cudnnAttention = cudnnAttention;
  checkpoint.keepParamCopies = keepParamCopies;
  checkpoint.offloading = job.smActivationOffloading;
  checkpoint.horizon = job.activationLoadingHorizon;
  if (job.hostLinkGbPerS != 0)
    checkpoint.hostLinkBytesPerSecond = job.hostLinkGbPerS * 1e9;
  pm.addNestedPass<func::FuncOp>(moe::createCheckpointActivations(checkpoint));
}

/// moe-offload-activations with the job's horizon, when the job offloads.
static void addOffloadActivations(OpPassManager &pm, const TrainingJob &job) {
  if (!job.smActivationOffloading)
    return;
  moe::OffloadActivationsOptions offload;
  offload.horizon = job.activationLoadingHorizon;
  pm.addNestedPass<func::FuncOp>(moe::createOffloadActivations(offload));
}

void moec::buildTrainPipeline(OpPassManager &pm, const TrainingJob &job,
                              bool returnGradients) {
  buildStepPipeline(pm, job, returnGradients);
  addCheckpointActivations(pm, job, /*cudnnAttention=*/false,
                           /*keepParamCopies=*/false);
  addOffloadActivations(pm, job);
}

void moec::buildCompilePipeline(OpPassManager &pm, const TrainingJob &job,
                                bool cudnnAttention) {
  buildStepPipeline(pm, job, /*returnGradients=*/false);
  // bf16 attention on cuDNN keeps its output and log-sum-exp for the
  // backward, as flash attention does (the GEMM kernels recompute); before
  // checkpointing, so that a recomputed attention keeps them too.
  if (cudnnAttention && job.bf16)
    pm.addNestedPass<func::FuncOp>(moe::createSaveAttentionStats());
  addCheckpointActivations(pm, job, cudnnAttention && job.bf16,
                           job.keepParamCopies);
  pm.addNestedPass<func::FuncOp>(moe::createFuseElementwise());
  if (job.keepParamCopies)
    pm.addNestedPass<func::FuncOp>(moe::createKeepParamCopies());
  addOffloadActivations(pm, job);
  pm.addNestedPass<func::FuncOp>(moe::createPlanMemory());
  pm.addNestedPass<func::FuncOp>(moe::createFuseAddRmsNorm());
  pm.addNestedPass<func::FuncOp>(moe::createGroupAdamW());
}

namespace {
struct ImportPipelineOptions
    : public PassPipelineOptions<ImportPipelineOptions> {
  Option<bool> requireComplete{
      *this, "require-complete",
      llvm::cl::desc("fail on any ONNX node that could not be raised"),
      llvm::cl::init(false)};
};

/// The options of a training pipeline: one per job key, spelt with dashes
/// and read as text by the job's reader.
template <typename Derived>
struct JobPipelineOptions : public PassPipelineOptions<Derived> {
  using KeyOption =
      typename PassPipelineOptions<Derived>::template Option<std::string>;

  JobPipelineOptions() {
    // Keys only a config spells (custom_ops: how to read the ONNX file, done
    // before any pipeline) have no option.
    for (const moec::TrainingJobKey &key : moec::trainingJobKeys())
      if (!key.flag.empty())
        keys.push_back(std::make_unique<KeyOption>(
            *this, llvm::StringRef(key.flag), llvm::cl::desc(key.help),
            llvm::cl::value_desc(key.valueDescription)));
  }

  /// The job these options describe, defaults where they say nothing.
  llvm::Expected<moec::TrainingJob> getJob() const {
    moec::TrainingJob job;
    for (const std::unique_ptr<KeyOption> &key : keys)
      if (key->hasValue())
        if (llvm::Error err =
                moec::setTrainingJobText(job, key->ArgStr, key->getValue()))
          return std::move(err);
    if (llvm::Error err = job.validate())
      return std::move(err);
    return job;
  }

  std::vector<std::unique_ptr<KeyOption>> keys;
};

struct TrainPipelineOptions : JobPipelineOptions<TrainPipelineOptions> {
  Option<bool> returnGradients{
      *this, "return-gradients",
      llvm::cl::desc("the step also returns every parameter's gradient"),
      llvm::cl::init(false)};
};

struct CompilePipelineOptions : JobPipelineOptions<CompilePipelineOptions> {
  Option<bool> cudnnAttention{
      *this, "cudnn-attention",
      llvm::cl::desc("bf16 attention runs on cuDNN: keep its output and "
                     "log-sum-exp for the backward"),
      llvm::cl::init(false)};
};

/// Registers a training pipeline named `name` that builds with `build` the
/// job its options describe, once `consumer` implements it.
template <typename Options>
void registerTrainingPipeline(
    llvm::StringRef name, llvm::StringRef description,
    moec::JobConsumer consumer,
    std::function<void(OpPassManager &, const moec::TrainingJob &,
                       const Options &)>
        build) {
  std::string pipeline = name.str();
  registerPassPipeline(
      name, description,
      [pipeline, consumer,
       build](OpPassManager &pm, llvm::StringRef text,
              llvm::function_ref<LogicalResult(const llvm::Twine &)>
                  errorHandler) -> LogicalResult {
        std::unique_ptr<Options> options = Options::createFromString(text);
        if (!options)
          return failure();
        llvm::Expected<moec::TrainingJob> job = options->getJob();
        if (!job)
          return errorHandler(pipeline + ": " +
                              llvm::toString(job.takeError()));
        if (llvm::Error err = moec::checkImplemented(*job, consumer))
          return errorHandler(pipeline + ": " +
                              llvm::toString(std::move(err)));
        build(pm, *job, *options);
        return success();
      },
      [](llvm::function_ref<void(const detail::PassOptions &)> handler) {
        handler(Options());
      });
}
} // namespace

void moec::registerPipelines() {
  PassPipelineRegistration<ImportPipelineOptions>(
      "moe-import-pipeline",
      "raise an imported ONNX forward to moe ops and clean up",
      [](OpPassManager &pm, const ImportPipelineOptions &options) {
        buildImportPipeline(pm, options.requireComplete);
      });
  registerTrainingPipeline<TrainPipelineOptions>(
      "moe-train-pipeline",
      "build the static-shaped training step of a job from a raised forward, "
      "as the reference executor runs it",
      JobConsumer::Train,
      [](OpPassManager &pm, const TrainingJob &job,
         const TrainPipelineOptions &options) {
        buildTrainPipeline(pm, job, options.returnGradients);
      });
  registerTrainingPipeline<CompilePipelineOptions>(
      "moe-compile-pipeline",
      "build, specialise, fuse and memory-plan the training step of a job "
      "for a one-GPU program",
      JobConsumer::Compile,
      [](OpPassManager &pm, const TrainingJob &job,
         const CompilePipelineOptions &options) {
        buildCompilePipeline(pm, job, options.cudnnAttention);
      });
}
