//===- moert-alltoall-bench.cpp - NCCL's own all-to-all, timed -------------===//
//
// The yardstick for the programs' expert dispatch: NCCL's all-to-all of a
// given number of bytes per rank on the job's GPUs, timed as nccl-tests
// times it, straight on NCCL (no moert communicator in between). One process
// per rank, started by any launcher moert knows (torchrun --no-python, moec
// launch, srun, mpirun); rank 0's NCCL unique id reaches the others through
// moert's rendezvous (MOERT_JOB_TOKEN, MASTER_ADDR, MASTER_PORT).
//
// For every size (the bytes each rank sends in total, its own chunk
// included, as nccl-tests' "size") and every method:
//   send_recv  one ncclSend and one ncclRecv per peer in a group, as
//              nccl-tests' alltoall does (and moert's allToAllV);
//   alltoall   ncclAlltoAll (NCCL 2.28 and newer);
// it runs --warmup untimed calls, then --iters calls between two events on
// the stream, and reports the average time of one call, the algorithm
// bandwidth (bytes / time) and the bus bandwidth, algbw * (n - 1) / n
// (nccl-tests' definition for all-to-all: the share of the bytes that
// crosses a link; 0 for one rank). Before timing, each rank's chunk for
// peer q holds the byte 16·rank + q + 1, and every received chunk is
// checked: a wrong exchange fails the run.
//
// Rank 0 prints one line per size and method and, with --json, writes them.
//
//===----------------------------------------------------------------------===//

#include "moert/Bootstrap.h"
#include "moert/Rendezvous.h"
#include "moert/kernels/Context.h"

