//===- ThreadCommunicator.cpp - A world of ranks as threads ---------------===//
//
// See moert/ThreadCommunicator.h. A group's ranks share a GroupState; the
// k-th call of every rank meets in its k-th Call. A call has three phases,
// each ended when every rank has reached it:
//
//   posted    the rank's arguments (and, on a device, an event behind its
//             earlier work; for a sum, its input staged in host memory)
//   finished  the rank has enqueued its copies (pulling from the peers'
//             buffers) and, on a device, recorded an event behind them
//   left      the rank's stream waits for every peer's `finished` event,
//             so it does not overwrite a buffer a peer still reads
//
// The last rank to leave destroys the call's events. Failures have
// NcclCommunicator's shape: "FILE:LINE: rank R of S in group 'G':
// COLLECTIVE: WHY".
//
//===----------------------------------------------------------------------===//

#include "moert/ThreadCommunicator.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>

using namespace moert;

namespace {

/// One rank's arguments of a call.
struct Posting {
  const char *collective = ""; ///< "" until the rank has posted
  const void *send = nullptr;
  void *recv = nullptr;
  size_t count = 0;
  DataType type = DataType::F32;
  std::vector<size_t> sendCounts, sendOffsets, recvCounts, recvOffsets;
  int root = 0;
  int color = 0, key = 0;
  /// Whether the rank has enqueued its part.
  bool finished = false;
  /// The rank's input in host memory (sums only).
  const char *staged = nullptr;
  /// Device memory: behind the rank's work before the call, and behind its
  /// copies.
  cudaEvent_t ready = nullptr, done = nullptr;
};

struct GroupState;

/// The meeting of one call of every rank of a group.
struct Call {
  std::vector<Posting> posts;
  int posted = 0, finished = 0, left = 0;
  /// Set when the ranks' arguments disagree; every rank fails with it.
  std::string mismatch;
  /// split: each rank's new group (null for a negative color) and its rank
  /// in it.
  std::vector<std::shared_ptr<GroupState>> children;
  std::vector<int> childRanks;
};

/// What the ranks of a group share.
struct GroupState {
  int size;
  ThreadMemory memory;
  /// How long a rank waits for the others in one call (0: for ever).
  std::chrono::milliseconds timeout;
  std::mutex mutex;
  std::condition_variable changed;
  bool aborted = false;
  /// Why the group was aborted, when a call of it did (empty for abort()).
  std::string fault;
  std::map<uint64_t, Call> calls;

