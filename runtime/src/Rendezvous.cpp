//===- Rendezvous.cpp - The job's TCP rendezvous --------------------------===//
//
// See moert/Rendezvous.h. The wire format, all integers big-endian:
//
//   challenge (rank 0 -> rank r): "MOERTRV2" nonce:32 bytes
//   greeting  (rank r -> rank 0): "MOERTRV2" rank:u32 worldSize:u32 mac:32
//   reply     (rank 0 -> rank r): kind:u8 length:u32 bytes
//
// where mac = HMAC-SHA-256(token, nonce "MOERTRV2" rank worldSize): proof
// that the rank knows the token, bound to this connection's fresh nonce and
// to what the rank claims, without sending the token.
//
// A reply's kind is kAccepted (empty; the rank waits), kRefused (the reason),
// kPayload (the payload) or kFailed (why the job fails). Rank 0 reads one
// greeting at a time with a short deadline, so a silent or slow peer delays
// the others by at most RendezvousOptions::greetingTimeout.
//
//===----------------------------------------------------------------------===//

#include "moert/Rendezvous.h"
#include "moert/Hmac.h"

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

#include <array>
#include <set>

using namespace moert;
using Clock = std::chrono::steady_clock;

namespace {

constexpr char kMagic[8] = {'M', 'O', 'E', 'R', 'T', 'R', 'V', '2'};
constexpr size_t kNonceBytes = 32;
constexpr size_t kChallengeBytes = sizeof(kMagic) + kNonceBytes;
constexpr size_t kGreetingBytes = sizeof(kMagic) + 2 * 4 + 32;
constexpr size_t kMaxNamedRefusals = 8;
constexpr size_t kMaxReplyBytes = kMaxRendezvousPayloadBytes;

enum ReplyKind : uint8_t { kAccepted = 0, kRefused = 1, kPayload = 2,
                           kFailed = 3 };

std::string errnoText() { return std::strerror(errno); }

std::string seconds(std::chrono::milliseconds duration) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f s", duration.count() / 1000.0);
  return text;
}

/// Closes a socket when it goes out of scope.
struct Socket {
  int fd = -1;
  explicit Socket(int fd) : fd(fd) {}
  Socket(Socket &&other) noexcept : fd(other.fd) { other.fd = -1; }
  Socket(const Socket &) = delete;
  ~Socket() {
    if (fd >= 0)
      ::close(fd);
  }
};

