//===- CommunicatorTest.cpp - Unit tests of the in-process communicator ---===//
//
// Every collective on every group kind of several (W, P, H) meshes, with
// all groups of a kind running at once as they do in a partitioned step;
// zero-size contributions; results that do not depend on thread timing; and
// errors (mismatched sizes, a failed rank) that fail every member instead of
// hanging.
//
//===----------------------------------------------------------------------===//

#include "moec/Plan/Mesh.h"
#include "moec/Reference/Communicator.h"

#include "TestTensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <thread>

using namespace moec;
using namespace moec::plan;
using namespace moec::reference;
using moec::testing::floats;
using moec::testing::ints;

namespace {

/// Runs `body(rank)` on every rank of a world of `worldSize`, one thread per
/// rank, and returns once all are done.
void onRanks(int64_t worldSize, const std::function<void(int64_t)> &body) {
  std::vector<std::thread> threads;
  for (int64_t rank = 0; rank < worldSize; ++rank)
    threads.emplace_back(body, rank);
  for (std::thread &thread : threads)
    thread.join();
}

Mesh mesh(int64_t w, int64_t p, int64_t h) {
  ParallelConfig config;
  config.worldSize = w;
  config.expertParallelDegree = p;
  config.hybridShardDegree = h;
  llvm::Expected<Mesh> resolved = resolveMesh(config, /*numExperts=*/8);
  EXPECT_TRUE(static_cast<bool>(resolved));
  return *resolved;
}

/// The (W, P, H) layouts the tests run on: every group kind with sizes 1, 2
/// and 4, and groups whose ranks are not contiguous.
const std::vector<std::array<int64_t, 3>> kLayouts = {
    {1, 1, 1}, {2, 1, 2}, {4, 2, 1}, {4, 1, 2}, {8, 2, 2}, {8, 4, 1}, {8, 1, 4}};
const GroupKind kKinds[] = {GroupKind::Expert, GroupKind::Shard,
                            GroupKind::Replica, GroupKind::DenseReplica,
                            GroupKind::World};

/// Rank r's distinct contribution of `count` floats: element i is
/// 1000 r + i + 0.25.
HostTensor contribution(int64_t rank, int64_t count) {
  HostTensor t = HostTensor::floats({count});
  for (int64_t i = 0; i < count; ++i)
    t.f32[i] = static_cast<float>(1000 * rank + i) + 0.25f;
  return t;
}

TEST(CommunicatorTest, AllReduceSumsOverEveryGroupKind) {
  for (auto [w, p, h] : kLayouts) {
    Mesh m = mesh(w, p, h);
    for (GroupKind kind : kKinds) {
      Communicator communicator(w);
      std::vector<HostTensor> results(w);
      onRanks(w, [&](int64_t rank) {
        HostTensor data = contribution(rank, 6);
        data.shape = {2, 3};
        std::string error;
        EXPECT_TRUE(communicator.allReduceSum(
            rank, m.groupOf(kind, rank).ranks, data, error))
            << error;
        results[rank] = data;
      });
      for (int64_t rank = 0; rank < w; ++rank) {
        std::vector<int64_t> group = m.groupOf(kind, rank).ranks;
        EXPECT_EQ(results[rank].shape, (std::vector<int64_t>{2, 3}));
        for (int64_t i = 0; i < 6; ++i) {
          double expected = 0.0;
          for (int64_t member : group)
            expected += 1000.0 * member + i + 0.25;
          EXPECT_EQ(results[rank].f32[i], static_cast<float>(expected))
              << "W=" << w << " P=" << p << " H=" << h << " group "
              << stringifyGroupKind(kind).str() << " rank " << rank;
        }
      }
    }
  }
}

TEST(CommunicatorTest, AllGatherConcatenatesInGroupOrder) {
  for (auto [w, p, h] : kLayouts) {
    Mesh m = mesh(w, p, h);
    for (GroupKind kind : kKinds) {
      Communicator communicator(w);
      std::vector<HostTensor> results(w);
      onRanks(w, [&](int64_t rank) {
        std::string error;
        EXPECT_TRUE(communicator.allGather(rank, m.groupOf(kind, rank).ranks,
                                           contribution(rank, 3),
                                           results[rank], error))
            << error;
      });
      for (int64_t rank = 0; rank < w; ++rank) {
        std::vector<float> expected;
        for (int64_t member : m.groupOf(kind, rank).ranks)
          for (float x : contribution(member, 3).f32)
            expected.push_back(x);
        EXPECT_EQ(results[rank].f32, expected);
        EXPECT_EQ(results[rank].shape,
                  (std::vector<int64_t>{3 * m.groupSize(kind)}));
      }
    }
  }
}

TEST(CommunicatorTest, ReduceScatterGivesEachMemberItsChunkOfTheSum) {
  for (auto [w, p, h] : kLayouts) {
    Mesh m = mesh(w, p, h);
    for (GroupKind kind : kKinds) {
      const int64_t size = m.groupSize(kind), chunk = 2;
      Communicator communicator(w);
      std::vector<HostTensor> results(w);
      onRanks(w, [&](int64_t rank) {
        std::string error;
        EXPECT_TRUE(communicator.reduceScatterSum(
            rank, m.groupOf(kind, rank).ranks, contribution(rank, size * chunk),
            results[rank], error))
            << error;
      });
      for (int64_t rank = 0; rank < w; ++rank) {
        std::vector<int64_t> group = m.groupOf(kind, rank).ranks;
        int64_t groupRank = llvm::find(group, rank) - group.begin();
        ASSERT_EQ(results[rank].numElements(), chunk);
        for (int64_t i = 0; i < chunk; ++i) {
          double expected = 0.0;
          for (int64_t member : group)
            expected += 1000.0 * member + groupRank * chunk + i + 0.25;
          EXPECT_EQ(results[rank].f32[i], static_cast<float>(expected));
        }
      }
    }
  }
}

TEST(CommunicatorTest, AllToAllDeliversVariableCountsPerPeer) {
  // Group rank i sends (i + j) % 3 integers to group rank j: zero included.
  for (auto [w, p, h] : kLayouts) {
    Mesh m = mesh(w, p, h);
    for (GroupKind kind : kKinds) {
      Communicator communicator(w);
      std::vector<std::vector<HostTensor>> received(w);
      auto message = [](int64_t from, int64_t to, int64_t count) {
        HostTensor t = HostTensor::ints({count});
        for (int64_t k = 0; k < count; ++k)
          t.i64[k] = 100 * from + 10 * to + k;
        return t;
      };
      onRanks(w, [&](int64_t rank) {
        std::vector<int64_t> group = m.groupOf(kind, rank).ranks;
        int64_t i = llvm::find(group, rank) - group.begin();
        std::vector<HostTensor> sends;
        for (int64_t j = 0; j < static_cast<int64_t>(group.size()); ++j)
          sends.push_back(message(rank, group[j], (i + j) % 3));
        std::string error;
        EXPECT_TRUE(
            communicator.allToAll(rank, group, sends, received[rank], error))
            << error;
      });
      for (int64_t rank = 0; rank < w; ++rank) {
        std::vector<int64_t> group = m.groupOf(kind, rank).ranks;
        int64_t j = llvm::find(group, rank) - group.begin();
        ASSERT_EQ(received[rank].size(), group.size());
        for (int64_t i = 0; i < static_cast<int64_t>(group.size()); ++i)
          EXPECT_EQ(received[rank][i].i64,
                    message(group[i], rank, (i + j) % 3).i64);
      }
    }
  }
}

TEST(CommunicatorTest, ZeroSizeContributions) {
  // Ranks 0 and 2 contribute nothing to the all-gather; an all-reduce and a
  // reduce-scatter of zero elements succeed with empty results.
  Communicator communicator(4);
  std::vector<int64_t> world = {0, 1, 2, 3};
  std::vector<HostTensor> gathered(4), scattered(4), reduced(4);
  onRanks(4, [&](int64_t rank) {
    std::string error;
    EXPECT_TRUE(communicator.allGather(rank, world,
                                       ints({rank % 2}, std::vector<int64_t>(
                                                            rank % 2, rank)),
                                       gathered[rank], error))
        << error;
    EXPECT_TRUE(communicator.reduceScatterSum(rank, world, floats({0}, {}),
                                              scattered[rank], error))
        << error;
    reduced[rank] = floats({0, 5}, {});
    EXPECT_TRUE(communicator.allReduceSum(rank, world, reduced[rank], error))
        << error;
  });
  for (int64_t rank = 0; rank < 4; ++rank) {
    EXPECT_EQ(gathered[rank].i64, (std::vector<int64_t>{1, 3}));
    EXPECT_EQ(scattered[rank].numElements(), 0);
    EXPECT_EQ(reduced[rank].shape, (std::vector<int64_t>{0, 5}));
  }
}

TEST(CommunicatorTest, IntegerAllReduceIsExact) {
  Communicator communicator(3);
  std::vector<HostTensor> results(3);
  onRanks(3, [&](int64_t rank) {
    results[rank] = ints({2}, {int64_t{1} << 60, rank});
    std::string error;
    EXPECT_TRUE(communicator.allReduceSum(rank, {0, 1, 2}, results[rank],
                                          error))
        << error;
  });
  for (const HostTensor &result : results)
    EXPECT_EQ(result.i64, (std::vector<int64_t>{int64_t{3} << 60, 3}));
}

TEST(CommunicatorTest, ReductionsDoNotDependOnThreadTiming) {
  // Summands that cancel: fp32 addition in arrival order would give
  // different bits for different orders; group order in fp64 gives one.
  const std::vector<float> values = {1e8f, 1.0f, -1e8f, 3.5e-3f,
                                     7.0f, -2e7f, 2e7f, 1e-4f};
  std::vector<uint32_t> firstBits;
  for (int trial = 0; trial < 20; ++trial) {
    Communicator communicator(8);
    std::vector<HostTensor> results(8);
    onRanks(8, [&](int64_t rank) {
      // Later ranks arrive first in some trials.
      if ((rank + trial) % 3 == 0)
        std::this_thread::yield();
      results[rank] = floats({1}, {values[rank]});
      std::string error;
      EXPECT_TRUE(communicator.allReduceSum(rank, {0, 1, 2, 3, 4, 5, 6, 7},
                                            results[rank], error))
          << error;
    });
    double exact = 0.0;
    for (float v : values)
      exact += v;
    for (const HostTensor &result : results) {
      EXPECT_EQ(result.f32[0], static_cast<float>(exact));
      uint32_t bits;
      std::memcpy(&bits, &result.f32[0], 4);
      if (firstBits.empty())
        firstBits.push_back(bits);
      EXPECT_EQ(bits, firstBits.front());
    }
  }
}

TEST(CommunicatorTest, OverlappingGroupsInterleave) {
  // Rank 1 is in {0, 1} and {1, 2}; the two groups' calls pair up by group,
  // whatever order the members call them in.
  Communicator communicator(3);
  std::vector<float> left(3), right(3);
  onRanks(3, [&](int64_t rank) {
    std::string error;
    HostTensor a = floats({1}, {static_cast<float>(rank + 1)});
    HostTensor b = floats({1}, {static_cast<float>(10 * (rank + 1))});
    if (rank <= 1) {
      EXPECT_TRUE(communicator.allReduceSum(rank, {0, 1}, a, error)) << error;
      left[rank] = a.f32[0];
    }
    if (rank >= 1) {
      EXPECT_TRUE(communicator.allReduceSum(rank, {1, 2}, b, error)) << error;
      right[rank] = b.f32[0];
    }
  });
  EXPECT_EQ(left[0], 3.0f);
  EXPECT_EQ(left[1], 3.0f);
  EXPECT_EQ(right[1], 50.0f);
  EXPECT_EQ(right[2], 50.0f);
}

TEST(CommunicatorTest, MismatchedSizesFailOnEveryMember) {
  Communicator communicator(2);
  std::vector<std::string> errors(2);
  onRanks(2, [&](int64_t rank) {
    HostTensor data = HostTensor::floats({rank + 1});
    EXPECT_FALSE(communicator.allReduceSum(rank, {0, 1}, data, errors[rank]));
  });
  for (const std::string &error : errors)
    EXPECT_EQ(error, "all_reduce: group rank 1 contributes 2 elements but "
                     "group rank 0 contributes 1");
}

TEST(CommunicatorTest, AbortReleasesWaitingRanks) {
  // Rank 2 fails before its collective; ranks 0 and 1 must not hang.
  Communicator communicator(3);
  std::vector<std::string> errors(3);
  onRanks(3, [&](int64_t rank) {
    if (rank == 2) {
      communicator.abort(2);
      return;
    }
    HostTensor data = HostTensor::floats({1});
    EXPECT_FALSE(communicator.allReduceSum(rank, {0, 1, 2}, data,
                                           errors[rank]));
  });
  EXPECT_EQ(errors[0],
            "all_reduce: rank 2 failed, so the collective was abandoned");
  EXPECT_EQ(errors[1], errors[0]);
}

TEST(CommunicatorTest, InvalidGroupsAreErrors) {
  Communicator communicator(2);
  HostTensor data = HostTensor::floats({1});
  std::string error;
  EXPECT_FALSE(communicator.allReduceSum(0, {0, 5}, data, error));
  EXPECT_EQ(error, "all_reduce: group member 5 is not a rank of a world of 2");
  EXPECT_FALSE(communicator.allReduceSum(0, {1}, data, error));
  EXPECT_EQ(error, "all_reduce: rank 0 is not a member of its group");
  EXPECT_FALSE(communicator.allReduceSum(0, {1, 0}, data, error));
  EXPECT_EQ(error, "all_reduce: group ranks must increase, but 0 follows 1");
}

} // namespace
