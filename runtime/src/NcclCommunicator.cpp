//===- NcclCommunicator.cpp - The Communicator on NCCL --------------------===//
//
// See moert/NcclCommunicator.h. Every NCCL and CUDA call goes through one
// check that, on failure, aborts the communicator and returns a Status
// reading
//
//   FILE:LINE: rank R of S in group 'G': COLLECTIVE: CALL failed: WHY
//
// where WHY is NCCL's error string and, when NCCL has one, its last error
// message.
//
// The world made by createWorldCommunicator and the groups split from it
// share one Watchdog (moert/Watchdog.h): every collective they enqueue
// outside a graph capture records an event behind it, and the watchdog's
// thread polls the event and the communicator's asynchronous error. On a
// fault it prints the message and aborts every communicator of the rank,
// so the blocked and the later calls fail instead of hanging. It also
// polls the rendezvous's connections, kept open (moert/PeerLinks.h): a
// collective still pending 2 s after a peer's connection closed is reported
// naming that peer, without waiting for the timeout. The state the
// watchdog's polls touch (the ncclComm_t, whether it was aborted or
// destroyed) is shared and locked, so that a communicator may be destroyed
// while its collectives are still watched.
//
//===----------------------------------------------------------------------===//

#include "moert/NcclCommunicator.h"
#include "moert/Rendezvous.h"
#include "moert/StepGraphs.h"
#include "moert/Watchdog.h"

#include "NcclCompat.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>

using namespace moert;

namespace {

/// How long a collective may stay pending after a peer was found gone
/// before the watchdog reports it (the watchdog's timeout, if shorter).
constexpr std::chrono::milliseconds kPeerGoneGrace{2000};

std::string where(const char *file, int line) {
  return std::string(file) + ":" + std::to_string(line) + ": ";
}

/// An NCCL call's failure, with the last error message of `comm` if any.
std::string ncclWhy(ncclResult_t result, ncclComm_t comm) {
  std::string why = ncclGetErrorString(result);
  const char *last = ncclGetLastError(comm);
  if (last && *last)
    why += " (" + std::string(last) + ")";
  return why;
}

/// What a communicator shares with the watchdog's polls and fault handler.
struct CommState {
  std::mutex mutex;
  ncclComm_t comm;
  bool aborted = false;
  bool destroyed = false;
  explicit CommState(ncclComm_t comm) : comm(comm) {}

  /// Aborts the communicator, unless it already was or is gone.
  void abort() {
    std::lock_guard<std::mutex> lock(mutex);
    if (aborted || destroyed)
      return;
    aborted = true;
    (void)ncclCommAbort(comm);
  }
};

/// The communicators of one rank that share a watchdog, and its first
/// fault, which their later calls report. The watchdog's fault handler owns
/// it; the watchdog itself is owned by the communicators only, so that the
/// handler never destroys the watchdog that runs it.
struct WatchedComms {
  std::mutex mutex;
  std::vector<std::weak_ptr<CommState>> comms;
  std::string fault;

  void add(const std::shared_ptr<CommState> &state) {
    std::lock_guard<std::mutex> lock(mutex);
    comms.push_back(state);
  }
  std::string firstFault() {
    std::lock_guard<std::mutex> lock(mutex);
    return fault;
  }
  /// The watchdog's fault handler: report, then abort them all.
  void onFault(const std::string &message) {
    std::vector<std::shared_ptr<CommState>> alive;
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (fault.empty())
        fault = message;
      for (const std::weak_ptr<CommState> &comm : comms)
        if (std::shared_ptr<CommState> state = comm.lock())
          alive.push_back(std::move(state));
    }
    std::fprintf(stderr, "moert watchdog: %s; aborting the communicators\n",
                 message.c_str());
    for (const std::shared_ptr<CommState> &state : alive)
      state->abort();
  }
};

/// An event recorded behind a collective, destroyed with the watch.
struct RecordedEvent {
  cudaEvent_t event = nullptr;
  ~RecordedEvent() {
    if (event)
      (void)cudaEventDestroy(event);
  }
};

class NcclCommunicator final : public Communicator {
public:
  NcclCommunicator(ncclComm_t comm, int rank, int size, std::string group,
                   std::shared_ptr<WatchedComms> watched,
                   std::shared_ptr<Watchdog> watchdog)
      : state(std::make_shared<CommState>(comm)), comm(comm),
        rankIndex(rank), groupSize(size), groupName(std::move(group)),
        watched(std::move(watched)), watchdog(std::move(watchdog)) {
    if (this->watched)
      this->watched->add(state);
  }
  ~NcclCommunicator() override;

