//===- ExpertParallelTest.cpp - Routed collectives on simulated ranks ------===//
//
// moe.dispatch → per-row expert work → moe.combine on P simulated ranks,
// against the same computation done token by token on one rank. The work a
// rank does on a received row is exactly predictable (the row times
// (global expert + 1) times its gate), so every result is checked exactly:
// any row sent to the wrong rank, expert or slot shows. Both dispatchers,
// several group sizes, routing that sends every slot to one expert (ranks
// that receive nothing), and the token shuffle.
//
//===----------------------------------------------------------------------===//

#include "moec/Reference/ExpertParallel.h"

#include "TestTensors.h"

#include <gtest/gtest.h>

#include <functional>
#include <set>
#include <thread>

using namespace moec;
using namespace moec::reference;

namespace {

using moec::testing::floats;
using moec::testing::ints;

/// Runs `body(group)` on every rank of one group of `size` ranks, one
/// thread each, and returns whether every rank succeeded.
bool onGroup(int64_t size, const std::function<bool(const ExpertGroup &)> &body) {
  Communicator communicator(size);
  std::vector<int64_t> ranks(size);
  for (int64_t r = 0; r < size; ++r)
    ranks[r] = r;
  std::vector<char> ok(size, 0);
  std::vector<std::thread> threads;
  for (int64_t r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      ExpertGroup group{&communicator, r, ranks, r};
      ok[r] = body(group);
      if (!ok[r])
        communicator.abort(r);
    });
  for (std::thread &t : threads)
    t.join();
  return std::all_of(ok.begin(), ok.end(), [](char c) { return c != 0; });
}

struct RankInput {
  HostTensor input, experts, gates;
};

/// Rank r's tokens: token t's hidden values are 100·r + 10·t + c.
RankInput makeInput(int64_t rank, int64_t tokens, int64_t hidden, int64_t k,
                    const std::function<int64_t(int64_t, int64_t, int64_t)>
                        &expertOf) {
  RankInput in;
  in.input = HostTensor::floats({tokens, hidden});
  in.experts = HostTensor::ints({tokens, k});
  in.gates = HostTensor::floats({tokens, k});
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c = 0; c < hidden; ++c)
      in.input.f32[t * hidden + c] = 100.0f * rank + 10.0f * t + c;
    for (int64_t j = 0; j < k; ++j) {
      in.experts.i64[t * k + j] = expertOf(rank, t, j);
      in.gates.f32[t * k + j] = 0.25f * (j + 1);
    }
  }
  return in;
}

/// Dispatch, the predictable expert work, combine; checks every rank's
/// result against the token-by-token computation. Returns each rank's
/// received rows count.
std::vector<int64_t> roundTrip(
    int64_t p, int64_t numLocal, DispatchKind kind, int64_t tokens, int64_t k,
    const std::function<int64_t(int64_t, int64_t, int64_t)> &expertOf) {
  const int64_t hidden = 3;
  std::vector<int64_t> received(p, -1);
  std::vector<HostTensor> results(p);
  bool ok = onGroup(p, [&](const ExpertGroup &group) {
    RankInput in = makeInput(group.rank, tokens, hidden, k, expertOf);
    HostTensor rows, rowExperts, counts, rowGates, out;
    std::string error;
    if (!dispatch(group, kind, in.input, in.experts, &in.gates, numLocal,
                  rows, rowExperts, counts, &rowGates, error)) {
      ADD_FAILURE() << error;
      return false;
    }
    EXPECT_EQ(counts.shape, (std::vector<int64_t>{p, numLocal}));
    EXPECT_EQ(rowExperts.shape, (std::vector<int64_t>{rows.shape[0], 1}));
    // Rows are ordered by local expert.
    EXPECT_TRUE(std::is_sorted(rowExperts.i64.begin(), rowExperts.i64.end()));
    received[group.rank] = rows.shape[0];
    for (int64_t i = 0; i < rows.shape[0]; ++i) {
      float factor = static_cast<float>(group.groupRank * numLocal +
                                        rowExperts.i64[i] + 1) *
                     rowGates.f32[i];
      for (int64_t c = 0; c < hidden; ++c)
        rows.f32[i * hidden + c] *= factor;
    }
    if (!combine(group, kind, rows, in.experts, counts, out, error)) {
      ADD_FAILURE() << error;
      return false;
    }
    results[group.rank] = out;
    return true;
  });
  EXPECT_TRUE(ok);
  for (int64_t r = 0; ok && r < p; ++r) {
    RankInput in = makeInput(r, tokens, hidden, k, expertOf);
    EXPECT_EQ(results[r].shape, (std::vector<int64_t>{tokens, hidden}))
        << "rank " << r;
    if (results[r].numElements() != tokens * hidden)
      continue;
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t c = 0; c < hidden; ++c) {
        double expected = 0.0;
        for (int64_t j = 0; j < k; ++j)
          expected += in.input.f32[t * hidden + c] *
                      (in.experts.i64[t * k + j] + 1) * in.gates.f32[t * k + j];
        EXPECT_FLOAT_EQ(results[r].f32[t * hidden + c], expected)
            << "rank " << r << " token " << t << " column " << c;
      }
  }
  return received;
}

