//===- CommunicatorTest.cu - GPU test of the Communicators -----*- CUDA -*-===//
//
// Runs every collective of moert/Communicator.h through both
// implementations on one GPU: NCCL on a world of one rank (W = 1: NCCL
// refuses two ranks on one device), and the thread world
// (moert/ThreadCommunicator.h) for W = 2, 4 and 8 ranks, each a thread with
// its own stream and device buffers. Every rank runs the same script on
// exactly predictable inputs (rank r's element i is a small integer of r
// and i, so every sum is exact in f32 and bf16), and every check is bitwise:
//
//   all_reduce (sum)     f32, bf16, i64; f32 in place
//   all_gather           f32, bf16, i64
//   reduce_scatter (sum) f32, bf16, i64
//   all_to_all           unequal counts (some zero) at offsets with gaps;
//                        elements outside them keep their sentinel; and
//                        one that moves nothing
//   broadcast            bf16 from the last rank
//   barrier              returns once the stream's work is done
//   split                color 0 gives a group of all ranks that runs the
//                        collectives; a negative color gives none; the
//                        mesh's groups (MeshGroups, W = 2: 1x1x2, 4: 1x2x2,
//                        8: 2x2x2) hold the ranks their axes say, in world
//                        order (checked by all-gathering world ranks)
//   collective times     a timed world and a group split from it count
//                        their calls by group (moert/CollectiveTimes.h)
//
// and the failures a caller sees: counts for the wrong number of ranks, a
// root outside the group, and any call on an aborted communicator, each
// with a message that names the rank, the group and the collective; the
// world is unaffected by its child's abort. A check passes when it passes
// on every rank. Exits 2 when there is no CUDA device (skipped), 1 on a
// failed check.
//
//===----------------------------------------------------------------------===//

#include "TestSupport.cuh"
#include "moert/CollectiveTimes.h"
#include "moert/Mesh.h"
#include "moert/NcclCommunicator.h"
#include "moert/ThreadCommunicator.h"

#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

using namespace moert;
using namespace moert::testing;

namespace {

constexpr size_t kCount = 1000;
constexpr float kSentinel = -7.0f;

/// One rank's checks, in the order it ran them.
struct RankChecks {
  int rank = 0;
  cudaStream_t stream = nullptr;
  std::vector<std::pair<std::string, bool>> results;
  std::vector<std::string> notes;

