//===- PartitionedStepTest.cpp - Partitioned steps equal the global one ---===//
//
// The oracle of the partitioning passes: the tiny Mixtrals' training step,
// partitioned for W simulated ranks, against the unpartitioned step on the
// same global batch (the W micro-batches concatenated along batch), for 3
// AdamW steps, each from the global step's state, then the evaluation step.
// Loss, cross-entropy, z-loss and grad norm, the expert counts, every
// gradient and every updated parameter and moment (gathered from the shards
// of every replica), and the evaluation loss must agree to a relative L2 of
// 1e-5 in fp32. Ranks see different numbers of ignored labels, so the
// cross-entropy's global mean is exercised. Skewed cases bias the router so
// that every token chooses the same two experts and the last
// expert-parallel rank receives no token at all.
//
//===----------------------------------------------------------------------===//

#include "moec/Import/Onnx.h"
#include "moec/InitAll.h"
#include "moec/Pipelines/Pipelines.h"
#include "moec/Plan/Mesh.h"
#include "moec/Plan/Model.h"
#include "moec/Plan/Plan.h"
#include "moec/Reference/Executor.h"

#include "dialects/Moe/Transforms/Passes.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/FormatVariadic.h"

#include <gtest/gtest.h>

#include <tuple>

using namespace mlir;
using namespace moec;

namespace {

/// One row of the matrix.
struct Layout {
  const char *model; ///< an ONNX file of test/Inputs/train
  int64_t worldSize;
  int64_t expertParallelDegree;
  int64_t shardDegree;
  const char *routing;
  const char *dispatcher; ///< all_to_all or all_gather
  bool shuffle;           ///< global_token_shuffle
  double zLossCoef;
  /// The router biased to experts 0 and 1 (skewRouting).
  bool skewed = false;
};

std::string describe(const Layout &l) {
  return llvm::formatv("{0} W={1} P={2} H={3} {4} {5}{6}{7}{8}", l.model,
                       l.worldSize, l.expertParallelDegree, l.shardDegree,
                       l.routing, l.dispatcher, l.shuffle ? " shuffle" : "",
                       l.zLossCoef > 0 ? " +z" : "",
                       l.skewed ? " skewed" : "");
}

constexpr int64_t kMicroBatch = 2, kSeq = 8, kSteps = 3;
/// The bound, for the metrics, the gradients, the updated
/// parameters and the moments.
constexpr double kTolerance = 1e-5;

class PartitionedStepTest : public ::testing::TestWithParam<Layout> {
protected:
  PartitionedStepTest() {
    DialectRegistry registry;
    registerAllDialects(registry);
    context.appendDialectRegistry(registry);
    context.loadAllAvailableDialects();
  }

  /// The training step of `layout`'s model for micro-batches of `batch`,
  /// partitioned for `layout` when `partition`.
  OwningOpRef<ModuleOp> build(const Layout &layout, int64_t batch,
                              bool partition) {
    std::string path =
        std::string(MOEC_TEST_INPUTS_DIR) + "/train/" + layout.model;
    OwningOpRef<ModuleOp> module = importOnnxFile(context, path);
    if (!module)
      return nullptr;
    PassManager pm(&context);
    buildImportPipeline(pm, /*requireComplete=*/true);
    pm.addPass(moe::createBuildInitParams());
    moe::BuildTrainStepOptions options;
    options.loadBalancing = *moe::symbolizeLoadBalancing(layout.routing);
    options.zLossCoef = layout.zLossCoef;
    options.returnGradients = true;
    // moe-expert-parallel splits moe.experts before it saves activations.
    buildTrainStepPipeline(pm, options, /*recomputeExperts=*/true);
    moe::SpecializeShapesOptions shapes;
    shapes.batch = batch;
    shapes.seq = kSeq;
    pm.addNestedPass<func::FuncOp>(moe::createSpecializeShapes(shapes));
    if (partition) {
      // The layout's job, partitioned as `moec train` partitions it.
      TrainingJob job;
      job.worldSize = layout.worldSize;
      job.expertParallelDegree = layout.expertParallelDegree;
      job.hybridShardDegree = layout.shardDegree;
      job.moeAllToAllDispatcher = layout.dispatcher == StringRef("all_to_all");
      job.globalTokenShuffle = layout.shuffle;
      job.randomSeed = 11;
      buildPartitionPipeline(pm, job);
    }
    if (failed(pm.run(*module)))
      return nullptr;
    // Ranks route their own micro-batch: so does the global step, in groups
    // of one micro-batch's tokens.
    if (!partition)
      module->lookupSymbol<func::FuncOp>("train_step")
          .walk([](moe::RouterOp router) {
            router.setTokensPerGroup(kMicroBatch * kSeq);
          });
    return module;
  }