  int rank() const override { return rankIndex; }
  int size() const override { return groupSize; }
  const std::string &group() const override { return groupName; }

  Status allReduceSum(const void *send, void *recv, size_t count, DataType type,
                      cudaStream_t stream) override;
  Status allGather(const void *send, void *recv, size_t count, DataType type,
                   cudaStream_t stream) override;
  Status reduceScatterSum(const void *send, void *recv, size_t count,
                          DataType type, cudaStream_t stream) override;
  Status allToAllV(const void *send, const std::vector<size_t> &sendCounts,
                   const std::vector<size_t> &sendOffsets, void *recv,
                   const std::vector<size_t> &recvCounts,
                   const std::vector<size_t> &recvOffsets, DataType type,
                   cudaStream_t stream) override;
  Status broadcast(const void *send, void *recv, size_t count, DataType type,
                   int root, cudaStream_t stream) override;
  Status barrier(cudaStream_t stream) override;
  Status split(int color, int key, const std::string &group,
               std::unique_ptr<Communicator> &out) override;
  void abort() override;
  Status watchStream(const std::string &what, cudaStream_t stream) override;

private:
  /// "FILE:LINE: rank R of S in group 'G': COLLECTIVE: ".
  std::string prefix(const char *file, int line, const char *collective) const {
    return where(file, line) + "rank " + std::to_string(rankIndex) + " of " +
           std::to_string(groupSize) + " in group '" + groupName +
           "': " + collective + ": ";
  }
  /// Fails before any call when the communicator was aborted.
  Status checkUsable(const char *file, int line, const char *collective) const;
  /// Aborts the communicator and describes the failed call.
  Status ncclFailure(const char *file, int line, const char *collective,
                     const char *call, ncclResult_t result);
  Status cudaFailure(const char *file, int line, const char *collective,
                     const char *call, cudaError_t result);
  /// Hands the collective just enqueued on `stream` to the watchdog, if
  /// there is one and the stream is not being captured into a graph (then
  /// the capture notes it: moert/StepGraphs.h).
  Status watch(const char *collective, cudaStream_t stream);
  /// Watches the work enqueued on `stream` so far as `what`.
  Status watchEvent(const char *collective, const std::string &what,
                    cudaStream_t stream);

  std::shared_ptr<CommState> state;
  ncclComm_t comm;
  int rankIndex, groupSize;
  std::string groupName;
  std::shared_ptr<WatchedComms> watched;
  std::shared_ptr<Watchdog> watchdog;
  /// One int the barrier all-reduces; allocated by the first barrier.
  int *barrierWord = nullptr;
};

} // namespace

