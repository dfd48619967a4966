//===- ExecutorTest.cpp - Unit tests of the reference executor ------------===//
//
// The executor on small functions parsed from text: delayed_param creates
// the same values for a shard as for the full parameter (sharding
// invariance), bf16 values are stored rounded, a moe.fusion equals its
// body's ops run one by one, moe.add_rms_norm equals its add and norm,
// moe.attention's stats are its rows' log-sum-exp, results are found by
// their tags and names, an offloaded value comes back unchanged,
// moe.adamw's skip_nonfinite leaves the state as it was on a non-finite
// norm, and checkNumerics stops at the first op with an inf or NaN result.
//
//===----------------------------------------------------------------------===//

#include "moec/InitAll.h"
#include "moec/Reference/Executor.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <mutex>

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

TEST_F(ExecutorTest, AddRmsNormEqualsItsAddAndNorm) {
  // bf16: the norm reads the sum as the unfused add stores it, rounded.
  const char *source = R"mlir(
    func.func @fused(%a: tensor<2x2xbf16>, %b: tensor<2x2xbf16>, %w: tensor<2xbf16>) -> (tensor<2x2xbf16>, tensor<2x2xbf16>) {
      %s, %y = moe.add_rms_norm %a, %b, %w {epsilon = 1.0e-05 : f64} : (tensor<2x2xbf16>, tensor<2x2xbf16>, tensor<2xbf16>) -> (tensor<2x2xbf16>, tensor<2x2xbf16>)
      return %s, %y : tensor<2x2xbf16>, tensor<2x2xbf16>
    }
    func.func @unfused(%a: tensor<2x2xbf16>, %b: tensor<2x2xbf16>, %w: tensor<2xbf16>) -> (tensor<2x2xbf16>, tensor<2x2xbf16>) {
      %s = arith.addf %a, %b : tensor<2x2xbf16>
      %y = moe.rms_norm %s, %w {epsilon = 1.0e-05 : f64} : (tensor<2x2xbf16>, tensor<2xbf16>) -> tensor<2x2xbf16>
      return %s, %y : tensor<2x2xbf16>, tensor<2x2xbf16>
    })mlir";
  HostTensor a = HostTensor::floats({2, 2}), b = a, w = HostTensor::floats({2});
  a.f32 = {256.0f, 3.0f, -1.0f, 0.5f};
  b.f32 = {1.0f, 4.0f, 2.0f, 0.25f};
  w.f32 = {1.0f, 2.0f};
  std::vector<HostTensor> fused = run(source, "fused", {a, b, w});
  std::vector<HostTensor> unfused = run(source, "unfused", {a, b, w});
  ASSERT_EQ(fused.size(), 2u);
  EXPECT_EQ(fused[0].f32, unfused[0].f32);
  EXPECT_EQ(fused[1].f32, unfused[1].f32);
  // 256 + 1 rounds to 256 in bf16; the row [256, 7] has rms sqrt(32792.5).
  EXPECT_EQ(fused[0].f32[0], 256.0f);
  EXPECT_NEAR(fused[1].f32[0], 256.0 / std::sqrt(32792.5), 1e-2);
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

/// A (R, H, P) mesh of `w` ranks with `p` expert ranks and shard degree `h`.
plan::Mesh meshOf(int64_t w, int64_t p, int64_t h) {
  plan::ParallelConfig config;
  config.worldSize = w;
  config.expertParallelDegree = p;
  config.hybridShardDegree = h;
  llvm::Expected<plan::Mesh> mesh = plan::resolveMesh(config, 4);
  EXPECT_TRUE(static_cast<bool>(mesh));
  return *mesh;
}

