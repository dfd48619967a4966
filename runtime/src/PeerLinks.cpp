//===- PeerLinks.cpp - Which peers of the job are still alive -------------===//
//
// See moert/PeerLinks.h. poll() asks poll(2) about every open link at once
// with no wait; a link with an error, a hang-up or readable bytes is read
// without blocking: end-of-file or an error (ECONNRESET, ...) means the
// peer is gone; bytes are dropped.
//
//===----------------------------------------------------------------------===//

#include "moert/PeerLinks.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

using namespace moert;

PeerLinks::~PeerLinks() {
  for (const Link &link : links)
    ::close(link.fd);
}

void PeerLinks::add(int peer, int fd) { links.push_back({peer, fd, false}); }

std::vector<int> PeerLinks::peers() const {
  std::vector<int> result;
  for (const Link &link : links)
    result.push_back(link.peer);
  return result;
}

std::vector<int> PeerLinks::poll() {
  std::vector<pollfd> fds;
  std::vector<Link *> open;
  for (Link &link : links)
    if (!link.gone) {
      fds.push_back({link.fd, POLLIN | POLLRDHUP, 0});
      open.push_back(&link);
    }
  std::vector<int> gone;
  if (fds.empty() || ::poll(fds.data(), fds.size(), 0) <= 0)
    return gone;
  for (size_t i = 0; i < fds.size(); ++i) {
    if (fds[i].revents == 0)
      continue;
    bool closed = (fds[i].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0;
    // Read what is there: 0 bytes is end-of-file; an error other than "no
    // data now" is a broken connection.
    char drain[256];
    while (!closed) {
      ssize_t n = ::recv(fds[i].fd, drain, sizeof(drain), MSG_DONTWAIT);
      if (n > 0)
        continue;
      closed = n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK &&
                          errno != EINTR);
      break;
    }
    if (closed) {
      open[i]->gone = true;
      gone.push_back(open[i]->peer);
    }
  }
  return gone;
}
