//===- CompileCommand.cpp - `moec compile` --------------------------------===//
//
// `moec compile MODEL -o OUT [--emit cuda] [--arch sm_90a]`: lowers the
// model to CUDA programs and builds them with nvcc. So far the programs are
// `init_params` (delayed_param on the GPU: every parameter from the seed);
// the training step comes next (docs/cuda-backend.md). Sources are written
// atomically; nvcc is skipped when a program's source and flags hash to the
// one it was built from (OUT/<program>.hash).
//
//===----------------------------------------------------------------------===//

#include "Commands.h"
#include "ModelLoading.h"

#include "dialects/Moe/Transforms/Passes.h"
#include "moec/Target/Cuda.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/SHA256.h"
#include "llvm/Support/raw_ostream.h"

#include <fmt/format.h>

using namespace mlir;
namespace cl = llvm::cl;

cl::SubCommand moec::cli::compileCommand(
    "compile", "compile a model to CUDA programs (so far: parameter "
               "initialisation)");

namespace {
cl::SubCommand &sub = moec::cli::compileCommand;
cl::opt<std::string> modelPath(cl::Positional, cl::desc("<model.onnx|.mlir>"),
                               cl::Required, cl::sub(sub));
cl::opt<std::string> outDir("o", cl::desc("output folder"),
                            cl::value_desc("dir"), cl::Required, cl::sub(sub));
cl::opt<std::string> emit("emit",
                          cl::desc("stop after writing sources: cuda"),
                          cl::sub(sub));
cl::opt<std::string> arch("arch", cl::desc("GPU architecture for nvcc"),
                          cl::init("sm_90a"), cl::sub(sub));
cl::opt<double> initializerRange("initializer-range",
                                 cl::desc("std of the normal initialisers"),
                                 cl::init(0.02), cl::sub(sub));

int fail(const std::string &message) {
  llvm::errs() << "error: " << message << "\n";
  return 1;
}

/// Writes `text` to `path` through a temporary file.
bool writeFile(llvm::StringRef path, llvm::StringRef text,
               std::string &error) {
  if (llvm::Error err = llvm::writeToOutput(
          path, [&](llvm::raw_ostream &os) -> llvm::Error {
            os << text;
            return llvm::Error::success();
          })) {
    error = fmt::format("cannot write '{}': {}", path.str(),
                        llvm::toString(std::move(err)));
    return false;
  }
  return true;
}
} // namespace

int moec::cli::runCompile() {
  if (!emit.empty() && emit != "cuda")
    return fail(fmt::format("--emit '{}' is not one of: cuda", emit.getValue()));
  if (!llvm::StringRef(arch).starts_with("sm_"))
    return fail(fmt::format("--arch '{}' must look like sm_90a",
                            arch.getValue()));
  MLIRContext context;
  DiagnosticPrinter diagnostics(context);
  OwningOpRef<ModuleOp> module =
      loadModel(context, modelPath, /*raise=*/true, /*requireComplete=*/true);
  if (!module)
    return 1;
  PassManager pm(&context);
  moe::BuildInitParamsOptions initOptions;
  initOptions.initializerRange = initializerRange;
  pm.addPass(moe::createBuildInitParams(initOptions));
  if (failed(pm.run(*module)))
    return 1;

  std::string source;
  llvm::raw_string_ostream os(source);
  if (failed(emitCudaInitProgram(*module, os)))
    return 1;
  if (std::error_code ec = llvm::sys::fs::create_directories(outDir))
    return fail(fmt::format("cannot create '{}': {}", outDir.getValue(),
                            ec.message()));
  llvm::SmallString<256> cuPath(outDir.getValue()), binPath, hashPath;
  llvm::sys::path::append(cuPath, "init_params.cu");
  binPath = hashPath = cuPath;
  llvm::sys::path::replace_extension(binPath, "");
  llvm::sys::path::replace_extension(hashPath, "hash");
  std::string error;
  if (!writeFile(cuPath, source, error))
    return fail(error);
  llvm::outs() << fmt::format("wrote {}\n", cuPath.str().str());
  if (emit == "cuda")
    return 0;

  llvm::ErrorOr<std::string> nvcc =
      llvm::sys::findProgramByName("nvcc", {"/usr/local/cuda/bin"});
  if (!nvcc)
    return fail("nvcc not found on PATH or in /usr/local/cuda/bin; install "
                "the CUDA toolkit or use --emit cuda");
  std::string archNumber = arch.getValue().substr(3);
  std::vector<std::string> args = {
      *nvcc, "-O2", "-std=c++17",
      fmt::format("-gencode=arch=compute_{},code={}", archNumber,
                  arch.getValue()),
      "-I" MOEC_INCLUDE_DIR, std::string(cuPath), "-o", std::string(binPath)};
  // The kernel cache: the source and the command line, hashed.
  std::string key = source;
  for (const std::string &a : args)
    key += "\n" + a;
  std::string hash = llvm::toHex(llvm::SHA256::hash(llvm::arrayRefFromStringRef(key)));
  auto previous = llvm::MemoryBuffer::getFile(hashPath);
  if (previous && (*previous)->getBuffer().trim() == hash &&
      llvm::sys::fs::exists(binPath)) {
    llvm::outs() << fmt::format("{} is up to date\n", binPath.str().str());
    return 0;
  }
  std::vector<llvm::StringRef> argRefs(args.begin(), args.end());
  std::string message;
  int rc = llvm::sys::ExecuteAndWait(*nvcc, argRefs, std::nullopt, {}, 0, 0,
                                     &message);
  if (rc != 0)
    return fail(fmt::format("nvcc failed ({}){}", rc,
                            message.empty() ? "" : ": " + message));
  if (!writeFile(hashPath, hash + "\n", error))
    return fail(error);
  llvm::outs() << fmt::format("built {}\n", binPath.str().str());
  return 0;
}
