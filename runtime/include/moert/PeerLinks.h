//===- PeerLinks.h - Which peers of the job are still alive -----*- C++ -*-===//
//
// A dead rank cannot say that it died, and NCCL does not notice: a
// collective with it just never finishes. The rendezvous's TCP connections
// can say it: every rank keeps its connection to rank 0 (rank 0 one to each
// other rank) open for the job's life, nothing is sent on them after the
// payload, and the kernel closes a process's sockets when it ends, however
// it ends (SIGKILL included). A link that then reads end-of-file or an
// error names the peer that is gone. The watchdog (moert/Watchdog.h) polls
// the links and reports the gone peer with the collectives left pending.
// A rank other than 0 sees rank 0 only; when another rank dies, rank 0
// aborts and exits, which its links then tell the others.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_PEERLINKS_H
#define MOERT_PEERLINKS_H

#include <vector>

namespace moert {

class PeerLinks {
public:
  PeerLinks() = default;
  PeerLinks(const PeerLinks &) = delete;
  PeerLinks &operator=(const PeerLinks &) = delete;
  /// Closes every link.
  ~PeerLinks();

  /// Keeps `fd`, a connected socket to world rank `peer`; closed with this.
  void add(int peer, int fd);

  /// Checks every link without blocking; returns the peers found gone by
  /// this call (each peer once over the links' life), in link order. Data
  /// a peer sends is read and dropped.
  std::vector<int> poll();

  /// The peers the links reach, in the order they were added.
  std::vector<int> peers() const;

private:
  struct Link {
    int peer;
    int fd;
    bool gone;
  };
  std::vector<Link> links;
};

} // namespace moert

#endif // MOERT_PEERLINKS_H
