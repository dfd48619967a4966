//===- Communicator.cpp - In-process collectives for simulated ranks ------===//
//
// See moec/Reference/Communicator.h. Every collective is one exchange: each
// member deposits a copy of its contribution, waits for the others, and
// computes its own result from all contributions in group-rank order.
//
//===----------------------------------------------------------------------===//

#include "moec/Reference/Communicator.h"

#include "llvm/Support/FormatVariadic.h"

#include <algorithm>

using namespace moec;
using namespace moec::reference;

namespace {

const char *collectiveName(int kind) {
  static const char *names[] = {"all_reduce", "all_gather", "reduce_scatter",
                                "all_to_all"};
  return names[kind];
}

/// A 1-D tensor of `kind` with `count` elements.
HostTensor flat(HostTensor::ElementKind kind, int64_t count) {
  return kind == HostTensor::ElementKind::F32 ? HostTensor::floats({count})
                                              : HostTensor::ints({count});
}

/// Copies elements [begin, begin + count) of `from` to `to` at `at`.
void copyElements(const HostTensor &from, int64_t begin, int64_t count,
                  HostTensor &to, int64_t at) {
  if (from.isFloat())
    std::copy_n(from.f32.begin() + begin, count, to.f32.begin() + at);
  else
    std::copy_n(from.i64.begin() + begin, count, to.i64.begin() + at);
}

/// Sums elements [begin, begin + count) of every member's first contribution
/// in group-rank order into a 1-D tensor.
HostTensor sumInGroupOrder(const std::vector<std::vector<HostTensor>> &all,
                           int64_t begin, int64_t count) {
  HostTensor out = flat(all.front().front().kind, count);
  for (int64_t i = 0; i < count; ++i) {
    if (out.isFloat()) {
      double sum = 0.0;
      for (const std::vector<HostTensor> &member : all)
        sum += member.front().f32[begin + i];
      out.f32[i] = static_cast<float>(sum);
    } else {
      int64_t sum = 0;
      for (const std::vector<HostTensor> &member : all)
        sum += member.front().i64[begin + i];
      out.i64[i] = sum;
    }
  }
  return out;
}

/// Checks that every member's first contribution has the kind and element
/// count of group rank 0's.
bool sameKindAndCount(const std::vector<std::vector<HostTensor>> &all,
                      llvm::StringRef collective, std::string &error) {
  const HostTensor &first = all.front().front();
  for (auto [i, member] : llvm::enumerate(all)) {
    const HostTensor &t = member.front();
    if (t.kind != first.kind) {
      error = llvm::formatv("{0}: group rank {1} contributes {2} but group "
                            "rank 0 contributes {3}",
                            collective, i, t.isFloat() ? "floats" : "integers",
                            first.isFloat() ? "floats" : "integers");
      return false;
    }
    if (t.numElements() != first.numElements()) {
      error = llvm::formatv("{0}: group rank {1} contributes {2} elements but "
                            "group rank 0 contributes {3}",
                            collective, i, t.numElements(),
                            first.numElements());
      return false;
    }
  }
  return true;
}

} // namespace

Communicator::Communicator(int64_t worldSize) : sequence(worldSize) {}

void Communicator::abort(int64_t rank) {
  std::lock_guard<std::mutex> lock(mutex);
  if (abortedBy < 0)
    abortedBy = rank;
  arrivals.notify_all();
}

bool Communicator::exchange(
    int64_t rank, llvm::ArrayRef<int64_t> group, Collective collective,
    std::vector<HostTensor> contribution,
    const std::function<bool(const std::vector<std::vector<HostTensor>> &,
                             int64_t, std::string &)> &read,
    std::string &error) {
  const char *name = collectiveName(static_cast<int>(collective));
  if (group.empty()) {
    error = llvm::formatv("{0} on an empty group", name);
    return false;
  }
  for (auto [i, member] : llvm::enumerate(group)) {
    if (member < 0 || member >= worldSize()) {
      error = llvm::formatv("{0}: group member {1} is not a rank of a world "
                            "of {2}",
                            name, member, worldSize());
      return false;
    }
    if (i > 0 && member <= group[i - 1]) {
      error = llvm::formatv("{0}: group ranks must increase, but {1} follows "
                            "{2}",
                            name, member, group[i - 1]);
      return false;
    }
  }
  auto position = llvm::find(group, rank);
  if (position == group.end()) {
    error = llvm::formatv("{0}: rank {1} is not a member of its group", name,
                          rank);
    return false;
  }
  const int64_t groupRank = position - group.begin();
  const int64_t size = static_cast<int64_t>(group.size());
  std::vector<int64_t> members(group.begin(), group.end());
  // Only this rank's thread touches sequence[rank].
  ExchangeKey key{members, sequence[rank][members]++};

  std::unique_lock<std::mutex> lock(mutex);
  auto abortedMessage = [&] {
    error = llvm::formatv("{0}: rank {1} failed, so the collective was "
                          "abandoned",
                          name, abortedBy);
    return false;
  };
  if (abortedBy >= 0)
    return abortedMessage();
  auto [it, created] = exchanges.try_emplace(key);
  Exchange &meeting = it->second;
  if (created) {
    meeting.collective = collective;
    meeting.contributions.resize(size);
  } else if (meeting.collective != collective) {
    // Let the others see the mismatch too rather than wait forever.
    abortedBy = rank;
    arrivals.notify_all();
    error = llvm::formatv("rank {0} called {1} where another member of its "
                          "group called {2}",
                          rank, name,
                          collectiveName(static_cast<int>(meeting.collective)));
    return false;
  }
  meeting.contributions[groupRank] = std::move(contribution);
  if (++meeting.arrived == size)
    arrivals.notify_all();
  arrivals.wait(lock,
                [&] { return meeting.arrived == size || abortedBy >= 0; });
  if (meeting.arrived != size)
    return abortedMessage();
  // Contributions are complete and no member writes them any more; the
  // exchange stays alive until every member has read.
  lock.unlock();
  bool ok = read(meeting.contributions, groupRank, error);
  lock.lock();
  if (++meeting.departed == size)
    exchanges.erase(it);
  return ok;
}

