//===- TrainDriver.cpp - The host side of a compiled training program -----===//
//
// See moert/TrainDriver.h. The device memory is one state region, one
// arena sized by the compiler's memory plan, one inputs region and the
// kernels' scratch, allocated once per rank. Checkpoints are
// moert/Checkpoint.h's. The step's segments run as CUDA graphs from the
// second step of a run on (moert/StepGraphs.h; `--no-graphs` turns them
// off).
//
// A partitioned program (TrainProgram::mesh of more than one rank) runs as
// one rank of a job its launcher started (moert/Bootstrap.h: torchrun,
// srun, mpirun or `moec launch`; WORLD_SIZE must be the mesh's size; the
// device is LOCAL_RANK; the world comes from TrainProgram::createWorld,
// NCCL with its watchdog), or with `--simulate-ranks W` as all W ranks on
// threads of this process on the current GPU, through the thread world
// (moert/ThreadCommunicator.h), without graphs. Either way every rank
// splits its world into the mesh's groups (Context::mesh) and:
//
//   - reads, at step t, block r of the t-th global batch of W·B blocks
//     (block (t-1)·W·B + r·B + b for its row b), as `moec train --reference
//     --world-size W` does, so the W ranks consume what one process with a
//     micro-batch W·B would;
//   - rank 0 prints and logs the step's metrics, which the step makes
//     global on every rank, with the tokens per second of the world (the
//     log's tokens_per_s) and per GPU, and the time its collectives took
//     per group (moert/CollectiveTimes.h: the eager steps' only);
//   - `--dump` writes the global parameters: rank 0 all-gathers every
//     parameter's blocks, drops the padding and places them
//     (moert/ParameterBlocks.h), in the one-GPU program's format;
//   - checkpoints are sharded: each rank writes its own state, rank 0 the
//     manifest with the shards' checksums, gathered through the world;
//   - a Hugging Face checkpoint (--init-from, or the binding `moec compile
//     --init-from` recorded in the manifest.json beside the program) fills
//     each rank's blocks from the mapped files (moert/HfCheckpoint.h);
//     --export-hf writes one, rank 0 gathering each parameter's blocks as
//     --dump does, when the export reaches it (exportHf).
//
// After every step each rank checks the loss and the gradient norm it reads
// for the metrics anyway (moert/NonfiniteSteps.h): a non-finite one stops
// the run, or, with --skip-nonfinite-steps N, up to N steps whose gradient
// norm is not finite are skipped (the printed moe.adamw left the state as
// it was, decided on the device) and the step input AdamW reads counts
// applied updates only. The metrics are global, so every rank decides the
// same.
//
// Token files are raw little-endian int64 [blocks, seq] (`python -m
// moec.data` writes them); labels are the tokens (the loss shifts them).
// The schedule and block order equal `moec train`'s, so a GPU run can be
// checked against the CPU reference step by step.
//
//===----------------------------------------------------------------------===//

#include "moert/TrainDriver.h"
#include "moert/Checkpoint.h"
#include "moert/CollectiveTimes.h"
#include "moert/HfCheckpoint.h"
#include "moert/NcclCommunicator.h"
#include "moert/NonfiniteSteps.h"
#include "moert/Schedule.h"
#include "moert/StepGraphs.h"
#include "moert/ThreadCommunicator.h"
#include "moert/TokenFile.h"
#include "moert/kernels/Blas.h"
#include "moert/kernels/Context.h"
#include "moert/kernels/Offload.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

using namespace moert;