int millisecondsUntil(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - Clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

/// Waits until `fd` has `events` or the deadline passes.
bool waitFor(int fd, short events, Clock::time_point deadline) {
  while (true) {
    pollfd entry{fd, events, 0};
    int ready = ::poll(&entry, 1, millisecondsUntil(deadline));
    if (ready > 0)
      return true;
    if (ready == 0 || errno != EINTR)
      return false;
  }
}

/// Reads exactly `size` bytes before the deadline; false on timeout, error
/// or end of stream.
bool readExact(int fd, void *data, size_t size, Clock::time_point deadline) {
  char *out = static_cast<char *>(data);
  while (size > 0) {
    if (!waitFor(fd, POLLIN, deadline))
      return false;
    ssize_t got = ::recv(fd, out, size, 0);
    if (got < 0 && (errno == EINTR || errno == EAGAIN))
      continue;
    if (got <= 0)
      return false;
    out += got;
    size -= static_cast<size_t>(got);
  }
  return true;
}

bool writeAll(int fd, const void *data, size_t size,
              Clock::time_point deadline) {
  const char *in = static_cast<const char *>(data);
  while (size > 0) {
    if (!waitFor(fd, POLLOUT, deadline))
      return false;
    ssize_t sent = ::send(fd, in, size, MSG_NOSIGNAL);
    if (sent < 0 && (errno == EINTR || errno == EAGAIN))
      continue;
    if (sent <= 0)
      return false;
    in += sent;
    size -= static_cast<size_t>(sent);
  }
  return true;
}

void putU32(std::vector<char> &out, uint32_t value) {
  uint32_t big = htonl(value);
  const char *bytes = reinterpret_cast<const char *>(&big);
  out.insert(out.end(), bytes, bytes + 4);
}

uint32_t getU32(const char *in) {
  uint32_t big;
  std::memcpy(&big, in, 4);
  return ntohl(big);
}

bool sendReply(int fd, ReplyKind kind, const char *data, size_t size,
               Clock::time_point deadline) {
  std::vector<char> message{static_cast<char>(kind)};
  putU32(message, static_cast<uint32_t>(size));
  message.insert(message.end(), data, data + size);
  return writeAll(fd, message.data(), message.size(), deadline);
}

bool sendReply(int fd, ReplyKind kind, const std::string &text,
               Clock::time_point deadline) {
  return sendReply(fd, kind, text.data(), text.size(), deadline);
}

/// Compares in time that does not depend on where the first difference is.
bool sameDigest(const Sha256Digest &expected, const char *given) {
  unsigned char difference = 0;
  for (size_t i = 0; i < expected.size(); ++i)
    difference |= expected[i] ^ static_cast<unsigned char>(given[i]);
  return difference == 0;
}

/// What a rank claiming `rank` of `worldSize` proves it knows the token
/// with, in answer to `nonce`.
Sha256Digest greetingMac(const std::string &token, const char *nonce,
                         uint32_t rank, uint32_t worldSize) {
  std::vector<char> message(nonce, nonce + kNonceBytes);
  message.insert(message.end(), kMagic, kMagic + sizeof(kMagic));
  putU32(message, rank);
  putU32(message, worldSize);
  return hmacSha256(token, std::string_view(message.data(), message.size()));
}

/// Fills `size` bytes from the system's random source.
Status randomBytes(void *data, size_t size) {
  int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return Status::failure("cannot open /dev/urandom: " + errnoText());
  Socket file(fd);
  size_t have = 0;
  while (have < size) {
    ssize_t got = ::read(fd, static_cast<char *>(data) + have, size - have);
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0)
      return Status::failure("cannot read /dev/urandom");
    have += static_cast<size_t>(got);
  }
  return Status::success();
}

Status resolve(const std::string &host, int port, bool passive,
               addrinfo *&result) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  std::string service = std::to_string(port);
  int error = ::getaddrinfo(host.empty() ? nullptr : host.c_str(),
                            service.c_str(), &hints, &result);
  if (error != 0)
    return Status::failure("rendezvous: cannot resolve '" + host + ":" +
                           service + "': " + ::gai_strerror(error));
  return Status::success();
}

Status checkOptions(const RendezvousOptions &options) {
  if (options.token.empty())
    return Status::failure(std::string("rendezvous: no job token (") +
                           kJobTokenVariable + " is not set or empty)");
  if (options.token.size() > kMaxJobTokenBytes)
    return Status::failure("rendezvous: the job token has " +
                           std::to_string(options.token.size()) +
                           " bytes, more than " +
                           std::to_string(kMaxJobTokenBytes));
  return Status::success();
}

/// The ranks of 1..worldSize-1 not in `joined`, as "1, 3".
std::string missingRanks(int worldSize, const std::set<int> &joined) {
  std::string list;
  for (int rank = 1; rank < worldSize; ++rank)
    if (!joined.count(rank))
      list += (list.empty() ? "" : ", ") + std::to_string(rank);
  return list;
}

} // namespace

Status moert::generateJobToken(std::string &token) {
  std::array<unsigned char, 32> bytes;
  if (Status random = randomBytes(bytes.data(), bytes.size()); !random.ok())
    return Status::failure("job token: " + random.message());
  static const char kHex[] = "0123456789abcdef";
  token.clear();
  for (unsigned char byte : bytes) {
    token += kHex[byte >> 4];
    token += kHex[byte & 15];
  }
  return Status::success();
}

RendezvousServer::RendezvousServer(RendezvousServer &&other) noexcept
    : socketFd(other.socketFd), boundPort(other.boundPort) {
  other.socketFd = -1;
}

RendezvousServer &
RendezvousServer::operator=(RendezvousServer &&other) noexcept {
  std::swap(socketFd, other.socketFd);
  std::swap(boundPort, other.boundPort);
  return *this;
}