  MLIRContext context;
};

/// Token ids of the global batch: a fixed pseudo-random sequence.
HostTensor globalTokens(int64_t sequences, int64_t vocab) {
  HostTensor ids = HostTensor::ints({sequences, kSeq});
  uint64_t state = 54321;
  for (int64_t &id : ids.i64) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    id = static_cast<int64_t>((state >> 33) % vocab);
  }
  return ids;
}

/// The labels: the ids, with a different number of ignored targets in
/// every sequence (none in some).
HostTensor globalLabels(const HostTensor &ids) {
  HostTensor labels = ids;
  for (int64_t b = 0; b < ids.shape[0]; ++b)
    for (int64_t t = 1; t <= b % 4; ++t)
      labels.i64[b * kSeq + (3 * t + b) % kSeq] = -100;
  return labels;
}

/// Rows [first, first + count) of a [sequences, seq] tensor.
HostTensor rows(const HostTensor &t, int64_t first, int64_t count) {
  HostTensor out = HostTensor::ints({count, kSeq});
  std::copy_n(t.i64.begin() + first * kSeq, count * kSeq, out.i64.begin());
  return out;
}

HostTensor scalar(double v) {
  HostTensor t = HostTensor::floats({});
  t.f32[0] = static_cast<float>(v);
  return t;
}

HostTensor stepNumber(int64_t t) {
  HostTensor s = HostTensor::ints({});
  s.i64[0] = t;
  return s;
}

/// The dimension a partitioned step all-gathers argument `arg` along, or -1
/// when the argument is not sharded.
int64_t gatherAxis(BlockArgument arg) {
  for (Operation *user : arg.getUsers())
    if (auto gather = dyn_cast<shard::AllGatherOp>(user))
      return gather.getGatherAxis().getSExtValue();
  return -1;
}

/// Shard `index` of `global` along `axis` in chunks of `chunk` (zeros past
/// the end).
HostTensor shardOf(const HostTensor &global, int64_t axis, int64_t chunk,
                   int64_t index) {
  std::vector<int64_t> shape = global.shape;
  shape[axis] = chunk;
  HostTensor out = HostTensor::floats(shape);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d)
    outer *= shape[d];
  for (size_t d = axis + 1; d < shape.size(); ++d)
    inner *= shape[d];
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < chunk; ++c) {
      int64_t row = index * chunk + c;
      if (row >= global.shape[axis])
        continue;
      std::copy_n(global.f32.begin() + (o * global.shape[axis] + row) * inner,
                  inner, out.f32.begin() + (o * chunk + c) * inner);
    }
  return out;
}

/// The inverse: the shards of ranks `shards` (in shard order) concatenated
/// along `axis` and cut to `size`.
HostTensor gather(const std::vector<const HostTensor *> &shards, int64_t axis,
                  int64_t size) {
  std::vector<int64_t> shape = shards.front()->shape;
  const int64_t chunk = shape[axis];
  shape[axis] = size;
  HostTensor out = HostTensor::floats(shape);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d)
    outer *= shape[d];
  for (size_t d = axis + 1; d < shape.size(); ++d)
    inner *= shape[d];
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t row = 0; row < size; ++row)
      std::copy_n(shards[row / chunk]->f32.begin() +
                      (o * chunk + row % chunk) * inner,
                  inner, out.f32.begin() + (o * size + row) * inner);
  return out;
}