TEST_F(ExecutorTest, ShardCollectivesRunOnTheMeshGroups) {
  // W = 8 as (R, H, P) = (2, 2, 2). Rank r holds [[r, r + 0.5]] (1x2).
  const char *source = R"mlir(
    shard.grid @mesh(shape = 2x2x2)
    func.func @step(%x: tensor<1x2xf32>) -> (tensor<2x2xf32>, tensor<1x4xf32>, tensor<1x1xf32>, tensor<1x2xf32>, tensor<1x2xf32>) {
      %g = shard.all_gather %x on @mesh grid_axes = [1] gather_axis = 0 : tensor<1x2xf32> -> tensor<2x2xf32>
      %g1 = shard.all_gather %x on @mesh grid_axes = [2] gather_axis = 1 : tensor<1x2xf32> -> tensor<1x4xf32>
      %s = shard.reduce_scatter %x on @mesh grid_axes = [0] reduction = sum scatter_axis = 1 : tensor<1x2xf32> -> tensor<1x1xf32>
      %d = shard.all_reduce %x on @mesh grid_axes = [0, 2] : tensor<1x2xf32> -> tensor<1x2xf32>
      %w = shard.all_reduce %x on @mesh grid_axes = [0, 1, 2] : tensor<1x2xf32> -> tensor<1x2xf32>
      return %g, %g1, %s, %d, %w : tensor<2x2xf32>, tensor<1x4xf32>, tensor<1x1xf32>, tensor<1x2xf32>, tensor<1x2xf32>
    })mlir";
  module = parseSourceString<ModuleOp>(source, &context);
  ASSERT_TRUE(module);
  plan::Mesh mesh = meshOf(8, 2, 2);
  std::vector<std::vector<HostTensor>> args(8), results;
  for (int64_t rank = 0; rank < 8; ++rank) {
    args[rank].push_back(HostTensor::floats({1, 2}));
    args[rank][0].f32 = {static_cast<float>(rank), rank + 0.5f};
  }
  auto func = module->lookupSymbol<func::FuncOp>("step");
  ASSERT_TRUE(succeeded(reference::executeOnRanks(func, mesh, args, results)));
  for (int64_t rank = 0; rank < 8; ++rank) {
    // Rank r = 4q + 2h + p.
    int64_t q = rank / 4, p = rank % 2;
    float h0 = 4 * q + p, h1 = h0 + 2;
    EXPECT_EQ(results[rank][0].f32,
              (std::vector<float>{h0, h0 + 0.5f, h1, h1 + 0.5f}));
    float p0 = rank - p, p1 = p0 + 1;
    EXPECT_EQ(results[rank][1].f32,
              (std::vector<float>{p0, p0 + 0.5f, p1, p1 + 0.5f}));
    // Replicas r mod 4 and r mod 4 + 4; replica q keeps column q.
    float r0 = rank % 4, r1 = r0 + 4;
    EXPECT_EQ(results[rank][2].f32,
              (std::vector<float>{q == 0 ? r0 + r1 : r0 + r1 + 1.0f}));
    // Dense replicas: same h, every (q, p).
    int64_t h = (rank / 2) % 2;
    float dense = 0;
    for (int64_t qq = 0; qq < 2; ++qq)
      for (int64_t pp = 0; pp < 2; ++pp)
        dense += 4 * qq + 2 * h + pp;
    EXPECT_EQ(results[rank][3].f32, (std::vector<float>{dense, dense + 2}));
    EXPECT_EQ(results[rank][4].f32, (std::vector<float>{28.0f, 32.0f}));
  }
}

TEST_F(ExecutorTest, CollectivesNeedSimulatedRanks) {
  const char *source = R"mlir(
    shard.grid @mesh(shape = 1x2x1)
    func.func @gather(%x: tensor<1xf32>) -> tensor<2xf32> {
      %g = shard.all_gather %x on @mesh grid_axes = [1] gather_axis = 0 : tensor<1xf32> -> tensor<2xf32>
      return %g : tensor<2xf32>
    })mlir";
  module = parseSourceString<ModuleOp>(source, &context);
  ASSERT_TRUE(module);
  std::string message;
  ScopedDiagnosticHandler handler(&context, [&](Diagnostic &diag) {
    message = diag.str();
    return success();
  });
  std::vector<HostTensor> results;
  EXPECT_TRUE(failed(reference::execute(
      module->lookupSymbol<func::FuncOp>("gather"),
      {HostTensor::floats({1})}, results)));
  EXPECT_EQ(message, "'shard.all_gather' op needs a rank: run the partitioned "
                     "function on simulated ranks");
}

