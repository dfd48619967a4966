//===- WatchdogTest.cpp - Unit tests of the collectives' watchdog ---------===//
//
// The watchdog's timing on a fake clock and scripted polls: finished
// collectives are forgotten, failed ones reported at once, pending ones
// reported only once the timeout has passed, each fault once; a peer found
// gone faults the collectives still pending after the grace, naming it; and
// its thread reports a collective that never finishes on the real clock.
//
//===----------------------------------------------------------------------===//

#include "moert/Watchdog.h"

#include <gtest/gtest.h>

#include <atomic>

using namespace moert;
using namespace std::chrono_literals;
using Progress = Watchdog::Progress;

namespace {

struct FakeClock {
  Watchdog::TimePoint now{};
  Watchdog::Clock clock() {
    return [this] { return now; };
  }
};

Watchdog::Poll scripted(const Progress &progress) {
  return [&progress](std::string &why) {
    if (progress == Progress::Failed)
      why = "unhandled cuda error (ncclCommGetAsyncError)";
    return progress;
  };
}

TEST(Watchdog, ReportsOnlyPastTheTimeoutAndOnce) {
  FakeClock time;
  std::vector<std::string> faults;
  Watchdog watchdog(
      5s, [&](const std::string &message) { faults.push_back(message); },
      time.clock());
  Progress allGather = Progress::Pending, allReduce = Progress::Pending;
  watchdog.watch("rank 1 of 4 in group 'expert': all_gather",
                 scripted(allGather));
  time.now += 2s;
  watchdog.watch("rank 1 of 4 in group 'shard': all_reduce_sum",
                 scripted(allReduce));
  EXPECT_EQ(watchdog.check(), 2u);
  time.now += 3s; // all_gather has waited exactly the timeout: not late.
  EXPECT_EQ(watchdog.check(), 2u);
  EXPECT_TRUE(faults.empty());
  time.now += 1ms;
  EXPECT_EQ(watchdog.check(), 1u);
  ASSERT_EQ(faults.size(), 1u);
  EXPECT_EQ(faults[0], "rank 1 of 4 in group 'expert': all_gather did not "
                       "finish within 5.0 s (the watchdog's timeout)");
  allReduce = Progress::Done; // Finishes before its own timeout.
  time.now += 10s;
  EXPECT_EQ(watchdog.check(), 0u);
  EXPECT_EQ(faults.size(), 1u);
}

TEST(Watchdog, ReportsAFailureAtOnce) {
  FakeClock time;
  std::vector<std::string> faults;
  Watchdog watchdog(
      60s, [&](const std::string &message) { faults.push_back(message); },
      time.clock());
  Progress progress = Progress::Pending;
  watchdog.watch("rank 0 of 2 in group 'world': all_to_all_v",
                 scripted(progress));
  EXPECT_EQ(watchdog.check(), 1u);
  progress = Progress::Failed;
  EXPECT_EQ(watchdog.check(), 0u);
  ASSERT_EQ(faults.size(), 1u);
  EXPECT_EQ(faults[0], "rank 0 of 2 in group 'world': all_to_all_v failed: "
                       "unhandled cuda error (ncclCommGetAsyncError)");
  EXPECT_EQ(watchdog.check(), 0u);
  EXPECT_EQ(faults.size(), 1u);
}

TEST(Watchdog, ACollectiveWatchedDuringAPollIsKept) {
  FakeClock time;
  Watchdog watchdog(1s, [](const std::string &) {}, time.clock());
  Progress later = Progress::Pending;
  watchdog.watch("first", [&](std::string &) {
    watchdog.watch("second", scripted(later));
    return Progress::Done;
  });
  EXPECT_EQ(watchdog.check(), 1u);
  later = Progress::Done;
  EXPECT_EQ(watchdog.check(), 0u);
}

TEST(Watchdog, AGonePeerFaultsThePendingCollectivesAfterTheGrace) {
  FakeClock time;
  std::vector<std::string> faults;
  Watchdog watchdog(
      600s, [&](const std::string &message) { faults.push_back(message); },
      time.clock());
  std::vector<int> found; // what the next probe finds gone
  watchdog.watchPeers(
      [&] {
        std::vector<int> gone;
        gone.swap(found);
        return gone;
      },
      2s);
  Progress allToAll = Progress::Pending, finishing = Progress::Pending;
  watchdog.watch("rank 0 of 2 in group 'expert': all_to_all",
                 scripted(allToAll));
  watchdog.watch("rank 0 of 2 in group 'world': all_reduce",
                 scripted(finishing));
  found = {1};
  EXPECT_EQ(watchdog.check(), 2u); // found gone now: within the grace
  time.now += 2s;
  finishing = Progress::Done; // a collective the peer finished before it died
  EXPECT_EQ(watchdog.check(), 1u);
  EXPECT_TRUE(faults.empty());
  time.now += 1ms;
  EXPECT_EQ(watchdog.check(), 0u);
  ASSERT_EQ(faults.size(), 1u);
  EXPECT_EQ(faults[0], "rank 0 of 2 in group 'expert': all_to_all did not "
                       "finish: world rank 1 is gone (its connection to this "
                       "rank closed 2.0 s ago)");
  // Collectives enqueued later fault at the next check.
  watchdog.watch("rank 0 of 2 in group 'world': barrier",
                 scripted(allToAll));
  EXPECT_EQ(watchdog.check(), 0u);
  ASSERT_EQ(faults.size(), 2u);
  EXPECT_EQ(faults[1], "rank 0 of 2 in group 'world': barrier did not "
                       "finish: world rank 1 is gone (its connection to this "
                       "rank closed 2.0 s ago)");
}

TEST(Watchdog, GonePeersWithNothingPendingAreNoFault) {
  FakeClock time;
  std::vector<std::string> faults;
  Watchdog watchdog(
      600s, [&](const std::string &message) { faults.push_back(message); },
      time.clock());
  std::vector<int> found = {3, 1};
  watchdog.watchPeers(
      [&] {
        std::vector<int> gone;
        gone.swap(found);
        return gone;
      },
      1s);
  EXPECT_EQ(watchdog.check(), 0u);
  time.now += 5s;
  EXPECT_EQ(watchdog.check(), 0u);
  EXPECT_TRUE(faults.empty()); // the peers ended, this rank waits for nothing
  watchdog.watch("rank 2 of 4 in group 'shard': reduce_scatter",
                 [](std::string &) { return Progress::Pending; });
  EXPECT_EQ(watchdog.check(), 0u);
  ASSERT_EQ(faults.size(), 1u);
  EXPECT_EQ(faults[0], "rank 2 of 4 in group 'shard': reduce_scatter did not "
                       "finish: world ranks 3, 1 are gone (the first "
                       "connection closed 5.0 s ago)");
}

TEST(Watchdog, ItsThreadReportsACollectiveThatNeverFinishes) {
  std::atomic<int> faults{0};
  std::string message;
  std::mutex mutex;
  Watchdog watchdog(100ms, [&](const std::string &text) {
    std::lock_guard<std::mutex> lock(mutex);
    message = text;
    ++faults;
  });
  auto start = std::chrono::steady_clock::now();
  watchdog.watch("rank 3 of 8 in group 'replica': reduce_scatter_sum",
                 [](std::string &) { return Progress::Pending; });
  watchdog.start(10ms);
  while (faults == 0 && std::chrono::steady_clock::now() - start < 5s)
    std::this_thread::sleep_for(5ms);
  watchdog.stop();
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_EQ(faults, 1);
  EXPECT_GE(elapsed, 100ms);
  EXPECT_LT(elapsed, 2s);
  std::lock_guard<std::mutex> lock(mutex);
  EXPECT_EQ(message, "rank 3 of 8 in group 'replica': reduce_scatter_sum did "
                     "not finish within 0.1 s (the watchdog's timeout)");
}

} // namespace