/// Biases the routers of `params` so that every token chooses experts 0
/// and 1: every embedding row gets a common component of 1 per element,
/// which dominates the normalised hidden states of both layers, and router
/// row e reads it with weight 4, 2 or -3 (over the hidden size), so that
/// the logits are about (4, 2, -3, ..., -3).
void skewRouting(func::FuncOp step, std::vector<HostTensor> &params) {
  for (auto [i, t] : llvm::enumerate(params)) {
    StringRef name = step.getArgAttrOfType<StringAttr>(i, mlir::moe::MoeDialect::getParameterAttrName());
    if (name == "model.embed_tokens.weight") {
      for (float &x : t.f32)
        x += 1.0f;
    } else if (name.ends_with(".mlp.gate.weight")) {
      int64_t hidden = t.shape[1];
      for (int64_t e = 0; e < t.shape[0]; ++e)
        for (int64_t c = 0; c < hidden; ++c)
          t.f32[e * hidden + c] =
              static_cast<float>(e == 0 ? 4.0 : e == 1 ? 2.0 : -3.0) / hidden;
    }
  }
}

/// The number of experts of the model whose step is `step`, read off its
/// routers.
int64_t expertCount(func::FuncOp step) {
  int64_t numExperts = 0;
  step.walk([&](moe::RouterOp router) {
    numExperts = router.getLogits().getType().getShape().back();
  });
  return numExperts;
}

/// The mesh of `layout` for the model whose step is `step`.
llvm::Expected<plan::Mesh> meshOf(const Layout &layout, func::FuncOp step) {
  const int64_t numExperts = expertCount(step);
  plan::ParallelConfig config;
  config.worldSize = layout.worldSize;
  config.expertParallelDegree = layout.expertParallelDegree;
  config.hybridShardDegree = layout.shardDegree;
  return plan::resolveMesh(config, numExperts);
}

std::string paramName(func::FuncOp step, unsigned i) {
  return step.getArgAttrOfType<StringAttr>(i, mlir::moe::MoeDialect::getParameterAttrName()).str();
}