TEST_F(ExecutorTest, AFailingRankFailsTheRunWithoutHanging) {
  // Rank 1 reads an embedding row out of range before the all-reduce that
  // rank 0 waits in.
  const char *source = R"mlir(
    shard.grid @mesh(shape = 1x2x1)
    func.func @step(%table: tensor<2x1xf32>, %ids: tensor<1x1xi64>) -> tensor<1x1x1xf32> {
      %e = moe.embedding %table[%ids] : (tensor<2x1xf32>, tensor<1x1xi64>) -> tensor<1x1x1xf32>
      %s = shard.all_reduce %e on @mesh grid_axes = [1] : tensor<1x1x1xf32> -> tensor<1x1x1xf32>
      return %s : tensor<1x1x1xf32>
    })mlir";
  module = parseSourceString<ModuleOp>(source, &context);
  ASSERT_TRUE(module);
  std::vector<std::string> messages;
  std::mutex mutex;
  ScopedDiagnosticHandler handler(&context, [&](Diagnostic &diag) {
    std::lock_guard<std::mutex> lock(mutex);
    messages.push_back(diag.str());
    return success();
  });
  std::vector<std::vector<HostTensor>> args(2), results;
  for (int64_t rank = 0; rank < 2; ++rank) {
    args[rank].push_back(HostTensor::floats({2, 1}));
    args[rank].push_back(HostTensor::ints({1, 1}));
    args[rank][1].i64[0] = rank == 1 ? 7 : 0;
  }
  EXPECT_TRUE(failed(reference::executeOnRanks(
      module->lookupSymbol<func::FuncOp>("step"), meshOf(2, 1, 2), args,
      results)));
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_TRUE(llvm::is_contained(
      messages, "'shard.all_reduce' op on rank 0: all_reduce: rank 1 failed, "
                "so the collective was abandoned"));
}

TEST_F(ExecutorTest, SlicesAndBroadcasts) {
  const char *source = R"mlir(
    func.func @f(%x: tensor<3x2xf32>, %s: tensor<f32>) -> (tensor<4x2xf32>, tensor<2x2xf32>, tensor<2x3xf32>, tensor<1xf32>) {
      %z = arith.constant dense<0.0> : tensor<4x2xf32>
      %p = tensor.insert_slice %x into %z[0, 0] [3, 2] [1, 1] : tensor<3x2xf32> into tensor<4x2xf32>
      %e = tensor.extract_slice %x[1, 0] [2, 2] [1, 1] : tensor<3x2xf32> to tensor<2x2xf32>
      %i = tensor.empty() : tensor<2x3xf32>
      %b = linalg.broadcast ins(%s : tensor<f32>) outs(%i : tensor<2x3xf32>) dimensions = [0, 1]
      %one = tensor.expand_shape %s [] output_shape [1] : tensor<f32> into tensor<1xf32>
      return %p, %e, %b, %one : tensor<4x2xf32>, tensor<2x2xf32>, tensor<2x3xf32>, tensor<1xf32>
    })mlir";
  HostTensor x = HostTensor::floats({3, 2}), s = HostTensor::floats({});
  x.f32 = {1, 2, 3, 4, 5, 6};
  s.f32 = {7};
  std::vector<HostTensor> r = run(source, "f", {x, s});
  ASSERT_EQ(r.size(), 4u);
  EXPECT_EQ(r[0].f32, (std::vector<float>{1, 2, 3, 4, 5, 6, 0, 0}));
  EXPECT_EQ(r[1].f32, (std::vector<float>{3, 4, 5, 6}));
  EXPECT_EQ(r[2].f32, std::vector<float>(6, 7.0f));
  EXPECT_EQ(r[3].shape, (std::vector<int64_t>{1}));
  EXPECT_EQ(r[3].f32, (std::vector<float>{7}));
}

