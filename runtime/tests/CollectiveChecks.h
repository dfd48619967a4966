//===- CollectiveChecks.h - Checks every Communicator passes ----*- C++ -*-===//
//
// The collective checks of moert/Communicator.h, written once for every
// implementation: runtime/tests/CommunicatorTest.cu runs them on a GPU
// through NCCL (a world of one rank) and through the thread world (W = 2,
// 4, 8, device buffers), test/runtime/ThreadCommunicatorTest.cpp through the
// thread world in host memory (no GPU). Every rank of a group runs the same
// checks in the same order on exactly predictable data (rank r's element i
// is a small integer of r and i, so every sum is exact in f32 and bf16) and
// every comparison is bitwise:
//
//   all_reduce (sum)     f32, bf16, i64; f32 in place
//   all_gather           f32, bf16, i64
//   reduce_scatter (sum) f32, bf16, i64
//   all_to_all           unequal counts (some zero) at offsets with gaps;
//                        elements outside them keep their sentinel; one
//                        that moves nothing
//   broadcast            bf16 and i32 from the last rank
//   barrier              returns (once the stream's work is done)
//   refused arguments    counts for one rank too many, a root outside the
//                        group: messages that name the rank, the group and
//                        the collective
//   mesh groups          the rank's coordinates on a MeshShape, and every
//                        group holds the ranks its axes say, in world
//                        order, with this rank at its place (all-gathered
//                        world ranks)
//
// Where the buffers live is the caller's (CheckMemory). Header-only: the
// GPU tests are built by nvcc alone, the host tests by the project.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_TESTS_COLLECTIVECHECKS_H
#define MOERT_TESTS_COLLECTIVECHECKS_H

