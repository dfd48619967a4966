//===- RendezvousTest.cpp - Unit tests of the TCP rendezvous --------------===//
//
// The ranks of a job as threads on 127.0.0.1, rank 0 on an ephemeral port:
// every rank gets the payload; a peer with a wrong token, a duplicate rank,
// another world size or plain garbage is refused and the job still
// completes for the right ranks; a rank that never joins makes every joined
// rank fail within the timeout, naming it; a rank that cannot reach rank 0
// fails within its timeout; the connections kept after the rendezvous
// (moert/PeerLinks.h) tell which peer is gone, one that ended and one
// killed by SIGKILL.
//
//===----------------------------------------------------------------------===//

#include "moert/Rendezvous.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <algorithm>
#include <future>
#include <map>
#include <thread>

using namespace moert;
using namespace std::chrono_literals;

namespace {

const std::string kHost = "127.0.0.1";

RendezvousOptions options(std::chrono::milliseconds timeout = 10s) {
  RendezvousOptions result;
  result.token = "the-job-token";
  result.timeout = timeout;
  result.greetingTimeout = 500ms;
  return result;
}

std::vector<char> uniqueIdBytes() {
  std::vector<char> bytes(128);
  for (size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = static_cast<char>(i * 7 + 3);
  return bytes;
}

struct Joined {
  Status status = Status::success();
  std::vector<char> payload;
};

std::future<Joined> joinAsync(int port, int rank, int worldSize,
                              RendezvousOptions opts) {
  return std::async(std::launch::async, [=] {
    Joined joined;
    joined.status =
        joinRendezvous(kHost, port, rank, worldSize, opts, joined.payload);
    return joined;
  });
}

/// Connects to `port` and sends `bytes`, then holds the connection for
/// `hold` before closing it.
void sendRaw(int port, const std::string &bytes,
             std::chrono::milliseconds hold = 0ms) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, kHost.c_str(), &address.sin_addr);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr *>(&address),
                      sizeof(address)),
            0);
  if (!bytes.empty()) {
    ASSERT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  }
  std::this_thread::sleep_for(hold);
  ::close(fd);
}

RendezvousServer listenEphemeral() {
  RendezvousServer server;
  Status status = RendezvousServer::listen(kHost, 0, server);
  EXPECT_TRUE(status.ok()) << status.message();
  EXPECT_GT(server.port(), 0);
  return server;
}

TEST(Rendezvous, EveryRankGetsThePayload) {
  for (int worldSize : {2, 4, 8}) {
    RendezvousServer server = listenEphemeral();
    std::vector<std::future<Joined>> ranks;
    for (int rank = worldSize - 1; rank >= 1; --rank)
      ranks.push_back(joinAsync(server.port(), rank, worldSize, options()));
    Status served = server.serve(worldSize, uniqueIdBytes(), options());
    ASSERT_TRUE(served.ok()) << served.message();
    for (auto &rank : ranks) {
      Joined joined = rank.get();
      ASSERT_TRUE(joined.status.ok()) << joined.status.message();
      EXPECT_EQ(joined.payload, uniqueIdBytes());
    }
  }
}

TEST(Rendezvous, RanksMayStartBeforeRankZeroListens) {
  // Rank 1 starts first and retries; the port is taken from a listener that
  // is closed and reopened, as a rank 0 that starts late would.
  int port;
  {
    RendezvousServer probe = listenEphemeral();
    port = probe.port();
  }
  std::future<Joined> rank1 = joinAsync(port, 1, 2, options());
  std::this_thread::sleep_for(200ms);
  RendezvousServer server;
  ASSERT_TRUE(RendezvousServer::listen(kHost, port, server).ok());
  Status served = server.serve(2, uniqueIdBytes(), options());
  ASSERT_TRUE(served.ok()) << served.message();
  Joined joined = rank1.get();
  ASSERT_TRUE(joined.status.ok()) << joined.status.message();
  EXPECT_EQ(joined.payload, uniqueIdBytes());
}

