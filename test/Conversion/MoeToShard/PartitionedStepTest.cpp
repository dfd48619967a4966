//===- PartitionedStepTest.cpp - Partitioned steps equal the global one ---===//
//
// The oracle of the partitioning passes: the tiny Mixtrals' training step,
// partitioned for W simulated ranks, against the unpartitioned step on the
// same global batch (the W micro-batches concatenated along batch), for 3
// AdamW steps from the same initial parameters. Loss, cross-entropy, z-loss
// and grad norm of every step, the expert counts, and every parameter and
// moment after the last step (gathered from the shards) must agree to a
// relative L2 of 1e-5 in fp32. Ranks see different numbers of ignored
// labels, so the cross-entropy's global mean is exercised.
//
// Expert parallelism: every valid P with both dispatchers, the token
// shuffle, and the four routings; the unpartitioned step routes each
// micro-batch as its own group (moe.router's group_tokens), as the ranks
// do. Skewed cases bias the router so that every token's first choice is
// one expert and the last expert-parallel rank receives no token at all.
//
//===----------------------------------------------------------------------===//

#include "moec/Conversion/MoeToShard/Passes.h"
#include "moec/Import/Onnx.h"
#include "moec/InitAll.h"
#include "moec/Pipelines/Pipelines.h"
#include "moec/Plan/Mesh.h"
#include "moec/Reference/Executor.h"

#include "dialects/Moe/Transforms/Passes.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/FormatVariadic.h"

#include <gtest/gtest.h>

using namespace mlir;
using namespace moec;