  GroupState(int size, ThreadMemory memory, std::chrono::milliseconds timeout)
      : size(size), memory(memory), timeout(timeout) {}
  ~GroupState() {
    for (auto &[id, call] : calls)
      destroyEvents(call);
  }
  static void destroyEvents(Call &call) {
    for (Posting &post : call.posts) {
      if (post.ready)
        (void)cudaEventDestroy(post.ready);
      if (post.done)
        (void)cudaEventDestroy(post.done);
      post.ready = post.done = nullptr;
    }
  }
};

std::string where(const char *file, int line) {
  return std::string(file) + ":" + std::to_string(line) + ": ";
}

/// Rounds `value` to bf16 (to nearest, ties to even), as bits.
uint16_t toBf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) // NaN stays a quiet NaN
    return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float fromBf16(uint16_t half) {
  uint32_t bits = static_cast<uint32_t>(half) << 16;
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

/// out[i] = sum over `inputs` (in their order) of inputs[k][first + i],
/// i < count: floats in double precision, rounded once; integers exactly.
void sumInOrder(const std::vector<const char *> &inputs, size_t first,
                size_t count, DataType type, char *out) {
  for (size_t i = 0; i < count; ++i) {
    size_t at = first + i;
    switch (type) {
    case DataType::F32: {
      double sum = 0;
      for (const char *in : inputs) {
        float v;
        std::memcpy(&v, in + 4 * at, 4);
        sum += v;
      }
      float rounded = static_cast<float>(sum);
      std::memcpy(out + 4 * i, &rounded, 4);
      break;
    }
    case DataType::BF16: {
      double sum = 0;
      for (const char *in : inputs) {
        uint16_t v;
        std::memcpy(&v, in + 2 * at, 2);
        sum += fromBf16(v);
      }
      uint16_t rounded = toBf16(static_cast<float>(sum));
      std::memcpy(out + 2 * i, &rounded, 2);
      break;
    }
    case DataType::I32: {
      uint32_t sum = 0; // wraps like NCCL's int32 sum, without UB
      for (const char *in : inputs) {
        uint32_t v;
        std::memcpy(&v, in + 4 * at, 4);
        sum += v;
      }
      std::memcpy(out + 4 * i, &sum, 4);
      break;
    }
    case DataType::I64: {
      uint64_t sum = 0;
      for (const char *in : inputs) {
        uint64_t v;
        std::memcpy(&v, in + 8 * at, 8);
        sum += v;
      }
      std::memcpy(out + 8 * i, &sum, 8);
      break;
    }
    }
  }
}

class ThreadCommunicator final : public Communicator {
public:
  ThreadCommunicator(std::shared_ptr<GroupState> state, int rank,
                     std::string group)
      : state(std::move(state)), rankIndex(rank), groupName(std::move(group)) {
  }

  int rank() const override { return rankIndex; }
  int size() const override { return state->size; }
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

private:
  /// What a call checks once every rank has posted (under the lock): an
  /// empty string, or why the ranks' arguments disagree.
  using Agreement = std::function<std::string(Call &)>;
  /// The rank's part once every rank has posted: its copies.
  using Part = std::function<Status(const Call &)>;

  /// "FILE:LINE: rank R of S in group 'G': COLLECTIVE: ".
  std::string prefix(const char *file, int line, const char *collective) const {
    return where(file, line) + "rank " + std::to_string(rankIndex) + " of " +
           std::to_string(state->size) + " in group '" + groupName +
           "': " + collective + ": ";
  }
  bool onDevice() const { return state->memory == ThreadMemory::Device; }
  /// Runs the three phases of one call (see the file's header); a call
  /// that moves no bytes (split) orders no streams.
  Status meet(const char *collective, Posting mine, cudaStream_t stream,
              const Agreement &agree, const Part &part,
              bool ordersStreams = true);
  /// Waits, with `lock` held, until every rank has posted (or, with
  /// `finished`, finished) `call`, the group is aborted, or the group's
  /// timeout passes, which aborts it naming the ranks that did not arrive.
  Status waitForRanks(std::unique_lock<std::mutex> &lock,
                      const char *collective, Call &call, bool finished);
  /// Aborts the group (with `lock` held) for `why`, which every rank's
  /// later failure quotes, and returns this rank's failure.
  Status abortGroup(const char *file, int line, const char *collective,
                    const std::string &why);
  /// "the communicator was aborted", with the group's fault if any.
  Status aborted(const char *file, int line, const char *collective) const;
  /// Copies `bytes` from `src` to `dst` after `ready` on `stream`.
  Status pull(void *dst, const void *src, size_t bytes, cudaEvent_t ready,
              cudaStream_t stream, const char *collective);
  /// Where one peer's part of a gathering collective goes: `count`
  /// elements from element `from` of the peer's send buffer to element `to`
  /// of this rank's receive buffer.
  struct PeerCopy {
    size_t from = 0, to = 0, count = 0;
  };
  /// Pulls every peer's part (`copyOf(peer)`) of `call` into `recv`
  /// (all_gather, all_to_all).
  Status pullFromPeers(const Call &call, void *recv, DataType type,
                       cudaStream_t stream, const char *collective,
                       const std::function<PeerCopy(int peer)> &copyOf);
  /// A sum over the group in rank order (all_reduce, reduce_scatter): every
  /// rank stages `stagedCount` elements of `send` and writes elements
  /// [first, first + count) of the sum to `recv`.
  Status sumInRankOrder(const char *collective, const void *send,
                        size_t stagedCount, void *recv, size_t count,
                        size_t first, DataType type, cudaStream_t stream);
  /// Stages `bytes` of `send` in host memory (synchronises `stream`).
  Status stage(const void *send, size_t bytes, cudaStream_t stream,
               const char *collective);
  /// Writes `bytes` of host `result` to `recv` (synchronises `stream`).
  Status unstage(void *recv, const char *result, size_t bytes,
                 cudaStream_t stream, const char *collective);
  /// The checks every collective makes first: not aborted, no capture.
  Status checkUsable(const char *collective, cudaStream_t stream) const;
  Status cudaFailure(const char *file, int line, const char *collective,
                     const char *call, cudaError_t result) const {
    return Status::failure(prefix(file, line, collective) + call +
                           " failed: " + cudaGetErrorString(result));
  }

  std::shared_ptr<GroupState> state;
  int rankIndex;
  std::string groupName;
  uint64_t nextCall = 0;
  /// This rank's staged input and its sum's result (host memory).
  std::vector<char> staging, result;
};

} // namespace