TEST_F(ExecutorTest, RouterGroupsRouteEachRunOfTokensAlone) {
  // Balanced routing of 2 groups of 4 tokens equals routing each group as
  // its own batch, and differs from routing all 8 tokens together.
  const char *source = R"mlir(
    func.func @grouped(%l: tensor<2x4x4xf32>) -> tensor<2x4x1xi64> {
      %g, %e = moe.router %l {k = 1 : i64, load_balancing = #moe.load_balancing<balanced>, tokens_per_group = 4 : i64} : (tensor<2x4x4xf32>) -> (tensor<2x4x1xf32>, tensor<2x4x1xi64>)
      return %e : tensor<2x4x1xi64>
    }
    func.func @whole(%l: tensor<2x4x4xf32>) -> tensor<2x4x1xi64> {
      %g, %e = moe.router %l {k = 1 : i64, load_balancing = #moe.load_balancing<balanced>} : (tensor<2x4x4xf32>) -> (tensor<2x4x1xf32>, tensor<2x4x1xi64>)
      return %e : tensor<2x4x1xi64>
    }
    func.func @one(%l: tensor<1x4x4xf32>) -> tensor<1x4x1xi64> {
      %g, %e = moe.router %l {k = 1 : i64, load_balancing = #moe.load_balancing<balanced>} : (tensor<1x4x4xf32>) -> (tensor<1x4x1xf32>, tensor<1x4x1xi64>)
      return %e : tensor<1x4x1xi64>
    })mlir";
  // Every token prefers expert 0 in the first group and expert 3 in the
  // second, by decreasing margins.
  HostTensor logits = HostTensor::floats({2, 4, 4});
  for (int64_t t = 0; t < 8; ++t)
    logits.f32[t * 4 + (t < 4 ? 0 : 3)] = 4.0f - (t % 4);
  std::vector<HostTensor> grouped = run(source, "grouped", {logits});
  std::vector<HostTensor> whole = run(source, "whole", {logits});
  for (int64_t half = 0; half < 2; ++half) {
    HostTensor part = HostTensor::floats({1, 4, 4});
    std::copy_n(logits.f32.begin() + half * 16, 16, part.f32.begin());
    std::vector<HostTensor> alone = run(source, "one", {part});
    EXPECT_EQ(std::vector<int64_t>(grouped[0].i64.begin() + half * 4,
                                   grouped[0].i64.begin() + half * 4 + 4),
              alone[0].i64);
  }
  EXPECT_NE(grouped[0].i64, whole[0].i64);
}

TEST_F(ExecutorTest, CollectivesNameGroupsOfTheRanksMesh) {
  // [1, 2] is no process group of the mesh; a grid of another shape is not
  // the mesh the ranks run on.
  const char *source = R"mlir(
    shard.grid @mesh(shape = 1x2x2)
    shard.grid @other(shape = 4x1x1)
    func.func @axes(%x: tensor<1xf32>) -> tensor<1xf32> {
      %s = shard.all_reduce %x on @mesh grid_axes = [1, 2] : tensor<1xf32> -> tensor<1xf32>
      return %s : tensor<1xf32>
    }
    func.func @grid(%x: tensor<1xf32>) -> tensor<1xf32> {
      %s = shard.all_reduce %x on @other grid_axes = [0] : tensor<1xf32> -> tensor<1xf32>
      return %s : tensor<1xf32>
    })mlir";
  module = parseSourceString<ModuleOp>(source, &context);
  ASSERT_TRUE(module);
  std::vector<std::string> messages;
  std::mutex mutex;
  ScopedDiagnosticHandler handler(&context, [&](Diagnostic &diag) {
    std::lock_guard<std::mutex> lock(mutex);
    messages.push_back(diag.str());
    return success();
  });
  std::vector<std::vector<HostTensor>> args(4, {HostTensor::floats({1})}),
      results;
  for (const char *name : {"axes", "grid"}) {
    messages.clear();
    EXPECT_TRUE(failed(reference::executeOnRanks(
        module->lookupSymbol<func::FuncOp>(name), meshOf(4, 2, 2), args,
        results)));
    ASSERT_FALSE(messages.empty());
    EXPECT_EQ(messages.front(),
              name == std::string("axes")
                  ? "'shard.all_reduce' op grid_axes [1, 2] name no process "
                    "group of the mesh; the groups are [0] (replica), [1] "
                    "(shard), [2] (expert), [0, 2] (dense replica) and [0, 1, "
                    "2] (world)"
                  : "'shard.all_reduce' op grid @other is not the (R, H, P) = "
                    "(1, 2, 2) mesh the ranks run on");
  }
}

TEST_F(ExecutorTest, ParameterBlocksFollowTheRanksCoordinates) {
  // split_axes [2, 1] on (R, H, P) = (1, 2, 2): rank r holds rows
  // 2p .. 2p + 1 and columns 2h .. 2h + 1 of the 4 x 3 parameter; columns
  // past 3 are padding.
  const char *source = R"mlir(
    shard.grid @mesh(shape = 1x2x2)
    func.func @full(%seed: tensor<i64>) -> tensor<4x3xf32> {
      %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 1.0 : f64} : (tensor<i64>) -> tensor<4x3xf32>
      return %w : tensor<4x3xf32>
    }
    func.func @block(%seed: tensor<i64>) -> tensor<2x2xf32> {
      %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 1.0 : f64, global_shape = array<i64: 4, 3>, grid = @mesh, split_axes = array<i64: 2, 1>} : (tensor<i64>) -> tensor<2x2xf32>
      return %w : tensor<2x2xf32>
    }
    func.func @beyond(%seed: tensor<i64>) -> tensor<2x3xf32> {
      %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 1.0 : f64, global_shape = array<i64: 4, 3>, grid = @mesh, split_axes = array<i64: 3, -1>} : (tensor<i64>) -> tensor<2x3xf32>
      return %w : tensor<2x3xf32>
    })mlir";
  std::vector<HostTensor> full = run(source, "full", {seed(3)});
  std::vector<std::vector<HostTensor>> blocks;
  ASSERT_TRUE(succeeded(reference::executeOnRanks(
      module->lookupSymbol<func::FuncOp>("block"), meshOf(4, 2, 2),
      std::vector<std::vector<HostTensor>>(4, {seed(3)}), blocks)));
  for (int64_t rank = 0; rank < 4; ++rank) {
    int64_t p = rank % 2, h = rank / 2;
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        int64_t row = 2 * p + i, column = 2 * h + j;
        EXPECT_EQ(blocks[rank][0].f32[i * 2 + j],
                  column < 3 ? full[0].f32[row * 3 + column] : 0.0f)
            << "rank " << rank << " element " << i << ", " << j;
      }
  }
  std::string message;
  ScopedDiagnosticHandler handler(&context, [&](Diagnostic &diag) {
    message = diag.str();
    return success();
  });
  EXPECT_TRUE(failed(reference::executeOnRanks(
      module->lookupSymbol<func::FuncOp>("beyond"), meshOf(4, 2, 2),
      std::vector<std::vector<HostTensor>>(4, {seed(3)}), blocks)));
  EXPECT_EQ(message, "'moe.param_init' op split axis 3 is not an axis of the "
                     "(R, H, P) mesh");
}

} // namespace

