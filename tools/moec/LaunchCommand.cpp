//===- LaunchCommand.cpp - `moec launch` ----------------------------------===//
//
// `moec launch OUT --nproc-per-node N [--nnodes M --node-rank K
// --master-addr HOST --master-port PORT] [--grace-period S] [-- ARGS...]`:
// starts this node's N ranks of OUT's training program (OUT/train_step,
// listed in OUT/manifest.json) with the environment torchrun sets (RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and
// the job's token (MOERT_JOB_TOKEN, see moert/Rendezvous.h: taken from the
// environment, or generated when the job has one node). Each line a rank
// prints is forwarded with a "[rank R] " prefix to the same stream. When a
// rank exits with a non-zero status or a signal, the others are sent
// SIGTERM, then SIGKILL after the grace period, and moec exits with 1,
// naming the rank and its status. SIGINT or SIGTERM to moec stops the ranks
// the same way. Each rank runs in its own process group, so that what it
// started stops with it.
//
//===----------------------------------------------------------------------===//

#include "Commands.h"

#include "moert/JsonKeys.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/RandomNumberGenerator.h"
#include "llvm/Support/raw_ostream.h"

#include <chrono>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

namespace cl = llvm::cl;
using Clock = std::chrono::steady_clock;

cl::SubCommand moec::cli::launchCommand(
    "launch", "start this node's ranks of a compiled training program");

namespace {
cl::SubCommand &sub = moec::cli::launchCommand;
cl::list<std::string>
    positionals(cl::Positional, cl::OneOrMore,
                cl::desc("<OUT> [-- <arguments of the program>...]"),
                cl::sub(sub));
cl::opt<int> nprocPerNode("nproc-per-node",
                          cl::desc("ranks to start on this node"),
                          cl::Required, cl::sub(sub));
cl::opt<int> nnodes("nnodes", cl::desc("nodes of the job"), cl::init(1),
                    cl::sub(sub));
cl::opt<int> nodeRank("node-rank", cl::desc("this node's index in the job"),
                      cl::init(0), cl::sub(sub));
cl::opt<std::string>
    masterAddr("master-addr",
               cl::desc("address of the node of rank 0 (its rendezvous)"),
               cl::init("127.0.0.1"), cl::sub(sub));
cl::opt<int> masterPort("master-port",
                        cl::desc("port of rank 0's rendezvous"),
                        cl::init(29500), cl::sub(sub));
cl::opt<double> gracePeriod(
    "grace-period",
    cl::desc("seconds between SIGTERM and SIGKILL when the job stops"),
    cl::init(10.0), cl::sub(sub));

/// The variable moert's rendezvous reads the job's token from.
constexpr const char *kJobTokenVariable = "MOERT_JOB_TOKEN";

/// The signal moec itself received (SIGINT or SIGTERM), or 0.
volatile sig_atomic_t receivedSignal = 0;

void onSignal(int signal) { receivedSignal = signal; }

/// `value` in the shortest of %g's forms: 1, 0.5, 1e+06.
std::string shortest(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", value);
  return text;
}

int fail(const llvm::Twine &message) {
  llvm::errs() << "moec launch: error: " << message << "\n";
  return 1;
}

/// One output stream of one rank, forwarded line by line with a prefix.
struct ForwardedStream {
  int fd = -1;
  int rank = 0;
  llvm::raw_fd_ostream *to = nullptr;
  std::string pending;

  void emit(llvm::StringRef line) {
    *to << "[rank " << rank << "] " << line << "\n";
    to->flush();
  }

  /// Reads what is there; closes the stream at its end.
  void drain() {
    char buffer[4096];
    ssize_t got = ::read(fd, buffer, sizeof(buffer));
    if (got < 0 && errno == EINTR)
      return;
    if (got <= 0) {
      if (!pending.empty())
        emit(pending);
      pending.clear();
      ::close(fd);
      fd = -1;
      return;
    }
    pending.append(buffer, static_cast<size_t>(got));
    size_t newline;
    while ((newline = pending.find('\n')) != std::string::npos) {
      emit(llvm::StringRef(pending).take_front(newline));
      pending.erase(0, newline + 1);
    }
  }
};

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  bool running = true;
  int waitStatus = 0;
};