  bool record(const std::string &name, bool pass) {
    results.emplace_back(name, pass);
    return pass;
  }
  /// A call that must succeed: runs `call`, waits for the stream, then
  /// evaluates `check`.
  template <class Call, class Check>
  bool expect(const std::string &name, Call call, Check check) {
    Status status = call();
    if (!status.ok()) {
      notes.push_back(name + ": rank " + std::to_string(rank) + ": " +
                      status.message());
      return record(name, false);
    }
    CHECK_CUDA(cudaStreamSynchronize(stream));
    CHECK_CUDA(cudaGetLastError());
    return record(name, check());
  }
  /// A call that must fail with a message containing `part`.
  bool expectFailure(const std::string &name, const Status &status,
                     const std::string &part) {
    bool pass =
        !status.ok() && status.message().find(part) != std::string::npos;
    if (!pass)
      notes.push_back(name + ": rank " + std::to_string(rank) + ": got '" +
                      (status.ok() ? "success" : status.message()) + "'");
    return record(name, pass);
  }
};

/// Element values: T of a small integer, exactly.
template <class T> T of(double x);
template <> float of<float>(double x) { return static_cast<float>(x); }
template <> bf16 of<bf16>(double x) {
  return __float2bfloat16_rn(static_cast<float>(x));
}
template <> int64_t of<int64_t>(double x) {
  return (int64_t(1) << 40) + static_cast<int64_t>(x); // past 32 bits
}
template <class T> DataType typeOf();
template <> DataType typeOf<float>() { return DataType::F32; }
template <> DataType typeOf<bf16>() { return DataType::BF16; }
template <> DataType typeOf<int64_t>() { return DataType::I64; }
template <class T> double valueOf(T v) { return static_cast<double>(v); }
template <> double valueOf<bf16>(bf16 v) { return __bfloat162float(v); }
/// T of a sum of of<T>() values (an i64 sum keeps its offsets).
template <class T> T ofSum(double sum) {
  if constexpr (std::is_same_v<T, int64_t>)
    return static_cast<int64_t>(sum);
  else
    return of<T>(sum);
}

/// Rank r's element i of a buffer: a small integer.
double element(int r, size_t i) { return static_cast<double>(i % 8 + r); }

/// The sums, the gather and the scatter of one element type.
template <class T>
void testTyped(RankChecks &rc, Communicator &comm, const std::string &g) {
  const int w = comm.size(), r = comm.rank();
  const std::string t = std::string(" ") + dataTypeName(typeOf<T>());
  std::vector<T> mine(kCount), sum(kCount);
  for (size_t i = 0; i < kCount; ++i) {
    mine[i] = of<T>(element(r, i));
    double s = 0;
    for (int q = 0; q < w; ++q)
      s += valueOf(of<T>(element(q, i)));
    sum[i] = ofSum<T>(s);
  }
  DeviceBuffer<T> send(mine), recv(kCount);
  rc.expect(
      g + "all_reduce" + t,
      [&] {
        return comm.allReduceSum(send.get(), recv.get(), kCount, typeOf<T>(),
                                 rc.stream);
      },
      [&] { return sameBits(recv.read(), sum); });

  std::vector<T> gathered;
  for (int q = 0; q < w; ++q)
    for (size_t i = 0; i < kCount; ++i)
      gathered.push_back(of<T>(element(q, i)));
  DeviceBuffer<T> all(static_cast<int64_t>(kCount) * w);
  rc.expect(
      g + "all_gather" + t,
      [&] {
        return comm.allGather(send.get(), all.get(), kCount, typeOf<T>(),
                              rc.stream);
      },
      [&] { return sameBits(all.read(), gathered); });

  // Reduce-scatter of rank r's w·n elements element(r, j): block r of the
  // sum.
  std::vector<T> wide(kCount * w), block(kCount);
  for (size_t j = 0; j < kCount * w; ++j)
    wide[j] = of<T>(element(r, j));
  for (size_t i = 0; i < kCount; ++i) {
    double s = 0;
    for (int q = 0; q < w; ++q)
      s += valueOf(of<T>(element(q, r * kCount + i)));
    block[i] = ofSum<T>(s);
  }
  DeviceBuffer<T> wideIn(wide), scattered(kCount);
  rc.expect(
      g + "reduce_scatter" + t,
      [&] {
        return comm.reduceScatterSum(wideIn.get(), scattered.get(), kCount,
                                     typeOf<T>(), rc.stream);
      },
      [&] { return sameBits(scattered.read(), block); });
}

void testCollectives(RankChecks &rc, Communicator &comm) {
  const std::string g = comm.group() + " ";
  const int w = comm.size(), r = comm.rank();
  testTyped<float>(rc, comm, g);
  testTyped<bf16>(rc, comm, g);
  testTyped<int64_t>(rc, comm, g);

  std::vector<float> input(kCount), sum(kCount);
  for (size_t i = 0; i < kCount; ++i) {
    input[i] = static_cast<float>(element(r, i));
    sum[i] = 0;
    for (int q = 0; q < w; ++q)
      sum[i] += static_cast<float>(element(q, i));
  }
  DeviceBuffer<float> inPlace(input);
  rc.expect(
      g + "all_reduce in place",
      [&] {
        return comm.allReduceSum(inPlace.get(), inPlace.get(), kCount,
                                 DataType::F32, rc.stream);
      },
      [&] { return inPlace.read() == sum; });

  // all_to_all: rank s sends (s + d) % 3 · 7 elements to rank d (none for
  // some pairs), element k of them 1000·s + 10·d + k; the receiver lays
  // them out by sender after a gap of 3 sentinels.
  auto countOf = [](int s, int d) { return static_cast<size_t>((s + d) % 3) * 7; };
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
  DeviceBuffer<float> sendRows(rows),
      received(std::vector<float>(at, kSentinel));
  rc.expect(
      g + "all_to_all, unequal and zero counts",
      [&] {
        return comm.allToAllV(sendRows.get(), sendCounts, sendOffsets,
                              received.get(), recvCounts, recvOffsets,
                              DataType::F32, rc.stream);
      },
      [&] { return received.read() == want; });
  std::vector<size_t> zeros(w, 0);
  rc.expect(
      g + "all_to_all of nothing",
      [&] {
        return comm.allToAllV(sendRows.get(), zeros, zeros, received.get(),
                              zeros, zeros, DataType::F32, rc.stream);
      },
      [&] { return received.read() == want; });

  std::vector<bf16> halves(kCount), rootHalves(kCount);
  for (size_t i = 0; i < kCount; ++i) {
    halves[i] = __float2bfloat16_rn(static_cast<float>((i + r) % 256));
    rootHalves[i] = __float2bfloat16_rn(static_cast<float>((i + w - 1) % 256));
  }
  DeviceBuffer<bf16> halvesIn(halves), halvesOut(kCount);
  rc.expect(
      g + "broadcast bf16 from the last rank",
      [&] {
        return comm.broadcast(halvesIn.get(), halvesOut.get(), kCount,
                              DataType::BF16, w - 1, rc.stream);
      },
      [&] { return sameBits(halvesOut.read(), rootHalves); });

  rc.expect(
      g + "barrier", [&] { return comm.barrier(rc.stream); },
      [] { return true; });

  const std::string named = "rank " + std::to_string(r) + " of " +
                            std::to_string(w) + " in group '" + comm.group() +
                            "'";
  DeviceBuffer<float> x(input), y(kCount);
  std::vector<size_t> wrong(w + 1, 1);
  rc.expectFailure(
      g + "all_to_all with counts for one rank too many",
      comm.allToAllV(x.get(), wrong, wrong, y.get(), wrong, wrong,
                     DataType::F32, rc.stream),
      named + ": all_to_all: counts and offsets need one entry per rank of "
              "the group (" + std::to_string(w) + "), got send " +
          std::to_string(w + 1) + "/" + std::to_string(w + 1) + ", receive " +
          std::to_string(w + 1) + "/" + std::to_string(w + 1));
  rc.expectFailure(g + "broadcast from a root outside the group",
                   comm.broadcast(x.get(), y.get(), kCount, DataType::F32, w,
                                  rc.stream),
                   named + ": broadcast: root " + std::to_string(w) +
                       " is not a rank of the group");
}

/// The mesh of W ranks the test splits.
MeshShape meshOf(int w) {
  switch (w) {
  case 2:
    return {1, 1, 2};
  case 4:
    return {1, 2, 2};
  case 8:
    return {2, 2, 2};
  default:
    return {1, 1, 1};
  }
}

/// Every rank's script on its world.
void testWorld(RankChecks &rc, Communicator &world) {
  testCollectives(rc, world);

  const int w = world.size(), r = world.rank();
  std::unique_ptr<Communicator> expert, none;
  rc.expect(
      "split color 0", [&] { return world.split(0, r, "expert", expert); },
      [&] {
        return expert && expert->rank() == r && expert->size() == w &&
               expert->group() == "expert";
      });
  rc.expect(
      "split with no color", [&] { return world.split(-1, 0, "replica", none); },
      [&] { return none == nullptr; });

  const MeshShape shape = meshOf(w);
  std::unique_ptr<MeshGroups> mesh;
  if (rc.expect(
          "mesh groups " + std::to_string(shape.replicas) + "x" +
              std::to_string(shape.shard) + "x" + std::to_string(shape.expert),
          [&] { return MeshGroups::create(world, shape, mesh); },
          [&] { return mesh != nullptr; })) {
    auto mine = meshCoordinates(shape, r);
    for (MeshAxes axes = 1; axes < 8; ++axes) {
      Communicator &group = mesh->group(axes);
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
      DeviceBuffer<int64_t> me(std::vector<int64_t>{r}), members(group.size());
      rc.expect(
          "mesh group " + meshGroupName(axes) + " members",
          [&] {
            return group.allGather(me.get(), members.get(), 1, DataType::I64,
                                   rc.stream);
          },
          [&] {
            return members.read() == want && group.group() == meshGroupName(axes);
          });
    }
  }

  if (expert) {
    testCollectives(rc, *expert);
    // Every rank has finished the group's checks (the refused calls fail on
    // each rank alone, without meeting) before one aborts it.
    rc.expect(
        "expert barrier before the abort",
        [&] { return expert->barrier(rc.stream); }, [] { return true; });
    expert->abort();
    DeviceBuffer<float> x(std::vector<float>(4, 1.0f));
    rc.expectFailure(
        "all_reduce after abort",
        expert->allReduceSum(x.get(), x.get(), 4, DataType::F32, rc.stream),
        "rank " + std::to_string(r) + " of " + std::to_string(w) +
            " in group 'expert': all_reduce: the communicator was aborted");
  }
  // The world is unaffected by its child's abort.
  testCollectives(rc, world);
  mesh.reset();
  expert.reset();

  // Timed collectives: counted by group, the world's and a split's.
  CollectiveTimes times;
  std::unique_ptr<Communicator> timed = times.wrap(world), child;
  DeviceBuffer<float> x(std::vector<float>(4, 1.0f)), y(4 * w);
  std::vector<GroupTime> got;
  rc.expect(
      "collective times by group",
      [&] {
        if (Status s = timed->split(0, r, "timed", child); !s.ok())
          return s;
        for (int i = 0; i < 2; ++i)
          if (Status s = timed->allReduceSum(x.get(), x.get(), 4,
                                             DataType::F32, rc.stream);
              !s.ok())
            return s;
        return child->allGather(x.get(), y.get(), 4, DataType::F32, rc.stream);
      },
      [&] {
        return times.collect(got).ok() && got.size() == 2 &&
               got[0].group == "world" && got[0].calls == 2 &&
               got[1].group == "timed" && got[1].calls == 1 &&
               got[0].milliseconds >= 0 && got[1].milliseconds >= 0 &&
               times.collect(got).ok() && got.empty();
      });
}

/// Runs testWorld on every rank of `world` (one thread each, with its own
/// stream), then reports each check once: passed when it passed on every
/// rank.
void runWorld(Env &env, const std::string &label,
              const std::vector<Communicator *> &world) {
  int device = 0;
  CHECK_CUDA(cudaGetDevice(&device));
  std::vector<RankChecks> ranks(world.size());
  std::vector<std::thread> threads;
  for (size_t r = 0; r < world.size(); ++r)
    threads.emplace_back([&, r] {
      CHECK_CUDA(cudaSetDevice(device));
      RankChecks &rc = ranks[r];
      rc.rank = static_cast<int>(r);
      CHECK_CUDA(cudaStreamCreate(&rc.stream));
      testWorld(rc, *world[r]);
      CHECK_CUDA(cudaStreamSynchronize(rc.stream));
      CHECK_CUDA(cudaStreamDestroy(rc.stream));
    });
  for (std::thread &t : threads)
    t.join();
  for (const RankChecks &rc : ranks)
    for (const std::string &note : rc.notes)
      std::printf("%s: %s\n", label.c_str(), note.c_str());
  for (size_t i = 0; i < ranks[0].results.size(); ++i) {
    bool pass = true;
    for (const RankChecks &rc : ranks)
      pass = pass && i < rc.results.size() && rc.results[i].second &&
             rc.results[i].first == ranks[0].results[i].first;
    env.report(label + ": " + ranks[0].results[i].first, pass);
  }
}

} // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "CommunicatorTest: no CUDA device\n");
    return 2;
  }
  Env env;

  // NCCL: a world of one rank.
  {
    NcclUniqueId id;
    std::unique_ptr<Communicator> world;
    auto makeWorld = [&] {
      Status made = createNcclUniqueId(id);
      return made.ok() ? createNcclCommunicator(id, 0, 1, "world", world)
                       : made;
    };
    Status made = makeWorld();
    if (!env.report("nccl W=1: world of one rank", made.ok() && world &&
                                                       world->rank() == 0 &&
                                                       world->size() == 1)) {
      std::printf("%s\n", made.message().c_str());
      std::printf("%d checks, %d failed: FAIL\n", env.checks, env.failures);
      return 1;
    }
    runWorld(env, "nccl W=1", {world.get()});
  }

  // The thread world: W ranks on this GPU.
  for (int w : {2, 4, 8}) {
    std::vector<std::unique_ptr<Communicator>> world;
    Status made = createThreadWorld(w, ThreadMemory::Device, world);
    const std::string label = "threads W=" + std::to_string(w);
    if (!env.report(label + ": world", made.ok()))
      continue;
    std::vector<Communicator *> ranks;
    for (auto &comm : world)
      ranks.push_back(comm.get());
    runWorld(env, label, ranks);
  }

  std::printf("%d checks, %d failed: %s\n", env.checks, env.failures,
              env.failures ? "FAIL" : "PASS");
  return env.failures ? 1 : 0;
}
