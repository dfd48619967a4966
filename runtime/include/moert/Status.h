//===- Status.h - What a runtime call returns -------------------*- C++ -*-===//
//
// Every call of the runtime that can fail returns a Status: success, or a
// message that says where (file:line), who (rank and group) and what failed,
// ready to print. The caller decides whether to stop; nothing in the
// runtime's communicators exits the process.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_STATUS_H
#define MOERT_STATUS_H

#include <string>
#include <utility>

namespace moert {

/// Success, or the message of a failure.
class [[nodiscard]] Status {
public:
  static Status success() { return Status(); }
  static Status failure(std::string message) {
    Status status;
    status.failed = true;
    status.text = std::move(message);
    return status;
  }

  bool ok() const { return !failed; }
  const std::string &message() const { return text; }

private:
  Status() = default;
  bool failed = false;
  std::string text;
};

} // namespace moert

#endif // MOERT_STATUS_H
