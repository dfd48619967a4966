//===- GpuTarget.cpp - The GPU `moec compile` compiles for ----------------===//
//
// See GpuTarget.h. The memories are what the driver reports as the device's
// total (nvidia-smi's MiB) for each model.
//
//===----------------------------------------------------------------------===//

#include "GpuTarget.h"

#include "Commands.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/CommandLine.h"

#include <fmt/format.h>

namespace cl = llvm::cl;

namespace {

struct KnownGpu {
  const char *name;
  int64_t memoryMib;
};

constexpr KnownGpu kKnownGpus[] = {
    {"h200", 143771},      {"h100", 81559}, {"a100-80gb", 81920},
    {"a100-40gb", 40960},  {"b200", 183359}, {"l40s", 46068},
};

cl::opt<std::string> gpuName(
    "gpu",
    cl::desc("the GPU the program is for: h200, h100, a100-80gb, a100-40gb, "
             "b200 or l40s (its memory bounds the step's)"),
    cl::init("h200"), cl::sub(moec::cli::compileCommand));
cl::opt<double> gpuMemoryGib(
    "gpu-memory-gib",
    cl::desc("the GPU's memory in GiB, for a GPU --gpu does not know "
             "(overrides --gpu's)"),
    cl::init(0), cl::sub(moec::cli::compileCommand));

std::string gib(int64_t bytes) {
  return fmt::format("{:.4g} GiB", double(bytes) / double(int64_t(1) << 30));
}

} // namespace

llvm::Expected<moec::cli::GpuTarget> moec::cli::getGpuTarget() {
  auto error = [](const std::string &message) {
    return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
  };
  if (gpuMemoryGib.getNumOccurrences()) {
    if (!(gpuMemoryGib > 0) || gpuMemoryGib > 1e6)
      return error(fmt::format("--gpu-memory-gib {} must be in (0, 1e6]",
                               gpuMemoryGib.getValue()));
    return GpuTarget{fmt::format("a GPU of {} GiB", gpuMemoryGib.getValue()),
                     static_cast<int64_t>(gpuMemoryGib *
                                          double(int64_t(1) << 30))};
  }
  std::string name = llvm::StringRef(gpuName).lower();
  for (const KnownGpu &gpu : kKnownGpus)
    if (name == gpu.name)
      return GpuTarget{fmt::format("the {} ({} MiB)", gpu.name, gpu.memoryMib),
                       gpu.memoryMib << 20};
  return error(fmt::format(
      "--gpu '{}' is not a GPU moec knows ({}); give its memory with "
      "--gpu-memory-gib",
      gpuName.getValue(),
      llvm::join(llvm::map_range(kKnownGpus,
                                 [](const KnownGpu &g) { return g.name; }),
                 ", ")));
}

std::string
moec::cli::uncountedScratch(const CudaTrainProgramSummary &summary) {
  std::vector<std::string> left;
  if (summary.uncountedCudnnWorkspace)
    left.push_back("cuDNN's attention workspace");
  if (summary.uncountedSortStorage)
    left.push_back("the balanced router's sort storage");
  if (left.empty())
    return "";
  return fmt::format(" (without {}, which the program sizes on the GPU)",
                     llvm::join(left, " or "));
}

llvm::Error
moec::cli::checkStepFitsGpu(const CudaTrainProgramSummary &summary,
                            const GpuTarget &gpu) {
  const int64_t usable = gpu.memoryBytes / 10 * 9;
  // Each term is at most the arena's int64 planning; the sum in double
  // cannot overflow.
  const double needed =
      double(summary.stateBytes) + double(summary.arenaBytes) +
      double(summary.inputBytes) + double(summary.scratchBytes) +
      double(summary.collectiveScratchBytes);
  if (needed <= double(usable))
    return llvm::Error::success();
  std::string collectives =
      summary.collectiveScratchBytes
          ? fmt::format(", collective scratch {} B",
                        summary.collectiveScratchBytes)
          : "";
  return llvm::createStringError(
      llvm::inconvertibleErrorCode(),
      fmt::format("the training step needs {} B ({}: state {} B, arena {} B, "
                  "inputs {} B, kernel scratch {} B{}{}) but {} leaves {} B "
                  "({}) after 10% for the CUDA context, library workspaces "
                  "and the allocator; lower micro_batch_size or seq_length, "
                  "checkpoint activations, or partition the model",
                  static_cast<int64_t>(needed), gib(int64_t(needed)),
                  summary.stateBytes, summary.arenaBytes, summary.inputBytes,
                  summary.scratchBytes, collectives,
                  uncountedScratch(summary),
                  gpu.name, usable, gib(usable)));
}