TEST_P(PartitionedStepTest, EqualsTheUnpartitionedStep) {
  const Layout &layout = GetParam();
  SCOPED_TRACE(describe(layout));
  const int64_t w = layout.worldSize;
  OwningOpRef<ModuleOp> global = build(layout, w * kMicroBatch, false);
  OwningOpRef<ModuleOp> partitioned = build(layout, kMicroBatch, true);
  ASSERT_TRUE(global && partitioned);
  auto globalStep = global->lookupSymbol<func::FuncOp>("train_step");
  auto rankStep = partitioned->lookupSymbol<func::FuncOp>("train_step");
  llvm::Expected<plan::Mesh> mesh = meshOf(layout, globalStep);
  ASSERT_TRUE(static_cast<bool>(mesh)) << llvm::toString(mesh.takeError());

  // The global parameters, from the seed, and zero moments.
  std::vector<HostTensor> initial;
  HostTensor seed = HostTensor::ints({});
  seed.i64[0] = 7;
  ASSERT_TRUE(succeeded(reference::execute(
      global->lookupSymbol<func::FuncOp>("init_params"), {seed}, initial)));
  const unsigned n = (globalStep.getNumArguments() - 4) / 3;
  if (layout.skewed)
    skewRouting(globalStep, initial);
  std::vector<HostTensor> globalState(3 * n);
  for (unsigned i = 0; i < 3 * n; ++i)
    globalState[i] = i < n ? initial[i] : HostTensor::floats(initial[i % n].shape);

  // Rank `rank`'s part of a global state tensor of parameter i (its experts,
  // then its shard), and back.
  auto expertLocal = [&](unsigned i) {
    return rankStep.getArgAttr(i, moe::MoeDialect::getExpertLocalAttrName()) != nullptr;
  };
  auto scatter = [&](const HostTensor &value, unsigned i, int64_t rank) {
    HostTensor local = value;
    if (expertLocal(i)) {
      int64_t count = value.shape[0] / mesh->expertParallelDegree();
      local = shardOf(value, 0, count, mesh->coord(rank).p);
    }
    int64_t axis = gatherAxis(rankStep.getArgument(i));
    if (axis < 0)
      return local;
    int64_t chunk = cast<RankedTensorType>(rankStep.getArgument(i).getType())
                        .getDimSize(axis);
    return shardOf(local, axis, chunk, mesh->coord(rank).h);
  };
  auto gatherFrom = [&](const std::vector<std::vector<HostTensor>> &perRank,
                        unsigned result, unsigned i, int64_t q,
                        const HostTensor &like) {
    int64_t axis = gatherAxis(rankStep.getArgument(i));
    std::vector<HostTensor> pieces;
    int64_t experts = expertLocal(i) ? mesh->expertParallelDegree() : 1;
    for (int64_t p = 0; p < experts; ++p) {
      if (axis < 0) {
        pieces.push_back(perRank[mesh->rank({q, 0, p})][result]);
        continue;
      }
      std::vector<const HostTensor *> shards;
      for (int64_t h = 0; h < mesh->shardDegree(); ++h)
        shards.push_back(&perRank[mesh->rank({q, h, p})][result]);
      pieces.push_back(gather(shards, axis, like.shape[axis]));
    }
    std::vector<const HostTensor *> all;
    for (const HostTensor &piece : pieces)
      all.push_back(&piece);
    return gather(all, 0, like.shape[0]);
  };

  const int64_t vocab =
      cast<RankedTensorType>(globalStep.getArgument(0).getType())
          .getDimSize(0);
  HostTensor ids = globalTokens(w * kMicroBatch, vocab);
  HostTensor labels = globalLabels(ids);
  const char *metrics[] = {"loss", "ce_loss", "aux_loss", "z_loss",
                           "grad_norm"};
  const char *stateKinds[] = {"", "exp_avg of ", "exp_avg_sq of "};
  // The largest relative L2 errors seen, for docs/partitioning.md's table.
  double worstMetric = 0, worstGradient = 0, worstParameter = 0, worstMoment = 0;
  // Each step starts both programs from the global step's state: top-k and
  // balanced routing are discontinuous, so the rounding-level drift of two
  // summation orders could flip a near-tied choice in a later step and
  // compare two different routings (docs/partitioning.md).
  for (int64_t t = 1; t <= kSteps; ++t) {
    SCOPED_TRACE(llvm::formatv("step {0}", t).str());
    // The goldens' schedule: warm-up to 1e-3 over 2 steps.
    double lr = 1e-3 * std::min(1.0, t / 2.0);
    std::vector<HostTensor> args = globalState, results;
    args.insert(args.end(), {ids, labels, stepNumber(t), scalar(lr)});
    ASSERT_TRUE(succeeded(reference::execute(globalStep, args, results)));
    std::vector<std::vector<HostTensor>> rankArgs(w), rankResults;
    for (int64_t rank = 0; rank < w; ++rank) {
      for (unsigned i = 0; i < 3 * n; ++i)
        rankArgs[rank].push_back(scatter(globalState[i], i % n, rank));
      rankArgs[rank].insert(rankArgs[rank].end(),
                            {rows(ids, rank * kMicroBatch, kMicroBatch),
                             rows(labels, rank * kMicroBatch, kMicroBatch),
                             stepNumber(t), scalar(lr)});
    }
    ASSERT_TRUE(succeeded(
        reference::executeOnRanks(rankStep, *mesh, rankArgs, rankResults)));

    // Metrics, the same on every rank.
    for (int64_t rank = 0; rank < w; ++rank) {
      for (unsigned m = 0; m < 5; ++m) {
        reference::ErrorStats e = reference::compare(
            rankResults[rank][3 * n + m], results[3 * n + m]);
        worstMetric = std::max(worstMetric, e.relativeL2);
        EXPECT_LE(e.relativeL2, kTolerance)
            << metrics[m] << " on rank " << rank << ": "
            << rankResults[rank][3 * n + m].f32[0] << " vs "
            << results[3 * n + m].f32[0];
      }
      EXPECT_EQ(rankResults[rank][3 * n + 5].i64, results[3 * n + 5].i64)
          << "expert counts on rank " << rank;
    }
    if (layout.skewed) {
      // The case is what it claims: no slot for the last rank's experts.
      const HostTensor &counts = results[3 * n + 5];
      const int64_t numExperts = expertCount(globalStep);
      const int64_t local = numExperts / mesh->expertParallelDegree();
      for (int64_t l = 0; l < counts.shape[0]; ++l)
        for (int64_t e = numExperts - local; e < numExperts; ++e)
          EXPECT_EQ(counts.i64[l * numExperts + e], 0)
              << "layer " << l << " expert " << e;
    }
    // Every gradient (before clipping), and every updated parameter and
    // moment, gathered from the shards of each replica.
    for (int64_t q = 0; q < mesh->replicas(); ++q) {
      for (unsigned i = 0; i < n; ++i) {
        const HostTensor &expected = results[3 * n + 6 + i];
        reference::ErrorStats e = reference::compare(
            gatherFrom(rankResults, 3 * n + 6 + i, i, q, expected), expected);
        worstGradient = std::max(worstGradient, e.relativeL2);
        EXPECT_LE(e.relativeL2, kTolerance)
            << "gradient of " << paramName(rankStep, i) << " on replica " << q
            << " (max error " << e.maxAbs << ")";
      }
      for (unsigned i = 0; i < 3 * n; ++i) {
        const HostTensor &expected = results[i];
        reference::ErrorStats e = reference::compare(
            gatherFrom(rankResults, i, i % n, q, expected), expected);
        (i < n ? worstParameter : worstMoment) =
            std::max(i < n ? worstParameter : worstMoment, e.relativeL2);
        EXPECT_LE(e.relativeL2, kTolerance)
            << stateKinds[i / n] << paramName(rankStep, i % n) << " on replica "
            << q << " (max error " << e.maxAbs << ")";
      }
    }
    for (unsigned i = 0; i < 3 * n; ++i)
      globalState[i] = std::move(results[i]);
  }
  // The evaluation step on the trained parameters: the global batch's loss.
  {
    std::vector<HostTensor> args(globalState.begin(), globalState.begin() + n),
        results;
    args.insert(args.end(), {ids, labels});
    ASSERT_TRUE(succeeded(reference::execute(
        global->lookupSymbol<func::FuncOp>("eval_step"), args, results)));
    std::vector<std::vector<HostTensor>> rankArgs(w), rankResults;
    for (int64_t rank = 0; rank < w; ++rank) {
      for (unsigned i = 0; i < n; ++i)
        rankArgs[rank].push_back(scatter(globalState[i], i, rank));
      rankArgs[rank].insert(rankArgs[rank].end(),
                            {rows(ids, rank * kMicroBatch, kMicroBatch),
                             rows(labels, rank * kMicroBatch, kMicroBatch)});
    }
    ASSERT_TRUE(succeeded(reference::executeOnRanks(
        partitioned->lookupSymbol<func::FuncOp>("eval_step"), *mesh, rankArgs,
        rankResults)));
    for (int64_t rank = 0; rank < w; ++rank) {
      reference::ErrorStats e =
          reference::compare(rankResults[rank][0], results[0]);
      worstMetric = std::max(worstMetric, e.relativeL2);
      EXPECT_LE(e.relativeL2, kTolerance) << "evaluation loss on rank " << rank;
    }
  }
  llvm::outs() << llvm::formatv(
      "| {0} | {1:e1} | {2:e1} | {3:e1} | {4:e1} |\n", describe(layout),
      worstMetric, worstGradient, worstParameter, worstMoment);
  // Whole lines between googletest's own output.
  llvm::outs().flush();
}

