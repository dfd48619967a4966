//===- ThreadCommunicatorTest.cpp - The thread world in host memory -------===//
//
// moert/ThreadCommunicator.h with host buffers (no GPU): W = 2, 4, 8 ranks
// as threads run every collective on exactly predictable inputs (rank r's
// element i is a function of r and i), so every check is bitwise: sums of
// f32, bf16 and i64 (also in place), all-gather, reduce-scatter, all-to-all
// with unequal and zero counts, broadcast, barrier; the split into the
// mesh's groups (MeshGroups) whose members are checked by all-gathering
// world ranks; ranks that disagree; a rank that never calls (the world's
// timeout); abort. runtime/tests/CommunicatorTest.cu
// runs the same collectives on a GPU, on this world and on NCCL.
//
//===----------------------------------------------------------------------===//

#include "moert/Mesh.h"
#include "moert/ThreadCommunicator.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <mutex>
#include <thread>

using namespace moert;

namespace {

/// Runs `body(rank, comm)` on every rank of a fresh host-memory world of
/// `size`, one thread each, and returns the failures it reports.
std::vector<std::string>
onRanks(int size, const std::function<void(int, Communicator &,
                                           std::vector<std::string> &)> &body) {
  std::vector<std::unique_ptr<Communicator>> world;
  Status made = createThreadWorld(size, ThreadMemory::Host, world);
  EXPECT_TRUE(made.ok()) << made.message();
  std::mutex mutex;
  std::vector<std::string> failures;
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      std::vector<std::string> mine;
      body(r, *world[r], mine);
      std::lock_guard<std::mutex> lock(mutex);
      for (std::string &f : mine)
        failures.push_back("rank " + std::to_string(r) + ": " + f);
    });
  for (std::thread &t : threads)
    t.join();
  return failures;
}

#define RANK_EXPECT(failures, condition, what)                                 \
  do {                                                                         \
    if (!(condition))                                                          \
      (failures).push_back(what);                                              \
  } while (0)

/// Fails the rank with the status's message unless it succeeded.
bool succeeded(const Status &status, std::vector<std::string> &failures) {
  if (!status.ok())
    failures.push_back(status.message());
  return status.ok();
}

uint16_t bf16Bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return static_cast<uint16_t>(bits >> 16); // exact for the values used
}

class ThreadWorld : public ::testing::TestWithParam<int> {};

TEST_P(ThreadWorld, AllReduceSumsEveryType) {
  const int w = GetParam();
  const size_t n = 257;
  auto failures = onRanks(w, [&](int r, Communicator &comm, auto &fail) {
    std::vector<float> f(n), fOut(n);
    std::vector<uint16_t> h(n), hOut(n);
    std::vector<int64_t> l(n), lOut(n);
    for (size_t i = 0; i < n; ++i) {
      f[i] = static_cast<float>(i) + 0.25f * r;
      h[i] = bf16Bits(static_cast<float>(i % 16 + r));
      l[i] = (int64_t(1) << 40) * r + static_cast<int64_t>(i);
    }
    if (!succeeded(comm.allReduceSum(f.data(), fOut.data(), n, DataType::F32,
                                     nullptr),
                   fail) ||
        !succeeded(comm.allReduceSum(h.data(), hOut.data(), n, DataType::BF16,
                                     nullptr),
                   fail) ||
        !succeeded(comm.allReduceSum(l.data(), l.data(), n, DataType::I64,
                                     nullptr),
                   fail))
      return;
    const int rankSum = w * (w - 1) / 2;
    for (size_t i = 0; i < n; ++i) {
      RANK_EXPECT(fail, fOut[i] == w * static_cast<float>(i) + 0.25f * rankSum,
                  "f32 element " + std::to_string(i));
      RANK_EXPECT(fail,
                  hOut[i] == bf16Bits(static_cast<float>(w * (i % 16) +
                                                         rankSum)),
                  "bf16 element " + std::to_string(i));
      RANK_EXPECT(fail,
                  l[i] == (int64_t(1) << 40) * rankSum +
                              w * static_cast<int64_t>(i),
                  "i64 element in place " + std::to_string(i));
    }
  });
  EXPECT_TRUE(failures.empty()) << failures.front();
}