std::future<Status> serveAsync(RendezvousServer &server, int worldSize,
                               RendezvousOptions opts = options()) {
  return std::async(std::launch::async, [&server, worldSize, opts] {
    return server.serve(worldSize, uniqueIdBytes(), opts);
  });
}

bool contains(const Status &status, const std::string &text) {
  return status.message().find(text) != std::string::npos;
}

TEST(Rendezvous, WrongTokenIsRefusedAndTheJobCompletes) {
  RendezvousServer server = listenEphemeral();
  std::future<Status> served = serveAsync(server, 3);
  RendezvousOptions wrong = options();
  wrong.token = "the-job-tokem";
  Joined intruder = joinAsync(server.port(), 1, 3, wrong).get();
  ASSERT_FALSE(intruder.status.ok());
  EXPECT_TRUE(contains(intruder.status, "job token is wrong"))
      << intruder.status.message();
  EXPECT_TRUE(intruder.payload.empty());
  // A token that only starts like the job's fails the same way.
  wrong.token = "the-job-token-and-more";
  EXPECT_FALSE(joinAsync(server.port(), 2, 3, wrong).get().status.ok());

  std::future<Joined> rank1 = joinAsync(server.port(), 1, 3, options());
  std::future<Joined> rank2 = joinAsync(server.port(), 2, 3, options());
  Status status = served.get();
  ASSERT_TRUE(status.ok()) << status.message();
  for (auto *rank : {&rank1, &rank2}) {
    Joined joined = rank->get();
    ASSERT_TRUE(joined.status.ok()) << joined.status.message();
    EXPECT_EQ(joined.payload, uniqueIdBytes());
  }
}

TEST(Rendezvous, DuplicateOutOfRangeAndMismatchedRanksAreRefused) {
  RendezvousServer server = listenEphemeral();
  std::future<Status> served = serveAsync(server, 3);
  std::future<Joined> rank1 = joinAsync(server.port(), 1, 3, options());
  // Rank 1 is accepted before its duplicate greets rank 0.
  std::this_thread::sleep_for(200ms);
  Joined duplicate = joinAsync(server.port(), 1, 3, options()).get();
  EXPECT_TRUE(contains(duplicate.status, "rank 1 has already joined"))
      << duplicate.status.message();
  Joined outOfRange = joinAsync(server.port(), 3, 3, options()).get();
  EXPECT_TRUE(
      contains(outOfRange.status, "rank 3 is not a joining rank of a world of 3"))
      << outOfRange.status.message();
  Joined rankZero = joinAsync(server.port(), 0, 3, options()).get();
  EXPECT_TRUE(contains(rankZero.status, "rank 0 is not a joining rank"))
      << rankZero.status.message();
  Joined mismatch = joinAsync(server.port(), 2, 4, options()).get();
  EXPECT_TRUE(contains(mismatch.status,
                       "rank 2 says the world has 4 ranks, rank 0 says 3"))
      << mismatch.status.message();

  std::future<Joined> rank2 = joinAsync(server.port(), 2, 3, options());
  Status status = served.get();
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_TRUE(rank1.get().status.ok());
  EXPECT_TRUE(rank2.get().status.ok());
}

TEST(Rendezvous, ARankThatNeverJoinsFailsEveryRankWithinTheTimeout) {
  RendezvousServer server = listenEphemeral();
  auto start = std::chrono::steady_clock::now();
  std::future<Status> served = serveAsync(server, 4, options(1s));
  std::future<Joined> rank1 = joinAsync(server.port(), 1, 4, options(1s));
  std::future<Joined> rank3 = joinAsync(server.port(), 3, 4, options(1s));
  Status status = served.get();
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(contains(status, "rank(s) 2 of 4 never joined"))
      << status.message();
  for (auto *rank : {&rank1, &rank3}) {
    Joined joined = rank->get();
    ASSERT_FALSE(joined.status.ok());
    EXPECT_TRUE(contains(joined.status, "rank(s) 2 of 4 never joined"))
        << joined.status.message();
    EXPECT_TRUE(joined.payload.empty());
  }
  // The timeout, and the greeting slack the joined ranks allow rank 0.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2500ms);
}