/// What depends on the mesh only: one case per (W, P, H).
class MeshTest : public PartitionedStepTest {};

TEST_P(MeshTest, InitializationIsShardingInvariant) {
  // Each rank's @init_params creates exactly its block of the global
  // parameters (zeros as padding), bit for bit.
  const Layout &layout = GetParam();
  SCOPED_TRACE(describe(layout));
  const int64_t w = layout.worldSize;
  OwningOpRef<ModuleOp> global = build(layout, w * kMicroBatch, false);
  OwningOpRef<ModuleOp> partitioned = build(layout, kMicroBatch, true);
  ASSERT_TRUE(global && partitioned);
  auto rankStep = partitioned->lookupSymbol<func::FuncOp>("train_step");
  llvm::Expected<plan::Mesh> mesh = meshOf(layout, rankStep);
  ASSERT_TRUE(static_cast<bool>(mesh)) << llvm::toString(mesh.takeError());

  HostTensor seed = HostTensor::ints({});
  seed.i64[0] = 7;
  std::vector<HostTensor> full;
  ASSERT_TRUE(succeeded(reference::execute(
      global->lookupSymbol<func::FuncOp>("init_params"), {seed}, full)));
  std::vector<std::vector<HostTensor>> perRank;
  ASSERT_TRUE(succeeded(reference::executeOnRanks(
      partitioned->lookupSymbol<func::FuncOp>("init_params"), *mesh,
      std::vector<std::vector<HostTensor>>(w, {seed}), perRank)));
  for (int64_t rank = 0; rank < w; ++rank)
    for (unsigned i = 0; i < full.size(); ++i) {
      // The expert block, then the shard, zero-padded.
      HostTensor expected = full[i];
      if (rankStep.getArgAttr(i, moe::MoeDialect::getExpertLocalAttrName()))
        expected = shardOf(expected, 0,
                           expected.shape[0] / mesh->expertParallelDegree(),
                           mesh->coord(rank).p);
      int64_t axis = gatherAxis(rankStep.getArgument(i));
      if (axis >= 0)
        expected = shardOf(
            expected, axis,
            cast<RankedTensorType>(rankStep.getArgument(i).getType())
                .getDimSize(axis),
            mesh->coord(rank).h);
      EXPECT_EQ(perRank[rank][i].shape, expected.shape)
          << paramName(rankStep, i) << " on rank " << rank;
      EXPECT_EQ(perRank[rank][i].f32, expected.f32)
          << paramName(rankStep, i) << " on rank " << rank;
    }
}