class DispatchCombine : public ::testing::TestWithParam<DispatchKind> {};

TEST_P(DispatchCombine, SpreadRoutingOnSeveralGroupSizes) {
  for (int64_t p : {1, 2, 4})
    for (int64_t numLocal : {1, 2}) {
      int64_t numExperts = p * numLocal;
      std::vector<int64_t> received =
          roundTrip(p, numLocal, GetParam(), /*tokens=*/5, /*k=*/2,
                    [&](int64_t r, int64_t t, int64_t j) {
                      return (3 * r + 2 * t + 5 * j) % numExperts;
                    });
      int64_t total = 0;
      for (int64_t n : received)
        total += n;
      EXPECT_EQ(total, p * 5 * 2) << "every slot arrives exactly once";
    }
}

TEST_P(DispatchCombine, EverySlotToOneExpertLeavesRanksEmpty) {
  // Both choices of every token go to expert 1 (rank 0 when L = 2): the
  // bound P·T·k rows on one rank, zero on the others.
  std::vector<int64_t> received =
      roundTrip(/*p=*/4, /*numLocal=*/2, GetParam(), /*tokens=*/3, /*k=*/2,
                [](int64_t, int64_t, int64_t) { return 1; });
  EXPECT_EQ(received, (std::vector<int64_t>{4 * 3 * 2, 0, 0, 0}));
}

TEST_P(DispatchCombine, ARankThatSendsNothingElsewhere) {
  // Rank 2's tokens stay on rank 2; the others all go to rank 0.
  std::vector<int64_t> received =
      roundTrip(/*p=*/3, /*numLocal=*/1, GetParam(), /*tokens=*/2, /*k=*/1,
                [](int64_t r, int64_t, int64_t) { return r == 2 ? 2 : 0; });
  EXPECT_EQ(received, (std::vector<int64_t>{4, 0, 2}));
}

INSTANTIATE_TEST_SUITE_P(Dispatchers, DispatchCombine,
                         ::testing::Values(DispatchKind::AllToAll,
                                           DispatchKind::AllGather));

TEST(DispatchCombine, BothDispatchersReceiveTheSameRows) {
  const int64_t p = 2, numLocal = 2, tokens = 4, k = 2;
  std::vector<HostTensor> rowsOf[2];
  for (DispatchKind kind : {DispatchKind::AllToAll, DispatchKind::AllGather}) {
    std::vector<HostTensor> rows(p);
    ASSERT_TRUE(onGroup(p, [&](const ExpertGroup &group) {
      RankInput in = makeInput(group.rank, tokens, 2, k,
                               [](int64_t r, int64_t t, int64_t j) {
                                 return (r + t * 3 + j) % 4;
                               });
      HostTensor rowExperts, counts;
      std::string error;
      return dispatch(group, kind, in.input, in.experts, nullptr, numLocal,
                      rows[group.rank], rowExperts, counts, nullptr, error);
    }));
    rowsOf[kind == DispatchKind::AllGather] = rows;
  }
  for (int64_t r = 0; r < p; ++r) {
    EXPECT_EQ(rowsOf[0][r].shape, rowsOf[1][r].shape);
    EXPECT_EQ(rowsOf[0][r].f32, rowsOf[1][r].f32);
  }
}