std::string describeExit(int waitStatus) {
  if (WIFEXITED(waitStatus))
    return "exited with status " + std::to_string(WEXITSTATUS(waitStatus));
  if (WIFSIGNALED(waitStatus))
    return std::string("was killed by signal ") +
           std::to_string(WTERMSIG(waitStatus)) + " (" +
           ::strsignal(WTERMSIG(waitStatus)) + ")";
  return "stopped with wait status " + std::to_string(waitStatus);
}

bool failed(int waitStatus) {
  return !WIFEXITED(waitStatus) || WEXITSTATUS(waitStatus) != 0;
}

/// OUT/train_step, after checking that OUT's manifest lists it.
int findProgram(llvm::StringRef out, std::string &program) {
  llvm::SmallString<256> manifestPath(out);
  llvm::sys::path::append(manifestPath, "manifest.json");
  auto text = llvm::MemoryBuffer::getFile(manifestPath);
  if (!text)
    return fail("cannot read " + manifestPath + ": " +
                text.getError().message());
  if (std::optional<std::string> deep =
          moert::checkJsonNesting((*text)->getBuffer()))
    return fail(manifestPath + " is not a manifest moec wrote: " + *deep);
  llvm::Expected<llvm::json::Value> manifest =
      llvm::json::parse((*text)->getBuffer());
  if (!manifest)
    return fail(manifestPath + " is not JSON: " +
                llvm::toString(manifest.takeError()));
  const llvm::json::Object *object = manifest->getAsObject();
  const llvm::json::Array *programs =
      object ? object->getArray("programs") : nullptr;
  if (!programs)
    return fail(manifestPath + " has no \"programs\" list");
  bool listed = llvm::any_of(*programs, [](const llvm::json::Value &name) {
    return name.getAsString() == llvm::StringRef("train_step");
  });
  if (!listed)
    return fail(manifestPath + " does not list the program \"train_step\"");
  // A program is compiled for its world (manifests before moec-compile/3
  // say nothing: one rank or the driver's own check).
  const llvm::json::Value *worldValue = object->get("world_size");
  std::optional<int64_t> world =
      worldValue ? worldValue->getAsInteger() : std::nullopt;
  if (worldValue && !world)
    return fail(manifestPath + ": world_size is not an integer");
  if (world && *world != int64_t(nnodes) * nprocPerNode)
    return fail(manifestPath + ": the program was compiled for world_size " +
                llvm::Twine(*world) + ", the launch starts " +
                llvm::Twine(int64_t(nnodes) * nprocPerNode) + " ranks (--nnodes=" +
                llvm::Twine(nnodes.getValue()) + " x --nproc-per-node=" +
                llvm::Twine(nprocPerNode.getValue()) + ")");
  llvm::SmallString<256> path(out);
  llvm::sys::path::append(path, "train_step");
  if (!llvm::sys::fs::can_execute(path))
    return fail(path + " is not an executable program (was it compiled "
                       "without --emit cuda?)");
  program = std::string(path);
  return 0;
}