/// The plan of `job` for `model`, analytic or (with `program`) read from
/// the partitioned program.
llvm::Expected<plan::TrainingPlan>
planOf(const plan::ModelDescription &model, const TrainingJob &job,
       const plan::ProgramFootprint *program = nullptr) {
  std::optional<plan::GpuSpec> gpu = plan::getGpu(plan::gpuNames().front());
  return plan::makePlan(model, job, /*gpusPerNode=*/8, *gpu, plan::Efficiency(),
                        program);
}

/// Bytes per step of the plan's collectives of `kind` on `group`.
int64_t planBytes(const plan::TrainingPlan &trainingPlan,
                  plan::CollectiveKind kind, plan::GroupKind group) {
  int64_t total = 0;
  for (const plan::Collective &c : trainingPlan.collectives)
    if (c.kind == kind && c.group == group)
      total += c.bytes * c.count;
  return total;
}

/// That the analytic plan of `job` agrees with `program`, the footprint of
/// its partitioned @train_step: per-rank master parameters, gradients and
/// AdamW moments (padding included), the parameter all-gathers (forward and
/// backward) and the norm's partials, the gradient reductions, and (without
/// checkpointing) the token dispatch; and that the plan read from the
/// program takes all but the token all-to-alls from it.
void expectPlanAgrees(const plan::ModelDescription &model,
                      const TrainingJob &job,
                      const plan::ProgramFootprint &program) {
  llvm::Expected<plan::TrainingPlan> analytic = planOf(model, job);
  ASSERT_TRUE(static_cast<bool>(analytic))
      << llvm::toString(analytic.takeError());
  llvm::Expected<plan::TrainingPlan> read = planOf(model, job, &program);
  ASSERT_TRUE(static_cast<bool>(read)) << llvm::toString(read.takeError());
  for (const plan::TrainingPlan *trainingPlan : {&*analytic, &*read})
    for (const plan::MemoryBreakdown &memory : trainingPlan->memory) {
      EXPECT_EQ(memory.masterParams, program.state.parameters);
      EXPECT_EQ(memory.gradients, program.state.gradients);
      EXPECT_EQ(memory.optimizerStates, program.state.optimizerStates);
    }
  using plan::CollectiveKind;
  using plan::GroupKind;
  std::vector<std::pair<CollectiveKind, GroupKind>> agreeing = {
      {CollectiveKind::AllGather, GroupKind::Shard},
      {CollectiveKind::AllGather, GroupKind::Expert},
      {CollectiveKind::ReduceScatter, GroupKind::Shard},
      {CollectiveKind::AllReduce, GroupKind::Replica},
      {CollectiveKind::AllReduce, GroupKind::DenseReplica}};
  if (job.activationCheckpointing == ActivationCheckpointing::None)
    agreeing.push_back({CollectiveKind::AllToAll, GroupKind::Expert});
  for (auto [kind, group] : agreeing) {
    SCOPED_TRACE(llvm::formatv("{0} over the {1} group",
                               plan::stringifyCollectiveKind(kind),
                               plan::stringifyGroupKind(group))
                     .str());
    EXPECT_EQ(planBytes(*analytic, kind, group),
              program.totalBytes(kind, group));
    EXPECT_EQ(planBytes(*read, kind, group), program.totalBytes(kind, group));
  }
  for (const plan::Collective &c : read->collectives)
    EXPECT_EQ(c.fromProgram, c.kind != CollectiveKind::AllToAll) << c.what;
}

