//===- ThreadCommunicatorTest.cpp - The thread world in host memory -------===//
//
// moert/ThreadCommunicator.h with host buffers (no GPU): W = 2, 4, 8 ranks
// as threads pass the collective checks every Communicator passes
// (runtime/tests/CollectiveChecks.h, which runtime/tests/CommunicatorTest.cu
// runs on a GPU through NCCL and this world), on the world and on groups
// split from it; the split into the mesh's groups (MeshGroups); colors and
// keys of a split; ranks that disagree; a rank that never calls (the
// world's timeout); abort.
//
//===----------------------------------------------------------------------===//

#include "CollectiveChecks.h"
#include "moert/Mesh.h"
#include "moert/ThreadCommunicator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <list>
#include <mutex>
#include <thread>

using namespace moert;
using namespace moert::testing;

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

/// Host memory: a buffer is a copy of the data; collectives complete
/// before they return.
class HostMemory final : public CheckMemory {
public:
  void *buffer(const void *data, size_t bytes) override {
    buffers.emplace_back(std::max<size_t>(bytes, 1));
    if (bytes > 0)
      std::memcpy(buffers.back().data(), data, bytes);
    return buffers.back().data();
  }
  std::vector<char> read(const void *buffer, size_t bytes) override {
    const char *p = static_cast<const char *>(buffer);
    return std::vector<char>(p, p + bytes);
  }
  cudaStream_t stream() const override { return nullptr; }

private:
  std::list<std::vector<char>> buffers; ///< never moved once made
};

/// Fails the rank with every check of `results` that did not pass.
void failUnlessPassed(const std::vector<CheckResult> &results,
                      std::vector<std::string> &failures) {
  for (const CheckResult &result : results)
    if (!result.pass)
      failures.push_back(result.name + ": " + result.note);
}

class ThreadWorld : public ::testing::TestWithParam<int> {};

/// The checks every Communicator passes (runtime/tests/CollectiveChecks.h),
/// on the world and on a group split from it.
TEST_P(ThreadWorld, PassesTheCollectiveChecks) {
  auto failures = onRanks(GetParam(), [&](int r, Communicator &comm,
                                          auto &fail) {
    HostMemory memory;
    failUnlessPassed(checkCollectives(comm, memory), fail);
    std::unique_ptr<Communicator> half;
    if (succeeded(comm.split(r % 2, r, "half", half), fail))
      failUnlessPassed(checkCollectives(*half, memory), fail);
  });
  EXPECT_TRUE(failures.empty()) << failures.front();
}

/// The mesh groups: every group's members, all-gathered as world ranks,
/// are the ranks that share the coordinates outside its axes, in world
/// order, and the rank's index in it is its place there.
TEST(ThreadWorldMesh, GroupsOfEveryAxesSet) {
  for (MeshShape shape : {MeshShape{1, 2, 2}, MeshShape{2, 2, 2},
                          MeshShape{1, 1, 8}, MeshShape{2, 1, 2}}) {
    auto failures = onRanks(static_cast<int>(shape.size()),
                            [&](int, Communicator &world, auto &fail) {
                              HostMemory memory;
                              failUnlessPassed(
                                  checkMeshGroups(world, shape, memory), fail);
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