namespace {

/// "rank R: " on the threads of a multi-rank run, for messages.
thread_local std::string rankPrefix;

/// Ends the process (every rank of a simulated world with it) with
/// `message`; output is flushed first, and no static object is destroyed
/// under the other ranks' threads.
[[noreturn]] void fatal(const std::string &message) {
  std::fprintf(stderr, "error: %s%s\n", rankPrefix.c_str(), message.c_str());
  std::fflush(nullptr);
  std::_Exit(1);
}

/// Ends the program on a failed runtime call.
void orExit(const Status &status) {
  if (!status.ok())
    fatal(status.message());
}

std::string gib(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f GiB",
                static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return text;
}

std::string meshText(const MeshShape &mesh) {
  return std::to_string(mesh.replicas) + "x" + std::to_string(mesh.shard) +
         "x" + std::to_string(mesh.expert);
}

/// The command line, read once.
struct Options {
  std::string tokensPath, logPath, dumpDir, checkpointDir;
  int64_t steps = 10, warmupSteps = 2, totalSteps = 0, saveInterval = 0,
          benchWarmup = 0, profileStep = 0, skipNonfiniteSteps = 0;
  /// Hugging Face checkpoints: the folder to start from (default: the
  /// manifest's binding), the folder to export to, every how many steps
  /// (0: after the last), as fp32 or bf16, files of at most how many MiB.
  std::string initFrom, exportHfDir, exportHfDtype = "fp32";
  int64_t exportHfEvery = 0, exportHfMaxFileMib = 5 * 1024;
  uint64_t seed = 1234;
  double lr = 1e-3, minLr = 1e-4;
  bool resume = false, noGraphs = false, checkNumerics = false;
  bool deterministic = false;
  int simulateRanks = 0;
};

/// What `moec compile` recorded beside the program (OUT/manifest.json)
/// that the driver uses: the Hugging Face checkpoint bound with
/// --init-from, and the model's config.json for exports.
struct ProgramManifest {
  std::string initFrom;
  nlohmann::ordered_json hfConfig;
};

/// Reads OUT/manifest.json beside the running executable; a program
/// without one (built by hand) has no binding and no config.
ProgramManifest readProgramManifest() {
  ProgramManifest manifest;
  std::error_code ec;
  const std::filesystem::path path =
      std::filesystem::read_symlink("/proc/self/exe", ec).parent_path() /
      "manifest.json";
  if (ec || !std::filesystem::exists(path, ec))
    return manifest;
  std::ifstream in(path);
  nlohmann::ordered_json json;
  try {
    json = nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::json::exception &e) {
    fatal("cannot read the program's manifest '" + path.string() + "': " +
          e.what());
  }
  if (!json.contains("hf_checkpoint"))
    return manifest;
  const nlohmann::ordered_json &hf = json["hf_checkpoint"];
  if (hf.contains("init_from") && hf["init_from"].is_string())
    manifest.initFrom = hf["init_from"].get<std::string>();
  if (hf.contains("config") && hf["config"].is_object())
    manifest.hfConfig = hf["config"];
  return manifest;
}

/// The checkpoint a run resumes from, found before the GPU is touched.
struct ResumePoint {
  std::filesystem::path folder;
  CheckpointManifest manifest;
  ResumeKind kind = ResumeKind::SameLayout;
};

/// A rank's place in the run: its world (null in a one-rank program).
struct RankPlace {
  int rank = 0, worldSize = 1;
  Communicator *world = nullptr;
  int device = 0;
};

/// Fails, with the plan's numbers, when the device's free memory cannot
/// hold what the rank is about to allocate (checked before the first
/// allocation, so the message says why rather than cudaMalloc's code).
Status checkDeviceMemory(const TrainProgram &p, int64_t scratchBytes,
                         const RankPlace &place) {
  size_t freeBytes = 0, totalBytes = 0;
  if (cudaError_t err = cudaMemGetInfo(&freeBytes, &totalBytes);
      err != cudaSuccess)
    return Status::failure(std::string("cannot query the GPU's memory: ") +
                           cudaGetErrorString(err));
  const int64_t needed = p.stateBytes + std::max<int64_t>(p.arenaBytes, 256) +
                         p.inputBytes + scratchBytes;
  if (needed <= static_cast<int64_t>(freeBytes))
    return Status::success();
  return Status::failure(
      "GPU " + std::to_string(place.device) + " has " + std::to_string(freeBytes) +
      " of " + std::to_string(totalBytes) + " bytes free, the program needs " +
      std::to_string(needed) + " (state " + std::to_string(p.stateBytes) +
      ", arena " + std::to_string(p.arenaBytes) + ", inputs " +
      std::to_string(p.inputBytes) + ", scratch " +
      std::to_string(scratchBytes) + "); compile for this GPU (moec compile "
      "--gpu) or free it");
}

/// Time per op kind of a profiled step, largest first.
void printProfile(const kernels::Profiler &profiler, double stepSeconds) {
  struct Row {
    std::string name;
    int calls = 0;
    double ms = 0;
  };
  std::vector<Row> rows;
  double total = 0;
  for (size_t i = 0; i + 1 < profiler.events.size(); ++i) {
    float ms = 0;
    MOERT_CUDA_CHECK(
        cudaEventElapsedTime(&ms, profiler.events[i], profiler.events[i + 1]));
    auto it = std::find_if(rows.begin(), rows.end(), [&](const Row &r) {
      return r.name == profiler.names[i];
    });
    if (it == rows.end()) {
      rows.push_back({profiler.names[i]});
      it = rows.end() - 1;
    }
    it->calls += 1;
    it->ms += ms;
    total += ms;
  }
  std::sort(rows.begin(), rows.end(),
            [](const Row &a, const Row &b) { return a.ms > b.ms; });
  std::printf("profile: %.2f ms of ops in a %.2f ms step (the rest: host "
              "waits and copies)\n",
              total, stepSeconds * 1e3);
  std::printf("profile: %-34s %6s %10s %7s\n", "op", "calls", "ms", "share");
  for (const Row &r : rows)
    std::printf("profile: %-34s %6d %10.3f %6.1f%%\n", r.name.c_str(), r.calls,
                r.ms, 100.0 * r.ms / total);
  for (cudaEvent_t e : profiler.events)
    MOERT_CUDA_CHECK(cudaEventDestroy(e));
}

/// Every rank's `bytes` (an even count) from device `src`, concatenated in
/// rank order, in host memory: an all-gather through the world (of 2-byte
/// elements: it moves bits). A one-rank run copies its own.
std::vector<char> gatherBytes(const RankPlace &place, cudaStream_t stream,
                              const void *src, size_t bytes) {
  std::vector<char> host(bytes * place.worldSize);
  if (!place.world) {
    MOERT_CUDA_CHECK(cudaMemcpyAsync(host.data(), src, bytes,
                                     cudaMemcpyDeviceToHost, stream));
    MOERT_CUDA_CHECK(cudaStreamSynchronize(stream));
    return host;
  }
  char *gathered = nullptr;
  MOERT_CUDA_CHECK(cudaMalloc(&gathered, std::max<size_t>(host.size(), 2)));
  orExit(place.world->allGather(src, gathered, bytes / 2, DataType::BF16,
                                stream));
  MOERT_CUDA_CHECK(cudaMemcpyAsync(host.data(), gathered, host.size(),
                                   cudaMemcpyDeviceToHost, stream));
  MOERT_CUDA_CHECK(cudaStreamSynchronize(stream));
  MOERT_CUDA_CHECK(cudaFree(gathered));
  return host;
}

/// `value` (host) of every rank, through the world.
template <class T>
std::vector<T> gatherValue(const RankPlace &place, cudaStream_t stream,
                           const T &value) {
  static_assert(sizeof(T) % 2 == 0, "gathered as 2-byte elements");
  T *device = nullptr;
  MOERT_CUDA_CHECK(cudaMalloc(&device, sizeof(T)));
  MOERT_CUDA_CHECK(cudaMemcpyAsync(device, &value, sizeof(T),
                                   cudaMemcpyHostToDevice, stream));
  std::vector<char> bytes = gatherBytes(place, stream, device, sizeof(T));
  MOERT_CUDA_CHECK(cudaFree(device));
  std::vector<T> values(place.worldSize);
  std::memcpy(values.data(), bytes.data(), bytes.size());
  return values;
}

/// The global values of parameter `i` in fp32, gathered from every rank's
/// block (a bf16 state widens exactly); every rank takes part, rank 0 gets
/// the values, the others an empty vector.
std::vector<float> gatherParameter(const TrainProgram &p,
                                   const RankPlace &place, cudaStream_t stream,
                                   const char *state, int i) {
  const ParameterInfo &q = p.parameters[i];
  const BlockLayout layout = parameterLayout(q);
  const size_t blockBytes = static_cast<size_t>(q.count) * q.elementBytes;
  std::vector<char> blocks =
      gatherBytes(place, stream, state + q.offset, blockBytes);
  if (place.rank != 0)
    return {};
  // Replica 0's blocks cover the parameter once, and so do those of
  // expert coordinate 0 of a parameter not split over the experts.
  std::vector<char> global(elementCount(layout.globalShape) * q.elementBytes);
  const BlockPlace whole = wholePlace(layout.globalShape);
  const int64_t experts = layout.expertLocal ? p.mesh.expert : 1;
  for (int64_t h = 0; h < p.mesh.shard; ++h)
    for (int64_t e = 0; e < experts; ++e) {
      BlockPlace at;
      orExit(placeBlock(q.name, layout, p.mesh, h, e, at));
      const int64_t rank = h * p.mesh.expert + e;
      copyOverlap(layout.shape, at, blocks.data() + rank * blockBytes,
                  layout.globalShape, whole, global.data(), q.elementBytes);
    }
  std::vector<float> values(elementCount(layout.globalShape));
  convertToF32(q.elementBytes == 4 ? TensorDtype::F32 : TensorDtype::BF16,
               global.data(), values.data(),
               static_cast<int64_t>(values.size()));
  return values;
}

/// Writes DIR/final/param/NAME.bin (fp32) and index.tsv: the global
/// parameters, gathered from every rank's blocks; rank 0 writes.
void dumpParameters(const TrainProgram &p, const RankPlace &place,
                    cudaStream_t stream, const char *state,
                    const std::string &dumpDir) {
  std::filesystem::path dir = std::filesystem::path(dumpDir) / "final" / "param";
  const bool leader = place.rank == 0;
  if (leader)
    std::filesystem::create_directories(dir);
  std::string index;
  for (int i = 0; i < p.numParameters; ++i) {
    const ParameterInfo &q = p.parameters[i];
    std::vector<float> values = gatherParameter(p, place, stream, state, i);
    if (!leader)
      continue;
    orExit(writeFileAtomically(
        dir / (std::string(q.name) + ".bin"),
        {{values.data(), values.size() * sizeof(float)}}));
    index += q.name;
    index += "\t" + shapeText(parameterLayout(q).globalShape) + "\n";
  }
  if (leader)
    orExit(
        writeFileAtomically(dir / "index.tsv", {{index.data(), index.size()}}));
}

/// Writes the global parameters after `step` steps as the Hugging Face
/// checkpoint DIR/step_N (moert/HfCheckpoint.h), then DIR/latest naming
/// it: rank 0 gathers each parameter from the ranks' blocks as the export
/// reaches it and writes, so that it holds one parameter and one file at a
/// time, not the model (Mixtral 8x7B: 187 GB in fp32). Every rank gathers
/// every parameter in order, rank 0 too when its export fails part way, so
/// that no rank waits in a gather the others never start.
void exportHf(const TrainProgram &p, const Options &o,
              const ProgramManifest &manifest, const RankPlace &place,
              cudaStream_t stream, const char *state, int64_t step) {
  int gathered = 0;
  if (place.rank != 0) {
    for (; gathered < p.numParameters; ++gathered)
      gatherParameter(p, place, stream, state, gathered);
    return;
  }
  std::vector<ExportedShape> parameters;
  for (int i = 0; i < p.numParameters; ++i)
    parameters.push_back({p.parameters[i].name,
                          parameterLayout(p.parameters[i]).globalShape});
  std::vector<float> values;
  auto fetch = [&](size_t i, const float *&out) {
    while (gathered <= static_cast<int>(i))
      values = gatherParameter(p, place, stream, state, gathered++);
    out = values.data();
    return Status::success();
  };
  const bool bf16 = o.exportHfDtype == "bf16";
  const std::string text = manifest.hfConfig.dump();
  const std::filesystem::path dir(o.exportHfDir);
  const std::string name = "step_" + std::to_string(step);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  Status written = exportHfCheckpoint(
      dir / name, parameters, fetch, text,
      bf16 ? TensorDtype::BF16 : TensorDtype::F32,
      static_cast<uint64_t>(o.exportHfMaxFileMib) << 20);
  for (; gathered < p.numParameters; ++gathered)
    gatherParameter(p, place, stream, state, gathered);
  orExit(written);
  const std::string pointer = name + "\n";
  orExit(writeFileAtomically(dir / "latest", {{pointer.data(), pointer.size()}}));
  std::printf("exported '%s' (Hugging Face, %s)\n", (dir / name).c_str(),
              bf16 ? "bf16" : "fp32");
}

/// Fills the state's parameter blocks of this rank (shard coordinate `h`,
/// expert coordinate `e`) from the Hugging Face checkpoint; the moments
/// stay zero, as at a fresh initialisation.
void initFromHf(const TrainProgram &p, const HfCheckpoint &checkpoint,
                int64_t h, int64_t e, char *state) {
  for (int i = 0; i < p.numParameters; ++i) {
    const ParameterInfo &q = p.parameters[i];
    const BlockLayout layout = parameterLayout(q);
    BlockPlace at;
    orExit(placeBlock(q.name, layout, p.mesh, h, e, at));
    std::vector<char> block(static_cast<size_t>(q.count) * q.elementBytes, 0);
    orExit(checkpoint.readBlock(
        q.name, layout.globalShape, layout.shape, at.start, at.valid,
        q.elementBytes == 4 ? TensorDtype::F32 : TensorDtype::BF16,
        block.data()));
    MOERT_CUDA_CHECK(cudaMemcpy(state + q.offset, block.data(), block.size(),
                                cudaMemcpyHostToDevice));
  }
}

/// One rank's run: allocation, initialisation or resumption, the steps,
/// checkpoints, the dump and (rank 0) the summary.
int runRank(const TrainProgram &p, const Options &o,
            const ProgramManifest &manifest, const HfCheckpoint *initFrom,
            const std::vector<int64_t> &tokens, const ResumePoint *resume,
            const RankPlace &place) {
  const bool leader = place.rank == 0;
  const int64_t blocks = static_cast<int64_t>(tokens.size()) / p.seq;
  uint64_t seed = o.seed;
  MOERT_CUDA_CHECK(cudaSetDevice(place.device));

  kernels::Context ctx;
  MOERT_CUDA_CHECK(cudaStreamCreate(&ctx.stream));
  // The step's groups are timed (the driver's own gathers, on the world,
  // are not).
  CollectiveTimes collectiveTimes;
  std::unique_ptr<Communicator> timedWorld;
  std::unique_ptr<MeshGroups> mesh;
  if (place.world) {
    timedWorld = collectiveTimes.wrap(*place.world);
    orExit(MeshGroups::create(*timedWorld, p.mesh, mesh));
    ctx.mesh = mesh.get();
    // The collectives the printer overlaps run here (Collectives.cuh): the
    // gradient reductions on a stream of their own.
    for (cudaStream_t *stream : {&ctx.collectiveStream, &ctx.gradientStream})
      MOERT_CUDA_CHECK(
          cudaStreamCreateWithFlags(stream, cudaStreamNonBlocking));
  }
  const int64_t h = mesh ? mesh->coordinate(kShardAxis) : 0;
  const int64_t e = mesh ? mesh->coordinate(kExpertAxis) : 0;

  // Device memory: everything the program uses, allocated once.
  size_t freeBefore = 0, totalMemory = 0;
  MOERT_CUDA_CHECK(cudaMemGetInfo(&freeBefore, &totalMemory));
  ctx.blas = kernels::createBlas(ctx.stream);
  const int64_t blasWorkspace = ctx.blas->workspaceBytes;
  ctx.deterministic = o.deterministic;
  if (p.openLibraries)
    p.openLibraries(ctx);
  ctx.scratchBytes = p.scratchBytes(ctx);
  orExit(checkDeviceMemory(p, ctx.scratchBytes, place));
  char *state = nullptr, *arena = nullptr, *inputs = nullptr;
  MOERT_CUDA_CHECK(cudaMalloc(&state, p.stateBytes));
  MOERT_CUDA_CHECK(cudaMalloc(&arena, std::max<int64_t>(p.arenaBytes, 256)));
  MOERT_CUDA_CHECK(cudaMalloc(&inputs, p.inputBytes));
  MOERT_CUDA_CHECK(cudaMalloc(&ctx.scratch, ctx.scratchBytes));
  if (ctx.collectiveStream && p.collectiveScratchBytes) {
    ctx.collectiveScratchBytes = p.collectiveScratchBytes(ctx);
    MOERT_CUDA_CHECK(
        cudaMalloc(&ctx.collectiveScratch, ctx.collectiveScratchBytes));
  }
  if (ctx.gradientStream && p.gradientScratchBytes) {
    ctx.gradientScratchBytes = p.gradientScratchBytes(ctx);
    MOERT_CUDA_CHECK(
        cudaMalloc(&ctx.gradientScratch, ctx.gradientScratchBytes));
  }
  MOERT_CUDA_CHECK(cudaMallocHost(&ctx.hostCounts, 4096 * sizeof(int64_t)));
  if (p.hostActivationBytes > 0)
    ctx.offload = kernels::createActivationOffload(p.hostActivationBytes);
  // --check-numerics: one counter per check of the step (Numerics.cuh).
  std::vector<unsigned long long> nonfiniteCounts;
  if (o.checkNumerics) {
    nonfiniteCounts.resize(p.numNumericsChecks);
    MOERT_CUDA_CHECK(cudaMalloc(&ctx.nonfiniteCounts,
                                nonfiniteCounts.size() * 8));
  }
  int64_t allocated = p.stateBytes + p.arenaBytes + p.inputBytes +
                      ctx.scratchBytes + ctx.collectiveScratchBytes +
                      ctx.gradientScratchBytes +
                      blasWorkspace;
  if (leader) {
    std::printf("%s: batch %lld x seq %lld, %d parameters\n", p.model,
                static_cast<long long>(p.batch),
                static_cast<long long>(p.seq), p.numParameters);
    if (place.world)
      std::printf("mesh: %s (R x H x P), %d ranks%s; memory per rank:\n",
                  meshText(p.mesh).c_str(), place.worldSize,
                  o.simulateRanks ? " as threads on one GPU" : "");
    std::printf("memory: state %s + arena %s (compiler's plan) + scratch %s + "
                "inputs %s + cuBLAS %s = %s allocated\n",
                gib(p.stateBytes).c_str(), gib(p.arenaBytes).c_str(),
                gib(ctx.scratchBytes + ctx.collectiveScratchBytes +
                    ctx.gradientScratchBytes)
                    .c_str(),
                gib(p.inputBytes).c_str(),
                gib(blasWorkspace).c_str(), gib(allocated).c_str());
    if (ctx.offload)
      std::printf("memory: offloaded activations %s pinned on the host\n",
                  gib(p.hostActivationBytes).c_str());
  }

  // Parameters: from the seed, or from the checkpoint.
  int64_t firstStep = 1;
  const int64_t savedBytes = p.stateBytes - p.derivedStateBytes;
  MOERT_CUDA_CHECK(cudaMemsetAsync(state, 0, p.stateBytes, ctx.stream));
  if (resume) {
    std::vector<char> host(savedBytes, 0);
    if (resume->kind == ResumeKind::SameLayout)
      orExit(readCheckpointShard(resume->folder, resume->manifest, place.rank,
                                 host.data()));
    else
      orExit(reshardCheckpoint(resume->folder, resume->manifest, p, h, e,
                               host.data()));
    MOERT_CUDA_CHECK(cudaMemcpy(state, host.data(), savedBytes,
                                cudaMemcpyHostToDevice));
    firstStep = resume->manifest.step + 1;
    seed = resume->manifest.seed;
    if (leader)
      std::printf("resumed from '%s' after step %lld%s%s\n",
                  resume->folder.c_str(),
                  static_cast<long long>(resume->manifest.step),
                  resume->kind == ResumeKind::Reshard
                      ? (", resharded from the mesh " +
                         meshText(resume->manifest.mesh))
                            .c_str()
                      : "",
                  resume->manifest.skippedSteps
                      ? (", " + std::to_string(resume->manifest.skippedSteps) +
                         " of them skipped as non-finite")
                            .c_str()
                      : "");
  } else if (initFrom) {
    initFromHf(p, *initFrom, h, e, state);
    if (leader)
      std::printf("initialised from the Hugging Face checkpoint '%s'\n",
                  initFrom->folder().c_str());
  } else if (mesh && p.initRankParams) {
    p.initRankParams(state, seed, *mesh, ctx.stream);
  } else {
    p.initParams(state, seed, ctx.stream);
  }
  p.setup(state, arena, inputs);
  MOERT_CUDA_CHECK(cudaGetLastError());

  // The skipped non-finite steps go on from the checkpoint's count: the
  // AdamW step numbers and what is left of --skip-nonfinite-steps.
  NonfiniteSteps nonfinite(o.skipNonfiniteSteps,
                           resume ? resume->manifest.skippedSteps : 0);

  // The masters' fp32 slots current, for what reads the parameters: split
  // masters (store_param_remainders) joined once after a step, and split
  // again by the next (their remainders share the fp32 slots).
  bool mastersSplit = false;
  auto syncMasters = [&] {
    if (p.syncMasters && mastersSplit)
      p.syncMasters(ctx);
    mastersSplit = false;
  };
  auto save = [&](int64_t completed) {
    std::vector<char> host(savedBytes);
    syncMasters();
    MOERT_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    MOERT_CUDA_CHECK(cudaMemcpy(host.data(), state, savedBytes,
                                cudaMemcpyDeviceToHost));
    CheckpointShard mine;
    orExit(writeCheckpointShard(o.checkpointDir, completed, place.rank,
                                host.data(), savedBytes, mine));
    // Every rank's size and checksum, for the manifest rank 0 writes last.
    std::pair<int64_t, uint64_t> written{mine.bytes, mine.checksum};
    std::vector<std::pair<int64_t, uint64_t>> all =
        place.world ? gatherValue(place, ctx.stream, written)
                    : std::vector<std::pair<int64_t, uint64_t>>{written};
    if (!leader)
      return;
    CheckpointManifest manifest =
        checkpointManifest(p, completed, seed, nonfinite.skippedSteps());
    for (int r = 0; r < place.worldSize; ++r)
      manifest.shards.push_back({"rank_" + std::to_string(r) + ".shard",
                                 all[r].first, all[r].second});
    orExit(commitCheckpoint(o.checkpointDir, manifest));
    std::printf("saved checkpoint '%s'\n",
                checkpointFolder(o.checkpointDir, completed).c_str());
  };

  std::FILE *log = nullptr;
  if (leader && !o.logPath.empty()) {
    log = std::fopen(o.logPath.c_str(), firstStep > 1 ? "a" : "w");
    if (!log)
      fatal("cannot write '" + o.logPath + "'");
    if (firstStep == 1)
      std::fprintf(log, "step,loss,ce_loss,aux_loss,z_loss,grad_norm,lr,"
                        "step_seconds,tokens_per_s,model_tflops,peak_bytes\n");
  }

  // Pinned mirrors of the inputs and the metrics.
  char *hostInputs = nullptr;
  MOERT_CUDA_CHECK(cudaMallocHost(&hostInputs, p.inputBytes));
  int64_t countSlots = p.countLayers * p.countExperts;
  float *hostMetrics = nullptr;
  int64_t *hostCountsOut = nullptr;
  MOERT_CUDA_CHECK(cudaMallocHost(&hostMetrics, 8 * sizeof(float)));
  MOERT_CUDA_CHECK(
      cudaMallocHost(&hostCountsOut, std::max<int64_t>(countSlots, 1) * 8));
  const MetricSlot *slots[] = {&p.loss, &p.ceLoss, &p.auxLoss, &p.zLoss,
                               &p.gradNorm};

  int64_t total = o.totalSteps > 0 ? o.totalSteps : firstStep - 1 + o.steps;
  LrSchedule schedule{o.lr, o.minLr, o.warmupSteps, total};

  std::vector<double> times;
  /// Per timed step with offloading: the compute stream's wait for the
  /// fetches and at the offloads' joins, and each direction's bandwidth.
  std::vector<double> fetchWaits, fetchBandwidths, joinWaits,
      offloadBandwidths;
  kernels::OffloadStepTimes lastTransfers;
  size_t minFree = freeBefore;
  int64_t lastStep = firstStep - 1 + o.steps;
  const int64_t worldTokens = place.worldSize * p.batch * p.seq;
  // The first step of the run warms up; graphs are captured in the second.
  // A simulated world never captures (runTrainProgram turned graphs off).
  // --check-numerics runs every step eagerly: its checks launch from the
  // host.
  if (!o.simulateRanks)
    setGraphMode(o.noGraphs || o.checkNumerics ? GraphMode::Off
                                               : GraphMode::Warmup);
  for (int64_t t = firstStep; t <= lastStep; ++t) {
    if (t > firstStep && graphMode() == GraphMode::Warmup)
      setGraphMode(GraphMode::Replay);
    int64_t *ids = reinterpret_cast<int64_t *>(hostInputs + p.inputIdsOffset);
    int64_t *labels = reinterpret_cast<int64_t *>(hostInputs + p.labelsOffset);
    // Block r of the t-th global batch of W·B blocks.
    for (int64_t b = 0; b < p.batch; ++b) {
      int64_t block =
          trainingBlock(t, place.rank, place.worldSize, p.batch, b, blocks);
      std::memcpy(ids + b * p.seq, &tokens[block * p.seq], p.seq * 8);
      std::memcpy(labels + b * p.seq, &tokens[block * p.seq], p.seq * 8);
    }
    double stepLr = schedule.at(t);
    *reinterpret_cast<int64_t *>(hostInputs + p.stepOffset) =
        nonfinite.adamwStep(t);
    *reinterpret_cast<float *>(hostInputs + p.lrOffset) =
        static_cast<float>(stepLr);

    MOERT_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    auto start = std::chrono::steady_clock::now();
    MOERT_CUDA_CHECK(cudaMemcpyAsync(inputs, hostInputs, p.inputBytes,
                                     cudaMemcpyHostToDevice, ctx.stream));
    kernels::Profiler profiler;
    ctx.profiler = leader && t == o.profileStep ? &profiler : nullptr;
    ctx.refreshParameterCopies =
        t == firstStep || (p.syncMasters && !mastersSplit);
    mastersSplit = p.syncMasters != nullptr;
    if (ctx.nonfiniteCounts)
      MOERT_CUDA_CHECK(cudaMemsetAsync(ctx.nonfiniteCounts, 0,
                                       nonfiniteCounts.size() * 8,
                                       ctx.stream));
    p.step(ctx, state, arena, inputs);
    if (ctx.nonfiniteCounts)
      MOERT_CUDA_CHECK(cudaMemcpyAsync(
          nonfiniteCounts.data(), ctx.nonfiniteCounts,
          nonfiniteCounts.size() * 8, cudaMemcpyDeviceToHost, ctx.stream));
    ctx.profiler = nullptr;
    for (int m = 0; m < 5; ++m) {
      if (slots[m]->offset < 0)
        hostMetrics[m] = slots[m]->constant;
      else
        MOERT_CUDA_CHECK(cudaMemcpyAsync(&hostMetrics[m],
                                         arena + slots[m]->offset, 4,
                                         cudaMemcpyDeviceToHost, ctx.stream));
    }
    if (countSlots > 0)
      MOERT_CUDA_CHECK(
          cudaMemcpyAsync(hostCountsOut, arena + p.expertCounts.offset,
                          countSlots * 8, cudaMemcpyDeviceToHost, ctx.stream));
    MOERT_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    MOERT_CUDA_CHECK(cudaGetLastError());
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    size_t freeNow = 0;
    MOERT_CUDA_CHECK(cudaMemGetInfo(&freeNow, &totalMemory));
    minFree = std::min(minFree, freeNow);
    if (ctx.offload)
      lastTransfers = kernels::readOffloadTimes(*ctx.offload);
    if (t - firstStep >= o.benchWarmup) {
      times.push_back(seconds);
      if (ctx.offload) {
        fetchWaits.push_back(lastTransfers.waitMilliseconds);
        joinWaits.push_back(lastTransfers.joinWaitMilliseconds);
        offloadBandwidths.push_back(
            lastTransfers.offloadMilliseconds > 0
                ? lastTransfers.offloadedBytes /
                      lastTransfers.offloadMilliseconds / 1e6
                : 0.0);
        fetchBandwidths.push_back(lastTransfers.fetchMilliseconds > 0
                                      ? lastTransfers.fetchedBytes /
                                            lastTransfers.fetchMilliseconds /
                                            1e6
                                      : 0.0);
      }
    }
    std::vector<GroupTime> groupTimes;
    std::vector<CollectiveTime> collectiveBreakdown;
    if (mesh)
      orExit(collectiveTimes.collect(groupTimes, &collectiveBreakdown));
    // --check-numerics: the first tensor, in program order (the parameters
    // the step starts from, then the ops' results), that holds an inf or a
    // NaN (this rank's).
    for (int i = 0; i < p.numNumericsChecks && ctx.nonfiniteCounts; ++i)
      if (nonfiniteCounts[i] != 0) {
        const NumericsCheck &c = p.numericsChecks[i];
        fatal("step " + std::to_string(t) + ": " + c.what + " (" + c.type +
              ") has " + std::to_string(nonfiniteCounts[i]) +
              " non-finite elements, the first in the step "
              "(--check-numerics); stopping");
      }
    // Every rank holds the same global metrics: each decides the same.
    std::string nonfiniteText;
    NonfiniteSteps::Outcome outcome =
        nonfinite.decide(t, hostMetrics[0], hostMetrics[4], nonfiniteText);
    if (outcome == NonfiniteSteps::Outcome::Stop)
      fatal(nonfiniteText);
    if (leader) {
      double tokensPerSecond = worldTokens / seconds;
      double tflops = p.modelFlops / seconds / 1e12;
      if (!profiler.events.empty())
        printProfile(profiler, seconds);
      std::string counts;
      for (int64_t l = 0; l < p.countLayers; ++l) {
        counts += l ? " |" : "";
        for (int64_t x = 0; x < p.countExperts; ++x)
          counts +=
              " " + std::to_string(hostCountsOut[l * p.countExperts + x]);
      }
      std::string perGpu =
          place.world ? " (" +
                            std::to_string(static_cast<long long>(
                                tokensPerSecond / place.worldSize)) +
                            " per GPU)"
                      : "";
      std::printf("step %4lld  loss %.6f  ce %.6f  aux %.6f  z %.6f  "
                  "grad_norm %.4f  lr %.3e  %.0f tokens/s%s  %.1f TFLOP/s  "
                  "experts [%s ]\n",
                  static_cast<long long>(t), hostMetrics[0], hostMetrics[1],
                  hostMetrics[2], hostMetrics[3], hostMetrics[4], stepLr,
                  tokensPerSecond, perGpu.c_str(), tflops, counts.c_str());
      if (ctx.offload)
        std::printf("step %4lld  offload: %lld bytes to the host, %lld back "
                    "in %.3f ms (%.2f GB/s host to device); the compute "
                    "stream waited %.3f ms for fetches; out in %.3f ms "
                    "(%.2f GB/s device to host), the compute stream waited "
                    "%.3f ms at the joins\n",
                    static_cast<long long>(t),
                    static_cast<long long>(lastTransfers.offloadedBytes),
                    static_cast<long long>(lastTransfers.fetchedBytes),
                    lastTransfers.fetchMilliseconds,
                    lastTransfers.fetchMilliseconds > 0
                        ? lastTransfers.fetchedBytes /
                              lastTransfers.fetchMilliseconds / 1e6
                        : 0.0,
                    lastTransfers.waitMilliseconds,
                    lastTransfers.offloadMilliseconds,
                    lastTransfers.offloadMilliseconds > 0
                        ? lastTransfers.offloadedBytes /
                              lastTransfers.offloadMilliseconds / 1e6
                        : 0.0,
                    lastTransfers.joinWaitMilliseconds);
      if (outcome == NonfiniteSteps::Outcome::Skipped)
        std::printf("%s\n", nonfiniteText.c_str());
      if (!groupTimes.empty()) {
        std::string text;
        for (const GroupTime &g : groupTimes) {
          char ms[32];
          std::snprintf(ms, sizeof(ms), "%.3f", g.milliseconds);
          text += "  " + g.group + " " + std::to_string(g.calls) + " in " +
                  ms + " ms";
        }
        std::printf("step %4lld  collectives:%s\n", static_cast<long long>(t),
                    text.c_str());
      }
      // The profiled step: each group's collectives by kind, with the bytes
      // they moved and their bus bandwidth (moert/CollectiveTimes.h).
      if (t == o.profileStep)
        for (const CollectiveTime &c : collectiveBreakdown)
          std::printf("step %4lld  collective: %-22s %-14s %4d calls %14.0f "
                      "bytes %10.3f ms  busbw %8.2f GB/s\n",
                      static_cast<long long>(t), c.group.c_str(),
                      c.collective.c_str(), c.calls, c.bytes, c.milliseconds,
                      c.busGbPerSecond());
      if (log)
        std::fprintf(
            log, "%lld,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.6f,%.1f,%.2f,%lld\n",
            static_cast<long long>(t), hostMetrics[0], hostMetrics[1],
            hostMetrics[2], hostMetrics[3], hostMetrics[4], stepLr, seconds,
            tokensPerSecond, tflops, static_cast<long long>(allocated));
    }
    if (!o.checkpointDir.empty() &&
        ((o.saveInterval > 0 && t % o.saveInterval == 0) ||
         (o.saveInterval == 0 && t == lastStep)))
      save(t);
    if (!o.exportHfDir.empty() &&
        ((o.exportHfEvery > 0 && t % o.exportHfEvery == 0) ||
         t == lastStep)) {
      syncMasters();
      exportHf(p, o, manifest, place, ctx.stream, state, t);
    }
  }
  if (log)
    std::fclose(log);

  if (!o.dumpDir.empty()) {
    syncMasters();
    dumpParameters(p, place, ctx.stream, state, o.dumpDir);
  }

  if (leader) {
    std::vector<double> sorted = times;
    std::sort(sorted.begin(), sorted.end());
    double median = sorted[sorted.size() / 2];
    if (sorted.size() % 2 == 0)
      median =
          0.5 * (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]);
    auto medianOf = [](std::vector<double> values) {
      if (values.empty())
        return 0.0;
      std::sort(values.begin(), values.end());
      size_t n = values.size();
      return n % 2 ? values[n / 2]
                   : 0.5 * (values[n / 2 - 1] + values[n / 2]);
    };
    std::string offloadFields =
        ctx.offload
            ? ", \"host_activation_bytes\": " +
                  std::to_string(p.hostActivationBytes) +
                  ", \"offloaded_bytes_per_step\": " +
                  std::to_string(lastTransfers.offloadedBytes) +
                  ", \"fetch_wait_ms\": " +
                  std::to_string(medianOf(fetchWaits)) +
                  ", \"fetch_gb_per_s\": " +
                  std::to_string(medianOf(fetchBandwidths)) +
                  ", \"offload_join_wait_ms\": " +
                  std::to_string(medianOf(joinWaits)) +
                  ", \"offload_gb_per_s\": " +
                  std::to_string(medianOf(offloadBandwidths))
            : std::string();
    std::printf("summary {\"steps\": %zu, \"median_step_s\": %.6f, "
                "\"tokens_per_s\": %.1f, \"model_tflops\": %.2f, "
                "\"peak_bytes\": %lld, \"device_used_bytes\": %lld, "
                "\"cuda_graphs\": %s%s%s}\n",
                times.size(), median, worldTokens / median,
                p.modelFlops / median / 1e12, static_cast<long long>(allocated),
                static_cast<long long>(totalMemory - minFree),
                graphMode() == GraphMode::Replay ? "true" : "false",
                place.world ? (", \"ranks\": " +
                               std::to_string(place.worldSize) +
                               ", \"tokens_per_s_per_gpu\": " +
                               std::to_string(worldTokens / median /
                                              place.worldSize))
                                  .c_str()
                            : "",
                offloadFields.c_str());
  }
  // A simulated world's ranks share the process: each frees what it made.
  if (o.simulateRanks) {
    for (void *buffer : {static_cast<void *>(state), static_cast<void *>(arena),
                         static_cast<void *>(inputs),
                         static_cast<void *>(ctx.scratch),
                         static_cast<void *>(ctx.collectiveScratch),
                         static_cast<void *>(ctx.gradientScratch),
                         static_cast<void *>(ctx.nonfiniteCounts)})
      MOERT_CUDA_CHECK(cudaFree(buffer));
    for (void *pinned :
         {static_cast<void *>(hostInputs), static_cast<void *>(hostMetrics),
          static_cast<void *>(hostCountsOut),
          static_cast<void *>(ctx.hostCounts)})
      MOERT_CUDA_CHECK(cudaFreeHost(pinned));
    if (ctx.offload)
      kernels::destroyActivationOffload(ctx.offload);
  }
  return 0;
}

