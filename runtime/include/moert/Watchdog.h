//===- Watchdog.h - Collectives that must finish in time --------*- C++ -*-===//
//
// A collective that never finishes (a dead peer, a rank that took another
// branch) would hang its rank forever. The watchdog watches the collectives
// a communicator has enqueued: a host thread polls each one (for NCCL: the
// event recorded behind it on its stream, and the communicator's
// asynchronous error), and when one fails or is still pending after the
// timeout, calls the fault handler once with a message naming the rank, the
// group and the collective; the NCCL communicator's handler aborts the
// communicator, which makes every pending and later call fail. Given a
// probe of the job's peers (moert/PeerLinks.h), it also faults a collective
// still pending `grace` after a peer was found gone, naming that peer,
// without waiting for the timeout. The clock is injectable, so the timing
// is tested without a GPU or a sleep.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_WATCHDOG_H
#define MOERT_WATCHDOG_H

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace moert {

class Watchdog {
public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Clock = std::function<TimePoint()>;

  /// Where a watched collective stands.
  enum class Progress { Pending, Done, Failed };
  /// Polls one collective; on Failed, says why in `why`.
  using Poll = std::function<Progress(std::string &why)>;
  /// Told, once per faulted collective, what went wrong.
  using FaultHandler = std::function<void(const std::string &message)>;
  /// The world ranks found gone since the last call (PeerLinks::poll).
  using PeerProbe = std::function<std::vector<int>()>;

  /// Collectives pending for longer than `timeout` fault.
  Watchdog(std::chrono::milliseconds timeout, FaultHandler onFault,
           Clock clock = std::chrono::steady_clock::now);
  Watchdog(const Watchdog &) = delete;
  Watchdog &operator=(const Watchdog &) = delete;
  ~Watchdog();

  /// Watches `what` ("rank R of S in group 'G': COLLECTIVE"), enqueued now.
  void watch(std::string what, Poll poll);

  /// Probes the peers at every check(): a collective pending longer than
  /// `grace` after a peer was found gone faults, naming the peer. (A peer
  /// that ends normally ends after its collectives, so the grace only has
  /// to cover this rank's last events being polled.)
  void watchPeers(PeerProbe probe, std::chrono::milliseconds grace);

  /// Probes the peers, then polls every watched collective once: forgets
  /// the finished ones, reports the failed, the late ones and those a gone
  /// peer left pending. Returns how many are pending.
  size_t check();

  /// Calls check() every `interval` on a thread of its own until stop().
  void start(std::chrono::milliseconds interval);
  void stop();

  std::chrono::milliseconds timeout() const { return limit; }

private:
  struct Watched {
    std::string what;
    TimePoint enqueued;
    Poll poll;
  };

  std::chrono::milliseconds limit;
  FaultHandler onFault;
  Clock clock;
  std::mutex mutex;
  std::vector<Watched> watched;
  PeerProbe probe;
  std::chrono::milliseconds peerGrace{0};
  /// The peers found gone, in the order found, and when the first was.
  std::vector<int> gonePeers;
  TimePoint firstGone{};
  std::thread thread;
  std::condition_variable wake;
  bool stopping = false;
};

} // namespace moert

#endif // MOERT_WATCHDOG_H