bool Communicator::allReduceSum(int64_t rank, llvm::ArrayRef<int64_t> group,
                                HostTensor &data, std::string &error) {
  std::vector<int64_t> shape = data.shape;
  HostTensor result;
  bool ok = exchange(
      rank, group, Collective::AllReduce, {data},
      [&](const std::vector<std::vector<HostTensor>> &all, int64_t,
          std::string &message) {
        if (!sameKindAndCount(all, "all_reduce", message))
          return false;
        result = sumInGroupOrder(all, 0, all.front().front().numElements());
        return true;
      },
      error);
  if (!ok)
    return false;
  data = std::move(result);
  data.shape = std::move(shape);
  return true;
}

bool Communicator::allGather(int64_t rank, llvm::ArrayRef<int64_t> group,
                             const HostTensor &input, HostTensor &output,
                             std::string &error) {
  return exchange(
      rank, group, Collective::AllGather, {input},
      [&](const std::vector<std::vector<HostTensor>> &all, int64_t,
          std::string &message) {
        int64_t total = 0;
        for (auto [i, member] : llvm::enumerate(all)) {
          if (member.front().kind != all.front().front().kind) {
            message = llvm::formatv("all_gather: group rank {0} contributes "
                                    "another element kind than group rank 0",
                                    i);
            return false;
          }
          total += member.front().numElements();
        }
        output = flat(all.front().front().kind, total);
        int64_t at = 0;
        for (const std::vector<HostTensor> &member : all) {
          copyElements(member.front(), 0, member.front().numElements(), output,
                       at);
          at += member.front().numElements();
        }
        return true;
      },
      error);
}

bool Communicator::reduceScatterSum(int64_t rank,
                                    llvm::ArrayRef<int64_t> group,
                                    const HostTensor &input,
                                    HostTensor &output, std::string &error) {
  return exchange(
      rank, group, Collective::ReduceScatter, {input},
      [&](const std::vector<std::vector<HostTensor>> &all, int64_t groupRank,
          std::string &message) {
        if (!sameKindAndCount(all, "reduce_scatter", message))
          return false;
        int64_t count = all.front().front().numElements();
        int64_t size = static_cast<int64_t>(all.size());
        if (count % size != 0) {
          message = llvm::formatv("reduce_scatter: {0} elements do not split "
                                  "into {1} equal chunks",
                                  count, size);
          return false;
        }
        int64_t chunk = count / size;
        output = sumInGroupOrder(all, groupRank * chunk, chunk);
        return true;
      },
      error);
}

bool Communicator::allToAll(int64_t rank, llvm::ArrayRef<int64_t> group,
                            const std::vector<HostTensor> &sends,
                            std::vector<HostTensor> &receives,
                            std::string &error) {
  if (sends.size() != group.size()) {
    error = llvm::formatv("all_to_all: rank {0} sends {1} buffers to a group "
                          "of {2}",
                          rank, sends.size(), group.size());
    // Still meet the others so that they fail instead of waiting.
    abort(rank);
    return false;
  }
  return exchange(
      rank, group, Collective::AllToAll, sends,
      [&](const std::vector<std::vector<HostTensor>> &all, int64_t groupRank,
          std::string &message) {
        receives.clear();
        for (auto [i, member] : llvm::enumerate(all)) {
          const HostTensor &sent = member[groupRank];
          if (sent.kind != all[groupRank].front().kind) {
            message = llvm::formatv("all_to_all: group rank {0} sends another "
                                    "element kind than group rank {1}",
                                    i, groupRank);
            return false;
          }
          HostTensor received = flat(sent.kind, sent.numElements());
          copyElements(sent, 0, sent.numElements(), received, 0);
          receives.push_back(std::move(received));
        }
        return true;
      },
      error);
}