/// Whether the program can run as the launcher started it (`info`) with
/// the options: a partitioned program of W ranks runs under a launcher of
/// WORLD_SIZE W (and a world communicator), or with --simulate-ranks W and
/// no launcher; one that keeps its one-rank collectives (W = 1 with a
/// world communicator) runs as one rank, launched or not.
Status checkWorld(const TrainProgram &p, const Options &o,
                  const RankInfo &info) {
  const int64_t w = p.mesh.size();
  const std::string partitioned =
      "the program was partitioned for " + std::to_string(w) + " ranks (mesh " +
      meshText(p.mesh) + ", R x H x P)";
  const std::string started = "the launcher (" + info.launcher + ") started " +
                              std::to_string(info.worldSize) +
                              " ranks (WORLD_SIZE)";
  if (o.simulateRanks != 0) {
    if (w == 1)
      return Status::failure("--simulate-ranks " +
                             std::to_string(o.simulateRanks) +
                             ": the program was compiled for one rank");
    if (o.simulateRanks != w)
      return Status::failure("--simulate-ranks " +
                             std::to_string(o.simulateRanks) + ": " +
                             partitioned);
    if (info.worldSize != 1)
      return Status::failure("--simulate-ranks runs every rank in this "
                             "process, but " + started);
    return Status::success();
  }
  // A one-rank program under a launcher runs a copy on every rank, as it
  // always has.
  if (w == 1 && !p.createWorld)
    return Status::success();
  if (info.worldSize == 1 && w > 1)
    return Status::failure(
        partitioned + ": start it under a launcher (moec launch, torchrun, "
                      "srun, mpirun) with " + std::to_string(w) +
        " ranks, or with --simulate-ranks " + std::to_string(w));
  if (info.worldSize != w)
    return Status::failure(started + ", but " + partitioned);
  if (!p.createWorld)
    return Status::failure("this program was built without a world "
                           "communicator (NCCL); it can only run with "
                           "--simulate-ranks " + std::to_string(w));
  return Status::success();
}

} // namespace