TEST(DispatchCombine, RejectsAnExpertOutsideTheGroup) {
  EXPECT_FALSE(onGroup(2, [&](const ExpertGroup &group) {
    HostTensor rows, rowExperts, counts;
    std::string error;
    bool ok = dispatch(group, DispatchKind::AllToAll,
                       floats({1, 1}, {1}), ints({1, 1}, {4}), nullptr, 2,
                       rows, rowExperts, counts, nullptr, error);
    EXPECT_EQ(error, "slot 0 chooses expert 4 of only 4");
    return ok;
  }));
}

TEST(DispatchCombine, RejectsRowsTheCountsDoNotAccountFor) {
  EXPECT_FALSE(onGroup(1, [&](const ExpertGroup &group) {
    HostTensor out;
    std::string error;
    bool ok = combine(group, DispatchKind::AllToAll, floats({3, 1}, {1, 2, 3}),
                      ints({2, 1}, {0, 0}), ints({1, 1}, {2}), out, error);
    EXPECT_EQ(error, "rows [3, 1] do not match the 2 rows the counts say "
                     "were received");
    return ok;
  }));
}

TEST(TokenShuffle, RejectsRanksWithDifferentTokenCounts) {
  std::vector<std::string> errors(2);
  EXPECT_FALSE(onGroup(2, [&](const ExpertGroup &group) {
    HostTensor out;
    int64_t tokens = group.rank == 0 ? 2 : 3;
    bool ok = tokenShuffle(group, HostTensor::floats({tokens, 1}), 1, 1,
                           false, out, errors[group.rank]);
    return ok;
  }));
  EXPECT_EQ(errors[1], "moe.token_shuffle needs the same number of tokens on "
                       "every rank of the group, but group rank 0 has 2 and "
                       "group rank 1 has 3");
}

TEST(TokenShuffle, PermutesTheGroupAndTheInverseRestores) {
  const int64_t p = 4, tokens = 3, hidden = 2;
  std::vector<HostTensor> shuffled(p), restored(p);
  ASSERT_TRUE(onGroup(p, [&](const ExpertGroup &group) {
    RankInput in = makeInput(group.rank, tokens, hidden, 1,
                             [](int64_t, int64_t, int64_t) { return 0; });
    std::string error;
    return tokenShuffle(group, in.input, /*seed=*/7, /*step=*/3, false,
                        shuffled[group.rank], error) &&
           tokenShuffle(group, shuffled[group.rank], 7, 3, true,
                        restored[group.rank], error);
  }));
  std::multiset<float> before, after;
  bool moved = false;
  for (int64_t r = 0; r < p; ++r) {
    RankInput in = makeInput(r, tokens, hidden, 1,
                             [](int64_t, int64_t, int64_t) { return 0; });
    EXPECT_EQ(restored[r].f32, in.input.f32) << "rank " << r;
    before.insert(in.input.f32.begin(), in.input.f32.end());
    after.insert(shuffled[r].f32.begin(), shuffled[r].f32.end());
    moved |= shuffled[r].f32 != in.input.f32;
  }
  EXPECT_EQ(before, after) << "a shuffle moves tokens, it does not change them";
  EXPECT_TRUE(moved);
}

TEST(TokenShuffle, PermutationDependsOnSeedAndStepOnly) {
  std::vector<int64_t> a = tokenPermutation(1, 5, 16);
  EXPECT_EQ(a, tokenPermutation(1, 5, 16));
  EXPECT_NE(a, tokenPermutation(1, 6, 16));
  EXPECT_NE(a, tokenPermutation(2, 5, 16));
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 16; ++i)
    EXPECT_EQ(sorted[i], i);
}

} // namespace
