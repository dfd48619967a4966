//===- ExecutorTest.cpp - Unit tests of the reference executor ------------===//
//
// The executor on small functions parsed from text: delayed_param creates
// the same values for a shard as for the full parameter (sharding
// invariance), bf16 values are stored rounded, a moe.fusion equals its
// body's ops run one by one, and moe.attention's stats are its rows'
// log-sum-exp.
//
//===----------------------------------------------------------------------===//

#include "moec/InitAll.h"
#include "moec/Reference/Executor.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"

#include <gtest/gtest.h>

#include <cmath>

using namespace mlir;
using namespace moec;

namespace {

class ExecutorTest : public ::testing::Test {
protected:
  ExecutorTest() {
    DialectRegistry registry;
    registerAllDialects(registry);
    context.appendDialectRegistry(registry);
    context.loadAllAvailableDialects();
  }

  /// Runs function `name` of `source` on `args`.
  std::vector<HostTensor> run(const char *source, StringRef name,
                              const std::vector<HostTensor> &args) {
    module = parseSourceString<ModuleOp>(source, &context);
    EXPECT_TRUE(module);
    auto func = module->lookupSymbol<func::FuncOp>(name);
    std::vector<HostTensor> results;
    EXPECT_TRUE(succeeded(reference::execute(func, args, results)));
    return results;
  }

  MLIRContext context;
  OwningOpRef<ModuleOp> module;
};

HostTensor seed(int64_t value) {
  HostTensor t = HostTensor::ints({});
  t.i64[0] = value;
  return t;
}

TEST_F(ExecutorTest, ParameterShardsEqualSlicesOfTheFullParameter) {
  const char *source = R"mlir(
    func.func @init(%seed: tensor<i64>) -> (tensor<8x6xf32>, tensor<4x3xf32>, tensor<8x6xf32>) {
      %full = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.5 : f64} : (tensor<i64>) -> tensor<8x6xf32>
      %shard = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.5 : f64, global_shape = array<i64: 8, 6>, offsets = array<i64: 4, 3>} : (tensor<i64>) -> tensor<4x3xf32>
      %other = moe.param_init %seed {name = "v", kind = #moe.param_init<normal>, std = 0.5 : f64} : (tensor<i64>) -> tensor<8x6xf32>
      return %full, %shard, %other : tensor<8x6xf32>, tensor<4x3xf32>, tensor<8x6xf32>
    })mlir";
  std::vector<HostTensor> r = run(source, "init", {seed(1234)});
  ASSERT_EQ(r.size(), 3u);
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 3; ++j)
      EXPECT_EQ(r[1].f32[i * 3 + j], r[0].f32[(4 + i) * 6 + 3 + j]);
  // Another name, another stream; another seed, other values.
  EXPECT_NE(r[0].f32, r[2].f32);
  std::vector<HostTensor> again = run(source, "init", {seed(1235)});
  EXPECT_NE(r[0].f32, again[0].f32);
  // Roughly N(0, 0.5²).
  double sum = 0, squares = 0;
  for (float x : r[0].f32)
    sum += x, squares += x * x;
  EXPECT_LT(std::abs(sum / 48), 0.25);
  EXPECT_NEAR(std::sqrt(squares / 48), 0.5, 0.2);
}

TEST_F(ExecutorTest, Bf16ValuesAreStoredRounded) {
  const char *source = R"mlir(
    func.func @round(%x: tensor<2xf32>) -> tensor<2xf32> {
      %b = arith.truncf %x : tensor<2xf32> to tensor<2xbf16>
      %f = arith.extf %b : tensor<2xbf16> to tensor<2xf32>
      return %f : tensor<2xf32>
    })mlir";
  HostTensor x = HostTensor::floats({2});
  x.f32 = {1.0f + 1.0f / 256 + 1.0f / 1024, 3.14159265f};
  std::vector<HostTensor> r = run(source, "round", {x});
  // bf16 keeps 8 significant bits: 1 + 1/256 + 1/1024 rounds up to 1 + 2/256.
  EXPECT_EQ(r[0].f32[0], 1.0f + 2.0f / 256);
  EXPECT_EQ(r[0].f32[1], 3.140625f);
}