TEST_F(ExecutorTest, ResultsAreFoundByTagAndName) {
  module = parseSourceString<ModuleOp>(R"(
    func.func @step(%w: tensor<2xf32>, %l: tensor<f32>)
        -> (tensor<f32> {moe.output = "loss"},
            tensor<2xf32> {moe.parameter = "w"}, tensor<2xf32>) {
      return %l, %w, %w : tensor<f32>, tensor<2xf32>, tensor<2xf32>
    })",
                                       &context);
  ASSERT_TRUE(module);
  reference::ResultIndex index(module->lookupSymbol<func::FuncOp>("step"));
  llvm::Expected<unsigned> loss = index.lookup("moe.output", "loss");
  ASSERT_TRUE(bool(loss));
  EXPECT_EQ(*loss, 0u);
  llvm::Expected<unsigned> w = index.lookup("moe.parameter", "w");
  ASSERT_TRUE(bool(w));
  EXPECT_EQ(*w, 1u);
  llvm::Expected<unsigned> missing = index.lookup("moe.output", "w");
  ASSERT_FALSE(bool(missing));
  EXPECT_EQ(llvm::toString(missing.takeError()),
            "@step has no result tagged moe.output = \"w\"");
}

TEST_F(ExecutorTest, AnOffloadedValueComesBackUnchangedAndIsGoneMeanwhile) {
  const char *source = R"mlir(
    func.func @step(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>, tensor<2x3xf32>) {
      %y = arith.negf %x : tensor<2x3xf32>
      %h = moe.offload %y layer 0 : tensor<2x3xf32> -> tensor<2x3xf32, #moe.host>
      %z = moe.fetch %h layer 0 : tensor<2x3xf32, #moe.host> -> tensor<2x3xf32>
      %w = arith.addf %z, %z : tensor<2x3xf32>
      return %z, %w : tensor<2x3xf32>, tensor<2x3xf32>
    }
    func.func @stale(%x: tensor<2x3xf32>) -> tensor<2x3xf32> {
      %y = arith.negf %x : tensor<2x3xf32>
      %h = moe.offload %y layer 0 : tensor<2x3xf32> -> tensor<2x3xf32, #moe.host>
      %z = moe.fetch %h layer 0 : tensor<2x3xf32, #moe.host> -> tensor<2x3xf32>
      %w = arith.addf %y, %z : tensor<2x3xf32>
      return %w : tensor<2x3xf32>
    })mlir";
  HostTensor x = HostTensor::floats({2, 3});
  for (int64_t i = 0; i < 6; ++i)
    x.f32[i] = 0.5f * static_cast<float>(i) - 1.0f;
  std::vector<HostTensor> r = run(source, "step", {x});
  ASSERT_EQ(r.size(), 2u);
  for (int64_t i = 0; i < 6; ++i) {
    EXPECT_EQ(r[0].f32[i], -x.f32[i]);
    EXPECT_EQ(r[1].f32[i], -2.0f * x.f32[i]);
  }
  // A read of the device value after its offload is a misplaced offload.
  std::string message;
  ScopedDiagnosticHandler handler(&context, [&](Diagnostic &diag) {
    message = diag.str();
    return success();
  });
  std::vector<HostTensor> results;
  EXPECT_TRUE(failed(reference::execute(
      module->lookupSymbol<func::FuncOp>("stale"), {x}, results)));
  EXPECT_EQ(message, "'arith.addf' op reads a value that moe.offload already "
                     "moved to host memory");
}