/// The environment of local rank `localRank`: moec's own, less the variables
/// the launch sets, plus those.
std::vector<std::string> rankEnvironment(int localRank,
                                         const std::string &token) {
  int worldSize = nnodes * nprocPerNode;
  std::vector<std::pair<std::string, std::string>> set = {
      {"RANK", std::to_string(nodeRank * nprocPerNode + localRank)},
      {"WORLD_SIZE", std::to_string(worldSize)},
      {"LOCAL_RANK", std::to_string(localRank)},
      {"LOCAL_WORLD_SIZE", std::to_string(nprocPerNode.getValue())},
      {"MASTER_ADDR", masterAddr},
      {"MASTER_PORT", std::to_string(masterPort.getValue())},
      {kJobTokenVariable, token}};
  std::vector<std::string> environment;
  for (char **entry = environ; *entry; ++entry) {
    llvm::StringRef name = llvm::StringRef(*entry).split('=').first;
    if (llvm::none_of(set, [&](const auto &var) { return var.first == name; }))
      environment.push_back(*entry);
  }
  for (const auto &[name, value] : set)
    environment.push_back(name + "=" + value);
  return environment;
}

std::vector<char *> pointers(std::vector<std::string> &strings) {
  std::vector<char *> result;
  for (std::string &string : strings)
    result.push_back(string.data());
  result.push_back(nullptr);
  return result;
}

void signalAll(std::vector<Rank> &ranks, int signal) {
  for (Rank &rank : ranks)
    if (rank.running)
      ::kill(-rank.pid, signal);
}

} // namespace

