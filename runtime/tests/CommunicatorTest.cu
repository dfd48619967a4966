//===- CommunicatorTest.cu - GPU test of the Communicators -----*- CUDA -*-===//
//
// Runs the collective checks every moert::Communicator passes
// (CollectiveChecks.h: every collective on exactly predictable data,
// bitwise, and the refused arguments) through both implementations on one
// GPU: NCCL on a world of one rank (W = 1: NCCL refuses two ranks on one
// device), and the thread world (moert/ThreadCommunicator.h) for W = 2, 4
// and 8 ranks, each a thread with its own stream and device buffers;
// test/runtime/ThreadCommunicatorTest.cpp runs the same checks on the
// thread world in host memory. Then, on each world:
//
//   split                color 0 gives a group of all ranks that runs the
//                        checks; a negative color gives none; the mesh's
//                        groups (W = 1: 1x1x1, 2: 1x1x2, 4: 1x2x2,
//                        8: 2x2x2) hold the ranks their axes say
//   abort                any call on an aborted communicator fails, naming
//                        the rank, the group and the collective; the world
//                        is unaffected by its child's abort
//   collective times     a timed world and a group split from it count
//                        their calls by group, and by group and kind with
//                        their bytes (moert/CollectiveTimes.h)
//
// A check passes when it passes on every rank. Exits 2 when there is no
// CUDA device (skipped), 1 on a failed check.
//
//===----------------------------------------------------------------------===//

#include "CollectiveChecks.h"
#include "TestSupport.cuh"
#include "moert/CollectiveTimes.h"
#include "moert/Mesh.h"
#include "moert/NcclCommunicator.h"
#include "moert/ThreadCommunicator.h"

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

using namespace moert;
using namespace moert::testing;

namespace {

/// Device buffers on one rank's stream, freed with the object.
class DeviceMemory final : public CheckMemory {
public:
  explicit DeviceMemory(cudaStream_t stream) : onStream(stream) {}
  ~DeviceMemory() override {
    for (void *p : buffers)
      CHECK_CUDA(cudaFree(p));
  }
  void *buffer(const void *data, size_t bytes) override {
    void *p = nullptr;
    CHECK_CUDA(cudaMalloc(&p, bytes > 0 ? bytes : 1));
    if (bytes > 0)
      CHECK_CUDA(cudaMemcpy(p, data, bytes, cudaMemcpyHostToDevice));
    buffers.push_back(p);
    return p;
  }
  std::vector<char> read(const void *buffer, size_t bytes) override {
    CHECK_CUDA(cudaStreamSynchronize(onStream));
    CHECK_CUDA(cudaGetLastError());
    std::vector<char> host(bytes);
    if (bytes > 0)
      CHECK_CUDA(cudaMemcpy(host.data(), buffer, bytes, cudaMemcpyDeviceToHost));
    return host;
  }
  cudaStream_t stream() const override { return onStream; }

private:
  cudaStream_t onStream;
  std::vector<void *> buffers;
};

/// One rank's checks, in the order it ran them.
struct RankChecks {
  cudaStream_t stream = nullptr;
  std::vector<CheckResult> results;

  void add(std::vector<CheckResult> more) {
    for (CheckResult &r : more)
      results.push_back(std::move(r));
  }
  bool record(const std::string &name, const Status &status, bool pass) {
    results.push_back({name, status.ok() && pass,
                       status.ok() ? "" : status.message()});
    return results.back().pass;
  }
};

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
  DeviceMemory memory(rc.stream);
  rc.add(checkCollectives(world, memory));

  const int w = world.size(), r = world.rank();
  std::unique_ptr<Communicator> expert, none;
  const Status split = world.split(0, r, "expert", expert);
  rc.record("split color 0", split,
            expert && expert->rank() == r && expert->size() == w &&
                expert->group() == "expert");
  const Status noColor = world.split(-1, 0, "replica", none);
  rc.record("split with no color", noColor, none == nullptr);
  rc.add(checkMeshGroups(world, meshOf(w), memory));