RendezvousServer::~RendezvousServer() {
  if (socketFd >= 0)
    ::close(socketFd);
}

Status RendezvousServer::listen(const std::string &host, int port,
                                RendezvousServer &out) {
  addrinfo *addresses = nullptr;
  if (Status resolved = resolve(host, port, /*passive=*/true, addresses);
      !resolved.ok())
    return resolved;
  std::string lastError = "no address";
  for (addrinfo *address = addresses; address; address = address->ai_next) {
    int fd = ::socket(address->ai_family, address->ai_socktype | SOCK_CLOEXEC,
                      address->ai_protocol);
    if (fd < 0) {
      lastError = errnoText();
      continue;
    }
    Socket candidate(fd);
    int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (::bind(fd, address->ai_addr, address->ai_addrlen) != 0 ||
        ::listen(fd, SOMAXCONN) != 0) {
      lastError = errnoText();
      continue;
    }
    sockaddr_storage bound{};
    socklen_t boundSize = sizeof(bound);
    ::getsockname(fd, reinterpret_cast<sockaddr *>(&bound), &boundSize);
    out = RendezvousServer();
    out.boundPort =
        ntohs(bound.ss_family == AF_INET6
                  ? reinterpret_cast<sockaddr_in6 *>(&bound)->sin6_port
                  : reinterpret_cast<sockaddr_in *>(&bound)->sin_port);
    out.socketFd = candidate.fd;
    candidate.fd = -1;
    ::freeaddrinfo(addresses);
    return Status::success();
  }
  ::freeaddrinfo(addresses);
  return Status::failure("rendezvous: rank 0 cannot listen on " + host + ":" +
                         std::to_string(port) + ": " + lastError);
}

Status RendezvousServer::serve(int worldSize, const std::vector<char> &payload,
                               const RendezvousOptions &options,
                               PeerLinks *links) {
  if (Status valid = checkOptions(options); !valid.ok())
    return valid;
  if (payload.size() > kMaxRendezvousPayloadBytes)
    return Status::failure("rendezvous: a payload of " +
                           std::to_string(payload.size()) +
                           " bytes is more than " +
                           std::to_string(kMaxRendezvousPayloadBytes));
  if (socketFd < 0)
    return Status::failure("rendezvous: rank 0 is not listening");
  Clock::time_point deadline = Clock::now() + options.timeout;
  std::vector<Socket> peers;
  std::vector<int> peerRanks; // peers[i] is rank peerRanks[i]
  std::set<int> joined;
  // What the timeout's message names of the refused peers: the first few,
  // then a count, so that a peer that keeps connecting cannot grow it.
  std::vector<std::string> refusals;
  size_t refusedPeers = 0;
  auto noteRefusal = [&](const std::string &refusal) {
    if (refusals.size() < kMaxNamedRefusals)
      refusals.push_back(refusal);
    ++refusedPeers;
  };
  while (static_cast<int>(joined.size()) < worldSize - 1) {
    if (!waitFor(socketFd, POLLIN, deadline))
      break;
    int fd = ::accept4(socketFd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0)
      continue;
    Socket peer(fd);
    Clock::time_point greetingDeadline =
        std::min(deadline, Clock::now() + options.greetingTimeout);
    char challenge[kChallengeBytes];
    std::memcpy(challenge, kMagic, sizeof(kMagic));
    if (Status random = randomBytes(challenge + sizeof(kMagic), kNonceBytes);
        !random.ok())
      return Status::failure("rendezvous: rank 0: " + random.message());
    if (!writeAll(fd, challenge, sizeof(challenge), greetingDeadline))
      continue;
    char greeting[kGreetingBytes];
    if (!readExact(fd, greeting, sizeof(greeting), greetingDeadline) ||
        std::memcmp(greeting, kMagic, sizeof(kMagic)) != 0)
      continue; // Not a rank of any job: dropped without an answer.
    uint32_t rank = getU32(greeting + 8);
    uint32_t peerWorldSize = getU32(greeting + 12);
    if (!sameDigest(greetingMac(options.token, challenge + sizeof(kMagic),
                                rank, peerWorldSize),
                    greeting + 16)) {
      noteRefusal("a peer with a wrong job token");
      sendReply(fd, kRefused, "the job token is wrong", greetingDeadline);
      continue;
    }
    std::string refusal;
    if (static_cast<int>(peerWorldSize) != worldSize)
      refusal = "rank " + std::to_string(rank) + " says the world has " +
                std::to_string(peerWorldSize) + " ranks, rank 0 says " +
                std::to_string(worldSize);
    else if (rank == 0 || rank >= static_cast<uint32_t>(worldSize))
      refusal = "rank " + std::to_string(rank) +
                " is not a joining rank of a world of " +
                std::to_string(worldSize);
    else if (joined.count(static_cast<int>(rank)))
      refusal = "rank " + std::to_string(rank) + " has already joined";
    if (!refusal.empty()) {
      noteRefusal(refusal);
      sendReply(fd, kRefused, refusal, greetingDeadline);
      continue;
    }
    if (!sendReply(fd, kAccepted, "", greetingDeadline))
      continue;
    joined.insert(static_cast<int>(rank));
    peers.push_back(std::move(peer));
    peerRanks.push_back(static_cast<int>(rank));
  }

  if (static_cast<int>(joined.size()) < worldSize - 1) {
    std::string message = "rendezvous timed out after " +
                          seconds(options.timeout) + ": rank(s) " +
                          missingRanks(worldSize, joined) + " of " +
                          std::to_string(worldSize) + " never joined";
    for (const std::string &refusal : refusals)
      message += "; refused " + refusal;
    if (refusedPeers > refusals.size())
      message += "; refused " + std::to_string(refusedPeers - refusals.size()) +
                 " more peers";
    Clock::time_point tellDeadline = Clock::now() + options.greetingTimeout;
    for (Socket &peer : peers)
      sendReply(peer.fd, kFailed, message, tellDeadline);
    return Status::failure(message);
  }
  Clock::time_point sendDeadline = Clock::now() + options.greetingTimeout;
  for (Socket &peer : peers)
    sendReply(peer.fd, kPayload, payload.data(), payload.size(), sendDeadline);
  if (links)
    for (size_t i = 0; i < peers.size(); ++i) {
      links->add(peerRanks[i], peers[i].fd);
      peers[i].fd = -1;
    }
  return Status::success();
}