TEST_P(ThreadWorld, AllGatherAndReduceScatter) {
  const int w = GetParam();
  const size_t n = 33;
  auto failures = onRanks(w, [&](int r, Communicator &comm, auto &fail) {
    std::vector<int64_t> mine(n), gathered(n * w);
    for (size_t i = 0; i < n; ++i)
      mine[i] = 1000 * r + static_cast<int64_t>(i);
    if (!succeeded(comm.allGather(mine.data(), gathered.data(), n,
                                  DataType::I64, nullptr),
                   fail))
      return;
    for (int q = 0; q < w; ++q)
      for (size_t i = 0; i < n; ++i)
        RANK_EXPECT(fail, gathered[q * n + i] == 1000 * q + int64_t(i),
                    "gathered element " + std::to_string(q * n + i));
    // Reduce-scatter: rank r's input element j is j + r; block q of the
    // sum is w·(q·n + i) + w(w-1)/2.
    std::vector<float> all(n * w), block(n);
    for (size_t j = 0; j < n * w; ++j)
      all[j] = static_cast<float>(j + r);
    if (!succeeded(comm.reduceScatterSum(all.data(), block.data(), n,
                                         DataType::F32, nullptr),
                   fail))
      return;
    for (size_t i = 0; i < n; ++i)
      RANK_EXPECT(fail,
                  block[i] == static_cast<float>(w * (r * n + i) +
                                                 w * (w - 1) / 2),
                  "scattered element " + std::to_string(i));
  });
  EXPECT_TRUE(failures.empty()) << failures.front();
}

TEST_P(ThreadWorld, AllToAllWithUnequalAndZeroCounts) {
  const int w = GetParam();
  // Rank s sends (s + d) % 3 elements to rank d (0 for some pairs), element
  // k of them being 100·s + 10·d + k; a receiver lays them out by sender
  // after a gap of one sentinel, so offsets differ from the counts' sums.
  auto countOf = [](int s, int d) { return static_cast<size_t>((s + d) % 3); };
  auto failures = onRanks(w, [&](int r, Communicator &comm, auto &fail) {
    std::vector<size_t> sendCounts(w), sendOffsets(w), recvCounts(w),
        recvOffsets(w);
    std::vector<float> send, recv;
    for (int d = 0; d < w; ++d) {
      sendOffsets[d] = send.size();
      sendCounts[d] = countOf(r, d);
      for (size_t k = 0; k < sendCounts[d]; ++k)
        send.push_back(100.0f * r + 10.0f * d + k);
    }
    size_t at = 0;
    for (int s = 0; s < w; ++s) {
      at += 1;
      recvOffsets[s] = at;
      recvCounts[s] = countOf(s, r);
      at += recvCounts[s];
    }
    recv.assign(at, -7.0f);
    send.push_back(0); // a valid pointer even when nothing is sent
    if (!succeeded(comm.allToAllV(send.data(), sendCounts, sendOffsets,
                                  recv.data(), recvCounts, recvOffsets,
                                  DataType::F32, nullptr),
                   fail))
      return;
    std::vector<float> want(at, -7.0f);
    for (int s = 0; s < w; ++s)
      for (size_t k = 0; k < recvCounts[s]; ++k)
        want[recvOffsets[s] + k] = 100.0f * s + 10.0f * r + k;
    RANK_EXPECT(fail, recv == want, "received rows");
    // Nothing at all moves.
    std::vector<size_t> zeros(w, 0);
    if (!succeeded(comm.allToAllV(send.data(), zeros, zeros, recv.data(),
                                  zeros, zeros, DataType::F32, nullptr),
                   fail))
      return;
    RANK_EXPECT(fail, recv == want, "an empty all_to_all wrote");
  });
  EXPECT_TRUE(failures.empty()) << failures.front();
}

TEST_P(ThreadWorld, BroadcastAndBarrier) {
  const int w = GetParam();
  auto failures = onRanks(w, [&](int r, Communicator &comm, auto &fail) {
    const int root = w - 1;
    std::vector<int32_t> value(5, r), got(5, -1);
    if (!succeeded(comm.broadcast(value.data(), got.data(), 5, DataType::I32,
                                  root, nullptr),
                   fail) ||
        !succeeded(comm.barrier(nullptr), fail))
      return;
    RANK_EXPECT(fail, got == std::vector<int32_t>(5, root), "broadcast");
  });
  EXPECT_TRUE(failures.empty()) << failures.front();
}

