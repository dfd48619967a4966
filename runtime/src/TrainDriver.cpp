//===- TrainDriver.cpp - The host side of a compiled training program -----===//
//
// See moert/TrainDriver.h. The device memory is one state region, one
// arena sized by the compiler's memory plan, one inputs region and the
// kernels' scratch, allocated once. Checkpoints are moert/Checkpoint.h's.
// The step's segments run as CUDA graphs from the second step of a run on
// (moert/StepGraphs.h; `--no-graphs` turns them off).
//
// Token files are raw little-endian int64 [blocks, seq] (`python -m
// moec.data` writes them); labels are the tokens (the loss shifts them).
// The schedule and block order equal `moec train`'s, so a GPU run can be
// checked against the CPU reference step by step.
//
//===----------------------------------------------------------------------===//

#include "moert/TrainDriver.h"
#include "moert/Checkpoint.h"
#include "moert/Schedule.h"
#include "moert/StepGraphs.h"
#include "moert/kernels/Blas.h"
#include "moert/kernels/Context.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using namespace moert;

namespace {

[[noreturn]] void fatal(const std::string &message) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  std::exit(1);
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

std::vector<int64_t> readTokens(const std::string &path, int64_t seq,
                                int64_t vocab) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in)
    fatal("cannot open token file '" + path + "'");
  int64_t bytes = static_cast<int64_t>(in.tellg());
  int64_t blockBytes = seq * 8;
  if (bytes == 0 || bytes % blockBytes != 0)
    fatal("token file '" + path + "' has " + std::to_string(bytes) +
          " bytes, not a whole number of blocks of " + std::to_string(seq) +
          " int64 tokens (" + std::to_string(blockBytes) +
          " bytes): the program was compiled for sequence length " +
          std::to_string(seq));
  std::vector<int64_t> tokens(bytes / 8);
  in.seekg(0);
  in.read(reinterpret_cast<char *>(tokens.data()), bytes);
  if (!in)
    fatal("cannot read token file '" + path + "'");
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      fatal("token file '" + path + "': block " + std::to_string(i / seq) +
            ", position " + std::to_string(i % seq) + " holds " +
            std::to_string(tokens[i]) + ", outside the vocabulary [0, " +
            std::to_string(vocab) + ")");
  return tokens;
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

} // namespace