Status moert::joinRendezvous(const std::string &host, int port, int rank,
                             int worldSize, const RendezvousOptions &options,
                             std::vector<char> &payload, PeerLinks *links) {
  if (Status valid = checkOptions(options); !valid.ok())
    return valid;
  std::string where = "rank 0 at " + host + ":" + std::to_string(port);
  std::string who = "rendezvous: rank " + std::to_string(rank) + ": ";
  Clock::time_point deadline = Clock::now() + options.timeout;
  addrinfo *addresses = nullptr;
  if (Status resolved = resolve(host, port, /*passive=*/false, addresses);
      !resolved.ok())
    return resolved;

  // Connect, retrying while rank 0 is not listening yet.
  int fd = -1;
  std::string lastError = "no address";
  while (fd < 0 && Clock::now() < deadline) {
    for (addrinfo *address = addresses; address && fd < 0;
         address = address->ai_next) {
      int candidate = ::socket(address->ai_family,
                               address->ai_socktype | SOCK_CLOEXEC |
                                   SOCK_NONBLOCK,
                               address->ai_protocol);
      if (candidate < 0) {
        lastError = errnoText();
        continue;
      }
      int connected = ::connect(candidate, address->ai_addr,
                                address->ai_addrlen);
      if (connected != 0 && errno == EINPROGRESS &&
          waitFor(candidate, POLLOUT, deadline)) {
        int error = 0;
        socklen_t size = sizeof(error);
        ::getsockopt(candidate, SOL_SOCKET, SO_ERROR, &error, &size);
        connected = error == 0 ? 0 : -1;
        errno = error;
      }
      if (connected == 0) {
        fd = candidate;
        break;
      }
      lastError = errnoText();
      ::close(candidate);
    }
    if (fd < 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::freeaddrinfo(addresses);
  if (fd < 0)
    return Status::failure(who + "cannot reach " + where + " within " +
                           seconds(options.timeout) + ": " + lastError);
  Socket connection(fd);

  char challenge[kChallengeBytes];
  if (!readExact(fd, challenge, sizeof(challenge),
                 deadline + options.greetingTimeout))
    return Status::failure(who + where + " sent no challenge");
  if (std::memcmp(challenge, kMagic, sizeof(kMagic)) != 0)
    return Status::failure(who + where + " is not a moert rendezvous");
  std::vector<char> greeting(kMagic, kMagic + sizeof(kMagic));
  putU32(greeting, static_cast<uint32_t>(rank));
  putU32(greeting, static_cast<uint32_t>(worldSize));
  Sha256Digest mac =
      greetingMac(options.token, challenge + sizeof(kMagic),
                  static_cast<uint32_t>(rank), static_cast<uint32_t>(worldSize));
  greeting.insert(greeting.end(), mac.begin(), mac.end());
  if (!writeAll(fd, greeting.data(), greeting.size(), deadline))
    return Status::failure(who + "cannot send its greeting to " + where);

  // Rank 0 tells the joined ranks why the job fails at its own timeout,
  // which started before ours; a little slack lets that message arrive.
  Clock::time_point replyDeadline = deadline + options.greetingTimeout;
  for (bool accepted = false;;) {
    char header[5];
    if (!readExact(fd, header, sizeof(header), replyDeadline))
      return Status::failure(who + where +
                             (Clock::now() >= replyDeadline
                                  ? " did not answer within " +
                                        seconds(options.timeout)
                                  : std::string(" closed the connection")));
    auto kind = static_cast<ReplyKind>(header[0]);
    uint32_t length = getU32(header + 1);
    if (length > kMaxReplyBytes)
      return Status::failure(who + where + " sent a reply of " +
                             std::to_string(length) + " bytes");
    std::vector<char> body(length);
    if (!readExact(fd, body.data(), length, replyDeadline))
      return Status::failure(who + where + " closed the connection");
    switch (kind) {
    case kAccepted:
      if (accepted)
        return Status::failure(who + where + " accepted it twice");
      accepted = true;
      continue;
    case kRefused:
      return Status::failure(who + "refused by " + where + ": " +
                             std::string(body.begin(), body.end()));
    case kFailed:
      return Status::failure(who + std::string(body.begin(), body.end()));
    case kPayload:
      if (!accepted)
        return Status::failure(who + where +
                               " sent the payload before accepting it");
      payload = std::move(body);
      if (links) {
        links->add(0, connection.fd);
        connection.fd = -1;
      }
      return Status::success();
    }
    return Status::failure(who + where + " sent a reply of unknown kind " +
                           std::to_string(header[0]));
  }
}

Status moert::rendezvousFromEnvironment(const RankInfo &info,
                                        const EnvLookup &env,
                                        const PayloadMaker &makePayload,
                                        std::vector<char> &payload,
                                        PeerLinks *links) {
  if (info.worldSize == 1)
    return makePayload(payload);
  std::string who = "rendezvous: rank " + std::to_string(info.rank) + " of " +
                    std::to_string(info.worldSize) + ": ";
  RendezvousOptions options;
  env(kJobTokenVariable, options.token);
  if (Status read = readSecondsVariable(env, kRendezvousTimeoutVariable,
                                       /*allowZero=*/false, options.timeout);
      !read.ok())
    return Status::failure(who + read.message());
  if (info.masterPort == 0)
    return Status::failure(who + "MASTER_PORT is not set (or 0)");
  if (info.rank == 0) {
    RendezvousServer server;
    if (Status listening = RendezvousServer::listen("", info.masterPort,
                                                    server);
        !listening.ok())
      return listening;
    if (Status made = makePayload(payload); !made.ok())
      return made;
    return server.serve(info.worldSize, payload, options, links);
  }
  if (info.masterAddr.empty())
    return Status::failure(who + "MASTER_ADDR is not set");
  return joinRendezvous(info.masterAddr, info.masterPort, info.rank,
                        info.worldSize, options, payload, links);
}