#include <CLI/CLI.hpp>
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace {

[[noreturn]] void fail(const std::string &message) {
  std::fprintf(stderr, "moert-alltoall-bench: error: %s\n", message.c_str());
  std::exit(1);
}

#define BENCH_NCCL(call)                                                       \
  do {                                                                         \
    ncclResult_t r_ = (call);                                                  \
    if (r_ != ncclSuccess)                                                     \
      fail(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " +     \
           #call + ": " + ncclGetErrorString(r_));                             \
  } while (0)

struct Options {
  std::vector<size_t> sizes;
  int iters = 20;
  int warmup = 5;
  std::string json;
  std::vector<std::string> methods;
};

/// The options (CLI11, as the training driver parses its own); a bad one
/// ends the run with its flag and value, --help with the options.
Options parseOptions(int argc, char **argv) {
  CLI::App app{"NCCL's all-to-all timed on this job's GPUs (one process "
               "per rank)",
               "moert-alltoall-bench"};
  app.failure_message([](const CLI::App *, const CLI::Error &e) {
    return std::string("moert-alltoall-bench: error: ") + e.what() +
           " (--help)\n";
  });
  Options o;
  // Sizes are read as signed numbers, so that a negative one is refused
  // rather than wrapped around (CLI11 reads unsigned ones with strtoull).
  const std::map<std::string, int64_t> units{
      {"K", int64_t(1) << 10}, {"KiB", int64_t(1) << 10},
      {"M", int64_t(1) << 20}, {"MiB", int64_t(1) << 20},
      {"G", int64_t(1) << 30}, {"GiB", int64_t(1) << 30}};
  const auto most = std::numeric_limits<int>::max();
  app.add_option("--bytes", o.sizes,
                 "bytes per rank per call, its own chunk included; K, M, G "
                 "(or KiB, MiB, GiB) binary; repeatable (default: 1M 16M "
                 "128M 1G)")
      ->type_name("N[K|M|G]")
      ->transform(
          CLI::AsNumberWithUnit(units, CLI::AsNumberWithUnit::CASE_SENSITIVE)
              .description(""))
      ->check(CLI::Range(int64_t(1), std::numeric_limits<int64_t>::max())
                  .description(""))
      ->allow_extra_args(false);
  app.add_option("--method", o.methods,
                 "grouped ncclSend/ncclRecv, or ncclAlltoAll (NCCL 2.28 "
                 "and newer); repeatable (default: those this NCCL has)")
      ->type_name("METHOD")
      ->check(CLI::IsMember({"send_recv", "alltoall"}))
      ->allow_extra_args(false);
  app.add_option("--iters", o.iters, "timed calls per size and method")
      ->type_name("N")
      ->check(CLI::Range(1, most).description(""))
      ->capture_default_str();
  app.add_option("--warmup", o.warmup,
                 "untimed calls before them, per size and method")
      ->type_name("N")
      ->check(CLI::Range(0, most).description(""))
      ->capture_default_str();
  app.add_option("--json", o.json, "rank 0 writes the results here as JSON")
      ->type_name("FILE");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    std::exit(app.exit(e));
  }
  if (o.sizes.empty())
    o.sizes = {size_t(1) << 20, size_t(16) << 20, size_t(128) << 20,
               size_t(1) << 30};
  if (o.methods.empty()) {
    o.methods = {"send_recv"};
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    o.methods.push_back("alltoall");
#endif
  }
  return o;
}

/// One all-to-all of `chunk` bytes to every rank.
void allToAll(const std::string &method, const char *send, char *recv,
              size_t chunk, int ranks, ncclComm_t comm, cudaStream_t stream) {
  if (method == "alltoall") {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    BENCH_NCCL(ncclAlltoAll(send, recv, chunk, ncclChar, comm, stream));
    return;
#else
    fail("this NCCL has no ncclAlltoAll (2.28 and newer)");
#endif
  }
  BENCH_NCCL(ncclGroupStart());
  for (int peer = 0; peer < ranks; ++peer) {
    BENCH_NCCL(ncclSend(send + peer * chunk, chunk, ncclChar, peer, comm,
                        stream));
    BENCH_NCCL(ncclRecv(recv + peer * chunk, chunk, ncclChar, peer, comm,
                        stream));
  }
  BENCH_NCCL(ncclGroupEnd());
}

} // namespace

int main(int argc, char **argv) {
  Options o = parseOptions(argc, argv);
  moert::RankInfo info;
  moert::EnvLookup env = moert::processEnvironment();
  if (moert::Status s = moert::detectRank(env, info); !s.ok())
    fail(s.message());
  int devices = 0;
  MOERT_CUDA_CHECK(cudaGetDeviceCount(&devices));
  // The launcher's local rank, or the one GPU a rank was given.
  int device = devices == 1 ? 0 : info.localRank;
  if (device >= devices)
    fail("local rank " + std::to_string(info.localRank) + " but " +
         std::to_string(devices) + " GPU(s) visible");
  MOERT_CUDA_CHECK(cudaSetDevice(device));

  std::vector<char> payload;
  moert::Status joined = moert::rendezvousFromEnvironment(
      info, env,
      [](std::vector<char> &out) {
        ncclUniqueId id;
        if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess)
          return moert::Status::failure(std::string("ncclGetUniqueId: ") +
                                        ncclGetErrorString(r));
        out.assign(id.internal, id.internal + sizeof(id.internal));
        return moert::Status::success();
      },
      payload);
  if (!joined.ok())
    fail(joined.message());
  if (payload.size() != sizeof(ncclUniqueId))
    fail("the rendezvous gave " + std::to_string(payload.size()) +
         " bytes, not an NCCL unique id's " +
         std::to_string(sizeof(ncclUniqueId)));
  ncclUniqueId id;
  std::memcpy(id.internal, payload.data(), sizeof(id.internal));
  ncclComm_t comm;
  BENCH_NCCL(ncclCommInitRank(&comm, info.worldSize, id, info.rank));
  cudaStream_t stream;
  MOERT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t start, end;
  MOERT_CUDA_CHECK(cudaEventCreate(&start));
  MOERT_CUDA_CHECK(cudaEventCreate(&end));
  int version = 0;
  BENCH_NCCL(ncclGetVersion(&version));
  const int n = info.worldSize;
  const bool leader = info.rank == 0;
  if (leader)
    std::printf("moert-alltoall-bench: %d rank(s), NCCL %d, %d warm-up and "
                "%d timed calls per size\n",
                n, version, o.warmup, o.iters);

  std::string json = "[";
  for (size_t requested : o.sizes) {
    // Every rank sends the same chunk to every rank (its own included).
    size_t chunk = requested / n;
    size_t bytes = chunk * n;
    if (chunk == 0)
      fail("--bytes " + std::to_string(requested) + " is less than one byte "
           "per rank");
    char *send = nullptr, *recv = nullptr;
    MOERT_CUDA_CHECK(cudaMalloc(&send, bytes));
    MOERT_CUDA_CHECK(cudaMalloc(&recv, bytes));
    for (const std::string &method : o.methods) {
      for (int q = 0; q < n; ++q)
        MOERT_CUDA_CHECK(cudaMemsetAsync(send + q * chunk, 16 * info.rank + q + 1,
                                   chunk, stream));
      MOERT_CUDA_CHECK(cudaMemsetAsync(recv, 0, bytes, stream));
      allToAll(method, send, recv, chunk, n, comm, stream);
      // Chunk p of what arrived came from rank p: its first and last byte.
      std::vector<unsigned char> ends(2 * n);
      for (int p = 0; p < n; ++p) {
        MOERT_CUDA_CHECK(cudaMemcpyAsync(&ends[2 * p], recv + p * chunk, 1,
                                   cudaMemcpyDeviceToHost, stream));
        MOERT_CUDA_CHECK(cudaMemcpyAsync(&ends[2 * p + 1], recv + (p + 1) * chunk - 1,
                                   1, cudaMemcpyDeviceToHost, stream));
      }
      MOERT_CUDA_CHECK(cudaStreamSynchronize(stream));
      for (int p = 0; p < n; ++p) {
        unsigned char want = static_cast<unsigned char>(16 * p + info.rank + 1);
        if (ends[2 * p] != want || ends[2 * p + 1] != want)
          fail(method + " of " + std::to_string(bytes) + " bytes: rank " +
               std::to_string(info.rank) + " received " +
               std::to_string(ends[2 * p]) + "/" +
               std::to_string(ends[2 * p + 1]) + " from rank " +
               std::to_string(p) + ", expected " + std::to_string(want));
      }
      for (int i = 0; i < o.warmup; ++i)
        allToAll(method, send, recv, chunk, n, comm, stream);
      MOERT_CUDA_CHECK(cudaEventRecord(start, stream));
      for (int i = 0; i < o.iters; ++i)
        allToAll(method, send, recv, chunk, n, comm, stream);
      MOERT_CUDA_CHECK(cudaEventRecord(end, stream));
      MOERT_CUDA_CHECK(cudaEventSynchronize(end));
      float ms = 0;
      MOERT_CUDA_CHECK(cudaEventElapsedTime(&ms, start, end));
      double seconds = ms / 1e3 / o.iters;
      double algbw = bytes / seconds / 1e9;
      double busbw = algbw * (n - 1) / n;
      if (leader) {
        std::printf("alltoall %-9s %12zu bytes  %10.1f us  algbw %7.2f GB/s  "
                    "busbw %7.2f GB/s\n",
                    method.c_str(), bytes, seconds * 1e6, algbw, busbw);
        char line[256];
        std::snprintf(line, sizeof(line),
                      "%s{\"method\": \"%s\", \"ranks\": %d, \"bytes\": %zu, "
                      "\"time_us\": %.3f, \"algbw_gb_per_s\": %.4f, "
                      "\"busbw_gb_per_s\": %.4f}",
                      json.size() > 1 ? ", " : "", method.c_str(), n, bytes,
                      seconds * 1e6, algbw, busbw);
        json += line;
      }
    }
    MOERT_CUDA_CHECK(cudaFree(send));
    MOERT_CUDA_CHECK(cudaFree(recv));
  }
  json += "]\n";
  if (leader && !o.json.empty()) {
    FILE *f = std::fopen(o.json.c_str(), "w");
    if (!f || std::fputs(json.c_str(), f) < 0 || std::fclose(f) != 0)
      fail("cannot write '" + o.json + "'");
  }
  BENCH_NCCL(ncclCommDestroy(comm));
  return 0;
}