int moert::runTrainProgram(const TrainProgram &p, int argc, char **argv) {
  CLI::App app{std::string("moec-compiled training step for ") + p.model};
  std::string tokensPath, logPath, dumpDir, checkpointDir;
  int64_t steps = 10, warmupSteps = 2, totalSteps = 0, saveInterval = 0,
          benchWarmup = 0;
  uint64_t seed = 1234;
  double lr = 1e-3, minLr = 1e-4;
  bool resume = false;
  app.add_option("--tokens", tokensPath,
                 "token blocks: raw little-endian int64 [blocks, seq]")
      ->required();
  app.add_option("--steps", steps, "training steps (in this run)");
  app.add_option("--seed", seed, "random_seed of the initialisation");
  app.add_option("--lr", lr, "peak learning rate");
  app.add_option("--min-lr", minLr, "final learning rate");
  app.add_option("--warmup-steps", warmupSteps, "linear warm-up steps");
  app.add_option("--total-steps", totalSteps,
                 "length of the cosine schedule (default: --steps)");
  app.add_option("--log", logPath, "write per-step metrics as CSV");
  app.add_option("--dump", dumpDir,
                 "write the final parameters here (raw fp32 + index.tsv)");
  app.add_option("--checkpoint-dir", checkpointDir,
                 "save checkpoints here (and resume from here)");
  app.add_option("--save-interval", saveInterval,
                 "save a checkpoint every N steps (0: after the last step)");
  app.add_flag("--resume", resume,
               "continue from the latest checkpoint in --checkpoint-dir");
  app.add_option("--bench-warmup", benchWarmup,
                 "steps left out of the summary's median");
  int64_t profileStep = 0;
  app.add_option("--profile-step", profileStep,
                 "time every op of this step and print the time per op kind");
  bool noGraphs = false;
  app.add_flag("--no-graphs", noGraphs,
               "launch every kernel of every step from the host (no CUDA "
               "graphs)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    return app.exit(e);
  }
  if (steps < 1)
    fatal("--steps " + std::to_string(steps) + " must be at least 1");
  if (benchWarmup >= steps)
    fatal("--bench-warmup " + std::to_string(benchWarmup) +
          " leaves no timed step of --steps " + std::to_string(steps));
  if (resume && checkpointDir.empty())
    fatal("--resume needs --checkpoint-dir");

  // A checkpoint to resume from is checked before the GPU is touched.
  const CheckpointLayout layout = checkpointLayout(p);
  CheckpointInfo latest;
  if (resume) {
    std::filesystem::path path;
    if (Status found = findLatestCheckpoint(checkpointDir, path); !found.ok())
      fatal("--resume: " + found.message());
    orExit(openCheckpoint(path, layout, latest));
  }

  std::vector<int64_t> tokens = readTokens(tokensPath, p.seq, p.vocab);
  int64_t blocks = static_cast<int64_t>(tokens.size()) / p.seq;

  // Device memory: everything the program uses, allocated once.
  size_t freeBefore = 0, totalMemory = 0;
  MOERT_CUDA_CHECK(cudaMemGetInfo(&freeBefore, &totalMemory));
  kernels::Context ctx;
  MOERT_CUDA_CHECK(cudaStreamCreate(&ctx.stream));
  ctx.blas = kernels::createBlas(ctx.stream);
  const int64_t blasWorkspace = ctx.blas->workspaceBytes;
  if (p.openLibraries)
    p.openLibraries(ctx);
  ctx.scratchBytes = p.scratchBytes(ctx);
  char *state = nullptr, *arena = nullptr, *inputs = nullptr;
  MOERT_CUDA_CHECK(cudaMalloc(&state, p.stateBytes));
  MOERT_CUDA_CHECK(cudaMalloc(&arena, std::max<int64_t>(p.arenaBytes, 256)));
  MOERT_CUDA_CHECK(cudaMalloc(&inputs, p.inputBytes));
  MOERT_CUDA_CHECK(cudaMalloc(&ctx.scratch, ctx.scratchBytes));
  MOERT_CUDA_CHECK(cudaMallocHost(&ctx.hostCounts, 4096 * sizeof(int64_t)));
  int64_t allocated = p.stateBytes + p.arenaBytes + p.inputBytes +
                      ctx.scratchBytes + blasWorkspace;
  std::printf("%s: batch %lld x seq %lld, %d parameters\n", p.model,
              static_cast<long long>(p.batch), static_cast<long long>(p.seq),
              p.numParameters);
  std::printf("memory: state %s + arena %s (compiler's plan) + scratch %s + "
              "inputs %s + cuBLAS %s = %s allocated\n",
              gib(p.stateBytes).c_str(), gib(p.arenaBytes).c_str(),
              gib(ctx.scratchBytes).c_str(), gib(p.inputBytes).c_str(),
              gib(blasWorkspace).c_str(), gib(allocated).c_str());

  // Parameters: from the seed, or from the latest checkpoint.
  int64_t firstStep = 1;
  MOERT_CUDA_CHECK(cudaMemsetAsync(state, 0, p.stateBytes, ctx.stream));
  if (resume) {
    std::vector<char> host(layout.stateBytes);
    orExit(readCheckpointState(latest, layout, host.data()));
    MOERT_CUDA_CHECK(cudaMemcpy(state, host.data(), layout.stateBytes,
                                cudaMemcpyHostToDevice));
    firstStep = latest.step + 1;
    seed = latest.seed;
    std::printf("resumed from '%s' after step %lld\n", latest.path.c_str(),
                static_cast<long long>(latest.step));
  } else {
    p.initParams(state, seed, ctx.stream);
  }
  p.setup(state, arena, inputs);
  MOERT_CUDA_CHECK(cudaGetLastError());

  auto save = [&](int64_t completed) {
    std::vector<char> host(layout.stateBytes);
    MOERT_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    MOERT_CUDA_CHECK(cudaMemcpy(host.data(), state, layout.stateBytes,
                                cudaMemcpyDeviceToHost));
    std::filesystem::path written;
    orExit(writeCheckpoint(checkpointDir, p, layout, completed, seed,
                           host.data(), written));
    std::printf("saved checkpoint '%s'\n", written.c_str());
  };

  std::FILE *log = nullptr;
  if (!logPath.empty()) {
    log = std::fopen(logPath.c_str(), firstStep > 1 ? "a" : "w");
    if (!log)
      fatal("cannot write '" + logPath + "'");
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

  int64_t total = totalSteps > 0 ? totalSteps : firstStep - 1 + steps;
  LrSchedule schedule{lr, minLr, warmupSteps, total};

  std::vector<double> times;
  size_t minFree = freeBefore;
  int64_t lastStep = firstStep - 1 + steps;
  // The first step of the run warms up; graphs are captured in the second.
  setGraphMode(noGraphs ? GraphMode::Off : GraphMode::Warmup);
  for (int64_t t = firstStep; t <= lastStep; ++t) {
    if (t > firstStep && graphMode() == GraphMode::Warmup)
      setGraphMode(GraphMode::Replay);
    int64_t *ids = reinterpret_cast<int64_t *>(hostInputs + p.inputIdsOffset);
    int64_t *labels = reinterpret_cast<int64_t *>(hostInputs + p.labelsOffset);
    for (int64_t b = 0; b < p.batch; ++b) {
      int64_t block = ((t - 1) * p.batch + b) % blocks;
      std::memcpy(ids + b * p.seq, &tokens[block * p.seq], p.seq * 8);
      std::memcpy(labels + b * p.seq, &tokens[block * p.seq], p.seq * 8);
    }
    double stepLr = schedule.at(t);
    *reinterpret_cast<int64_t *>(hostInputs + p.stepOffset) = t;
    *reinterpret_cast<float *>(hostInputs + p.lrOffset) =
        static_cast<float>(stepLr);

    MOERT_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    auto start = std::chrono::steady_clock::now();
    MOERT_CUDA_CHECK(cudaMemcpyAsync(inputs, hostInputs, p.inputBytes,
                                     cudaMemcpyHostToDevice, ctx.stream));
    kernels::Profiler profiler;
    ctx.profiler = t == profileStep ? &profiler : nullptr;
    ctx.refreshParameterCopies = t == firstStep;
    p.step(ctx, state, arena, inputs);
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
    if (t - firstStep >= benchWarmup)
      times.push_back(seconds);
    double tokensPerSecond = p.batch * p.seq / seconds;
    double tflops = p.modelFlops / seconds / 1e12;
    if (!profiler.events.empty())
      printProfile(profiler, seconds);
    if (!std::isfinite(hostMetrics[0]))
      fatal("step " + std::to_string(t) + ": the loss is " +
            std::to_string(hostMetrics[0]) + "; stopping");
    std::string counts;
    for (int64_t l = 0; l < p.countLayers; ++l) {
      counts += l ? " |" : "";
      for (int64_t e = 0; e < p.countExperts; ++e)
        counts += " " + std::to_string(hostCountsOut[l * p.countExperts + e]);
    }
    std::printf("step %4lld  loss %.6f  ce %.6f  aux %.6f  z %.6f  "
                "grad_norm %.4f  lr %.3e  %.0f tokens/s  %.1f TFLOP/s  "
                "experts [%s ]\n",
                static_cast<long long>(t), hostMetrics[0], hostMetrics[1],
                hostMetrics[2], hostMetrics[3], hostMetrics[4], stepLr,
                tokensPerSecond, tflops, counts.c_str());
    if (log)
      std::fprintf(
          log, "%lld,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.6f,%.1f,%.2f,%lld\n",
          static_cast<long long>(t), hostMetrics[0], hostMetrics[1],
          hostMetrics[2], hostMetrics[3], hostMetrics[4], stepLr, seconds,
          tokensPerSecond, tflops, static_cast<long long>(allocated));
    if (!checkpointDir.empty() &&
        ((saveInterval > 0 && t % saveInterval == 0) ||
         (saveInterval == 0 && t == lastStep)))
      save(t);
  }
  if (log)
    std::fclose(log);

  if (!dumpDir.empty()) {
    std::filesystem::path dir =
        std::filesystem::path(dumpDir) / "final" / "param";
    std::filesystem::create_directories(dir);
    std::vector<char> host(p.stateBytes);
    MOERT_CUDA_CHECK(
        cudaMemcpy(host.data(), state, p.stateBytes, cudaMemcpyDeviceToHost));
    std::string index;
    for (int i = 0; i < p.numParameters; ++i) {
      const ParameterInfo &q = p.parameters[i];
      // fp32 whatever the state's type: a bf16 value widens exactly.
      std::vector<float> values(q.count);
      const char *raw = host.data() + q.offset;
      for (int64_t e = 0; e < q.count; ++e) {
        if (q.elementBytes == 4) {
          std::memcpy(&values[e], raw + 4 * e, 4);
        } else {
          // bf16 is the top half of an fp32.
          uint16_t half;
          std::memcpy(&half, raw + 2 * e, 2);
          uint32_t bits = static_cast<uint32_t>(half) << 16;
          std::memcpy(&values[e], &bits, 4);
        }
      }
      orExit(writeFileAtomically(
          dir / (std::string(q.name) + ".bin"),
          {{values.data(), values.size() * sizeof(float)}}));
      index += q.name;
      index += "\t";
      for (size_t d = 0; d < q.shape.size(); ++d)
        index += (d ? "x" : "") + std::to_string(q.shape[d]);
      index += "\n";
    }
    orExit(
        writeFileAtomically(dir / "index.tsv", {{index.data(), index.size()}}));
  }

  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  double median = sorted[sorted.size() / 2];
  if (sorted.size() % 2 == 0)
    median = 0.5 * (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]);
  std::printf("summary {\"steps\": %zu, \"median_step_s\": %.6f, "
              "\"tokens_per_s\": %.1f, \"model_tflops\": %.2f, "
              "\"peak_bytes\": %lld, \"device_used_bytes\": %lld, "
              "\"cuda_graphs\": %s}\n",
              times.size(), median, p.batch * p.seq / median,
              p.modelFlops / median / 1e12, static_cast<long long>(allocated),
              static_cast<long long>(totalMemory - minFree),
              graphMode() == GraphMode::Replay ? "true" : "false");
  return 0;
}