// The checks of this file: on failure, abort and return the Status.
#define MOERT_NCCL_CHECK(collective, call)                                     \
  do {                                                                         \
    ncclResult_t result_ = (call);                                             \
    if (result_ != ncclSuccess)                                                \
      return ncclFailure(__FILE__, __LINE__, collective, #call, result_);      \
  } while (0)

#define MOERT_CUDA_RETURN_IF_ERROR(collective, call)                           \
  do {                                                                         \
    cudaError_t result_ = (call);                                              \
    if (result_ != cudaSuccess)                                                \
      return cudaFailure(__FILE__, __LINE__, collective, #call, result_);      \
  } while (0)

#define MOERT_CHECK_USABLE(collective)                                         \
  do {                                                                         \
    if (Status usable_ = checkUsable(__FILE__, __LINE__, collective);          \
        !usable_.ok())                                                         \
      return usable_;                                                          \
  } while (0)

NcclCommunicator::~NcclCommunicator() {
  if (barrierWord)
    (void)cudaFree(barrierWord);
  std::lock_guard<std::mutex> lock(state->mutex);
  if (!state->aborted)
    (void)ncclCommDestroy(comm);
  state->destroyed = true;
}

Status NcclCommunicator::checkUsable(const char *file, int line,
                                     const char *collective) const {
  bool aborted;
  {
    std::lock_guard<std::mutex> lock(state->mutex);
    aborted = state->aborted;
  }
  if (!aborted)
    return Status::success();
  std::string fault = watched ? watched->firstFault() : std::string();
  return Status::failure(prefix(file, line, collective) +
                         "the communicator was aborted" +
                         (fault.empty() ? "" : " (" + fault + ")"));
}

Status NcclCommunicator::watch(const char *collective, cudaStream_t stream) {
  if (!watchdog)
    return Status::success();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  MOERT_CUDA_RETURN_IF_ERROR(collective,
                             cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) {
    noteCapturedCollective(std::string(collective) + " in group '" +
                           groupName + "'");
    return Status::success();
  }
  return watchEvent(collective, collective, stream);
}

Status NcclCommunicator::watchStream(const std::string &what,
                                     cudaStream_t stream) {
  if (!watchdog)
    return Status::success();
  return watchEvent("watch", what, stream);
}

Status NcclCommunicator::watchEvent(const char *collective,
                                    const std::string &watched,
                                    cudaStream_t stream) {
  auto recorded = std::make_shared<RecordedEvent>();
  MOERT_CUDA_RETURN_IF_ERROR(
      collective,
      cudaEventCreateWithFlags(&recorded->event, cudaEventDisableTiming));
  MOERT_CUDA_RETURN_IF_ERROR(collective,
                             cudaEventRecord(recorded->event, stream));
  std::string what = "rank " + std::to_string(rankIndex) + " of " +
                     std::to_string(groupSize) + " in group '" + groupName +
                     "': " + watched;
  watchdog->watch(
      std::move(what),
      [recorded, state = state](std::string &why) {
        std::lock_guard<std::mutex> lock(state->mutex);
        if (state->aborted || state->destroyed)
          return Watchdog::Progress::Done; // Reported where it was aborted.
        cudaError_t done = cudaEventQuery(recorded->event);
        if (done == cudaSuccess)
          return Watchdog::Progress::Done;
        if (done != cudaErrorNotReady) {
          why = std::string("cudaEventQuery: ") + cudaGetErrorString(done);
          return Watchdog::Progress::Failed;
        }
        ncclResult_t asyncError = ncclSuccess;
        ncclResult_t queried = ncclCommGetAsyncError(state->comm, &asyncError);
        if (queried != ncclSuccess)
          asyncError = queried;
        if (asyncError != ncclSuccess && asyncError != ncclInProgress) {
          why = std::string("ncclCommGetAsyncError: ") +
                ncclWhy(asyncError, state->comm);
          return Watchdog::Progress::Failed;
        }
        return Watchdog::Progress::Pending;
      });
  return Status::success();
}

Status NcclCommunicator::ncclFailure(const char *file, int line,
                                     const char *collective, const char *call,
                                     ncclResult_t result) {
  std::string message = prefix(file, line, collective) + call +
                        " failed: " + ncclWhy(result, comm);
  abort();
  return Status::failure(message);
}

Status NcclCommunicator::cudaFailure(const char *file, int line,
                                     const char *collective, const char *call,
                                     cudaError_t result) {
  std::string message = prefix(file, line, collective) + call +
                        " failed: " + cudaGetErrorString(result);
  abort();
  return Status::failure(message);
}

void NcclCommunicator::abort() { state->abort(); }

Status NcclCommunicator::allReduceSum(const void *send, void *recv,
                                      size_t count, DataType type,
                                      cudaStream_t stream) {
  MOERT_CHECK_USABLE("all_reduce");
  MOERT_NCCL_CHECK("all_reduce",
                   ncclAllReduce(send, recv, count, nccl::dataType(type),
                                 ncclSum, comm, stream));
  return watch("all_reduce", stream);
}

Status NcclCommunicator::allGather(const void *send, void *recv, size_t count,
                                   DataType type, cudaStream_t stream) {
  MOERT_CHECK_USABLE("all_gather");
  MOERT_NCCL_CHECK(
      "all_gather",
      ncclAllGather(send, recv, count, nccl::dataType(type), comm, stream));
  return watch("all_gather", stream);
}

Status NcclCommunicator::reduceScatterSum(const void *send, void *recv,
                                          size_t count, DataType type,
                                          cudaStream_t stream) {
  MOERT_CHECK_USABLE("reduce_scatter");
  MOERT_NCCL_CHECK("reduce_scatter",
                   ncclReduceScatter(send, recv, count, nccl::dataType(type),
                                     ncclSum, comm, stream));
  return watch("reduce_scatter", stream);
}

Status NcclCommunicator::allToAllV(const void *send,
                                   const std::vector<size_t> &sendCounts,
                                   const std::vector<size_t> &sendOffsets,
                                   void *recv,
                                   const std::vector<size_t> &recvCounts,
                                   const std::vector<size_t> &recvOffsets,
                                   DataType type, cudaStream_t stream) {
  MOERT_CHECK_USABLE("all_to_all");
  if (std::string wrong = checkAllToAllCounts(
          groupSize, sendCounts, sendOffsets, recvCounts, recvOffsets);
      !wrong.empty())
    return Status::failure(prefix(__FILE__, __LINE__, "all_to_all") + wrong);
  const size_t bytes = elementBytes(type);
  const ncclDataType_t ncclType = nccl::dataType(type);
  MOERT_NCCL_CHECK("all_to_all", ncclGroupStart());
  // The group is ended whatever happens, so that no later call of this
  // thread joins it; the first failure is the one reported.
  ncclResult_t queued = ncclSuccess;
  std::string failedCall;
  for (int peer = 0; peer < groupSize && queued == ncclSuccess; ++peer) {
    if (sendCounts[peer] > 0) {
      queued =
          ncclSend(static_cast<const char *>(send) + sendOffsets[peer] * bytes,
                   sendCounts[peer], ncclType, peer, comm, stream);
      if (queued != ncclSuccess)
        failedCall = "ncclSend to rank " + std::to_string(peer);
    }
    if (queued == ncclSuccess && recvCounts[peer] > 0) {
      queued = ncclRecv(static_cast<char *>(recv) + recvOffsets[peer] * bytes,
                        recvCounts[peer], ncclType, peer, comm, stream);
      if (queued != ncclSuccess)
        failedCall = "ncclRecv from rank " + std::to_string(peer);
    }
  }
  ncclResult_t ended = ncclGroupEnd();
  if (queued != ncclSuccess)
    return ncclFailure(__FILE__, __LINE__, "all_to_all", failedCall.c_str(),
                       queued);
  if (ended != ncclSuccess)
    return ncclFailure(__FILE__, __LINE__, "all_to_all", "ncclGroupEnd()",
                       ended);
  return watch("all_to_all", stream);
}

Status NcclCommunicator::broadcast(const void *send, void *recv, size_t count,
                                   DataType type, int root,
                                   cudaStream_t stream) {
  MOERT_CHECK_USABLE("broadcast");
  if (std::string wrong = checkBroadcastRoot(groupSize, root); !wrong.empty())
    return Status::failure(prefix(__FILE__, __LINE__, "broadcast") + wrong);
  MOERT_NCCL_CHECK("broadcast",
                   ncclBroadcast(send, recv, count, nccl::dataType(type), root,
                                 comm, stream));
  return watch("broadcast", stream);
}

Status NcclCommunicator::barrier(cudaStream_t stream) {
  MOERT_CHECK_USABLE("barrier");
  if (!barrierWord) {
    MOERT_CUDA_RETURN_IF_ERROR(
        "barrier",
        cudaMalloc(reinterpret_cast<void **>(&barrierWord), sizeof(int)));
    MOERT_CUDA_RETURN_IF_ERROR("barrier",
                               cudaMemset(barrierWord, 0, sizeof(int)));
  }
  MOERT_NCCL_CHECK("barrier", ncclAllReduce(barrierWord, barrierWord, 1,
                                            ncclInt32, ncclSum, comm, stream));
  if (Status watched_ = watch("barrier", stream); !watched_.ok())
    return watched_;
  MOERT_CUDA_RETURN_IF_ERROR("barrier", cudaStreamSynchronize(stream));
  ncclResult_t asyncError = ncclSuccess;
  MOERT_NCCL_CHECK("barrier", ncclCommGetAsyncError(comm, &asyncError));
  if (asyncError != ncclSuccess)
    return ncclFailure(__FILE__, __LINE__, "barrier",
                       "a collective of the group (ncclCommGetAsyncError)",
                       asyncError);
  return Status::success();
}

Status NcclCommunicator::split(int color, int key, const std::string &group,
                               std::unique_ptr<Communicator> &out) {
  MOERT_CHECK_USABLE("split");
  out.reset();
  ncclComm_t child = nullptr;
  MOERT_NCCL_CHECK("split",
                   ncclCommSplit(comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color,
                                 key, &child, nullptr));
  if (!child)
    return Status::success();
  int childRank = 0, childSize = 0;
  MOERT_NCCL_CHECK("split", ncclCommUserRank(child, &childRank));
  MOERT_NCCL_CHECK("split", ncclCommCount(child, &childSize));
  out = std::make_unique<NcclCommunicator>(child, childRank, childSize, group,
                                           watched, watchdog);
  return Status::success();
}

Status moert::createNcclUniqueId(NcclUniqueId &id) {
  if (Status version = nccl::checkLibraryVersion(); !version.ok())
    return version;
  ncclUniqueId unique;
  if (ncclResult_t r = ncclGetUniqueId(&unique); r != ncclSuccess)
    return Status::failure(where(__FILE__, __LINE__) +
                           "ncclGetUniqueId failed: " + ncclGetErrorString(r));
  std::memcpy(id.data(), &unique, sizeof(unique));
  return Status::success();
}

namespace {

/// createNcclCommunicator, with the watchdog the world shares (or none).
Status initRank(const NcclUniqueId &id, int rank, int size,
                const std::string &group,
                std::shared_ptr<WatchedComms> watched,
                std::shared_ptr<Watchdog> watchdog,
                std::unique_ptr<Communicator> &out) {
  out.reset();
  const std::string who = "rank " + std::to_string(rank) + " of " +
                          std::to_string(size) + " in group '" + group + "': ";
  if (size < 1 || rank < 0 || rank >= size)
    return Status::failure(where(__FILE__, __LINE__) + who +
                           "the rank is not in the group");
  if (Status version = nccl::checkLibraryVersion(); !version.ok())
    return version;
  ncclUniqueId unique;
  std::memcpy(&unique, id.data(), sizeof(unique));
  ncclComm_t comm = nullptr;
  if (ncclResult_t r = ncclCommInitRank(&comm, size, unique, rank);
      r != ncclSuccess)
    return Status::failure(where(__FILE__, __LINE__) + who +
                           "ncclCommInitRank failed: " + ncclWhy(r, comm));
  out = std::make_unique<NcclCommunicator>(comm, rank, size, group,
                                           std::move(watched),
                                           std::move(watchdog));
  return Status::success();
}

} // namespace

Status moert::createNcclCommunicator(const NcclUniqueId &id, int rank, int size,
                                     const std::string &group,
                                     std::unique_ptr<Communicator> &out) {
  return initRank(id, rank, size, group, /*watched=*/nullptr,
                  /*watchdog=*/nullptr, out);
}

Status moert::createWorldCommunicator(const RankInfo &info,
                                      const EnvLookup &env,
                                      std::unique_ptr<Communicator> &out) {
  out.reset();
  std::chrono::milliseconds timeout = kDefaultCollectiveTimeout;
  if (Status read = readSecondsVariable(env, kCollectiveTimeoutVariable,
                                        /*allowZero=*/true, timeout);
      !read.ok())
    return Status::failure("rank " + std::to_string(info.rank) + ": " +
                           read.message());
  // With a watchdog, the rendezvous's connections stay open: they tell
  // which peer is gone (moert/PeerLinks.h).
  auto links = std::make_shared<PeerLinks>();
  std::vector<char> payload;
  Status exchanged = rendezvousFromEnvironment(
      info, env,
      [](std::vector<char> &bytes) {
        NcclUniqueId id;
        if (Status made = createNcclUniqueId(id); !made.ok())
          return made;
        bytes.assign(id.begin(), id.end());
        return Status::success();
      },
      payload, timeout.count() > 0 ? links.get() : nullptr);
  if (!exchanged.ok())
    return exchanged;
  NcclUniqueId id;
  if (payload.size() != id.size())
    return Status::failure(where(__FILE__, __LINE__) + "rank " +
                           std::to_string(info.rank) +
                           ": the rendezvous delivered " +
                           std::to_string(payload.size()) +
                           " bytes, not an NCCL unique id of " +
                           std::to_string(id.size()));
  std::copy(payload.begin(), payload.end(), id.begin());
  std::shared_ptr<WatchedComms> watched;
  std::shared_ptr<Watchdog> watchdog;
  if (timeout.count() > 0) {
    watched = std::make_shared<WatchedComms>();
    watchdog = std::make_shared<Watchdog>(
        timeout,
        [watched](const std::string &message) { watched->onFault(message); });
    if (!links->peers().empty())
      watchdog->watchPeers([links] { return links->poll(); },
                           std::min<std::chrono::milliseconds>(
                               timeout, kPeerGoneGrace));
    watchdog->start(std::clamp<std::chrono::milliseconds>(
        timeout / 10, std::chrono::milliseconds(10), std::chrono::seconds(1)));
  }
  return initRank(id, info.rank, info.worldSize, "world", std::move(watched),
                  std::move(watchdog), out);
}
