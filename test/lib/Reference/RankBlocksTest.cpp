//===- RankBlocksTest.cpp - Simulated ranks' blocks of the parameters -----===//
//
// RankBlocks on a partitioned @init_params parsed from text, on the mesh
// (R, H, P) = (2, 2, 2): an expert parameter also chunked (with padding), a
// chunked dense one and a replicated one. Scattering distinct global values
// and gathering them back is the identity; a rank's block holds the
// elements docs/partitioning.md's layout gives it; a replica that differs
// and padding that is not 0 are named by rank, element and values; a split
// the ranks' layout does not have and a parameter without a moe.param_init
// are refused by name.
//
//===----------------------------------------------------------------------===//

#include "moec/InitAll.h"
#include "moec/Reference/RankBlocks.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"

#include <gtest/gtest.h>

using namespace mlir;
using namespace moec;
using moec::reference::RankBlocks;

namespace {

/// a: experts 4 x rows 3 x columns 5, the experts over P and the columns
/// chunked over H (3 + 2, one padding column on h = 1); b: 5 chunked over
/// H; c: 2x2, whole on every rank.
const char *kInit = R"mlir(
  shard.grid @mesh(shape = 2x2x2)
  func.func @init_params(%seed: tensor<i64>) -> (tensor<2x3x3xf32>, tensor<3xf32>, tensor<2x2xf32>) {
    %a = moe.param_init %seed {name = "a", kind = #moe.param_init<normal>, std = 2.0e-02 : f64, global_shape = array<i64: 4, 3, 5>, grid = @mesh, split_axes = array<i64: 2, -1, 1>} : (tensor<i64>) -> tensor<2x3x3xf32>
    %b = moe.param_init %seed {name = "b", kind = #moe.param_init<ones>, global_shape = array<i64: 5>, grid = @mesh, split_axes = array<i64: 1>} : (tensor<i64>) -> tensor<3xf32>
    %c = moe.param_init %seed {name = "c", kind = #moe.param_init<ones>} : (tensor<i64>) -> tensor<2x2xf32>
    return %a, %b, %c : tensor<2x3x3xf32>, tensor<3xf32>, tensor<2x2xf32>
  })mlir";

class RankBlocksTest : public ::testing::Test {
protected:
  RankBlocksTest() {
    DialectRegistry registry;
    registerAllDialects(registry);
    context.appendDialectRegistry(registry);
    context.loadAllAvailableDialects();
    plan::ParallelConfig config;
    config.worldSize = 8;
    config.expertParallelDegree = 2;
    config.hybridShardDegree = 2;
    llvm::Expected<plan::Mesh> resolved = plan::resolveMesh(config, 4);
    EXPECT_TRUE(static_cast<bool>(resolved));
    mesh = *resolved;
  }

  /// The RankBlocks of `names` in `source`'s @init_params, or the error.
  llvm::Expected<RankBlocks> blocksOf(const char *source,
                                      std::vector<std::string> names) {
    module = parseSourceString<ModuleOp>(source, &context);
    EXPECT_TRUE(module);
    return RankBlocks::get(module->lookupSymbol<func::FuncOp>("init_params"),
                           names, mesh);
  }

  MLIRContext context;
  OwningOpRef<ModuleOp> module;
  plan::Mesh mesh;
};

/// A tensor of `shape` holding 1, 2, 3, ... row-major.
HostTensor counting(std::vector<int64_t> shape) {
  HostTensor t = HostTensor::floats(std::move(shape));
  for (size_t i = 0; i < t.f32.size(); ++i)
    t.f32[i] = static_cast<float>(i + 1);
  return t;
}

/// Every rank's block of parameter `i` of `global`.
std::vector<HostTensor> scatterAll(const RankBlocks &blocks, unsigned i,
                                   const HostTensor &global) {
  std::vector<HostTensor> perRank;
  for (int64_t rank = 0; rank < 8; ++rank)
    perRank.push_back(blocks.scatter(i, global, rank));
  return perRank;
}

std::vector<const HostTensor *> pointers(const std::vector<HostTensor> &v) {
  std::vector<const HostTensor *> out;
  for (const HostTensor &t : v)
    out.push_back(&t);
  return out;
}

TEST_F(RankBlocksTest, ScatterThenGatherIsTheIdentity) {
  llvm::Expected<RankBlocks> blocks = blocksOf(kInit, {"a", "b", "c"});
  ASSERT_TRUE(static_cast<bool>(blocks)) << llvm::toString(blocks.takeError());
  for (unsigned i = 0; i < 3; ++i) {
    HostTensor global = counting(blocks->globalShape(i));
    std::vector<HostTensor> perRank = scatterAll(*blocks, i, global);
    llvm::Expected<HostTensor> back =
        blocks->gather(i, pointers(perRank), "parameter");
    ASSERT_TRUE(static_cast<bool>(back)) << llvm::toString(back.takeError());
    EXPECT_EQ(back->shape, global.shape);
    EXPECT_EQ(back->f32, global.f32);
  }
  EXPECT_EQ(blocks->globalShape(0), (std::vector<int64_t>{4, 3, 5}));
  EXPECT_EQ(blocks->globalShape(2), (std::vector<int64_t>{2, 2}));
}

TEST_F(RankBlocksTest, ARankHoldsItsBlock) {
  llvm::Expected<RankBlocks> blocks = blocksOf(kInit, {"a", "b", "c"});
  ASSERT_TRUE(static_cast<bool>(blocks)) << llvm::toString(blocks.takeError());
  // World rank 7 = (q 1, h 1, p 1): experts 2 and 3, columns 3 and 4 of a,
  // then a padding column; elements 3 and 4 of b, then padding; all of c.
  HostTensor a = blocks->scatter(0, counting({4, 3, 5}), 7);
  ASSERT_EQ(a.shape, (std::vector<int64_t>{2, 3, 3}));
  for (int64_t e = 0; e < 2; ++e)
    for (int64_t row = 0; row < 3; ++row)
      for (int64_t col = 0; col < 3; ++col) {
        float want = col < 2 ? static_cast<float>((e + 2) * 15 + row * 5 +
                                                  col + 3 + 1)
                             : 0.0f;
        EXPECT_EQ(a.f32[(e * 3 + row) * 3 + col], want)
            << "expert " << e << " row " << row << " column " << col;
      }
  EXPECT_EQ(blocks->scatter(1, counting({5}), 7).f32,
            (std::vector<float>{4, 5, 0}));
  EXPECT_EQ(blocks->scatter(1, counting({5}), 1).f32,
            (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(blocks->scatter(2, counting({2, 2}), 7).f32,
            (std::vector<float>{1, 2, 3, 4}));
}

TEST_F(RankBlocksTest, AReplicaThatDiffersIsNamed) {
  llvm::Expected<RankBlocks> blocks = blocksOf(kInit, {"a", "b", "c"});
  ASSERT_TRUE(static_cast<bool>(blocks)) << llvm::toString(blocks.takeError());
  // Rank 5 = (q 1, h 0, p 1) holds b's elements 0..2 as rank 0 does.
  std::vector<HostTensor> perRank = scatterAll(*blocks, 1, counting({5}));
  perRank[5].f32[2] = 3.5f;
  llvm::Expected<HostTensor> gathered =
      blocks->gather(1, pointers(perRank), "step 2 gradient");
  ASSERT_FALSE(static_cast<bool>(gathered));
  EXPECT_EQ(llvm::toString(gathered.takeError()),
            "step 2 gradient 'b': rank 5 (replica 1, shard 0, expert 1) "
            "holds 3.5 at element [2] of its block where 3 belongs (the "
            "value of the ranks holding the same block; 0 in the padding): "
            "a partitioned step must keep replicas equal and padding 0");
}

TEST_F(RankBlocksTest, PaddingThatIsNotZeroIsNamed) {
  llvm::Expected<RankBlocks> blocks = blocksOf(kInit, {"a", "b", "c"});
  ASSERT_TRUE(static_cast<bool>(blocks)) << llvm::toString(blocks.takeError());
  std::vector<HostTensor> perRank =
      scatterAll(*blocks, 0, counting({4, 3, 5}));
  // Rank 2 = (q 0, h 1, p 0): column 2 of its block is padding.
  perRank[2].f32[(1 * 3 + 2) * 3 + 2] = 0.25f;
  llvm::Expected<HostTensor> gathered =
      blocks->gather(0, pointers(perRank), "final parameter");
  ASSERT_FALSE(static_cast<bool>(gathered));
  std::string message = llvm::toString(gathered.takeError());
  EXPECT_NE(message.find("final parameter 'a': rank 2 (replica 0, shard 1, "
                         "expert 0) holds 0.25 at element [1, 2, 2] of its "
                         "block where 0 belongs"),
            std::string::npos)
      << message;
}

TEST_F(RankBlocksTest, BlocksOfAnotherShapeAreRefused) {
  llvm::Expected<RankBlocks> blocks = blocksOf(kInit, {"a", "b", "c"});
  ASSERT_TRUE(static_cast<bool>(blocks)) << llvm::toString(blocks.takeError());
  std::vector<HostTensor> perRank = scatterAll(*blocks, 2, counting({2, 2}));
  perRank[3] = HostTensor::floats({4});
  llvm::Expected<HostTensor> gathered =
      blocks->gather(2, pointers(perRank), "parameter");
  ASSERT_FALSE(static_cast<bool>(gathered));
  EXPECT_EQ(llvm::toString(gathered.takeError()),
            "parameter 'c' of rank 3 has shape [4], not its block's [2, 2]");
}

TEST_F(RankBlocksTest, SplitsTheRanksDoNotHaveAreRefused) {
  const char *expertOnRows = R"mlir(
    shard.grid @mesh(shape = 2x2x2)
    func.func @init_params(%seed: tensor<i64>) -> tensor<4x1xf32> {
      %a = moe.param_init %seed {name = "a", kind = #moe.param_init<ones>, global_shape = array<i64: 4, 2>, grid = @mesh, split_axes = array<i64: -1, 2>} : (tensor<i64>) -> tensor<4x1xf32>
      return %a : tensor<4x1xf32>
    })mlir";
  llvm::Expected<RankBlocks> blocks = blocksOf(expertOnRows, {"a"});
  ASSERT_FALSE(static_cast<bool>(blocks));
  EXPECT_EQ(llvm::toString(blocks.takeError()),
            "parameter 'a': split_axes [-1, 2] split dimension 1 along grid "
            "axis 2, which the ranks' layout does not (the shard axis 1 "
            "splits one dimension, the expert axis 2 dimension 0)");

  const char *wrongExtent = R"mlir(
    shard.grid @mesh(shape = 2x2x2)
    func.func @init_params(%seed: tensor<i64>) -> tensor<2xf32> {
      %b = moe.param_init %seed {name = "b", kind = #moe.param_init<ones>, global_shape = array<i64: 5>, grid = @mesh, split_axes = array<i64: 1>} : (tensor<i64>) -> tensor<2xf32>
      return %b : tensor<2xf32>
    })mlir";
  blocks = blocksOf(wrongExtent, {"b"});
  ASSERT_FALSE(static_cast<bool>(blocks));
  std::string message = llvm::toString(blocks.takeError());
  EXPECT_NE(message.find("'b'"), std::string::npos) << message;

  blocks = blocksOf(kInit, {"a", "missing"});
  ASSERT_FALSE(static_cast<bool>(blocks));
  EXPECT_EQ(llvm::toString(blocks.takeError()),
            "parameter 'missing' is not created by a moe.param_init of "
            "@init_params, so its ranks' blocks cannot be placed");
}

} // namespace