namespace {

/// One row of the matrix.
struct Layout {
  const char *model; ///< an ONNX file of test/Inputs/train
  int64_t worldSize;
  int64_t expertDegree;
  int64_t shardDegree;
  const char *routing;
  double zLossCoef;
  const char *dispatcher = "all_to_all";
  bool shuffle = false;
  /// Router biased to one expert; the last expert-parallel rank gets none.
  bool skewed = false;
};

std::string describe(const Layout &l) {
  return llvm::formatv("{0} W={1} P={2} H={3} {4}{5} {6}{7}{8}", l.model,
                       l.worldSize, l.expertDegree, l.shardDegree, l.routing,
                       l.zLossCoef > 0 ? " +z" : "", l.dispatcher,
                       l.shuffle ? " shuffle" : "", l.skewed ? " skewed" : "");
}

constexpr int64_t kMicroBatch = 2, kSeq = 8, kSteps = 3;
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
    options.loadBalancing = layout.routing;
    options.zLossCoef = layout.zLossCoef;
    options.returnGradients = true;
    buildTrainStepPipeline(pm, options);
    moe::SpecializeShapesOptions shapes;
    shapes.batch = batch;
    shapes.seq = kSeq;
    pm.addNestedPass<func::FuncOp>(moe::createSpecializeShapes(shapes));
    if (partition) {
      ExpertParallelOptions experts;
      experts.worldSize = layout.worldSize;
      experts.expertParallelDegree = layout.expertDegree;
      experts.hybridShardDegree = layout.shardDegree;
      experts.dispatcher = layout.dispatcher;
      experts.globalTokenShuffle = layout.shuffle;
      experts.seed = 11;
      pm.addPass(createExpertParallel(experts));
      HybridShardOptions shard;
      shard.worldSize = layout.worldSize;
      shard.expertParallelDegree = layout.expertDegree;
      shard.hybridShardDegree = layout.shardDegree;
      pm.addPass(createHybridShard(shard));
    }
    if (failed(pm.run(*module)))
      return nullptr;
    // The ranks route their own micro-batches: so does the global step.
    if (!partition)
      module->walk([&](moe::RouterOp router) {
        router.setGroupTokens(kMicroBatch * kSeq);
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

bool isExpertLocal(func::FuncOp step, unsigned i) {
  return step.getArgAttr(i, kExpertLocalAttrName) != nullptr;
}

/// Rank `rank`'s part of the global state `global` of argument `i`: its
/// experts' slice (for expert-local arguments), then its shard along H.
HostTensor partOf(const HostTensor &global, func::FuncOp rankStep, unsigned i,
                  unsigned n, const plan::Mesh &mesh, int64_t rank) {
  plan::MeshCoord c = mesh.coord(rank);
  HostTensor part = global;
  if (isExpertLocal(rankStep, i))
    part = shardOf(part, 0, part.shape[0] / mesh.expertParallelDegree(), c.p);
  int64_t axis = gatherAxis(rankStep.getArgument(i % n));
  if (axis >= 0)
    part = shardOf(part, axis,
                   cast<RankedTensorType>(rankStep.getArgument(i).getType())
                       .getDimSize(axis),
                   c.h);
  return part;
}

/// The global value of argument (or result) `i` of replica `q`, gathered
/// from the ranks' parts in `perRank[rank][offset + i]`.
HostTensor gatherGlobal(const std::vector<std::vector<HostTensor>> &perRank,
                        unsigned offset, func::FuncOp rankStep, unsigned i,
                        unsigned n, const plan::Mesh &mesh, int64_t q,
                        const std::vector<int64_t> &globalShape) {
  bool local = isExpertLocal(rankStep, i % n);
  int64_t parts = local ? mesh.expertParallelDegree() : 1;
  int64_t axis = gatherAxis(rankStep.getArgument(i % n));
  std::vector<HostTensor> byExpertRank;
  for (int64_t p = 0; p < parts; ++p) {
    if (axis < 0) {
      byExpertRank.push_back(perRank[mesh.rank({q, 0, p})][offset + i]);
      continue;
    }
    std::vector<const HostTensor *> shards;
    for (int64_t h = 0; h < mesh.shardDegree(); ++h)
      shards.push_back(&perRank[mesh.rank({q, h, p})][offset + i]);
    int64_t size = globalShape[axis] / (axis == 0 ? parts : 1);
    byExpertRank.push_back(gather(shards, axis, size));
  }
  std::vector<const HostTensor *> slices;
  for (const HostTensor &t : byExpertRank)
    slices.push_back(&t);
  return gather(slices, 0, globalShape[0]);
}

/// Biases the routers of `params` so that every token's first choice is
/// expert 0 and its second expert 1: every embedding row gets a common
/// component of 1 per element, which dominates the normalised hidden
/// states, and each router row reads it with weight 4, 2 or -3 (over the
/// hidden size), so the logits are about (4, 2, -3, ...).
void skewRouting(func::FuncOp step, std::vector<HostTensor> &params) {
  for (unsigned i = 0; i < params.size(); ++i) {
    StringRef name = step.getArgAttrOfType<StringAttr>(i, "moe.parameter");
    HostTensor &t = params[i];
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

std::string paramName(func::FuncOp step, unsigned i) {
  return step.getArgAttrOfType<StringAttr>(i, "moe.parameter").str();
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
  int64_t numExperts = 0;
  globalStep.walk([&](moe::RouterOp r) {
    numExperts =
        cast<RankedTensorType>(r.getLogits().getType()).getShape().back();
  });
  plan::ParallelConfig config;
  config.worldSize = w;
  config.expertParallelDegree = layout.expertDegree;
  config.hybridShardDegree = layout.shardDegree;
  llvm::Expected<plan::Mesh> mesh = plan::resolveMesh(config, numExperts);
  ASSERT_TRUE(static_cast<bool>(mesh));

  // The global parameters, from the seed; every rank's shards of them.
  std::vector<HostTensor> initial;
  ASSERT_TRUE(succeeded(
      reference::execute(global->lookupSymbol<func::FuncOp>("init_params"),
                         {[] {
                           HostTensor seed = HostTensor::ints({});
                           seed.i64[0] = 7;
                           return seed;
                         }()},
                         initial)));
  const unsigned n = (globalStep.getNumArguments() - 4) / 3;
  if (layout.skewed)
    skewRouting(globalStep, initial);
  std::vector<HostTensor> globalState(3 * n);
  std::vector<std::vector<HostTensor>> rankState(w,
                                                 std::vector<HostTensor>(3 * n));
  for (unsigned i = 0; i < 3 * n; ++i) {
    const HostTensor &param = initial[i % n];
    globalState[i] =
        i < n ? param : HostTensor::floats(param.shape); // zero moments
    for (int64_t rank = 0; rank < w; ++rank)
      rankState[rank][i] = partOf(globalState[i], rankStep, i, n, *mesh, rank);
  }

  const int64_t vocab =
      cast<RankedTensorType>(globalStep.getArgument(0).getType())
          .getDimSize(0);
  HostTensor ids = globalTokens(w * kMicroBatch, vocab);
  HostTensor labels = globalLabels(ids);
  const char *metrics[] = {"loss", "ce_loss", "aux_loss", "z_loss",
                           "grad_norm"};
  // The largest relative error of any compared value, for the table in
  // docs/partitioning.md (--gtest_output=xml records it).
  double worst = 0.0;
  for (int64_t t = 1; t <= kSteps; ++t) {
    // The goldens' schedule: warm-up to 1e-3 over 2 steps.
    double lr = 1e-3 * std::min(1.0, t / 2.0);
    std::vector<HostTensor> args = globalState, results;
    args.insert(args.end(), {ids, labels, stepNumber(t), scalar(lr)});
    ASSERT_TRUE(succeeded(reference::execute(globalStep, args, results)));
    std::vector<std::vector<HostTensor>> rankArgs(w), rankResults;
    for (int64_t rank = 0; rank < w; ++rank) {
      rankArgs[rank] = rankState[rank];
      rankArgs[rank].insert(rankArgs[rank].end(),
                            {rows(ids, rank * kMicroBatch, kMicroBatch),
                             rows(labels, rank * kMicroBatch, kMicroBatch),
                             stepNumber(t), scalar(lr)});
    }
    ASSERT_TRUE(succeeded(
        reference::executeOnRanks(rankStep, *mesh, rankArgs, rankResults)));
    for (int64_t rank = 0; rank < w; ++rank) {
      for (unsigned m = 0; m < 5; ++m) {
        reference::ErrorStats e = reference::compare(
            rankResults[rank][3 * n + m], results[3 * n + m]);
        worst = std::max(worst, e.relativeL2);
        EXPECT_LE(e.relativeL2, kTolerance)
            << metrics[m] << " of step " << t << " on rank " << rank << ": "
            << rankResults[rank][3 * n + m].f32[0] << " vs "
            << results[3 * n + m].f32[0];
      }
      EXPECT_EQ(rankResults[rank][3 * n + 5].i64, results[3 * n + 5].i64)
          << "expert counts of step " << t << " on rank " << rank;
    }
    if (layout.skewed && t == 1) {
      // The case is what it claims: no slot for the last rank's experts.
      const HostTensor &counts = results[3 * n + 5];
      int64_t local = numExperts / mesh->expertParallelDegree();
      for (int64_t l = 0; l < counts.shape[0]; ++l)
        for (int64_t e = numExperts - local; e < numExperts; ++e)
          EXPECT_EQ(counts.i64[l * numExperts + e], 0)
              << "layer " << l << " expert " << e;
    }
    // Every gradient (before clipping), gathered from the reduced shards.
    for (unsigned i = 0; i < n; ++i) {
      const HostTensor &expected = results[3 * n + 6 + i];
      HostTensor gathered = gatherGlobal(rankResults, 3 * n + 6, rankStep, i,
                                         n, *mesh, 0, expected.shape);
      reference::ErrorStats e = reference::compare(gathered, expected);
      worst = std::max(worst, e.relativeL2);
      EXPECT_LE(e.relativeL2, kTolerance)
          << "gradient of " << paramName(rankStep, i) << " in step " << t
          << " (max error " << e.maxAbs << ")";
    }
    for (int64_t rank = 0; rank < w; ++rank)
      for (unsigned i = 0; i < 3 * n; ++i)
        rankState[rank][i] = std::move(rankResults[rank][i]);
    for (unsigned i = 0; i < 3 * n; ++i)
      globalState[i] = std::move(results[i]);
  }

  // Every parameter and moment, gathered from the shards of each replica.
  for (unsigned i = 0; i < 3 * n; ++i) {
    for (int64_t q = 0; q < mesh->replicas(); ++q) {
      HostTensor gathered = gatherGlobal(rankState, 0, rankStep, i, n, *mesh,
                                         q, globalState[i].shape);
      reference::ErrorStats e = reference::compare(gathered, globalState[i]);
      worst = std::max(worst, e.relativeL2);
      EXPECT_LE(e.relativeL2, kTolerance)
          << (i < n ? "" : i < 2 * n ? "exp_avg of " : "exp_avg_sq of ")
          << paramName(rankStep, i % n) << " on replica " << q
          << " (max error " << e.maxAbs << ")";
    }
  }
  RecordProperty("worst_relative_l2", llvm::formatv("{0:e2}", worst).str());
}

std::vector<Layout> matrix() {
  std::vector<Layout> layouts;
  for (const char *model : {"tiny.onnx", "tiny-e8.onnx"})
    for (int64_t w : {1, 2, 4, 8})
      for (int64_t h = 1; h <= w; h *= 2)
        for (const char *routing : {"none"})
          layouts.push_back({model, w, 1, h, routing, 1e-3});
  return layouts;
}

/// Expert parallelism without sharding (H = 1): every P > 1 that divides
/// W and E, each routing with both dispatchers, and the token shuffle with
/// the routings that route each token alone (sinkhorn and balanced route
/// the rank's tokens together, and a shuffle changes which tokens those
/// are: docs/partitioning.md).
std::vector<Layout> expertMatrix() {
  std::vector<Layout> layouts;
  for (auto [model, experts] :
       {std::pair{"tiny.onnx", 4}, std::pair{"tiny-e8.onnx", 8}})
    for (int64_t w : {2, 4, 8})
      for (int64_t p = 2; p <= w && p <= experts; p *= 2)
        for (const char *routing : {"aux_loss", "sinkhorn", "balanced", "none"})
          for (const char *dispatcher : {"all_to_all", "all_gather"})
            for (bool shuffle : {false, true}) {
              bool perToken = StringRef(routing) == "aux_loss" ||
                              StringRef(routing) == "none";
              if (shuffle && !perToken)
                continue;
              layouts.push_back(
                  {model, w, p, 1, routing, 0.0, dispatcher, shuffle});
            }
  return layouts;
}

/// Both partitionings together: every valid (P, H) for W in {1, 2, 4, 8},
/// with the aux loss (global statistics); with P > 1 both dispatchers, the
/// all-gather one with the token shuffle.
std::vector<Layout> composedMatrix() {
  std::vector<Layout> layouts;
  for (auto [model, experts] :
       {std::pair{"tiny.onnx", 4}, std::pair{"tiny-e8.onnx", 8}})
    for (int64_t w : {1, 2, 4, 8})
      for (int64_t p = 1; p <= w && p <= experts; p *= 2)
        for (int64_t h = 1; h <= w / p; h *= 2) {
          layouts.push_back({model, w, p, h, "aux_loss", 0.0});
          if (p > 1)
            layouts.push_back(
                {model, w, p, h, "aux_loss", 0.0, "all_gather", true});
        }
  return layouts;
}

/// A router biased to expert 0: the last expert-parallel rank receives no
/// token; the aux loss is large.
std::vector<Layout> skewedMatrix() {
  std::vector<Layout> layouts;
  for (const char *model : {"tiny.onnx", "tiny-e8.onnx"})
    for (const char *routing : {"aux_loss", "none"})
      for (const char *dispatcher : {"all_to_all", "all_gather"})
        for (auto [w, p] : {std::pair{2, 2}, std::pair{4, 4}})
          layouts.push_back(
              {model, w, p, 1, routing, 0.0, dispatcher, false, true});
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
INSTANTIATE_TEST_SUITE_P(ExpertParallel, PartitionedStepTest,
                         ::testing::ValuesIn(expertMatrix()), testName);
INSTANTIATE_TEST_SUITE_P(Composed, PartitionedStepTest,
                         ::testing::ValuesIn(composedMatrix()), testName);
INSTANTIATE_TEST_SUITE_P(Skewed, PartitionedStepTest,
                         ::testing::ValuesIn(skewedMatrix()), testName);

} // namespace
