//===- Watchdog.cpp - Collectives that must finish in time ----------------===//
//
// See moert/Watchdog.h. check() polls outside the lock, so that a poll that
// takes long (or a fault handler that aborts a communicator) never blocks
// the thread that enqueues the next collective.
//
//===----------------------------------------------------------------------===//

#include "moert/Watchdog.h"

#include <cstdio>

using namespace moert;

Watchdog::Watchdog(std::chrono::milliseconds timeout, FaultHandler onFault,
                   Clock clock)
    : limit(timeout), onFault(std::move(onFault)), clock(std::move(clock)) {}

Watchdog::~Watchdog() { stop(); }

void Watchdog::watch(std::string what, Poll poll) {
  std::lock_guard<std::mutex> lock(mutex);
  watched.push_back({std::move(what), clock(), std::move(poll)});
}

void Watchdog::watchPeers(PeerProbe peerProbe,
                          std::chrono::milliseconds grace) {
  std::lock_guard<std::mutex> lock(mutex);
  probe = std::move(peerProbe);
  peerGrace = grace;
}

size_t Watchdog::check() {
  std::vector<Watched> polled;
  PeerProbe peerProbe;
  {
    std::lock_guard<std::mutex> lock(mutex);
    polled.swap(watched);
    peerProbe = probe;
  }
  // The peers gone, once the grace has passed since the first was found.
  std::string goneText;
  if (peerProbe) {
    std::vector<int> found = peerProbe();
    if (!found.empty() && gonePeers.empty())
      firstGone = clock();
    gonePeers.insert(gonePeers.end(), found.begin(), found.end());
    auto since = std::chrono::duration_cast<std::chrono::milliseconds>(
        clock() - firstGone);
    if (!gonePeers.empty() && since > peerGrace) {
      std::string ranks;
      for (int peer : gonePeers)
        ranks += (ranks.empty() ? "" : ", ") + std::to_string(peer);
      char seconds[32];
      std::snprintf(seconds, sizeof(seconds), "%.1f s", since.count() / 1000.0);
      goneText = (gonePeers.size() == 1 ? "world rank " + ranks + " is gone"
                                        : "world ranks " + ranks + " are gone") +
                 (gonePeers.size() == 1 ? " (its connection to this rank "
                                          "closed "
                                        : " (the first connection closed ") +
                 seconds + " ago)";
    }
  }
  std::vector<Watched> pending;
  for (Watched &collective : polled) {
    std::string why;
    Progress progress = collective.poll(why);
    if (progress == Progress::Done)
      continue;
    if (progress == Progress::Failed) {
      onFault(collective.what + " failed: " + why);
      continue;
    }
    if (!goneText.empty()) {
      onFault(collective.what + " did not finish: " + goneText);
      continue;
    }
    auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
        clock() - collective.enqueued);
    if (waited > limit) {
      char seconds[32];
      std::snprintf(seconds, sizeof(seconds), "%.1f s", limit.count() / 1000.0);
      onFault(collective.what + " did not finish within " + seconds +
              " (the watchdog's timeout)");
      continue;
    }
    pending.push_back(std::move(collective));
  }
  std::lock_guard<std::mutex> lock(mutex);
  // Collectives enqueued while polling go after the older ones.
  pending.insert(pending.end(), std::make_move_iterator(watched.begin()),
                 std::make_move_iterator(watched.end()));
  watched.swap(pending);
  return watched.size();
}

void Watchdog::start(std::chrono::milliseconds interval) {
  stop();
  {
    std::lock_guard<std::mutex> lock(mutex);
    stopping = false;
  }
  thread = std::thread([this, interval] {
    std::unique_lock<std::mutex> lock(mutex);
    while (!wake.wait_for(lock, interval, [this] { return stopping; })) {
      lock.unlock();
      check();
      lock.lock();
    }
  });
}

void Watchdog::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex);
    stopping = true;
  }
  wake.notify_all();
  if (thread.joinable())
    thread.join();
}