/// The mesh groups: every group's members, all-gathered as world ranks,
/// are the ranks that share the coordinates outside its axes, in world
/// order, and the rank's index in it is its place there.
TEST(ThreadWorldMesh, GroupsOfEveryAxesSet) {
  for (MeshShape shape : {MeshShape{1, 2, 2}, MeshShape{2, 2, 2},
                          MeshShape{1, 1, 8}, MeshShape{2, 1, 2}}) {
    const int w = static_cast<int>(shape.size());
    auto failures = onRanks(w, [&](int r, Communicator &world, auto &fail) {
      std::unique_ptr<MeshGroups> mesh;
      if (!succeeded(MeshGroups::create(world, shape, mesh), fail))
        return;
      auto coordinates = meshCoordinates(shape, r);
      for (int axis = 0; axis < 3; ++axis)
        RANK_EXPECT(fail, mesh->coordinate(axis) == coordinates[axis],
                    "coordinate " + std::to_string(axis));
      for (MeshAxes axes = 1; axes < 8; ++axes) {
        Communicator &group = mesh->group(axes);
        std::vector<int64_t> want;
        for (int q = 0; q < w; ++q) {
          auto c = meshCoordinates(shape, q);
          bool same = true;
          for (int axis = 0; axis < 3; ++axis)
            if (!(axes & (1u << axis)) && c[axis] != coordinates[axis])
              same = false;
          if (same)
            want.push_back(q);
        }
        std::vector<int64_t> members(group.size());
        int64_t me = r;
        if (!succeeded(group.allGather(&me, members.data(), 1, DataType::I64,
                                       nullptr),
                       fail))
          return;
        std::string what = meshGroupName(axes);
        RANK_EXPECT(fail, group.group() == what, "name " + group.group());
        RANK_EXPECT(fail, members == want, what + " members");
        RANK_EXPECT(fail, members[group.rank()] == r, what + " rank index");
      }
    });
    EXPECT_TRUE(failures.empty()) << failures.front();
  }
}

TEST(ThreadWorldMesh, MeshOfAnotherSizeIsRefused) {
  auto failures = onRanks(2, [&](int, Communicator &world, auto &fail) {
    std::unique_ptr<MeshGroups> mesh;
    Status made = MeshGroups::create(world, MeshShape{1, 2, 2}, mesh);
    RANK_EXPECT(fail,
                !made.ok() && made.message().find(
                                  "the mesh 1x2x2 (R x H x P) has 4 ranks, "
                                  "the world 2") != std::string::npos,
                made.message());
  });
  EXPECT_TRUE(failures.empty()) << failures.front();
}

TEST(ThreadWorldSplit, ColorsKeysAndNoColor) {
  // Ranks 0..5: color r % 2 (rank 5 takes no part), keyed in reverse.
  auto failures = onRanks(6, [&](int r, Communicator &world, auto &fail) {
    std::unique_ptr<Communicator> half;
    if (!succeeded(world.split(r == 5 ? -1 : r % 2, -r, "half", half), fail))
      return;
    if (r == 5) {
      RANK_EXPECT(fail, half == nullptr, "no color gives a group");
      return;
    }
    const int size = r % 2 == 0 ? 3 : 2;
    RANK_EXPECT(fail, half && half->size() == size, "group size");
    if (!half)
      return;
    int64_t me = r;
    std::vector<int64_t> members(size);
    if (!succeeded(half->allGather(&me, members.data(), 1, DataType::I64,
                                   nullptr),
                   fail))
      return;
    std::vector<int64_t> want = r % 2 == 0 ? std::vector<int64_t>{4, 2, 0}
                                           : std::vector<int64_t>{3, 1};
    RANK_EXPECT(fail, members == want, "members ordered by key");
  });
  EXPECT_TRUE(failures.empty()) << failures.front();
}

TEST(ThreadWorldFailures, RanksThatDisagreeAllFail) {
  auto failures = onRanks(2, [&](int r, Communicator &comm, auto &fail) {
    std::vector<float> x(4, 1.0f), y(8);
    Status status = r == 0 ? comm.allReduceSum(x.data(), y.data(), 4,
                                               DataType::F32, nullptr)
                           : comm.allGather(x.data(), y.data(), 4,
                                            DataType::F32, nullptr);
    RANK_EXPECT(fail,
                !status.ok() &&
                    status.message().find("the ranks disagree: rank 0 calls "
                                          "all_reduce, rank 1 all_gather") !=
                        std::string::npos,
                status.message());
  });
  EXPECT_TRUE(failures.empty()) << failures.front();

  failures = onRanks(2, [&](int r, Communicator &comm, auto &fail) {
    std::vector<float> x(4, 1.0f), y(4);
    std::vector<size_t> counts = {1, r == 0 ? size_t(2) : size_t(1)};
    std::vector<size_t> offsets = {0, 1};
    Status status = comm.allToAllV(x.data(), counts, offsets, y.data(),
                                   {1, 1}, offsets, DataType::F32, nullptr);
    RANK_EXPECT(fail,
                !status.ok() && status.message().find(
                                    "rank 0 sends 2 elements to rank 1, "
                                    "which receives 1") != std::string::npos,
                status.message());
  });
  EXPECT_TRUE(failures.empty()) << failures.front();

  failures = onRanks(3, [&](int r, Communicator &comm, auto &fail) {
    std::vector<float> x(4, 1.0f), y(4);
    Status status = comm.allReduceSum(x.data(), y.data(), r == 2 ? 3 : 4,
                                      DataType::F32, nullptr);
    RANK_EXPECT(fail,
                !status.ok() && status.message().find(
                                    "rank 0 passes 4 f32 elements, rank 2 3 "
                                    "f32") != std::string::npos,
                status.message());
  });
  EXPECT_TRUE(failures.empty()) << failures.front();
}

