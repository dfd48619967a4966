//===- CommunicatorTest.cu - GPU test of the Communicator ------*- CUDA -*-===//
//
// Runs every collective of moert/Communicator.h through the NCCL
// implementation on a world of one rank (W = 1: what one GPU can run; NCCL
// refuses two ranks on one device), and the split into a mesh group, on
// exactly predictable inputs (element i of a buffer holds i + a constant),
// so every check is bitwise:
//
//   all_reduce (sum)     one rank: the output is the input, also in place
//   all_gather           the output is the input
//   reduce_scatter (sum) the output is the input
//   all_to_all          the rank sends to itself at the given offsets;
//                        elements outside them keep their sentinel
//   broadcast            root 0's buffer
//   barrier              returns once the stream's work is done
//   split                color 0 gives a one-rank group that runs a
//                        collective; a negative color gives none
//
// and the failures a caller sees: counts for the wrong number of ranks, a
// root outside the group, and any call on an aborted communicator, each
// with a message that names the rank, the group and the collective.
// Exits 2 when there is no CUDA device (skipped), 1 on a failed check.
//
//===----------------------------------------------------------------------===//

#include "TestSupport.cuh"
#include "moert/NcclCommunicator.h"

#include <cstdio>
#include <string>
#include <vector>

using namespace moert;
using namespace moert::testing;

namespace {

constexpr size_t kCount = 1000;
constexpr float kSentinel = -7.0f;

/// Element i = i + base.
std::vector<float> ramp(size_t n, float base) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<float>(i) + base;
  return v;
}

struct CollectiveEnv : Env {
  /// A check of a call that must succeed: runs `call`, waits for the
  /// stream, then evaluates `check`.
  template <class Call, class Check>
  bool expect(const std::string &name, Call call, Check check) {
    Status status = call();
    if (!status.ok()) {
      std::printf("%s: %s\n", name.c_str(), status.message().c_str());
      return report(name, false);
    }
    sync();
    return report(name, check());
  }
  /// A check of a call that must fail with a message containing `part`.
  bool expectFailure(const std::string &name, const Status &status,
                     const std::string &part) {
    bool pass =
        !status.ok() && status.message().find(part) != std::string::npos;
    std::printf("%s: got '%s'\n", name.c_str(),
                status.ok() ? "success" : status.message().c_str());
    return report(name, pass);
  }
};

