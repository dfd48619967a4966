//===- AtomicFile.cpp - Files that are whole or absent --------------------===//
//
// See moert/AtomicFile.h.
//
//===----------------------------------------------------------------------===//

#include "moert/AtomicFile.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

using namespace moert;

Status moert::syncFolder(const std::filesystem::path &dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0)
    return Status::failure("cannot open '" + dir.string() +
                           "': " + std::strerror(errno));
  int synced = ::fsync(fd);
  int error = errno;
  ::close(fd);
  if (synced != 0)
    return Status::failure("cannot sync '" + dir.string() +
                           "': " + std::strerror(error));
  return Status::success();
}

Status moert::writeFileAtomically(
    const std::filesystem::path &path,
    const std::vector<std::pair<const void *, size_t>> &parts) {
  std::filesystem::path temp = path;
  temp += ".tmp";
  auto failed = [&](const std::string &what) {
    return Status::failure("cannot " + what + " '" + temp.string() +
                           "': " + std::strerror(errno));
  };
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return failed("create");
  for (auto [data, size] : parts) {
    const char *p = static_cast<const char *>(data);
    while (size > 0) {
      ssize_t n = ::write(fd, p, size);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0) {
        Status status = failed("write");
        ::close(fd);
        return status;
      }
      p += n;
      size -= static_cast<size_t>(n);
    }
  }
  if (::fsync(fd) != 0) {
    Status status = failed("sync");
    ::close(fd);
    return status;
  }
  if (::close(fd) != 0)
    return failed("close");
  std::error_code ec;
  std::filesystem::rename(temp, path, ec);
  if (ec)
    return Status::failure("cannot rename '" + temp.string() + "' to '" +
                           path.string() + "': " + ec.message());
  return syncFolder(path.has_parent_path() ? path.parent_path()
                                           : std::filesystem::path("."));
}