TEST_P(MeshTest, PlanAgreesWithTheProgram) {
  const Layout &layout = GetParam();
  SCOPED_TRACE(describe(layout));
  OwningOpRef<ModuleOp> partitioned = build(layout, kMicroBatch, true);
  ASSERT_TRUE(partitioned);
  FailureOr<plan::ProgramFootprint> program = plan::readProgramFootprint(
      partitioned->lookupSymbol<func::FuncOp>("train_step"));
  FailureOr<plan::ModelDescription> model = plan::describeForward(
      partitioned->lookupSymbol<func::FuncOp>("forward"));
  ASSERT_TRUE(succeeded(program) && succeeded(model));
  TrainingJob job;
  job.worldSize = layout.worldSize;
  job.expertParallelDegree = layout.expertParallelDegree;
  job.hybridShardDegree = layout.shardDegree;
  job.microBatchSize = kMicroBatch;
  job.seqLength = kSeq;
  job.bf16 = false;
  job.activationCheckpointing = ActivationCheckpointing::None;
  expectPlanAgrees(*model, job, *program);
}

TEST(PlanAgreesWithTheProgram, Mixtral8x7B) {
  // The weights-free 8x7B export, partitioned as `moec plan` builds it (one
  // sequence of 4096 tokens, bf16 compute), on the seed's cluster and on
  // one node of 8 GPUs.
  DialectRegistry registry;
  registerAllDialects(registry);
  MLIRContext context(registry);
  context.loadAllAvailableDialects();
  OwningOpRef<ModuleOp> forward = importOnnxFile(
      context, std::string(MOEC_TEST_INPUTS_DIR) + "/mixtral-8x7b/model.onnx");
  ASSERT_TRUE(forward);
  PassManager raise(&context);
  buildImportPipeline(raise, /*requireComplete=*/true);
  ASSERT_TRUE(succeeded(raise.run(*forward)));
  FailureOr<plan::ModelDescription> model =
      plan::describeForward(forward->lookupSymbol<func::FuncOp>("forward"));
  ASSERT_TRUE(succeeded(model));
  for (auto [w, p, h] : {std::tuple(16, 2, 8), std::tuple(8, 8, 1),
                         std::tuple(8, 2, 4), std::tuple(8, 4, 2)}) {
    SCOPED_TRACE(llvm::formatv("W={0} P={1} H={2}", w, p, h).str());
    TrainingJob job;
    job.worldSize = w;
    job.expertParallelDegree = p;
    job.hybridShardDegree = h;
    job.microBatchSize = 1;
    job.seqLength = 4096;
    job.bf16 = true;
    job.activationCheckpointing = ActivationCheckpointing::None;
    OwningOpRef<ModuleOp> partitioned(forward->clone());
    PassManager pm(&context);
    buildTrainPipeline(pm, job);
    ASSERT_TRUE(succeeded(pm.run(*partitioned)));
    FailureOr<plan::ProgramFootprint> program = plan::readProgramFootprint(
        partitioned->lookupSymbol<func::FuncOp>("train_step"));
    ASSERT_TRUE(succeeded(program));
    expectPlanAgrees(*model, job, *program);
  }
}