TEST_F(ExecutorTest, FusionEqualsItsOpsOneByOne) {
  // The same tree, outlined and not: a bf16 intermediate is rounded inside
  // the fusion as it is outside.
  const char *source = R"mlir(
    func.func @fused(%a: tensor<3xbf16>, %b: tensor<3xbf16>, %c: tensor<3xbf16>) -> tensor<3xbf16> {
      %0 = moe.fusion(%a, %b, %c) : (tensor<3xbf16>, tensor<3xbf16>, tensor<3xbf16>) -> tensor<3xbf16> {
      ^bb0(%x: tensor<3xbf16>, %y: tensor<3xbf16>, %z: tensor<3xbf16>):
        %half = arith.constant dense<0.5> : tensor<3xbf16>
        %1 = arith.addf %x, %y : tensor<3xbf16>
        %2 = arith.mulf %1, %half : tensor<3xbf16>
        %3 = arith.subf %2, %z : tensor<3xbf16>
        %4 = arith.negf %3 : tensor<3xbf16>
        moe.yield %4 : tensor<3xbf16>
      }
      return %0 : tensor<3xbf16>
    }
    func.func @unfused(%x: tensor<3xbf16>, %y: tensor<3xbf16>, %z: tensor<3xbf16>) -> tensor<3xbf16> {
      %half = arith.constant dense<0.5> : tensor<3xbf16>
      %1 = arith.addf %x, %y : tensor<3xbf16>
      %2 = arith.mulf %1, %half : tensor<3xbf16>
      %3 = arith.subf %2, %z : tensor<3xbf16>
      %4 = arith.negf %3 : tensor<3xbf16>
      return %4 : tensor<3xbf16>
    })mlir";
  HostTensor a = HostTensor::floats({3}), b = a, c = a;
  a.f32 = {1.0f, 256.0f, -3.0f};
  b.f32 = {1.0f / 128, 1.0f, 0.25f};
  c.f32 = {0.5f, 2.0f, 1.0f};
  std::vector<HostTensor> fused = run(source, "fused", {a, b, c});
  std::vector<HostTensor> unfused = run(source, "unfused", {a, b, c});
  ASSERT_EQ(fused.size(), 1u);
  EXPECT_EQ(fused[0].f32, unfused[0].f32);
  // 256 + 1 rounds to 256 in bf16 before the halving: -(128 - 2).
  EXPECT_EQ(fused[0].f32[1], -126.0f);
  // -((1 + 1/128) / 2 - 0.5) = -1/256.
  EXPECT_EQ(fused[0].f32[0], -1.0f / 256);
}

TEST_F(ExecutorTest, AttentionStatsAreTheRowsLogSumExp) {
  // One batch, one head, two positions, head dim 1, causal: row 0 sees key
  // 0 only, row 1 both keys.
  const char *source = R"mlir(
    func.func @lse(%q: tensor<1x2x1x1xf32>, %k: tensor<1x2x1x1xf32>, %v: tensor<1x2x1x1xf32>) -> (tensor<1x2x1x1xf32>, tensor<1x1x2xf32>) {
      %o, %lse = moe.attention %q, %k, %v {scale = 0.5 : f64} : (tensor<1x2x1x1xf32>, tensor<1x2x1x1xf32>, tensor<1x2x1x1xf32>) -> (tensor<1x2x1x1xf32>, tensor<1x1x2xf32>)
      return %o, %lse : tensor<1x2x1x1xf32>, tensor<1x1x2xf32>
    })mlir";
  HostTensor q = HostTensor::floats({1, 2, 1, 1}), k = q, v = q;
  q.f32 = {1.0f, 2.0f};
  k.f32 = {3.0f, -1.0f};
  v.f32 = {10.0f, 20.0f};
  std::vector<HostTensor> r = run(source, "lse", {q, k, v});
  ASSERT_EQ(r.size(), 2u);
  // Scores: row 0 {0.5·3}; row 1 {0.5·2·3, 0.5·2·(−1)} = {3, −1}.
  EXPECT_FLOAT_EQ(r[1].f32[0], 1.5f);
  EXPECT_FLOAT_EQ(r[1].f32[1],
                  static_cast<float>(std::log(std::exp(3.0) + std::exp(-1.0))));
  EXPECT_FLOAT_EQ(r[0].f32[0], 10.0f);
  double p0 = std::exp(3.0) / (std::exp(3.0) + std::exp(-1.0));
  EXPECT_FLOAT_EQ(r[0].f32[1], static_cast<float>(10.0 * p0 + 20.0 * (1 - p0)));
}

TEST_F(ExecutorTest, EveryRankRunsOnItsOwnArguments) {
  const char *source = R"mlir(
    func.func @double(%x: tensor<2xf32>) -> tensor<2xf32> {
      %y = arith.addf %x, %x : tensor<2xf32>
      return %y : tensor<2xf32>
    })mlir";
  module = parseSourceString<ModuleOp>(source, &context);
  ASSERT_TRUE(module);
  plan::ParallelConfig config;
  config.worldSize = 4;
  config.hybridShardDegree = 2;
  llvm::Expected<plan::Mesh> mesh = plan::resolveMesh(config, 1);
  ASSERT_TRUE(static_cast<bool>(mesh));
  std::vector<std::vector<HostTensor>> args(4), results;
  for (int64_t rank = 0; rank < 4; ++rank) {
    args[rank].push_back(HostTensor::floats({2}));
    args[rank][0].f32 = {static_cast<float>(rank), 0.5f};
  }
  auto func = module->lookupSymbol<func::FuncOp>("double");
  ASSERT_TRUE(succeeded(reference::executeOnRanks(func, *mesh, args, results)));
  ASSERT_EQ(results.size(), 4u);
  for (int64_t rank = 0; rank < 4; ++rank)
    EXPECT_EQ(results[rank][0].f32,
              (std::vector<float>{2.0f * rank, 1.0f}));
}

} // namespace
