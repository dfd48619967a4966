//===- Commands.h - moec's subcommands --------------------------*- C++ -*-===//
//
// Each subcommand of the `moec` driver lives in its own file and exposes its
// llvm::cl::SubCommand and an entry point returning the process exit code.
// The commands that read a training job get its flags (registered in main).
// Shared model loading (ONNX or .mlir, import, raising) is in
// ModelLoading.h.
//
//===----------------------------------------------------------------------===//

#ifndef TOOLS_MOEC_COMMANDS_H
#define TOOLS_MOEC_COMMANDS_H

#include "ModelLoading.h"
#include "moec/Support/TrainingJob.h"

#include "llvm/Support/CommandLine.h"

namespace moec::cli {

/// Whether this moec was built with cuDNN's SDPA for bf16 attention (the
/// moert_cudnn library programs link): `moec compile`'s default attention
/// kernel then, and what `moec plan` measures programs with.
#ifdef MOERT_CUDNN_LIBRARY
constexpr bool kHaveCudnn = true;
#else
constexpr bool kHaveCudnn = false;
#endif

extern llvm::cl::SubCommand importCommand;
int runImport(const ImportFlags &model);

extern llvm::cl::SubCommand runCommand;
int runRun(const ImportFlags &model);

extern llvm::cl::SubCommand trainCommand;
int runTrain(const ImportFlags &model, const TrainingJobFlags &job);

extern llvm::cl::SubCommand compileCommand;
int runCompile(const ImportFlags &model, const TrainingJobFlags &job);

extern llvm::cl::SubCommand planCommand;
int runPlan(const ImportFlags &model, const TrainingJobFlags &job);

extern llvm::cl::SubCommand launchCommand;
int runLaunch();

} // namespace moec::cli

#endif // TOOLS_MOEC_COMMANDS_H