TEST(Rendezvous, RefusalsAreNamedWhenTheJobTimesOut) {
  RendezvousServer server = listenEphemeral();
  std::future<Status> served = serveAsync(server, 2, options(1s));
  RendezvousOptions wrong = options(1s);
  wrong.token = "guess";
  for (int attempt = 0; attempt < 10; ++attempt)
    EXPECT_FALSE(joinAsync(server.port(), 1, 2, wrong).get().status.ok());
  Status status = served.get();
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(contains(status, "rank(s) 1 of 2 never joined; refused a peer "
                               "with a wrong job token"))
      << status.message();
  // The first eight are named, the others counted.
  EXPECT_TRUE(contains(status, "wrong job token; refused 2 more peers"))
      << status.message();
}

TEST(Rendezvous, ARankThatCannotReachRankZeroFailsWithinTheTimeout) {
  int port;
  {
    RendezvousServer probe = listenEphemeral();
    port = probe.port();
  } // Nobody listens on `port` any more.
  auto start = std::chrono::steady_clock::now();
  Joined joined = joinAsync(port, 1, 2, options(500ms)).get();
  ASSERT_FALSE(joined.status.ok());
  EXPECT_TRUE(contains(joined.status, "rank 1: cannot reach rank 0 at "
                                      "127.0.0.1:" +
                                          std::to_string(port)))
      << joined.status.message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1500ms);
}

TEST(Rendezvous, GarbageFromNonPeersIsDropped) {
  RendezvousServer server = listenEphemeral();
  std::future<Status> served = serveAsync(server, 2);
  // Not the magic; the magic, rank 1 of 2 and a made-up answer followed by
  // junk; a silent peer that holds its connection past the greeting
  // timeout; a truncated greeting.
  sendRaw(server.port(), "GET / HTTP/1.1\r\n\r\n");
  std::string madeUp("MOERTRV2\0\0\0\1\0\0\0\2", 16);
  sendRaw(server.port(), madeUp + std::string(1000, 'x'));
  std::thread silent(sendRaw, server.port(), "", 1000ms);
  sendRaw(server.port(), std::string("MOERTRV2\0\0", 10));
  silent.join();
  Joined rank1 = joinAsync(server.port(), 1, 2, options()).get();
  ASSERT_TRUE(rank1.status.ok()) << rank1.status.message();
  EXPECT_EQ(rank1.payload, uniqueIdBytes());
  Status status = served.get();
  EXPECT_TRUE(status.ok()) << status.message();
}

TEST(Rendezvous, ARankRefusesAServerThatIsNotARendezvous) {
  // A server that answers with something else than a challenge.
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  ::inet_pton(AF_INET, kHost.c_str(), &address.sin_addr);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr *>(&address),
                   sizeof(address)),
            0);
  ASSERT_EQ(::listen(listener, 1), 0);
  socklen_t size = sizeof(address);
  ::getsockname(listener, reinterpret_cast<sockaddr *>(&address), &size);
  int port = ntohs(address.sin_port);
  std::thread server([listener] {
    int peer = ::accept(listener, nullptr, nullptr);
    std::string banner = "SSH-2.0-OpenSSH_9.6 and then some padding bytes\r\n";
    (void)!::send(peer, banner.data(), banner.size(), MSG_NOSIGNAL);
    std::this_thread::sleep_for(200ms);
    ::close(peer);
  });
  Joined joined = joinAsync(port, 1, 2, options(2s)).get();
  server.join();
  ::close(listener);
  ASSERT_FALSE(joined.status.ok());
  EXPECT_TRUE(contains(joined.status, "is not a moert rendezvous"))
      << joined.status.message();
}