int moec::cli::runLaunch() {
  if (nprocPerNode < 1)
    return fail("--nproc-per-node=" + llvm::Twine(nprocPerNode.getValue()) +
                " is not a positive number of ranks");
  if (nnodes < 1)
    return fail("--nnodes=" + llvm::Twine(nnodes.getValue()) +
                " is not a positive number of nodes");
  if (nodeRank < 0 || nodeRank >= nnodes)
    return fail("--node-rank=" + llvm::Twine(nodeRank.getValue()) +
                " is not a node of --nnodes=" + llvm::Twine(nnodes.getValue()));
  if (masterPort < 1 || masterPort > 65535)
    return fail("--master-port=" + llvm::Twine(masterPort.getValue()) +
                " is not a TCP port");
  // At most a day: the wait is converted to milliseconds.
  if (!(gracePeriod >= 0 && gracePeriod <= 86400))
    return fail("--grace-period=" + shortest(gracePeriod) +
                " s is not in [0, 86400]");
  if (masterAddr.empty())
    return fail("--master-addr is empty: give the host of node 0");

  std::string program;
  if (int error = findProgram(positionals.front(), program))
    return error;

  std::string token;
  if (const char *given = std::getenv(kJobTokenVariable); given && *given) {
    token = given;
  } else if (nnodes > 1) {
    return fail(llvm::Twine("a job of ") + llvm::Twine(nnodes.getValue()) +
                " nodes needs the same token on every node: set " +
                kJobTokenVariable + " to one secret for all of them");
  } else {
    unsigned char bytes[32];
    if (std::error_code error = llvm::getRandomBytes(bytes, sizeof(bytes)))
      return fail("cannot generate the job token: " + error.message());
    token = llvm::toHex(llvm::ArrayRef<uint8_t>(bytes), /*LowerCase=*/true);
  }

  std::vector<std::string> arguments(positionals.begin(), positionals.end());
  arguments.front() = program;
  std::vector<char *> argv = pointers(arguments);

  struct sigaction action {};
  action.sa_handler = onSignal;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
  llvm::raw_fd_ostream &out = llvm::outs();
  llvm::raw_fd_ostream &err = llvm::errs();
  out.flush();

  std::vector<Rank> ranks;
  std::vector<ForwardedStream> streams;
  for (int localRank = 0; localRank < nprocPerNode; ++localRank) {
    int rank = nodeRank * nprocPerNode + localRank;
    int outPipe[2], errPipe[2];
    if (::pipe2(outPipe, O_CLOEXEC) != 0 || ::pipe2(errPipe, O_CLOEXEC) != 0) {
      signalAll(ranks, SIGKILL);
      return fail("cannot create the pipes of rank " + llvm::Twine(rank) +
                  ": " + std::strerror(errno));
    }
    std::vector<std::string> environment = rankEnvironment(localRank, token);
    std::vector<char *> envp = pointers(environment);
    pid_t pid = ::fork();
    if (pid < 0) {
      signalAll(ranks, SIGKILL);
      return fail("cannot start rank " + llvm::Twine(rank) + ": " +
                  std::strerror(errno));
    }
    if (pid == 0) {
      // The child: only async-signal-safe calls until exec.
      ::setpgid(0, 0);
      ::dup2(outPipe[1], STDOUT_FILENO);
      ::dup2(errPipe[1], STDERR_FILENO);
      ::execve(argv[0], argv.data(), envp.data());
      const char message[] = "moec launch: cannot execute the program\n";
      (void)!::write(STDERR_FILENO, message, sizeof(message) - 1);
      ::_exit(127);
    }
    ::setpgid(pid, pid); // Also here, so that kill(-pid) never misses.
    ::close(outPipe[1]);
    ::close(errPipe[1]);
    ranks.push_back({rank, pid});
    streams.push_back({outPipe[0], rank, &out, {}});
    streams.push_back({errPipe[0], rank, &err, {}});
  }

  const Rank *firstFailure = nullptr;
  bool stopping = false;
  Clock::time_point killAt;
  auto stop = [&] {
    if (stopping)
      return;
    stopping = true;
    signalAll(ranks, SIGTERM);
    killAt = Clock::now() +
             std::chrono::milliseconds(static_cast<long>(gracePeriod * 1000));
  };
  bool killed = false;
  size_t running = ranks.size();
  while (running > 0 || llvm::any_of(streams, [](const ForwardedStream &s) {
           return s.fd >= 0;
         })) {
    std::vector<pollfd> fds;
    std::vector<ForwardedStream *> open;
    for (ForwardedStream &stream : streams)
      if (stream.fd >= 0) {
        fds.push_back({stream.fd, POLLIN, 0});
        open.push_back(&stream);
      }
    int ready = ::poll(fds.data(), fds.size(), running > 0 ? 100 : 1000);
    for (size_t i = 0; ready > 0 && i < fds.size(); ++i)
      if (fds[i].revents)
        open[i]->drain();
    if (ready == 0 && running == 0) {
      // Every rank has exited; what still holds a pipe open is something a
      // rank left behind, which moec does not wait for.
      for (ForwardedStream &stream : streams)
        if (stream.fd >= 0) {
          ::close(stream.fd);
          stream.fd = -1;
        }
    }
    for (Rank &rank : ranks) {
      if (!rank.running ||
          ::waitpid(rank.pid, &rank.waitStatus, WNOHANG) != rank.pid)
        continue;
      rank.running = false;
      --running;
      // The rank's process group may outlive it; it goes with the job.
      ::kill(-rank.pid, SIGKILL);
      if (failed(rank.waitStatus) && !firstFailure && !stopping) {
        firstFailure = &rank;
        err << "moec launch: rank " << rank.rank << " "
            << describeExit(rank.waitStatus) << "; stopping the other ranks\n";
        stop();
      }
    }
    if (receivedSignal && !stopping) {
      err << "moec launch: received signal " << receivedSignal << " ("
          << ::strsignal(receivedSignal) << "); stopping the ranks\n";
      stop();
    }
    if (stopping && !killed && running > 0 && Clock::now() >= killAt) {
      killed = true;
      for (const Rank &rank : ranks)
        if (rank.running)
          err << "moec launch: rank " << rank.rank << " did not stop within "
              << shortest(gracePeriod) << " s of SIGTERM; sending SIGKILL\n";
      signalAll(ranks, SIGKILL);
    }
  }
  if (firstFailure) {
    err << "moec launch: error: rank " << firstFailure->rank << " "
        << describeExit(firstFailure->waitStatus) << "\n";
    return 1;
  }
  if (receivedSignal)
    return fail("stopped by signal " + llvm::Twine(receivedSignal));
  return 0;
}