TEST_F(ExecutorTest, AdamWSkipNonfiniteIsTheIdentityOnANonfiniteNorm) {
  // The same update with and without skip_nonfinite: on a finite norm both
  // are AdamW's; on an inf or NaN norm the skipping one returns its state.
  const char *source = R"mlir(
    func.func @update(%p: tensor<3xf32>, %g: tensor<3xf32>, %m: tensor<3xf32>, %v: tensor<3xf32>, %step: tensor<i64>, %lr: tensor<f32>, %norm: tensor<f32>) -> (tensor<3xf32>, tensor<3xf32>, tensor<3xf32>, tensor<3xf32>) {
      %p1, %m1, %v1 = moe.adamw %p, %g, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64, skip_nonfinite} : tensor<3xf32>, tensor<i64>, tensor<f32>
      %p2, %m2, %v2 = moe.adamw %p, %g, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<3xf32>, tensor<i64>, tensor<f32>
      return %p1, %m1, %v1, %p2 : tensor<3xf32>, tensor<3xf32>, tensor<3xf32>, tensor<3xf32>
    })mlir";
  HostTensor p = HostTensor::floats({3}), g = HostTensor::floats({3}),
             m = HostTensor::floats({3}), v = HostTensor::floats({3});
  p.f32 = {0.5f, -1.0f, 2.0f};
  g.f32 = {0.1f, 0.2f, -0.3f};
  m.f32 = {0.01f, 0.02f, 0.03f};
  v.f32 = {0.001f, 0.002f, 0.003f};
  HostTensor lr = HostTensor::floats({});
  lr.f32[0] = 1e-2f;
  for (float norm : {0.5f, std::numeric_limits<float>::infinity(),
                     std::numeric_limits<float>::quiet_NaN()}) {
    HostTensor n = HostTensor::floats({});
    n.f32[0] = norm;
    std::vector<HostTensor> r = run(source, "update", {p, g, m, v, seed(3), lr, n});
    ASSERT_EQ(r.size(), 4u);
    if (std::isfinite(norm)) {
      EXPECT_EQ(r[0].f32, r[3].f32);
      EXPECT_NE(r[0].f32, p.f32);
      EXPECT_NE(r[1].f32, m.f32);
      EXPECT_NE(r[2].f32, v.f32);
      continue;
    }
    EXPECT_EQ(r[0].f32, p.f32) << "norm " << norm;
    EXPECT_EQ(r[1].f32, m.f32) << "norm " << norm;
    EXPECT_EQ(r[2].f32, v.f32) << "norm " << norm;
    // Without the attribute the step updates (decay, moments) regardless.
    EXPECT_NE(r[3].f32, p.f32) << "norm " << norm;
  }
}