/// Polls `links` until it finds a peer gone (5 s at most).
std::vector<int> pollUntilGone(PeerLinks &links) {
  auto start = std::chrono::steady_clock::now();
  std::vector<int> gone;
  while (gone.empty() && std::chrono::steady_clock::now() - start < 5s) {
    gone = links.poll();
    std::this_thread::sleep_for(5ms);
  }
  return gone;
}

TEST(Rendezvous, KeptConnectionsTellWhichPeerIsGone) {
  RendezvousServer server = listenEphemeral();
  std::vector<std::unique_ptr<PeerLinks>> links;
  for (int rank = 0; rank < 3; ++rank)
    links.push_back(std::make_unique<PeerLinks>());
  std::vector<std::future<Status>> joiners;
  for (int rank = 1; rank < 3; ++rank)
    joiners.push_back(std::async(std::launch::async, [&, rank] {
      std::vector<char> payload;
      return joinRendezvous(kHost, server.port(), rank, 3, options(), payload,
                            links[rank].get());
    }));
  Status served = server.serve(3, uniqueIdBytes(), options(), links[0].get());
  ASSERT_TRUE(served.ok()) << served.message();
  for (auto &joiner : joiners) {
    Status joined = joiner.get();
    ASSERT_TRUE(joined.ok()) << joined.message();
  }
  std::vector<int> peers = links[0]->peers(); // in the order they joined
  std::sort(peers.begin(), peers.end());
  EXPECT_EQ(peers, (std::vector<int>{1, 2}));
  EXPECT_EQ(links[1]->peers(), std::vector<int>{0});
  EXPECT_TRUE(links[0]->poll().empty()); // everyone is alive
  EXPECT_TRUE(links[1]->poll().empty());
  links[2].reset(); // rank 2 ends
  EXPECT_EQ(pollUntilGone(*links[0]), std::vector<int>{2});
  EXPECT_TRUE(links[0]->poll().empty()); // each peer once
  EXPECT_TRUE(links[1]->poll().empty()); // rank 1 sees rank 0 only
  links[0].reset(); // rank 0 ends
  EXPECT_EQ(pollUntilGone(*links[1]), std::vector<int>{0});
}

TEST(Rendezvous, APeerKilledBySigkillIsFoundGone) {
  RendezvousServer server = listenEphemeral();
  int port = server.port();
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Rank 1 in a process of its own: joins, keeps its connection, waits to
    // be killed.
    PeerLinks kept;
    std::vector<char> payload;
    if (!joinRendezvous(kHost, port, 1, 2, options(), payload, &kept).ok())
      ::_exit(1);
    for (;;)
      ::pause();
  }
  PeerLinks links;
  Status served = server.serve(2, uniqueIdBytes(), options(), &links);
  ASSERT_TRUE(served.ok()) << served.message();
  EXPECT_TRUE(links.poll().empty());
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  EXPECT_EQ(pollUntilGone(links), std::vector<int>{1});
}

TEST(Rendezvous, JobTokensAreFreshAndHexadecimal) {
  std::string a, b;
  ASSERT_TRUE(generateJobToken(a).ok());
  ASSERT_TRUE(generateJobToken(b).ok());
  EXPECT_EQ(a.size(), 64u);
  EXPECT_NE(a, b);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
}

TEST(Rendezvous, NoTokenIsNoRendezvous) {
  RendezvousServer server = listenEphemeral();
  RendezvousOptions none = options();
  none.token.clear();
  Status served = server.serve(2, uniqueIdBytes(), none);
  ASSERT_FALSE(served.ok());
  EXPECT_NE(served.message().find("MOERT_JOB_TOKEN"), std::string::npos)
      << served.message();
  std::vector<char> payload;
  Status joined = joinRendezvous(kHost, server.port(), 1, 2, none, payload);
  ASSERT_FALSE(joined.ok());
  EXPECT_NE(joined.message().find("no job token"), std::string::npos);
}