#define MOERT_CUDA_RETURN_IF_ERROR(collective, call)                           \
  do {                                                                         \
    cudaError_t result_ = (call);                                              \
    if (result_ != cudaSuccess)                                                \
      return cudaFailure(__FILE__, __LINE__, collective, #call, result_);      \
  } while (0)

Status ThreadCommunicator::checkUsable(const char *collective,
                                       cudaStream_t stream) const {
  {
    std::lock_guard<std::mutex> lock(state->mutex);
    if (state->aborted)
      return aborted(__FILE__, __LINE__, collective);
  }
  if (!onDevice())
    return Status::success();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  MOERT_CUDA_RETURN_IF_ERROR(collective,
                             cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone)
    return Status::failure(prefix(__FILE__, __LINE__, collective) +
                           "the stream is being captured into a CUDA graph, "
                           "which the thread communicator cannot join");
  return Status::success();
}

Status ThreadCommunicator::aborted(const char *file, int line,
                                   const char *collective) const {
  return Status::failure(prefix(file, line, collective) +
                         "the communicator was aborted" +
                         (state->fault.empty() ? "" : " (" + state->fault + ")"));
}

Status ThreadCommunicator::abortGroup(const char *file, int line,
                                      const char *collective,
                                      const std::string &why) {
  state->aborted = true;
  if (state->fault.empty())
    state->fault = "rank " + std::to_string(rankIndex) + " of " +
                   std::to_string(state->size) + " in group '" + groupName +
                   "': " + collective + ": " + why;
  state->changed.notify_all();
  return Status::failure(prefix(file, line, collective) + why);
}

Status ThreadCommunicator::waitForRanks(std::unique_lock<std::mutex> &lock,
                                        const char *collective, Call &call,
                                        bool finished) {
  auto arrived = [&] {
    return (finished ? call.finished : call.posted) == state->size;
  };
  auto reached = [&] { return state->aborted || arrived(); };
  bool inTime = true;
  if (state->timeout.count() > 0)
    inTime = state->changed.wait_for(lock, state->timeout, reached);
  else
    state->changed.wait(lock, reached);
  if (!inTime) {
    std::string missing;
    for (int r = 0; r < state->size; ++r)
      if (finished ? !call.posts[r].finished : !*call.posts[r].collective)
        missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    char seconds[32];
    std::snprintf(seconds, sizeof(seconds), "%.1f",
                  std::chrono::duration<double>(state->timeout).count());
    return abortGroup(__FILE__, __LINE__, collective,
                      "rank(s) " + missing + " of the group did not " +
                          (finished ? "finish" : "call") + " it within " +
                          seconds + " s (the thread world's timeout)");
  }
  // Ranks that disagree fail, every one with the reason, and the group
  // with them.
  if (!finished && arrived() && !call.mismatch.empty())
    return abortGroup(__FILE__, __LINE__, collective,
                      "the ranks disagree: " + call.mismatch);
  // A call every rank reached goes on, even when a rank that left it first
  // has aborted the group since.
  if (state->aborted && !arrived())
    return aborted(__FILE__, __LINE__, collective);
  return Status::success();
}

Status ThreadCommunicator::meet(const char *collective, Posting mine,
                                cudaStream_t stream, const Agreement &agree,
                                const Part &part, bool ordersStreams) {
  const bool events = onDevice() && ordersStreams;
  if (events) {
    MOERT_CUDA_RETURN_IF_ERROR(
        collective,
        cudaEventCreateWithFlags(&mine.ready, cudaEventDisableTiming));
    MOERT_CUDA_RETURN_IF_ERROR(collective, cudaEventRecord(mine.ready, stream));
  }
  const uint64_t id = nextCall++;
  std::unique_lock<std::mutex> lock(state->mutex);
  Call &call = state->calls[id]; // map nodes stay where they are
  if (call.posts.empty())
    call.posts.resize(state->size);
  mine.collective = collective;
  call.posts[rankIndex] = std::move(mine);
  if (++call.posted == state->size) {
    for (int r = 1; r < state->size && call.mismatch.empty(); ++r)
      if (std::strcmp(call.posts[r].collective, call.posts[0].collective))
        call.mismatch = std::string("rank 0 calls ") +
                        call.posts[0].collective + ", rank " +
                        std::to_string(r) + " " + call.posts[r].collective;
    if (call.mismatch.empty())
      call.mismatch = agree(call);
    state->changed.notify_all();
  }
  if (Status s = waitForRanks(lock, collective, call, /*finished=*/false);
      !s.ok())
    return s;

  // The rank's copies, outside the lock: nothing of `call` but this rank's
  // done event changes until every rank has finished.
  lock.unlock();
  Status copied = part(call);
  cudaEvent_t done = nullptr;
  if (copied.ok() && events) {
    cudaError_t made = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
    if (made == cudaSuccess)
      made = cudaEventRecord(done, stream);
    if (made != cudaSuccess)
      copied = cudaFailure(__FILE__, __LINE__, collective, "cudaEventRecord",
                           made);
  }
  lock.lock();
  if (!copied.ok()) {
    // The peers would wait for this rank forever: fail them too.
    if (done)
      (void)cudaEventDestroy(done);
    (void)abortGroup(__FILE__, __LINE__, collective, copied.message());
    return copied;
  }
  call.posts[rankIndex].done = done;
  call.posts[rankIndex].finished = true;
  if (++call.finished == state->size)
    state->changed.notify_all();
  if (Status s = waitForRanks(lock, collective, call, /*finished=*/true);
      !s.ok())
    return s;
  if (events)
    for (int peer = 0; peer < state->size; ++peer)
      if (peer != rankIndex)
        MOERT_CUDA_RETURN_IF_ERROR(
            collective, cudaStreamWaitEvent(stream, call.posts[peer].done, 0));
  if (++call.left == state->size) {
    GroupState::destroyEvents(call);
    state->calls.erase(id);
  }
  return Status::success();
}

Status ThreadCommunicator::pull(void *dst, const void *src, size_t bytes,
                                cudaEvent_t ready, cudaStream_t stream,
                                const char *collective) {
  if (bytes == 0 || dst == src)
    return Status::success();
  if (!onDevice()) {
    std::memmove(dst, src, bytes);
    return Status::success();
  }
  MOERT_CUDA_RETURN_IF_ERROR(collective, cudaStreamWaitEvent(stream, ready, 0));
  MOERT_CUDA_RETURN_IF_ERROR(
      collective,
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
  return Status::success();
}

Status ThreadCommunicator::stage(const void *send, size_t bytes,
                                 cudaStream_t stream, const char *collective) {
  staging.resize(std::max<size_t>(bytes, 1));
  if (!onDevice()) {
    std::memcpy(staging.data(), send, bytes);
    return Status::success();
  }
  MOERT_CUDA_RETURN_IF_ERROR(collective,
                             cudaMemcpyAsync(staging.data(), send, bytes,
                                             cudaMemcpyDefault, stream));
  MOERT_CUDA_RETURN_IF_ERROR(collective, cudaStreamSynchronize(stream));
  return Status::success();
}

Status ThreadCommunicator::unstage(void *recv, const char *data, size_t bytes,
                                   cudaStream_t stream,
                                   const char *collective) {
  if (!onDevice()) {
    std::memcpy(recv, data, bytes);
    return Status::success();
  }
  MOERT_CUDA_RETURN_IF_ERROR(
      collective,
      cudaMemcpyAsync(recv, data, bytes, cudaMemcpyDefault, stream));
  MOERT_CUDA_RETURN_IF_ERROR(collective, cudaStreamSynchronize(stream));
  return Status::success();
}

namespace {

/// Empty when every rank posted the same count and type, else why not.
std::string sameCountAndType(const Call &call) {
  const Posting &first = call.posts[0];
  for (size_t r = 1; r < call.posts.size(); ++r)
    if (call.posts[r].count != first.count || call.posts[r].type != first.type)
      return "rank 0 passes " + std::to_string(first.count) + " " +
             dataTypeName(first.type) + " elements, rank " + std::to_string(r) +
             " " + std::to_string(call.posts[r].count) + " " +
             dataTypeName(call.posts[r].type);
  return {};
}

} // namespace

Status ThreadCommunicator::sumInRankOrder(const char *collective,
                                          const void *send, size_t stagedCount,
                                          void *recv, size_t count,
                                          size_t first, DataType type,
                                          cudaStream_t stream) {
  if (Status s = checkUsable(collective, stream); !s.ok())
    return s;
  if (Status s = stage(send, stagedCount * elementBytes(type), stream,
                       collective);
      !s.ok())
    return s;
  Posting mine;
  mine.count = count;
  mine.type = type;
  mine.staged = staging.data();
  const size_t bytes = count * elementBytes(type);
  return meet(collective, std::move(mine), stream, sameCountAndType,
              [&](const Call &call) {
                std::vector<const char *> inputs;
                for (const Posting &post : call.posts)
                  inputs.push_back(post.staged);
                result.resize(std::max<size_t>(bytes, 1));
                sumInOrder(inputs, first, count, type, result.data());
                return unstage(recv, result.data(), bytes, stream, collective);
              });
}

Status ThreadCommunicator::pullFromPeers(
    const Call &call, void *recv, DataType type, cudaStream_t stream,
    const char *collective, const std::function<PeerCopy(int peer)> &copyOf) {
  const size_t bytes = elementBytes(type);
  for (int peer = 0; peer < state->size; ++peer) {
    const PeerCopy copy = copyOf(peer);
    const Posting &from = call.posts[peer];
    if (Status s = pull(static_cast<char *>(recv) + copy.to * bytes,
                        static_cast<const char *>(from.send) +
                            copy.from * bytes,
                        copy.count * bytes, from.ready, stream, collective);
        !s.ok())
      return s;
  }
  return Status::success();
}

Status ThreadCommunicator::allReduceSum(const void *send, void *recv,
                                        size_t count, DataType type,
                                        cudaStream_t stream) {
  return sumInRankOrder("all_reduce", send, count, recv, count, 0, type,
                        stream);
}

Status ThreadCommunicator::reduceScatterSum(const void *send, void *recv,
                                            size_t count, DataType type,
                                            cudaStream_t stream) {
  return sumInRankOrder("reduce_scatter", send, count * state->size, recv,
                        count, static_cast<size_t>(rankIndex) * count, type,
                        stream);
}

Status ThreadCommunicator::allGather(const void *send, void *recv, size_t count,
                                     DataType type, cudaStream_t stream) {
  const char *name = "all_gather";
  if (Status s = checkUsable(name, stream); !s.ok())
    return s;
  Posting mine;
  mine.send = send;
  mine.count = count;
  mine.type = type;
  return meet(name, std::move(mine), stream, sameCountAndType,
              [&](const Call &call) {
                return pullFromPeers(call, recv, type, stream, name,
                                     [&](int peer) {
                                       return PeerCopy{0, peer * count, count};
                                     });
              });
}

Status ThreadCommunicator::allToAllV(const void *send,
                                     const std::vector<size_t> &sendCounts,
                                     const std::vector<size_t> &sendOffsets,
                                     void *recv,
                                     const std::vector<size_t> &recvCounts,
                                     const std::vector<size_t> &recvOffsets,
                                     DataType type, cudaStream_t stream) {
  const char *name = "all_to_all";
  if (Status s = checkUsable(name, stream); !s.ok())
    return s;
  if (std::string wrong = checkAllToAllCounts(
          state->size, sendCounts, sendOffsets, recvCounts, recvOffsets);
      !wrong.empty())
    return Status::failure(prefix(__FILE__, __LINE__, name) + wrong);
  Posting mine;
  mine.send = send;
  mine.type = type;
  mine.sendCounts = sendCounts;
  mine.sendOffsets = sendOffsets;
  mine.recvCounts = recvCounts;
  mine.recvOffsets = recvOffsets;
  auto agree = [](Call &call) -> std::string {
    for (size_t from = 0; from < call.posts.size(); ++from) {
      if (call.posts[from].type != call.posts[0].type)
        return "rank 0 passes " + std::string(dataTypeName(call.posts[0].type)) +
               ", rank " + std::to_string(from) + " " +
               dataTypeName(call.posts[from].type);
      for (size_t to = 0; to < call.posts.size(); ++to)
        if (call.posts[from].sendCounts[to] != call.posts[to].recvCounts[from])
          return "rank " + std::to_string(from) + " sends " +
                 std::to_string(call.posts[from].sendCounts[to]) +
                 " elements to rank " + std::to_string(to) + ", which receives " +
                 std::to_string(call.posts[to].recvCounts[from]);
    }
    return {};
  };
  return meet(name, std::move(mine), stream, agree, [&](const Call &call) {
    return pullFromPeers(call, recv, type, stream, name, [&](int peer) {
      return PeerCopy{call.posts[peer].sendOffsets[rankIndex],
                      recvOffsets[peer], recvCounts[peer]};
    });
  });
}

Status ThreadCommunicator::broadcast(const void *send, void *recv, size_t count,
                                     DataType type, int root,
                                     cudaStream_t stream) {
  const char *name = "broadcast";
  if (Status s = checkUsable(name, stream); !s.ok())
    return s;
  if (std::string wrong = checkBroadcastRoot(state->size, root);
      !wrong.empty())
    return Status::failure(prefix(__FILE__, __LINE__, name) + wrong);
  Posting mine;
  mine.send = send;
  mine.count = count;
  mine.type = type;
  mine.root = root;
  auto agree = [](Call &call) -> std::string {
    std::string differ = sameCountAndType(call);
    for (size_t r = 1; differ.empty() && r < call.posts.size(); ++r)
      if (call.posts[r].root != call.posts[0].root)
        differ = "rank 0 names root " + std::to_string(call.posts[0].root) +
                 ", rank " + std::to_string(r) + " root " +
                 std::to_string(call.posts[r].root);
    return differ;
  };
  return meet(name, std::move(mine), stream, agree, [&](const Call &call) {
    return pull(recv, call.posts[root].send, count * elementBytes(type),
                call.posts[root].ready, stream, name);
  });
}

Status ThreadCommunicator::barrier(cudaStream_t stream) {
  const char *name = "barrier";
  if (Status s = checkUsable(name, stream); !s.ok())
    return s;
  if (Status s = meet(name, Posting(), stream,
                      [](Call &) { return std::string(); },
                      [](const Call &) { return Status::success(); });
      !s.ok())
    return s;
  if (onDevice())
    MOERT_CUDA_RETURN_IF_ERROR(name, cudaStreamSynchronize(stream));
  return Status::success();
}

Status ThreadCommunicator::split(int color, int key, const std::string &group,
                                 std::unique_ptr<Communicator> &out) {
  const char *name = "split";
  out.reset();
  {
    std::lock_guard<std::mutex> lock(state->mutex);
    if (state->aborted)
      return aborted(__FILE__, __LINE__, name);
  }
  Posting mine;
  mine.color = color;
  mine.key = key;
  ThreadMemory memory = state->memory;
  std::chrono::milliseconds timeout = state->timeout;
  // The last rank to post makes the new groups: the ranks of one color,
  // ordered by key, then by rank.
  auto makeGroups = [memory, timeout](Call &call) -> std::string {
    const int n = static_cast<int>(call.posts.size());
    call.children.assign(n, nullptr);
    call.childRanks.assign(n, -1);
    std::map<int, std::vector<int>> members;
    for (int r = 0; r < n; ++r)
      if (call.posts[r].color >= 0)
        members[call.posts[r].color].push_back(r);
    for (auto &[color, ranks] : members) {
      std::stable_sort(ranks.begin(), ranks.end(), [&](int a, int b) {
        return call.posts[a].key < call.posts[b].key;
      });
      auto child = std::make_shared<GroupState>(static_cast<int>(ranks.size()),
                                                memory, timeout);
      for (size_t i = 0; i < ranks.size(); ++i) {
        call.children[ranks[i]] = child;
        call.childRanks[ranks[i]] = static_cast<int>(i);
      }
    }
    return {};
  };
  std::shared_ptr<GroupState> child;
  int childRank = -1;
  // A split enqueues no work: it orders no stream.
  if (Status s = meet(
          name, std::move(mine), nullptr, makeGroups,
          [&](const Call &call) {
            child = call.children[rankIndex];
            childRank = call.childRanks[rankIndex];
            return Status::success();
          },
          /*ordersStreams=*/false);
      !s.ok())
    return s;
  if (child)
    out = std::make_unique<ThreadCommunicator>(std::move(child), childRank,
                                               group);
  return Status::success();
}

void ThreadCommunicator::abort() {
  std::lock_guard<std::mutex> lock(state->mutex);
  state->aborted = true;
  state->changed.notify_all();
}

Status moert::createThreadWorld(int size, ThreadMemory memory,
                                std::vector<std::unique_ptr<Communicator>> &out,
                                std::chrono::milliseconds timeout) {
  out.clear();
  if (size < 1)
    return Status::failure(where(__FILE__, __LINE__) + "a world of " +
                           std::to_string(size) +
                           " ranks: it needs at least one");
  auto state = std::make_shared<GroupState>(size, memory, timeout);
  for (int r = 0; r < size; ++r)
    out.push_back(std::make_unique<ThreadCommunicator>(state, r, "world"));
  return Status::success();
}