#include "moert/Communicator.h"
#include "moert/Mesh.h"

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace moert::testing {

/// Where the checks' buffers live and how results come back: host memory,
/// or device memory and a stream.
class CheckMemory {
public:
  virtual ~CheckMemory() = default;
  /// A buffer holding a copy of `bytes` bytes at `data`, alive as long as
  /// this object.
  virtual void *buffer(const void *data, size_t bytes) = 0;
  /// The `bytes` bytes of `buffer` once the work enqueued so far is done.
  virtual std::vector<char> read(const void *buffer, size_t bytes) = 0;
  /// The stream the collectives take (null in host memory).
  virtual cudaStream_t stream() const = 0;
};

/// One check's outcome on one rank; `note` says what went wrong.
struct CheckResult {
  std::string name;
  bool pass = false;
  std::string note;
};

namespace detail {

/// The elements of the checks: T from a small integer, exactly. bf16 is
/// held as its bits (uint16_t); an i64 element is offset past 32 bits.
template <class T> struct Element;
template <> struct Element<float> {
  static constexpr DataType type = DataType::F32;
  static float of(double x) { return static_cast<float>(x); }
};
template <> struct Element<uint16_t> {
  static constexpr DataType type = DataType::BF16;
  static uint16_t of(double x) {
    float f = static_cast<float>(x);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    return static_cast<uint16_t>(bits >> 16); // exact for small integers
  }
};
template <> struct Element<int64_t> {
  static constexpr DataType type = DataType::I64;
  static int64_t of(double x) {
    return (int64_t(1) << 40) + static_cast<int64_t>(x);
  }
};
template <> struct Element<int32_t> {
  static constexpr DataType type = DataType::I32;
  static int32_t of(double x) { return static_cast<int32_t>(x); }
};

/// The sum over ranks q < w of Element<T>::of(x(q)), exactly.
template <class T> T sumOver(int w, const std::function<double(int)> &x) {
  if constexpr (std::is_same_v<T, int64_t>) {
    int64_t sum = 0;
    for (int q = 0; q < w; ++q)
      sum += Element<T>::of(x(q));
    return sum;
  } else {
    double sum = 0;
    for (int q = 0; q < w; ++q)
      sum += x(q);
    return Element<T>::of(sum);
  }
}

/// Rank r's element i of a buffer: a small integer.
inline double element(int r, size_t i) {
  return static_cast<double>(i % 8 + r);
}

constexpr size_t kCount = 1000;
constexpr float kSentinel = -7.0f;

/// The checks of one rank, run in order.
class Checks {
public:
  Checks(Communicator &comm, CheckMemory &memory)
      : comm(comm), memory(memory),
        prefix(comm.group() + " "),
        named("rank " + std::to_string(comm.rank()) + " of " +
              std::to_string(comm.size()) + " in group '" + comm.group() +
              "'") {}

  template <class T> T *buffer(const std::vector<T> &values) {
    return static_cast<T *>(
        memory.buffer(values.data(), values.size() * sizeof(T)));
  }
  template <class T> std::vector<T> read(const T *buffer, size_t n) {
    std::vector<char> bytes = memory.read(buffer, n * sizeof(T));
    std::vector<T> values(n);
    if (n)
      std::memcpy(values.data(), bytes.data(), n * sizeof(T));
    return values;
  }

  /// A call that must succeed, after which `buffer` holds `want`, bitwise.
  template <class T>
  void expect(const std::string &name, const Status &status, const T *buffer,
              const std::vector<T> &want) {
    CheckResult result{prefix + name};
    if (!status.ok()) {
      result.note = status.message();
    } else {
      std::vector<T> got = read(buffer, want.size());
      result.pass = want.empty() || std::memcmp(got.data(), want.data(),
                                                want.size() * sizeof(T)) == 0;
      if (!result.pass)
        result.note = "the result differs from the expected values";
    }
    results.push_back(std::move(result));
  }
  /// A call that must fail with a message that contains `part`.
  void expectFailure(const std::string &name, const Status &status,
                     const std::string &part) {
    CheckResult result{prefix + name};
    result.pass =
        !status.ok() && status.message().find(part) != std::string::npos;
    if (!result.pass)
      result.note = "got '" + (status.ok() ? "success" : status.message()) +
                    "', expected '" + part + "'";
    results.push_back(std::move(result));
  }

  /// The sums, the gather and the scatter of one element type.
  template <class T> void typed() {
    using E = Element<T>;
    const int w = comm.size(), r = comm.rank();
    const std::string t = std::string(" ") + dataTypeName(E::type);
    std::vector<T> mine(kCount), sum(kCount), gathered;
    for (size_t i = 0; i < kCount; ++i) {
      mine[i] = E::of(element(r, i));
      sum[i] = sumOver<T>(w, [&](int q) { return element(q, i); });
    }
    for (int q = 0; q < w; ++q)
      for (size_t i = 0; i < kCount; ++i)
        gathered.push_back(E::of(element(q, i)));
    T *send = buffer(mine);
    T *recv = buffer(std::vector<T>(kCount));
    expect("all_reduce" + t,
           comm.allReduceSum(send, recv, kCount, E::type, memory.stream()),
           recv, sum);
    T *all = buffer(std::vector<T>(kCount * w));
    expect("all_gather" + t,
           comm.allGather(send, all, kCount, E::type, memory.stream()), all,
           gathered);
    // Reduce-scatter of rank r's w·n elements element(r, j): block r of
    // the sum.
    std::vector<T> wide(kCount * w), block(kCount);
    for (size_t j = 0; j < kCount * w; ++j)
      wide[j] = E::of(element(r, j));
    for (size_t i = 0; i < kCount; ++i)
      block[i] =
          sumOver<T>(w, [&](int q) { return element(q, r * kCount + i); });
    T *wideIn = buffer(wide);
    T *scattered = buffer(std::vector<T>(kCount));
    expect("reduce_scatter" + t,
           comm.reduceScatterSum(wideIn, scattered, kCount, E::type,
                                 memory.stream()),
           scattered, block);
  }

  void allReduceInPlace() {
    const int w = comm.size(), r = comm.rank();
    std::vector<float> input(kCount), sum(kCount);
    for (size_t i = 0; i < kCount; ++i) {
      input[i] = static_cast<float>(element(r, i));
      sum[i] = sumOver<float>(w, [&](int q) { return element(q, i); });
    }
    float *inPlace = buffer(input);
    expect("all_reduce in place",
           comm.allReduceSum(inPlace, inPlace, kCount, DataType::F32,
                             memory.stream()),
           inPlace, sum);
  }

  /// Rank s sends (s + d) % 3 · 7 elements to rank d (none for some pairs),
  /// element k of them 1000·s + 10·d + k; the receiver lays them out by
  /// sender after a gap of 3 sentinels, so offsets differ from the counts'
  /// sums.
  void allToAll() {
    const int w = comm.size(), r = comm.rank();
    auto countOf = [](int s, int d) {
      return static_cast<size_t>((s + d) % 3) * 7;
    };
    std::vector<size_t> sendCounts(w), sendOffsets(w), recvCounts(w),
        recvOffsets(w);
    std::vector<float> rows;
    for (int d = 0; d < w; ++d) {
      sendOffsets[d] = rows.size();
      sendCounts[d] = countOf(r, d);
      for (size_t k = 0; k < sendCounts[d]; ++k)
        rows.push_back(1000.0f * r + 10.0f * d + k);
    }
    size_t at = 0;
    for (int s = 0; s < w; ++s) {
      at += 3;
      recvOffsets[s] = at;
      recvCounts[s] = countOf(s, r);
      at += recvCounts[s];
    }
    std::vector<float> want(at, kSentinel);
    for (int s = 0; s < w; ++s)
      for (size_t k = 0; k < recvCounts[s]; ++k)
        want[recvOffsets[s] + k] = 1000.0f * s + 10.0f * r + k;
    rows.push_back(0.0f); // never empty
    float *send = buffer(rows);
    float *received = buffer(std::vector<float>(at, kSentinel));
    expect("all_to_all, unequal and zero counts",
           comm.allToAllV(send, sendCounts, sendOffsets, received, recvCounts,
                          recvOffsets, DataType::F32, memory.stream()),
           received, want);
    std::vector<size_t> zeros(w, 0);
    expect("all_to_all of nothing",
           comm.allToAllV(send, zeros, zeros, received, zeros, zeros,
                          DataType::F32, memory.stream()),
           received, want);
  }

  /// Broadcast from the last rank: bf16 and i32.
  template <class T> void broadcast() {
    using E = Element<T>;
    const int w = comm.size(), r = comm.rank();
    std::vector<T> mine(kCount), root(kCount);
    for (size_t i = 0; i < kCount; ++i) {
      mine[i] = E::of(static_cast<double>((i + r) % 256));
      root[i] = E::of(static_cast<double>((i + w - 1) % 256));
    }
    T *send = buffer(mine);
    T *recv = buffer(std::vector<T>(kCount));
    expect(std::string("broadcast ") + dataTypeName(E::type) +
               " from the last rank",
           comm.broadcast(send, recv, kCount, E::type, w - 1, memory.stream()),
           recv, root);
  }

  void barrier() {
    Status status = comm.barrier(memory.stream());
    CheckResult result{prefix + "barrier", status.ok(),
                       status.ok() ? "" : status.message()};
    results.push_back(std::move(result));
  }

  void refusedArguments() {
    const int w = comm.size();
    float *x = buffer(std::vector<float>(kCount, 1.0f));
    float *y = buffer(std::vector<float>(kCount));
    std::vector<size_t> wrong(w + 1, 1);
    const std::string more = std::to_string(w + 1);
    expectFailure("all_to_all with counts for one rank too many",
                  comm.allToAllV(x, wrong, wrong, y, wrong, wrong,
                                 DataType::F32, memory.stream()),
                  named +
                      ": all_to_all: counts and offsets need one entry per "
                      "rank of the group (" +
                      std::to_string(w) + "), got send " + more + "/" + more +
                      ", receive " + more + "/" + more);
    expectFailure("broadcast from a root outside the group",
                  comm.broadcast(x, y, kCount, DataType::F32, w,
                                 memory.stream()),
                  named + ": broadcast: root " + std::to_string(w) +
                      " is not a rank of the group");
  }

  Communicator &comm;
  CheckMemory &memory;
  const std::string prefix, named;
  std::vector<CheckResult> results;
};

} // namespace detail

/// Runs every collective check on `comm` (this rank of its group, every
/// rank at once); the results come in the same order on every rank.
inline std::vector<CheckResult> checkCollectives(Communicator &comm,
                                                 CheckMemory &memory) {
  detail::Checks checks(comm, memory);
  checks.typed<float>();
  checks.typed<uint16_t>();
  checks.typed<int64_t>();
  checks.allReduceInPlace();
  checks.allToAll();
  checks.broadcast<uint16_t>();
  checks.broadcast<int32_t>();
  checks.barrier();
  checks.refusedArguments();
  return std::move(checks.results);
}

/// Splits `world` into the groups of `shape` (MeshGroups::create) and
/// checks each: its name, and its members (all-gathered world ranks) are
/// the ranks that share this rank's coordinates off its axes, in world
/// order, with this rank at its place.
inline std::vector<CheckResult> checkMeshGroups(Communicator &world,
                                                const MeshShape &shape,
                                                CheckMemory &memory) {
  const std::string mesh = std::to_string(shape.replicas) + "x" +
                           std::to_string(shape.shard) + "x" +
                           std::to_string(shape.expert);
  std::vector<CheckResult> results;
  std::unique_ptr<MeshGroups> groups;
  Status made = MeshGroups::create(world, shape, groups);
  results.push_back({"mesh groups " + mesh, made.ok() && groups != nullptr,
                     made.ok() ? "" : made.message()});
  if (!groups)
    return results;
  const int w = world.size(), r = world.rank();
  const auto mine = meshCoordinates(shape, r);
  bool placed = true;
  for (int axis = 0; axis < 3; ++axis)
    placed = placed && groups->coordinate(axis) == mine[axis];
  results.push_back({"mesh " + mesh + " coordinates", placed,
                     placed ? "" : "the rank's coordinates differ"});
  for (MeshAxes axes = 1; axes < 8; ++axes) {
    Communicator &group = groups->group(axes);
    std::vector<int64_t> want;
    for (int q = 0; q < w; ++q) {
      auto c = meshCoordinates(shape, q);
      bool same = true;
      for (int axis = 0; axis < 3; ++axis)
        if (!(axes & (1u << axis)) && c[axis] != mine[axis])
          same = false;
      if (same)
        want.push_back(q);
    }
    int64_t me = r;
    void *send = memory.buffer(&me, sizeof(me));
    void *members = memory.buffer(std::vector<int64_t>(group.size()).data(),
                                  group.size() * sizeof(int64_t));
    Status status =
        group.allGather(send, members, 1, DataType::I64, memory.stream());
    CheckResult result{"mesh " + mesh + " group " + meshGroupName(axes) +
                       " members"};
    if (!status.ok()) {
      result.note = status.message();
    } else {
      std::vector<char> bytes =
          memory.read(members, group.size() * sizeof(int64_t));
      std::vector<int64_t> got(group.size());
      std::memcpy(got.data(), bytes.data(), bytes.size());
      result.pass = got == want && group.group() == meshGroupName(axes) &&
                    got[group.rank()] == r;
      if (!result.pass)
        result.note = "group '" + group.group() + "' holds other ranks";
    }
    results.push_back(std::move(result));
  }
  return results;
}

} // namespace moert::testing

#endif // MOERT_TESTS_COLLECTIVECHECKS_H
