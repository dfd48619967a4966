//===- CollectiveTimes.cpp - Time spent in each group's collectives -------===//
//
// See moert/CollectiveTimes.h. A TimedCommunicator passes every call on to
// the communicator it wraps; around a collective on a stream that is not
// being captured it records a pair of events, which collect() reads and
// destroys.
//
//===----------------------------------------------------------------------===//

#include "moert/CollectiveTimes.h"

#include <algorithm>

using namespace moert;

/// The event pairs recorded since the last collect(), by group.
struct CollectiveTimes::Pending {
  struct Call {
    size_t group;
    const char *collective;
    double bytes;
    cudaEvent_t start, end;
  };
  std::vector<std::string> groups;
  std::vector<int> groupSizes;
  std::vector<Call> calls;
};

namespace {

class TimedCommunicator final : public Communicator {
public:
  TimedCommunicator(Communicator &inner, std::unique_ptr<Communicator> owned,
                    CollectiveTimes::Pending &pending)
      : inner(inner), owned(std::move(owned)), pending(pending),
        groupIndex(pending.groups.size()) {
    pending.groups.push_back(inner.group());
    pending.groupSizes.push_back(inner.size());
  }

  int rank() const override { return inner.rank(); }
  int size() const override { return inner.size(); }
  const std::string &group() const override { return inner.group(); }

  Status allReduceSum(const void *send, void *recv, size_t count, DataType type,
                      cudaStream_t stream) override {
    return timed(stream, "all_reduce", double(count) * elementBytes(type), [&] {
      return inner.allReduceSum(send, recv, count, type, stream);
    });
  }
  Status allGather(const void *send, void *recv, size_t count, DataType type,
                   cudaStream_t stream) override {
    return timed(stream, "all_gather",
                 double(count) * elementBytes(type) * inner.size(), [&] {
      return inner.allGather(send, recv, count, type, stream);
    });
  }
  Status reduceScatterSum(const void *send, void *recv, size_t count,
                          DataType type, cudaStream_t stream) override {
    return timed(stream, "reduce_scatter",
                 double(count) * elementBytes(type) * inner.size(), [&] {
      return inner.reduceScatterSum(send, recv, count, type, stream);
    });
  }
  Status allToAllV(const void *send, const std::vector<size_t> &sendCounts,
                   const std::vector<size_t> &sendOffsets, void *recv,
                   const std::vector<size_t> &recvCounts,
                   const std::vector<size_t> &recvOffsets, DataType type,
                   cudaStream_t stream) override {
    double sent = 0;
    for (size_t count : sendCounts)
      sent += double(count) * elementBytes(type);
    return timed(stream, "all_to_all", sent, [&] {
      return inner.allToAllV(send, sendCounts, sendOffsets, recv, recvCounts,
                             recvOffsets, type, stream);
    });
  }
  Status broadcast(const void *send, void *recv, size_t count, DataType type,
                   int root, cudaStream_t stream) override {
    return timed(stream, "broadcast", double(count) * elementBytes(type), [&] {
      return inner.broadcast(send, recv, count, type, root, stream);
    });
  }
  Status barrier(cudaStream_t stream) override {
    return timed(stream, "barrier", 0, [&] { return inner.barrier(stream); });
  }
  Status split(int color, int key, const std::string &group,
               std::unique_ptr<Communicator> &out) override {
    std::unique_ptr<Communicator> child;
    if (Status s = inner.split(color, key, group, child); !s.ok() || !child)
      return s;
    Communicator &ref = *child;
    out = std::make_unique<TimedCommunicator>(ref, std::move(child), pending);
    return Status::success();
  }
  void abort() override { inner.abort(); }
  Status watchStream(const std::string &what, cudaStream_t stream) override {
    return inner.watchStream(what, stream);
  }

private:
  template <class Call>
  Status timed(cudaStream_t stream, const char *collective, double bytes,
               Call call) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess ||
        capture != cudaStreamCaptureStatusNone)
      return call();
    cudaEvent_t start = nullptr, end = nullptr;
    if (cudaEventCreate(&start) != cudaSuccess ||
        cudaEventCreate(&end) != cudaSuccess ||
        cudaEventRecord(start, stream) != cudaSuccess) {
      if (start)
        (void)cudaEventDestroy(start);
      if (end)
        (void)cudaEventDestroy(end);
      return call(); // untimed, rather than failed
    }
    Status status = call();
    if (!status.ok() || cudaEventRecord(end, stream) != cudaSuccess) {
      (void)cudaEventDestroy(start);
      (void)cudaEventDestroy(end);
      return status;
    }
    pending.calls.push_back({groupIndex, collective, bytes, start, end});
    return status;
  }

  Communicator &inner;
  std::unique_ptr<Communicator> owned;
  CollectiveTimes::Pending &pending;
  size_t groupIndex;
};

} // namespace

CollectiveTimes::CollectiveTimes() : pending(std::make_unique<Pending>()) {}

CollectiveTimes::~CollectiveTimes() {
  for (const Pending::Call &call : pending->calls) {
    (void)cudaEventDestroy(call.start);
    (void)cudaEventDestroy(call.end);
  }
}

std::unique_ptr<Communicator> CollectiveTimes::wrap(Communicator &comm) {
  return std::make_unique<TimedCommunicator>(comm, nullptr, *pending);
}

double CollectiveTime::busGbPerSecond() const {
  if (milliseconds <= 0)
    return 0;
  double n = groupSize;
  double factor = 0;
  if (collective == "all_reduce")
    factor = 2 * (n - 1) / n;
  else if (collective == "all_gather" || collective == "reduce_scatter" ||
           collective == "all_to_all")
    factor = (n - 1) / n;
  else if (collective == "broadcast")
    factor = 1;
  return bytes / (milliseconds / 1e3) / 1e9 * factor;
}

Status CollectiveTimes::collect(std::vector<GroupTime> &times,
                                std::vector<CollectiveTime> *byCollective) {
  std::vector<GroupTime> byGroup(pending->groups.size());
  if (byCollective)
    byCollective->clear();
  Status status = Status::success();
  for (const Pending::Call &call : pending->calls) {
    float ms = 0;
    cudaError_t read = cudaEventElapsedTime(&ms, call.start, call.end);
    if (read != cudaSuccess && status.ok())
      status = Status::failure(
          std::string("collective times: cudaEventElapsedTime failed: ") +
          cudaGetErrorString(read));
    byGroup[call.group].calls += 1;
    byGroup[call.group].milliseconds += ms;
    if (byCollective) {
      const std::string &group = pending->groups[call.group];
      auto it = std::find_if(
          byCollective->begin(), byCollective->end(),
          [&](const CollectiveTime &c) {
            return c.group == group && c.collective == call.collective;
          });
      if (it == byCollective->end()) {
        byCollective->push_back(
            {group, call.collective, pending->groupSizes[call.group]});
        it = byCollective->end() - 1;
      }
      it->calls += 1;
      it->milliseconds += ms;
      it->bytes += call.bytes;
    }
    (void)cudaEventDestroy(call.start);
    (void)cudaEventDestroy(call.end);
  }
  pending->calls.clear();
  times.clear();
  for (size_t g = 0; g < byGroup.size(); ++g)
    if (byGroup[g].calls > 0) {
      byGroup[g].group = pending->groups[g];
      times.push_back(byGroup[g]);
    }
  return status;
}
