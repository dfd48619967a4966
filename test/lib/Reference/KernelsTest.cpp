//===- KernelsTest.cpp - Unit tests of the reference kernels --------------===//
//
// Each kernel on inputs small enough to work out by hand; the expected
// values are written as the arithmetic that produces them.
//
//===----------------------------------------------------------------------===//

#include "moec/Reference/Kernels.h"
#include "moec/Support/Routing.h"

#include "TestTensors.h"

#include <gtest/gtest.h>

#include <cmath>

using namespace moec;
using namespace moec::reference;

namespace {

using moec::testing::floats;
using moec::testing::ints;

TEST(Kernels, EmbeddingGathersRowsAndRejectsOutOfRange) {
  HostTensor table = floats({3, 2}, {0, 1, 10, 11, 20, 21});
  HostTensor out;
  std::string error;
  ASSERT_TRUE(embedding(table, ints({1, 2}, {2, 0}), out, error)) << error;
  EXPECT_EQ(out.shape, (std::vector<int64_t>{1, 2, 2}));
  EXPECT_EQ(out.f32, (std::vector<float>{20, 21, 0, 1}));
  EXPECT_FALSE(embedding(table, ints({1}, {3}), out, error));
  EXPECT_EQ(error, "index 3 at position 0 is outside the table's 3 rows");
}

TEST(Kernels, RmsNormDividesByRootMeanSquare) {
  // Row [3, 4]: mean of squares 12.5, so x / sqrt(12.5 + eps) * w.
  HostTensor out;
  std::string error;
  ASSERT_TRUE(rmsNorm(floats({1, 2}, {3, 4}), floats({2}, {1, 2}), 0.5, out,
                      error));
  EXPECT_FLOAT_EQ(out.f32[0], 3 / std::sqrt(13.0));
  EXPECT_FLOAT_EQ(out.f32[1], 4 / std::sqrt(13.0) * 2);
  EXPECT_FALSE(rmsNorm(floats({1, 2}, {3, 4}), floats({3}, {1, 1, 1}), 0.5,
                       out, error));
  EXPECT_EQ(error, "weight has 3 elements but the input's last dimension is 2");
}

TEST(Kernels, RotaryRotatesHalvesByPositionTimesFrequency) {
  // head_dim 4: frequencies 1 and theta^(-1/2) = 0.1 for theta = 100.
  HostTensor x = floats({1, 2, 1, 4}, {1, 2, 3, 4, 1, 2, 3, 4});
  HostTensor out;
  std::string error;
  ASSERT_TRUE(rotary(x, nullptr, 100.0, out, error)) << error;
  // Position 0: unchanged.
  for (int i = 0; i < 4; ++i)
    EXPECT_FLOAT_EQ(out.f32[i], x.f32[i]);
  // Position 1: pairs (x0, x2) by angle 1, (x1, x3) by angle 0.1.
  EXPECT_NEAR(out.f32[4], 1 * std::cos(1.0) - 3 * std::sin(1.0), 1e-6);
  EXPECT_NEAR(out.f32[6], 3 * std::cos(1.0) + 1 * std::sin(1.0), 1e-6);
  EXPECT_NEAR(out.f32[5], 2 * std::cos(0.1) - 4 * std::sin(0.1), 1e-6);
  EXPECT_NEAR(out.f32[7], 4 * std::cos(0.1) + 2 * std::sin(0.1), 1e-6);
  // Explicit positions shift the angles.
  HostTensor positions = ints({1, 2}, {1, 1});
  ASSERT_TRUE(rotary(x, &positions, 100.0, out, error)) << error;
  EXPECT_NEAR(out.f32[0], 1 * std::cos(1.0) - 3 * std::sin(1.0), 1e-6);
}

TEST(Kernels, CausalAttentionAveragesVisibleValues) {
  // Zero queries: uniform weights over the visible keys.
  HostTensor q = floats({1, 3, 2, 1}, {0, 0, 0, 0, 0, 0});
  HostTensor k = floats({1, 3, 1, 1}, {5, 6, 7});
  HostTensor v = floats({1, 3, 1, 1}, {1, 2, 6});
  HostTensor out;
  std::string error;
  ASSERT_TRUE(attention(q, k, v, true, 1.0, std::nullopt, out, error))
      << error;
  // Both query heads share the one key/value head (grouped-query).
  EXPECT_EQ(out.f32, (std::vector<float>{1, 1, 1.5, 1.5, 3, 3}));
  // A window of 2 keeps only the last two positions.
  ASSERT_TRUE(attention(q, k, v, true, 1.0, 2, out, error)) << error;
  EXPECT_FLOAT_EQ(out.f32[4], 4);
}

TEST(Kernels, AttentionWeighsBySoftmaxOfScaledScores) {
  HostTensor q = floats({1, 2, 1, 1}, {0, 1});
  HostTensor k = floats({1, 2, 1, 1}, {0, 2});
  HostTensor v = floats({1, 2, 1, 1}, {10, 20});
  HostTensor out;
  std::string error;
  ASSERT_TRUE(attention(q, k, v, true, 0.5, std::nullopt, out, error));
  // Query 1 sees scores 0 and 0.5 * 1 * 2 = 1.
  double w = std::exp(1.0) / (1.0 + std::exp(1.0));
  EXPECT_NEAR(out.f32[1], 10 * (1 - w) + 20 * w, 1e-5);
}

TEST(Kernels, LinearMultipliesByTransposedWeight) {
  HostTensor x = floats({2, 2}, {1, 2, 3, 4});
  HostTensor w = floats({3, 2}, {1, 0, 0, 1, 1, 1});
  HostTensor b = floats({3}, {0, 0, 10});
  HostTensor out;
  std::string error;
  ASSERT_TRUE(linear(x, w, &b, out, error)) << error;
  EXPECT_EQ(out.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(out.f32, (std::vector<float>{1, 2, 13, 3, 4, 17}));
}

TEST(Kernels, RouterPicksTopKAndRenormalises) {
  HostTensor logits = floats({1, 3}, {0, std::log(3.0f), std::log(2.0f)});
  HostTensor gates, experts;
  std::string error;
  ASSERT_TRUE(routeTopK(logits, 2, true, gates, experts, error)) << error;
  EXPECT_EQ(experts.i64, (std::vector<int64_t>{1, 2}));
  EXPECT_NEAR(gates.f32[0], 0.6, 1e-6);
  EXPECT_NEAR(gates.f32[1], 0.4, 1e-6);
  ASSERT_TRUE(routeTopK(logits, 2, false, gates, experts, error));
  EXPECT_NEAR(gates.f32[0], 0.5, 1e-6);
  EXPECT_FALSE(routeTopK(logits, 4, true, gates, experts, error));
}

TEST(Kernels, ExpertsApplySwiGluWeightedByGates) {
  // hidden 1, intermediate 1, two experts: expert e has gate g_e, up u_e,
  // down d_e, so y_e = d_e * silu(g_e x) * (u_e x).
  auto silu = [](double z) { return z / (1 + std::exp(-z)); };
  HostTensor x = floats({1, 1}, {2});
  HostTensor gateUp = floats({2, 2, 1}, {1, 3, -1, 5}); // [gate, up] rows
  HostTensor down = floats({2, 1, 1}, {7, 11});
  HostTensor gates = floats({1, 2}, {0.25, 0.75});
  HostTensor chosen = ints({1, 2}, {0, 1});
  HostTensor out;
  std::string error;
  ASSERT_TRUE(experts(x, gates, chosen, gateUp, down, false, out, error))
      << error;
  double y0 = 7 * silu(2) * 6, y1 = 11 * silu(-2) * 10;
  EXPECT_NEAR(out.f32[0], 0.25 * y0 + 0.75 * y1, 1e-4);
  // With one intermediate row the two layouts agree.
  HostTensor same;
  ASSERT_TRUE(experts(x, gates, chosen, gateUp, down, true, same, error));
  EXPECT_EQ(out.f32, same.f32);
  HostTensor bad = ints({1, 2}, {0, 2});
  EXPECT_FALSE(experts(x, gates, bad, gateUp, down, false, out, error));
  EXPECT_EQ(error, "token 0 chooses expert 2 of only 2");
}

TEST(Kernels, ExpertsSaveProjectionsInStableExpertOrder) {
  // Two tokens, top-2 of two experts, hidden 1, intermediate 1: the pairs
  // (t0: e1, e0), (t1: e1, e0) sorted stably by expert are t0/e0, t1/e0,
  // t0/e1, t1/e1; each row is [gate, up] = [g_e x_t, u_e x_t].
  HostTensor x = floats({2, 1}, {2, 3});
  HostTensor gateUp = floats({2, 2, 1}, {1, 3, -1, 5});
  HostTensor down = floats({2, 1, 1}, {7, 11});
  HostTensor gates = floats({2, 2}, {0.5, 0.5, 0.5, 0.5});
  HostTensor chosen = ints({2, 2}, {1, 0, 1, 0});
  HostTensor out, saved;
  std::string error;
  ASSERT_TRUE(
      experts(x, gates, chosen, gateUp, down, false, out, error, &saved))
      << error;
  EXPECT_EQ(saved.shape, (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(saved.f32, (std::vector<float>{2, 6, 3, 9, -2, 10, -3, 15}));
}

TEST(Kernels, InterleavedLayoutReadsAlternateRows) {
  // intermediate 2: concatenated rows are [g0, g1, u0, u1], interleaved
  // rows are [g0, u0, g1, u1]; the same weights in both orders agree.
  HostTensor x = floats({1, 1}, {1});
  HostTensor concatenated = floats({1, 4, 1}, {1, 2, 3, 4});
  HostTensor interleaved = floats({1, 4, 1}, {1, 3, 2, 4});
  HostTensor down = floats({1, 1, 2}, {1, 1});
  HostTensor gates = floats({1, 1}, {1});
  HostTensor chosen = ints({1, 1}, {0});
  HostTensor a, b;
  std::string error;
  ASSERT_TRUE(experts(x, gates, chosen, concatenated, down, false, a, error));
  ASSERT_TRUE(experts(x, gates, chosen, interleaved, down, true, b, error));
  EXPECT_FLOAT_EQ(a.f32[0], b.f32[0]);
}

} // namespace

namespace {

// The dialect's modes and the kernels' are one list: same order, same names.
TEST(Kernels, RoutingOfMapsEveryDialectModeToTheKernelModeOfItsName) {
  for (uint32_t v = 0; v <= mlir::moe::getMaxEnumValForLoadBalancing(); ++v) {
    auto mode = static_cast<mlir::moe::LoadBalancing>(v);
    EXPECT_EQ(mlir::moe::stringifyLoadBalancing(mode).str(),
              moert::routingName(routingOf(mode)));
  }
  EXPECT_EQ(std::string(moert::routingExpression(
                routingOf(mlir::moe::LoadBalancing::sinkhorn))),
            "moert::Routing::Sinkhorn");
}

TEST(Kernels, EvaluationRoutingIsPlainTopK) {
  // Logits chosen so that Sinkhorn in training would pick differently:
  // every token prefers expert 0.
  HostTensor logits = floats({3, 2}, {2, 0, 1.5f, 0, 1, 0});
  HostTensor gates, experts, sig;
  std::string error;
  // Sinkhorn at evaluation: top-k of the logits, softmax gates, not
  // renormalised (here k = 2 keeps both: the softmax itself).
  ASSERT_TRUE(route(logits, 2, Routing::Sinkhorn, gates, experts, error,
                    /*training=*/false))
      << error;
  EXPECT_EQ(experts.i64[0], 0);
  EXPECT_NEAR(gates.f32[0], 1 / (1 + std::exp(-2.0)), 1e-6);
  // k = 1: the sigmoid of the chosen logit.
  ASSERT_TRUE(route(logits, 1, Routing::Sinkhorn, sig, experts, error,
                    /*training=*/false));
  EXPECT_EQ(experts.i64, (std::vector<int64_t>{0, 0, 0}));
  EXPECT_NEAR(sig.f32[2], 1 / (1 + std::exp(-1.0)), 1e-6);
  // In training, Sinkhorn balances the three tokens over both experts.
  ASSERT_TRUE(route(logits, 1, Routing::Sinkhorn, sig, experts, error));
  EXPECT_NE(experts.i64, (std::vector<int64_t>{0, 0, 0}));
  // Balanced at evaluation: Mixtral's renormalised top-k.
  ASSERT_TRUE(route(logits, 1, Routing::Balanced, gates, experts, error,
                    /*training=*/false));
  EXPECT_EQ(experts.i64, (std::vector<int64_t>{0, 0, 0}));
  EXPECT_FLOAT_EQ(gates.f32[0], 1.0f);
}

TEST(Kernels, TargetCountSkipsTheFirstPositionAndIgnoredLabels) {
  // Targets are labels[b, 1..]: row 0 has one ignored, row 1 none.
  HostTensor labels = ints({2, 4}, {-100, 5, -100, 7, 3, 4, 5, 6});
  HostTensor count;
  std::string error;
  ASSERT_TRUE(targetCount(labels, -100, count, error)) << error;
  EXPECT_TRUE(count.shape.empty());
  EXPECT_EQ(count.f32[0], 5.0f);
  EXPECT_FALSE(targetCount(ints({4}, {1, 2, 3, 4}), -100, count, error));
}

} // namespace

namespace {

// Two ranks' router logits (3 and 2 tokens, 4 experts) and both together.
HostTensor balanceLogits(int64_t begin, int64_t end) {
  HostTensor t = HostTensor::floats({end - begin, 4});
  for (int64_t r = begin; r < end; ++r)
    for (int64_t e = 0; e < 4; ++e)
      t.f32[(r - begin) * 4 + e] = std::sin(1.7 * r + 0.9 * e);
  return t;
}

} // namespace

TEST(Kernels, LoadBalancingStatsSummedOverRanksGiveTheGlobalLoss) {
  HostTensor all = balanceLogits(0, 5), first = balanceLogits(0, 3),
             second = balanceLogits(3, 5);
  std::string error;
  HostTensor expected, statsA, statsB, loss;
  ASSERT_TRUE(loadBalancingLoss({&all}, 2, expected, error)) << error;
  ASSERT_TRUE(loadBalancingStats({&first}, 2, statsA, error)) << error;
  ASSERT_TRUE(loadBalancingStats({&second}, 2, statsB, error)) << error;
  ASSERT_EQ(statsA.shape, (std::vector<int64_t>{2, 4}));
  // Each row chooses k = 2 experts: the first row of the statistics sums to
  // 2 per token.
  EXPECT_FLOAT_EQ(statsA.f32[0] + statsA.f32[1] + statsA.f32[2] + statsA.f32[3],
                  6.0f);
  HostTensor global = statsA;
  for (size_t i = 0; i < global.f32.size(); ++i)
    global.f32[i] += statsB.f32[i];
  ASSERT_TRUE(loadBalancingLossFromStats(global, 2, loss, error)) << error;
  EXPECT_NEAR(loss.f32[0], expected.f32[0], 1e-6);

  // Each rank's share of the gradient is its rows of the global gradient.
  std::vector<HostTensor> dAll, dFirst, dSecond;
  ASSERT_TRUE(loadBalancingLossGrad({&all}, 2, 0.5, dAll, error)) << error;
  ASSERT_TRUE(loadBalancingStatsGrad({&first}, global, 2, 0.5, dFirst, error))
      << error;
  ASSERT_TRUE(loadBalancingStatsGrad({&second}, global, 2, 0.5, dSecond,
                                     error))
      << error;
  for (int64_t i = 0; i < 12; ++i)
    EXPECT_NEAR(dFirst[0].f32[i], dAll[0].f32[i], 1e-7) << i;
  for (int64_t i = 0; i < 8; ++i)
    EXPECT_NEAR(dSecond[0].f32[i], dAll[0].f32[12 + i], 1e-7) << i;
}

TEST(Kernels, LoadBalancingLossFromStatsRejectsEmptyStatistics) {
  HostTensor loss;
  std::string error;
  EXPECT_FALSE(loadBalancingLossFromStats(HostTensor::floats({2, 4}), 2, loss,
                                          error));
  EXPECT_EQ(error, "statistics count no rows");
}