int moert::runTrainProgram(const TrainProgram &p, int argc, char **argv) {
  CLI::App app{std::string("moec-compiled training step for ") + p.model};
  Options o;
  app.add_option("--tokens", o.tokensPath,
                 "token blocks: raw little-endian int64 [blocks, seq]")
      ->required();
  app.add_option("--steps", o.steps, "training steps (in this run)");
  app.add_option("--seed", o.seed, "random_seed of the initialisation");
  app.add_option("--lr", o.lr, "peak learning rate");
  app.add_option("--min-lr", o.minLr, "final learning rate");
  app.add_option("--warmup-steps", o.warmupSteps, "linear warm-up steps");
  app.add_option("--total-steps", o.totalSteps,
                 "length of the cosine schedule (default: --steps)");
  app.add_option("--log", o.logPath, "write per-step metrics as CSV");
  app.add_option("--dump", o.dumpDir,
                 "write the final (global) parameters here (raw fp32 + "
                 "index.tsv)");
  app.add_option("--checkpoint-dir", o.checkpointDir,
                 "save checkpoints here (and resume from here)");
  app.add_option("--save-interval", o.saveInterval,
                 "save a checkpoint every N steps (0: after the last step)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--resume", o.resume,
               "continue from the latest checkpoint in --checkpoint-dir "
               "(resharded when it was saved under another layout)");
  app.add_option("--init-from", o.initFrom,
                 "start from this Hugging Face Mixtral checkpoint folder "
                 "(default: the one moec compile --init-from bound)");
  app.add_option("--export-hf", o.exportHfDir,
                 "after the last step, write the parameters as a Hugging "
                 "Face checkpoint DIR/step_N (and DIR/latest)");
  app.add_option("--export-hf-every", o.exportHfEvery,
                 "with --export-hf: also every N steps")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--export-hf-dtype", o.exportHfDtype,
                 "the exported tensors' type: fp32 or bf16")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--export-hf-max-file-mib", o.exportHfMaxFileMib,
                 "with --export-hf: split the weights into files of at most "
                 "this many MiB, with an index")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  app.add_option("--skip-nonfinite-steps", o.skipNonfiniteSteps,
                 "skip up to N steps whose gradient norm is not finite (the "
                 "optimizer state left as it was) before stopping")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--check-numerics", o.checkNumerics,
               "after every op, count the inf and NaN in its results and "
               "stop at the first op with any (a program compiled with moec "
               "compile --check-numerics; eager steps, no CUDA graphs)");
  app.add_option("--bench-warmup", o.benchWarmup,
                 "steps left out of the summary's median")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--profile-step", o.profileStep,
                 "time every op of this step and print the time per op kind");
  app.add_flag("--no-graphs", o.noGraphs,
               "launch every kernel of every step from the host (no CUDA "
               "graphs)");
  app.add_flag("--deterministic", o.deterministic,
               "the same bits every run: cuDNN's attention backward on its "
               "deterministic algorithm (every other kernel of moec adds in "
               "a fixed order already)");
  app.add_option("--simulate-ranks", o.simulateRanks,
                 "run all W ranks of a partitioned program as threads on "
                 "this GPU (W: the program's world size; for tests)")
      ->check(CLI::NonNegativeNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    return app.exit(e);
  }
  if (o.steps < 1)
    fatal("--steps " + std::to_string(o.steps) + " must be at least 1");
  if (std::string problem = scheduleFlagsProblem(o.lr, o.minLr, o.warmupSteps,
                                                 o.totalSteps);
      !problem.empty())
    fatal(problem);
  if (o.benchWarmup >= o.steps)
    fatal("--bench-warmup " + std::to_string(o.benchWarmup) +
          " leaves no timed step of --steps " + std::to_string(o.steps));
  if (o.resume && o.checkpointDir.empty())
    fatal("--resume needs --checkpoint-dir");
  if (o.checkNumerics && p.numNumericsChecks == 0)
    fatal("--check-numerics: the program was compiled without the checks; "
          "compile it with moec compile --check-numerics");

  RankInfo info;
  orExit(detectRank(processEnvironment(), info));
  // The world: this process's rank of a launched job, the simulated ranks,
  // or one rank. Checked before the GPU is touched.
  orExit(checkWorld(p, o, info));

  // A checkpoint to resume from is checked before the GPU is touched.
  ResumePoint resumePoint;
  if (o.resume) {
    if (Status found = findLatestCheckpoint(o.checkpointDir, resumePoint.folder,
                                            resumePoint.manifest);
        !found.ok())
      fatal("--resume: " + found.message());
    orExit(matchCheckpoint(resumePoint.folder, resumePoint.manifest, p,
                           resumePoint.kind));
  }
  const ResumePoint *resume = o.resume ? &resumePoint : nullptr;

  // A Hugging Face checkpoint to start from (a resumed run continues from
  // its own checkpoint instead), checked against the program's parameters
  // before the GPU is touched; exports need the model's config.json.
  const ProgramManifest manifest = readProgramManifest();
  std::unique_ptr<HfCheckpoint> initFrom;
  const std::string initFromDir =
      o.initFrom.empty() ? manifest.initFrom : o.initFrom;
  if (!initFromDir.empty() && !o.resume) {
    orExit(HfCheckpoint::open(initFromDir, initFrom));
    std::vector<ModelParameter> parameters;
    for (int i = 0; i < p.numParameters; ++i)
      parameters.push_back(
          {p.parameters[i].name, parameterLayout(p.parameters[i]).globalShape});
    if (Status s = initFrom->check(parameters); !s.ok())
      fatal("--init-from: the checkpoint does not fit the program:\n" +
            s.message());
  }
  // The exports go into DIR/step_N: DIR must be a folder or not exist yet,
  // found out now rather than after the training.
  if (std::error_code ec; !o.exportHfDir.empty() &&
                          std::filesystem::exists(o.exportHfDir, ec) &&
                          !std::filesystem::is_directory(o.exportHfDir, ec))
    fatal("--export-hf '" + o.exportHfDir +
          "' exists and is not a folder (exports go into DIR/step_N)");
  if (!o.exportHfDir.empty() && manifest.hfConfig.empty())
    fatal("--export-hf: the program's manifest.json (beside it) has no "
          "Hugging Face config; compile it again with this moec");

  std::vector<int64_t> tokens;
  if (Status s = readTokenFile(o.tokensPath, p.seq, p.vocab, tokens); !s.ok())
    fatal(s.message());

  // A one-rank program without collectives; one that keeps them
  // (keep_one_rank_collectives) makes its one-rank world below.
  if (p.mesh.size() == 1 && !p.createWorld)
    return runRank(p, o, manifest, initFrom.get(), tokens, resume, RankPlace{});

  if (o.simulateRanks == 0) {
    // One rank of a launched job, on the device LOCAL_RANK, or on the one
    // device the process sees (a launcher that gives each rank its GPU
    // through CUDA_VISIBLE_DEVICES).
    int devices = 0;
    MOERT_CUDA_CHECK(cudaGetDeviceCount(&devices));
    const int device = devices == 1 ? 0 : info.localRank;
    if (device >= devices)
      fatal("rank " + std::to_string(info.rank) + ": local rank " +
            std::to_string(info.localRank) + " but this process sees " +
            std::to_string(devices) + " GPUs");
    MOERT_CUDA_CHECK(cudaSetDevice(device));
    std::unique_ptr<Communicator> world;
    rankPrefix = "rank " + std::to_string(info.rank) + ": ";
    orExit(p.createWorld(info, processEnvironment(), world));
    RankPlace place{info.rank, info.worldSize, world.get(), device};
    int status = runRank(p, o, manifest, initFrom.get(), tokens, resume, place);
    // Every rank's collectives are done before the communicators go.
    orExit(world->barrier(nullptr));
    return status;
  }

  // W ranks as threads on this GPU, through the thread world; no graphs
  // (their captures cannot join across the ranks' streams).
  setGraphMode(GraphMode::Off);
  int device = 0;
  MOERT_CUDA_CHECK(cudaGetDevice(&device));
  // A rank that waits for the others longer than the NCCL watchdog would
  // let it fails the world instead of hanging.
  std::chrono::milliseconds timeout = kDefaultCollectiveTimeout;
  orExit(readSecondsVariable(processEnvironment(), kCollectiveTimeoutVariable,
                             /*allowZero=*/true, timeout));
  std::vector<std::unique_ptr<Communicator>> world;
  orExit(createThreadWorld(o.simulateRanks, ThreadMemory::Device, world,
                           timeout));
  std::vector<std::thread> ranks;
  for (int r = 0; r < o.simulateRanks; ++r)
    ranks.emplace_back([&, r] {
      rankPrefix = "rank " + std::to_string(r) + ": ";
      runRank(p, o, manifest, initFrom.get(), tokens, resume,
              RankPlace{r, o.simulateRanks, world[r].get(), device});
    });
  for (std::thread &rank : ranks)
    rank.join();
  return 0;
}
