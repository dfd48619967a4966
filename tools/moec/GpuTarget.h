//===- GpuTarget.h - The GPU `moec compile` compiles for --------*- C++ -*-===//
//
// `--gpu NAME` (default h200) picks a known GPU's memory, `--gpu-memory-gib
// X` states another's; a compiled step whose memory plan cannot fit that
// memory is refused before anything is written, with the plan's numbers.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_TOOLS_MOEC_GPUTARGET_H
#define MOEC_TOOLS_MOEC_GPUTARGET_H

#include "moec/Target/Cuda.h"

#include "llvm/Support/Error.h"

#include <cstdint>
#include <string>

namespace moec::cli {

/// A GPU a program is compiled for: its name and its memory.
struct GpuTarget {
  std::string name;
  int64_t memoryBytes = 0;
};

/// The GPU `--gpu` and `--gpu-memory-gib` name; an unknown name or a
/// memory that is not positive is an error listing the known GPUs.
llvm::Expected<GpuTarget> getGpuTarget();

/// What `summary`'s kernel scratch leaves out, for messages: empty, or
/// " (without ...)".
std::string uncountedScratch(const CudaTrainProgramSummary &summary);

/// Fails, with every term of the sum, when the step's state, arena, inputs
/// and kernel scratch exceed 90% of `gpu`'s memory (the rest is kept for
/// the CUDA context, library workspaces and the allocator, as the default
/// memory budget keeps it).
llvm::Error checkStepFitsGpu(const CudaTrainProgramSummary &summary,
                             const GpuTarget &gpu);

} // namespace moec::cli

#endif // MOEC_TOOLS_MOEC_GPUTARGET_H