TEST_F(ExecutorTest, CheckNumericsStopsAtTheFirstNonfiniteResult) {
  // 1/x is inf where x is 0; the sum after it is never reached.
  const char *source = R"mlir(
    func.func @f(%x: tensor<2x2xf32>) -> tensor<2x2xf32> {
      %one = arith.constant dense<1.0> : tensor<2x2xf32>
      %r = arith.divf %one, %x : tensor<2x2xf32>
      %s = arith.addf %r, %x : tensor<2x2xf32>
      return %s : tensor<2x2xf32>
    })mlir";
  module = parseSourceString<ModuleOp>(source, &context);
  ASSERT_TRUE(module);
  std::vector<std::string> messages;
  ScopedDiagnosticHandler handler(&context, [&](Diagnostic &diag) {
    messages.push_back(diag.str());
    return success();
  });
  auto f = module->lookupSymbol<func::FuncOp>("f");
  HostTensor x = HostTensor::floats({2, 2});
  x.f32 = {1.0f, 0.0f, 2.0f, 0.0f};
  std::vector<HostTensor> results;
  // Without the check the run completes, infs and all.
  ASSERT_TRUE(succeeded(reference::execute(f, {x}, results)));
  EXPECT_TRUE(std::isinf(results[0].f32[1]));
  reference::ExecuteOptions options;
  options.checkNumerics = true;
  EXPECT_TRUE(failed(reference::execute(f, {x}, results, options)));
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0],
            "'arith.divf' op result 0 ('tensor<2x2xf32>') has 2 non-finite of 4 "
            "elements (the first, inf, at element 1): the first non-finite "
            "value of the run");
  // A finite run passes the check.
  x.f32 = {1.0f, 4.0f, 2.0f, 8.0f};
  EXPECT_TRUE(succeeded(reference::execute(f, {x}, results, options)));
}