  if (expert) {
    rc.add(checkCollectives(*expert, memory));
    // Every rank has finished the group's checks (the refused calls fail on
    // each rank alone, without meeting) before one aborts it.
    rc.record("expert barrier before the abort", expert->barrier(rc.stream),
              true);
    expert->abort();
    float *x = static_cast<float *>(
        memory.buffer(std::vector<float>(4, 1.0f).data(), 4 * sizeof(float)));
    Status after = expert->allReduceSum(x, x, 4, DataType::F32, rc.stream);
    const std::string want =
        "rank " + std::to_string(r) + " of " + std::to_string(w) +
        " in group 'expert': all_reduce: the communicator was aborted";
    rc.results.push_back(
        {"all_reduce after abort",
         !after.ok() && after.message().find(want) != std::string::npos,
         after.ok() ? "success" : after.message()});
  }
  // The world is unaffected by its child's abort.
  rc.add(checkCollectives(world, memory));
  expert.reset();

  // Timed collectives: counted by group, the world's and a split's.
  CollectiveTimes times;
  std::unique_ptr<Communicator> timed = times.wrap(world), child;
  float *x = static_cast<float *>(
      memory.buffer(std::vector<float>(4, 1.0f).data(), 4 * sizeof(float)));
  float *y = static_cast<float *>(memory.buffer(
      std::vector<float>(4 * w).data(), 4 * w * sizeof(float)));
  auto timedCalls = [&]() -> Status {
    if (Status s = timed->split(0, r, "timed", child); !s.ok())
      return s;
    for (int i = 0; i < 2; ++i)
      if (Status s = timed->allReduceSum(x, x, 4, DataType::F32, rc.stream);
          !s.ok())
        return s;
    return child->allGather(x, y, 4, DataType::F32, rc.stream);
  };
  const Status status = timedCalls();
  CHECK_CUDA(cudaStreamSynchronize(rc.stream));
  std::vector<GroupTime> got;
  std::vector<CollectiveTime> kinds;
  // By kind: the world's two all-reduces of 16 bytes, the split's
  // all-gather of 16 bytes per rank (w·16 bytes gathered).
  rc.record("collective times by group", status,
            times.collect(got, &kinds).ok() && got.size() == 2 &&
                got[0].group == "world" && got[0].calls == 2 &&
                got[1].group == "timed" && got[1].calls == 1 &&
                got[0].milliseconds >= 0 && got[1].milliseconds >= 0 &&
                kinds.size() == 2 && kinds[0].group == "world" &&
                kinds[0].collective == "all_reduce" && kinds[0].calls == 2 &&
                kinds[0].bytes == 32 && kinds[0].groupSize == w &&
                kinds[1].group == "timed" &&
                kinds[1].collective == "all_gather" && kinds[1].calls == 1 &&
                kinds[1].bytes == 16.0 * w && kinds[1].busGbPerSecond() >= 0 &&
                times.collect(got, &kinds).ok() && got.empty() &&
                kinds.empty());
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
      CHECK_CUDA(cudaStreamCreate(&rc.stream));
      testWorld(rc, *world[r]);
      CHECK_CUDA(cudaStreamSynchronize(rc.stream));
      CHECK_CUDA(cudaStreamDestroy(rc.stream));
    });
  for (std::thread &t : threads)
    t.join();
  for (size_t r = 0; r < ranks.size(); ++r)
    for (const CheckResult &result : ranks[r].results)
      if (!result.note.empty())
        std::printf("%s: %s: rank %zu: %s\n", label.c_str(),
                    result.name.c_str(), r, result.note.c_str());
  for (size_t i = 0; i < ranks[0].results.size(); ++i) {
    bool pass = true;
    for (const RankChecks &rc : ranks)
      pass = pass && i < rc.results.size() && rc.results[i].pass &&
             rc.results[i].name == ranks[0].results[i].name;
    env.report(label + ": " + ranks[0].results[i].name, pass);
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