EnvLookup fakeEnv(std::map<std::string, std::string> vars) {
  return [vars](const char *name, std::string &value) {
    auto it = vars.find(name);
    if (it == vars.end())
      return false;
    value = it->second;
    return true;
  };
}

PayloadMaker countedPayload(int &calls) {
  return [&calls](std::vector<char> &payload) {
    ++calls;
    payload = uniqueIdBytes();
    return Status::success();
  };
}

TEST(RendezvousFromEnvironment, OneRankMakesThePayloadWithoutASocket) {
  RankInfo single; // No launcher: rank 0 of 1, no master, no token.
  int calls = 0;
  std::vector<char> payload;
  Status status =
      rendezvousFromEnvironment(single, fakeEnv({}), countedPayload(calls),
                                payload);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(payload, uniqueIdBytes());
}

TEST(RendezvousFromEnvironment, RanksMeetThroughTheLaunchersVariables) {
  int port;
  {
    RendezvousServer probe = listenEphemeral();
    port = probe.port();
  }
  const int worldSize = 3;
  std::vector<int> calls(worldSize, 0);
  std::vector<std::future<Joined>> ranks;
  for (int rank = 0; rank < worldSize; ++rank)
    ranks.push_back(std::async(std::launch::async, [&, rank] {
      std::map<std::string, std::string> vars = {
          {"RANK", std::to_string(rank)},
          {"WORLD_SIZE", std::to_string(worldSize)},
          {"MASTER_ADDR", kHost},
          {"MASTER_PORT", std::to_string(port)},
          {"MOERT_JOB_TOKEN", "secret"},
          {"MOERT_RENDEZVOUS_TIMEOUT", "10"}};
      Joined joined;
      RankInfo info;
      joined.status = detectRank(fakeEnv(vars), info);
      if (joined.status.ok())
        joined.status = rendezvousFromEnvironment(
            info, fakeEnv(vars), countedPayload(calls[rank]), joined.payload);
      return joined;
    }));
  for (int rank = 0; rank < worldSize; ++rank) {
    Joined joined = ranks[rank].get();
    ASSERT_TRUE(joined.status.ok()) << joined.status.message();
    EXPECT_EQ(joined.payload, uniqueIdBytes());
    EXPECT_EQ(calls[rank], rank == 0 ? 1 : 0) << "rank " << rank;
  }
}

TEST(RendezvousFromEnvironment, NamesWhatIsMissing) {
  RankInfo info;
  info.rank = 1;
  info.worldSize = 2;
  int calls = 0;
  std::vector<char> payload;
  Status noPort = rendezvousFromEnvironment(
      info, fakeEnv({{"MOERT_JOB_TOKEN", "t"}}), countedPayload(calls),
      payload);
  EXPECT_TRUE(contains(noPort, "rank 1 of 2: MASTER_PORT is not set"))
      << noPort.message();
  info.masterPort = 1;
  Status noAddr = rendezvousFromEnvironment(
      info, fakeEnv({{"MOERT_JOB_TOKEN", "t"}}), countedPayload(calls),
      payload);
  EXPECT_TRUE(contains(noAddr, "MASTER_ADDR is not set")) << noAddr.message();
  info.masterAddr = kHost;
  Status noToken =
      rendezvousFromEnvironment(info, fakeEnv({}), countedPayload(calls),
                                payload);
  EXPECT_TRUE(contains(noToken, "MOERT_JOB_TOKEN is not set"))
      << noToken.message();
  Status badTimeout = rendezvousFromEnvironment(
      info,
      fakeEnv({{"MOERT_JOB_TOKEN", "t"}, {"MOERT_RENDEZVOUS_TIMEOUT", "-5"}}),
      countedPayload(calls), payload);
  EXPECT_TRUE(contains(badTimeout, "MOERT_RENDEZVOUS_TIMEOUT='-5' is not a "
                                   "positive number of seconds"))
      << badTimeout.message();
  EXPECT_EQ(calls, 0);
}

} // namespace