/// Every valid (W, P, H) with W in {1, 2, 4, 8} for both models and every
/// routing, with the all-to-all dispatcher; where P > 1, also the all-gather
/// dispatcher and, for the per-token routings, the token shuffle. Sinkhorn
/// and balanced routing couple the tokens of one rank, and a shuffled rank
/// holds other tokens than its micro-batch: that step routes other groups
/// than the global step with per-micro-batch groups, by definition.
std::vector<Layout> matrix() {
  std::vector<Layout> layouts;
  for (auto [model, experts] :
       {std::pair("tiny.onnx", 4), std::pair("tiny-e8.onnx", 8)})
    for (int64_t w : {1, 2, 4, 8})
      for (int64_t p = 1; p <= std::min<int64_t>(w, experts); p *= 2)
        for (int64_t h = 1; h <= w / p; h *= 2)
          for (const char *routing : {"aux_loss", "none", "sinkhorn",
                                      "balanced"}) {
            layouts.push_back(
                {model, w, p, h, routing, "all_to_all", false, 1e-3});
            if (p > 1) {
              layouts.push_back(
                  {model, w, p, h, routing, "all_gather", false, 1e-3});
              if (routing == std::string("aux_loss") ||
                  routing == std::string("none"))
                layouts.push_back(
                    {model, w, p, h, routing, "all_to_all", true, 1e-3});
            }
          }
  return layouts;
}

/// The router biased to experts 0 and 1 (skewRouting), on the per-token
/// routings (sinkhorn and balanced would rebalance it): the last
/// expert-parallel rank receives no token, one expert gets every token's
/// first choice, and the aux loss is large.
std::vector<Layout> skewedMatrix() {
  std::vector<Layout> layouts;
  for (const char *model : {"tiny.onnx", "tiny-e8.onnx"})
    for (const char *routing : {"aux_loss", "none"})
      for (const char *dispatcher : {"all_to_all", "all_gather"})
        for (auto [w, p, h] : {std::tuple(2, 2, 1), std::tuple(4, 4, 1),
                               std::tuple(8, 2, 2)})
          layouts.push_back(
              {model, w, p, h, routing, dispatcher, false, 0.0, true});
  return layouts;
}

std::string testName(const ::testing::TestParamInfo<Layout> &info) {
  std::string name = describe(info.param);
  for (char &c : name)
    if (!isalnum(static_cast<unsigned char>(c)))
      c = '_';
  return name;
}

INSTANTIATE_TEST_SUITE_P(Matrix, PartitionedStepTest,
                         ::testing::ValuesIn(matrix()), testName);
INSTANTIATE_TEST_SUITE_P(Skewed, PartitionedStepTest,
                         ::testing::ValuesIn(skewedMatrix()), testName);

std::vector<Layout> meshes() {
  std::vector<Layout> layouts;
  for (const Layout &layout : matrix())
    if (layout.routing == std::string("none") &&
        layout.dispatcher == std::string("all_to_all") && !layout.shuffle)
      layouts.push_back(layout);
  return layouts;
}

INSTANTIATE_TEST_SUITE_P(Meshes, MeshTest,
                         ::testing::ValuesIn(meshes()), testName);

} // namespace
