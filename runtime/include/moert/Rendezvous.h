//===- Rendezvous.h - The job's TCP rendezvous ------------------*- C++ -*-===//
//
// Before the ranks of a job can make their NCCL world communicator, rank 0's
// unique id has to reach every rank. The rendezvous does that over TCP: rank
// 0 listens on MASTER_ADDR:MASTER_PORT, every other rank connects, answers
// rank 0's random challenge with an HMAC-SHA-256 under the job's token
// (MOERT_JOB_TOKEN, which the launcher generates) of the challenge, its
// rank and its world size; once all ranks have joined, rank 0 sends the
// payload (the unique id's bytes) to each of them.
//
// A peer without the token is refused and nothing it sent is used: messages
// have fixed headers, every length is checked against a small cap before
// anything is read or allocated, and every read has a deadline. A rank that
// never joins makes every joined rank, and rank 0, fail at the rendezvous
// timeout with a message naming the missing ranks; a rank that cannot reach
// rank 0 fails at its timeout. The token never travels: an observer of the
// network sees only challenges and their answers, which do not replay (each
// connection gets a fresh challenge); the answer is compared in constant
// time. The payload itself is sent in clear.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_RENDEZVOUS_H
#define MOERT_RENDEZVOUS_H

#include "moert/Bootstrap.h"
#include "moert/PeerLinks.h"
#include "moert/Status.h"

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace moert {

/// The environment variable that carries the job's token to every rank.
inline constexpr const char *kJobTokenVariable = "MOERT_JOB_TOKEN";

/// The environment variable that sets the rendezvous timeout, in seconds
/// (default 300).
inline constexpr const char *kRendezvousTimeoutVariable =
    "MOERT_RENDEZVOUS_TIMEOUT";

/// The longest token the rendezvous accepts, in bytes.
inline constexpr size_t kMaxJobTokenBytes = 256;

/// The largest payload rank 0 may send, in bytes.
inline constexpr size_t kMaxRendezvousPayloadBytes = 4096;

struct RendezvousOptions {
  /// The job's token; every rank must present the same one. Never empty.
  std::string token;
  /// How long the whole rendezvous may take, on every rank.
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  /// How long rank 0 waits for one connection's greeting before dropping it,
  /// so that a peer that connects and says nothing costs at most this.
  std::chrono::milliseconds greetingTimeout{std::chrono::seconds(2)};
};

/// A fresh token of 32 random bytes (from the system's random source), in
/// hexadecimal.
Status generateJobToken(std::string &token);

/// Rank 0's side: a socket listening for the other ranks.
class RendezvousServer {
public:
  RendezvousServer() = default;
  RendezvousServer(RendezvousServer &&other) noexcept;
  RendezvousServer &operator=(RendezvousServer &&other) noexcept;
  RendezvousServer(const RendezvousServer &) = delete;
  RendezvousServer &operator=(const RendezvousServer &) = delete;
  ~RendezvousServer();

  /// Listens on `host`:`port` (port 0: an ephemeral port, see port()).
  static Status listen(const std::string &host, int port,
                       RendezvousServer &out);

  /// The port it listens on.
  int port() const { return boundPort; }

  /// Waits until ranks 1..worldSize-1 have joined with the token, then sends
  /// them `payload`. Peers with a wrong token, a rank already taken or out
  /// of range, or another world size are refused (the message goes to them
  /// when they have the token) and the wait goes on. At the timeout, tells
  /// the joined ranks and fails naming the ranks that never joined. With
  /// `links`, the joined ranks' connections stay open there (each ranks'
  /// liveness, moert/PeerLinks.h) instead of being closed.
  Status serve(int worldSize, const std::vector<char> &payload,
               const RendezvousOptions &options, PeerLinks *links = nullptr);

private:
  int socketFd = -1;
  int boundPort = 0;
};

/// A rank other than 0: connects to rank 0 at `host`:`port` (retrying until
/// the timeout while nobody listens), joins as `rank` of `worldSize` and
/// receives the payload. With `links`, the connection to rank 0 stays open
/// there.
Status joinRendezvous(const std::string &host, int port, int rank,
                      int worldSize, const RendezvousOptions &options,
                      std::vector<char> &payload, PeerLinks *links = nullptr);

/// Makes the payload rank 0 hands out (for NCCL: a fresh unique id).
using PayloadMaker = std::function<Status(std::vector<char> &payload)>;

/// Rank `info.rank`'s payload for the job `info` describes, with the token
/// and timeout of the environment. A one-rank job makes it locally and opens
/// no socket; otherwise rank 0 makes it and listens on every interface at
/// MASTER_PORT, and the others join at MASTER_ADDR:MASTER_PORT. Fails,
/// naming the variable, when MASTER_ADDR, MASTER_PORT or the token is
/// missing or the timeout is not a positive number of seconds. With
/// `links` (and more than one rank), the rendezvous's connections stay open
/// there.
Status rendezvousFromEnvironment(const RankInfo &info, const EnvLookup &env,
                                 const PayloadMaker &makePayload,
                                 std::vector<char> &payload,
                                 PeerLinks *links = nullptr);

} // namespace moert

#endif // MOERT_RENDEZVOUS_H