TEST(ThreadWorldFailures, WrongArgumentsNameRankGroupAndCollective) {
  auto failures = onRanks(2, [&](int r, Communicator &comm, auto &fail) {
    std::vector<float> x(4), y(4);
    Status counts = comm.allToAllV(x.data(), {1}, {0}, y.data(), {1}, {0},
                                   DataType::F32, nullptr);
    std::string named = "rank " + std::to_string(r) + " of 2 in group 'world'";
    RANK_EXPECT(fail,
                !counts.ok() &&
                    counts.message().find(
                        named + ": all_to_all: counts and offsets need one "
                                "entry per rank of the group (2), got send "
                                "1/1, receive 1/1") != std::string::npos,
                counts.message());
    Status root =
        comm.broadcast(x.data(), y.data(), 4, DataType::F32, 2, nullptr);
    RANK_EXPECT(fail,
                !root.ok() && root.message().find(
                                  named + ": broadcast: root 2 is not a rank "
                                          "of the group") != std::string::npos,
                root.message());
  });
  EXPECT_TRUE(failures.empty()) << failures.front();
}

/// A rank that aborts while the others wait in a collective: they return
/// with a failure instead of hanging, and every later call fails.
TEST(ThreadWorldFailures, AbortEndsPendingAndLaterCalls) {
  auto failures = onRanks(4, [&](int r, Communicator &comm, auto &fail) {
    std::vector<float> x(4, 1.0f), y(4);
    if (r == 3) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      comm.abort();
    } else {
      Status pending = comm.allReduceSum(x.data(), y.data(), 4, DataType::F32,
                                         nullptr);
      RANK_EXPECT(fail,
                  !pending.ok() &&
                      pending.message().find(
                          "rank " + std::to_string(r) +
                          " of 4 in group 'world': all_reduce: the "
                          "communicator was aborted") != std::string::npos,
                  pending.message());
    }
    Status later = comm.barrier(nullptr);
    RANK_EXPECT(fail,
                !later.ok() && later.message().find(
                                   "barrier: the communicator was aborted") !=
                                   std::string::npos,
                later.message());
  });
  EXPECT_TRUE(failures.empty()) << failures.front();
}

/// A rank that never calls: the others fail within the world's timeout,
/// naming it, and the group is aborted for all.
TEST(ThreadWorldFailures, ARankThatNeverCallsFailsTheOthersInTime) {
  std::vector<std::unique_ptr<Communicator>> world;
  ASSERT_TRUE(createThreadWorld(3, ThreadMemory::Host, world,
                                std::chrono::milliseconds(200))
                  .ok());
  std::vector<Status> got(2, Status::success());
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      std::vector<float> x(4, 1.0f);
      got[r] = world[r]->allReduceSum(x.data(), x.data(), 4, DataType::F32,
                                      nullptr);
    });
  for (std::thread &t : threads)
    t.join();
  double seconds = std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - start)
                       .count();
  EXPECT_LT(seconds, 5.0);
  for (int r = 0; r < 2; ++r) {
    EXPECT_FALSE(got[r].ok());
    EXPECT_NE(got[r].message().find("rank(s) 2 of the group did not call it "
                                    "within 0.2 s (the thread world's "
                                    "timeout)"),
              std::string::npos)
        << got[r].message();
  }
  // The late rank's call fails at once, with the reason.
  std::vector<float> x(4, 1.0f);
  Status late =
      world[2]->allReduceSum(x.data(), x.data(), 4, DataType::F32, nullptr);
  EXPECT_NE(late.message().find("rank 2 of 3 in group 'world': all_reduce: "
                                "the communicator was aborted (rank "),
            std::string::npos)
      << late.message();
}

INSTANTIATE_TEST_SUITE_P(Ranks, ThreadWorld, ::testing::Values(2, 4, 8));

} // namespace