void testCollectives(CollectiveEnv &env, Communicator &comm) {
  const std::string g = comm.group() + " ";
  std::vector<float> input = ramp(kCount, 0.5f);
  DeviceBuffer<float> send(input), recv(kCount);

  env.expect(
      g + "all_reduce",
      [&] {
        return comm.allReduceSum(send.get(), recv.get(), kCount, DataType::F32,
                                 env.stream);
      },
      [&] { return recv.read() == input; });
  DeviceBuffer<float> inPlace(input);
  env.expect(
      g + "all_reduce in place",
      [&] {
        return comm.allReduceSum(inPlace.get(), inPlace.get(), kCount,
                                 DataType::F32, env.stream);
      },
      [&] { return inPlace.read() == input; });

  std::vector<int64_t> ids(kCount);
  for (size_t i = 0; i < kCount; ++i)
    ids[i] = static_cast<int64_t>(i) * 3 + (int64_t(1) << 40);
  DeviceBuffer<int64_t> idsIn(ids), idsOut(kCount);
  env.expect(
      g + "all_gather i64",
      [&] {
        return comm.allGather(idsIn.get(), idsOut.get(), kCount, DataType::I64,
                              env.stream);
      },
      [&] { return idsOut.read() == ids; });

  DeviceBuffer<float> scattered(kCount);
  env.expect(
      g + "reduce_scatter",
      [&] {
        return comm.reduceScatterSum(send.get(), scattered.get(), kCount,
                                     DataType::F32, env.stream);
      },
      [&] { return scattered.read() == input; });

  // all_to_all: kCount - 10 elements from offset 4 to offset 6 of a buffer
  // of kCount sentinels.
  const size_t moved = kCount - 10;
  DeviceBuffer<float> gathered(std::vector<float>(kCount, kSentinel));
  std::vector<float> want(kCount, kSentinel);
  for (size_t i = 0; i < moved; ++i)
    want[6 + i] = input[4 + i];
  env.expect(
      g + "all_to_all",
      [&] {
        return comm.allToAllV(send.get(), {moved}, {4}, gathered.get(), {moved},
                              {6}, DataType::F32, env.stream);
      },
      [&] { return gathered.read() == want; });
  env.expect(
      g + "all_to_all of nothing",
      [&] {
        return comm.allToAllV(send.get(), {0}, {0}, gathered.get(), {0}, {0},
                              DataType::F32, env.stream);
      },
      [&] { return gathered.read() == want; });

  std::vector<bf16> halves(kCount);
  for (size_t i = 0; i < kCount; ++i)
    halves[i] = __float2bfloat16_rn(static_cast<float>(i % 256));
  DeviceBuffer<bf16> halvesIn(halves), halvesOut(kCount);
  env.expect(
      g + "broadcast bf16",
      [&] {
        return comm.broadcast(halvesIn.get(), halvesOut.get(), kCount,
                              DataType::BF16, 0, env.stream);
      },
      [&] { return sameBits(halvesOut.read(), halves); });

  env.expect(
      g + "barrier", [&] { return comm.barrier(env.stream); },
      [] { return true; });

  const std::string named = "rank 0 of 1 in group '" + comm.group() + "'";
  env.expectFailure(g + "all_to_all with counts for 2 ranks",
                    comm.allToAllV(send.get(), {1, 1}, {0, 1}, recv.get(),
                                   {1, 1}, {0, 1}, DataType::F32, env.stream),
                    named + ": all_to_all: counts and offsets need one entry "
                            "per rank of the group (1), got send 2/2, "
                            "receive 2/2");
  env.expectFailure(g + "broadcast from root 1",
                    comm.broadcast(send.get(), recv.get(), kCount,
                                   DataType::F32, 1, env.stream),
                    named + ": broadcast: root 1 is not a rank of the group");
}

} // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "CommunicatorTest: no CUDA device\n");
    return 2;
  }
  CollectiveEnv env;
  CHECK_CUDA(cudaStreamCreate(&env.stream));

  NcclUniqueId id;
  std::unique_ptr<Communicator> world;
  auto makeWorld = [&] {
    Status made = createNcclUniqueId(id);
    return made.ok() ? createNcclCommunicator(id, 0, 1, "world", world) : made;
  };
  if (!env.expect("world of one rank", makeWorld, [&] {
        return world && world->rank() == 0 && world->size() == 1;
      })) {
    std::printf("1 checks, 1 failed: FAIL\n");
    return 1;
  }
  testCollectives(env, *world);

  std::unique_ptr<Communicator> expert, none;
  env.expect(
      "split color 0", [&] { return world->split(0, 0, "expert", expert); },
      [&] {
        return expert && expert->rank() == 0 && expert->size() == 1 &&
               expert->group() == "expert";
      });
  env.expect(
      "split with no color",
      [&] { return world->split(-1, 0, "replica", none); },
      [&] { return none == nullptr; });
  if (expert) {
    testCollectives(env, *expert);
    expert->abort();
    DeviceBuffer<float> x(ramp(4, 0.0f));
    env.expectFailure(
        "all_reduce after abort",
        expert->allReduceSum(x.get(), x.get(), 4, DataType::F32, env.stream),
        "rank 0 of 1 in group 'expert': all_reduce: the "
        "communicator was aborted");
  }
  // The world is unaffected by its child's abort.
  testCollectives(env, *world);

  expert.reset();
  world.reset();
  CHECK_CUDA(cudaStreamDestroy(env.stream));
  std::printf("%d checks, %d failed: %s\n", env.checks, env.failures,
              env.failures ? "FAIL" : "PASS");
  return env.failures ? 1 : 0;
}
