//===- CompileCommand.cpp - `moec compile` --------------------------------===//
//
// `moec compile MODEL [--config train.json] [job flags] -o OUT [--emit cuda]
// [--arch sm_90a] [--attention-kernel auto|cudnn|gemm] [--gpu h200]
// [--check-numerics]`: runs
// moe-compile-pipeline for the job (micro-batch, sequence length,
// precision, MoE and optimizer options): builds the training step,
// specialises its shapes, plans its memory (refused when it cannot fit the
// GPU, GpuTarget.h); then prints two CUDA programs:
//
//   OUT/init_params   delayed_param only (checked against numpy; one-GPU
//                     jobs only);
//   OUT/train_step    the whole training step and its host driver.
//
// A partitioned job (world_size, expert_parallel_degree or
// hybrid_shard_degree above 1) compiles the SPMD step once: every rank runs
// OUT/train_step, which reads its coordinates from the mesh at run time and
// creates only its blocks of the parameters (docs/partitioning.md).
//
// plus OUT/manifest.json (the job, the mesh and which rank runs which
// program, what was compiled, the memory plan). Sources
// are written atomically; nvcc is skipped when a program's source and flags
// hash to the ones it was built from (OUT/<program>.hash). With --emit cuda
// nothing is built: OUT/build.sh holds the nvcc commands, for a machine
// where nvcc is. The config's keys
// follow SMP's names (docs/cuda-backend.md).
//
//===----------------------------------------------------------------------===//

#include "Commands.h"
#include "GpuTarget.h"
#include "HfBinding.h"
#include "ModelLoading.h"

#include "dialects/Moe/IR/MoeDialect.h"
#include "moec/Pipelines/Pipelines.h"
#include "moec/Target/Cuda.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Regex.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/SHA256.h"
#include "llvm/Support/raw_ostream.h"

#include <fmt/format.h>

#include <array>

using namespace mlir;
namespace cl = llvm::cl;

cl::SubCommand moec::cli::compileCommand(
    "compile", "compile a model's training step to CUDA programs");

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
cl::opt<std::string> attentionKernel(
    "attention-kernel",
    cl::desc("bf16 attention on: cudnn (fused SDPA), gemm (moert's GEMM "
             "kernels) or auto (cudnn where moec was built with it); fp32 "
             "attention always runs on gemm"),
    cl::init("auto"), cl::sub(sub));
cl::opt<bool> checkNumerics(
    "check-numerics",
    cl::desc("print a count of the inf and NaN of every op's results into "
             "the program, for its --check-numerics (docs/reliability.md)"),
    cl::sub(sub));

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

/// With --emit cuda: OUT/build.sh, the nvcc commands moec would have run,
/// to build the programs where nvcc is (a GPU node; compile on a login node
/// without CUDA). Paths of this moec's runtime and of OUT become variables:
/// MOERT_INCLUDE_DIR, MOERT_LIBRARY_DIR (libmoert.a, libmoert_cudnn.a) and
/// NVCC default to this build's, OUT to the script's own folder.
std::string buildScript;

/// Appends the command `args` to buildScript, its paths made variables.
void buildScriptLine(const std::vector<std::string> &args) {
  std::string runtimeLibraryDir;
#ifdef MOERT_LIBRARY
  runtimeLibraryDir = llvm::sys::path::parent_path(MOERT_LIBRARY).str();
#endif
  std::string line = "\"${NVCC:-nvcc}\"";
  auto quote = [](llvm::StringRef text) {
    std::string quoted = "'";
    for (char c : text)
      quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return quoted + "'";
  };
  // Whether `path` is `dir` or in it.
  auto under = [](llvm::StringRef path, llvm::StringRef dir) {
    return !dir.empty() && path.starts_with(dir) &&
           (path.size() == dir.size() ||
            llvm::sys::path::is_separator(path[dir.size()]));
  };
  for (llvm::StringRef arg : llvm::ArrayRef(args).drop_front()) {
    llvm::StringRef flag = arg.starts_with("-I") ? "-I" : "";
    llvm::StringRef path = arg.drop_front(flag.size());
    std::string word;
    if (under(path, MOERT_INCLUDE_DIR))
      word = "\"${MOERT_INCLUDE_DIR}\"" +
             quote(path.drop_front(strlen(MOERT_INCLUDE_DIR)));
    else if (under(path, runtimeLibraryDir))
      word = "\"${MOERT_LIBRARY_DIR}\"" +
             quote(path.drop_front(runtimeLibraryDir.size()));
    else if (under(path, outDir.getValue()))
      word = "\"${OUT}\"" + quote(path.drop_front(outDir.size()));
    else
      word = quote(path);
    line += " " + flag.str() + word;
  }
  if (buildScript.empty()) {
    buildScript = fmt::format(
        "#!/bin/sh\n"
        "# Written by moec compile --emit cuda: builds this folder's programs "
        "with nvcc.\n"
        "# Set MOERT_INCLUDE_DIR (moec's runtime/include), MOERT_LIBRARY_DIR "
        "(the folder of\n"
        "# libmoert.a) and NVCC where they differ from where moec was "
        "built.\n"
        "set -e\n"
        "OUT=\"$(cd \"$(dirname \"$0\")\" && pwd)\"\n"
        ": \"${{MOERT_INCLUDE_DIR:={}}}\"\n"
        ": \"${{MOERT_LIBRARY_DIR:={}}}\"\n",
        MOERT_INCLUDE_DIR, runtimeLibraryDir);
  }
  buildScript += line + "\n";
}

/// Builds `source` into OUT/<name> with nvcc unless the cache says it is
/// current. Returns false with `error` set on failure.
bool buildProgram(llvm::StringRef name, const std::string &source,
                  ArrayRef<std::string> extraFlags,
                  ArrayRef<std::string> linkedFiles, std::string &error) {
  llvm::SmallString<256> cuPath(outDir.getValue()), binPath, hashPath;
  llvm::sys::path::append(cuPath, name + ".cu");
  binPath = hashPath = cuPath;
  llvm::sys::path::replace_extension(binPath, "");
  llvm::sys::path::replace_extension(hashPath, "hash");
  if (!writeFile(cuPath, source, error))
    return false;
  llvm::outs() << fmt::format("wrote {}\n", cuPath.str().str());
  std::string archNumber = arch.getValue().substr(3);
  auto nvccArgs = [&](std::string nvcc) {
    std::vector<std::string> args = {
        std::move(nvcc), "-O3", "-std=c++17",
        fmt::format("-gencode=arch=compute_{},code={}", archNumber,
                    arch.getValue()),
        "-I" MOERT_INCLUDE_DIR, std::string(cuPath),
        "-o", std::string(binPath)};
    args.insert(args.end(), extraFlags.begin(), extraFlags.end());
    return args;
  };
  if (emit == "cuda") {
    buildScriptLine(nvccArgs("nvcc"));
    return true;
  }

  llvm::ErrorOr<std::string> nvcc =
      llvm::sys::findProgramByName("nvcc", {"/usr/local/cuda/bin"});
  if (!nvcc) {
    error = "nvcc not found on PATH or in /usr/local/cuda/bin; install the "
            "CUDA toolkit or use --emit cuda";
    return false;
  }
  std::vector<std::string> args = nvccArgs(*nvcc);
  // The kernel cache: the source, every header it can include, and the
  // command line, hashed.
  std::string key = source;
  for (const std::string &a : args)
    key += "\n" + a;
  std::error_code ec;
  for (llvm::sys::fs::recursive_directory_iterator it(MOERT_INCLUDE_DIR, ec),
       end;
       it != end && !ec; it.increment(ec))
    if (auto header = llvm::MemoryBuffer::getFile(it->path()))
      key += it->path() + (*header)->getBuffer().str();
  for (const std::string &file : linkedFiles) {
    auto contents = llvm::MemoryBuffer::getFile(file);
    if (!contents) {
      error = fmt::format("cannot read '{}', which '{}' links: {}", file,
                          name.str(), contents.getError().message());
      return false;
    }
    key += file + (*contents)->getBuffer().str();
  }
  std::string hash =
      llvm::toHex(llvm::SHA256::hash(llvm::arrayRefFromStringRef(key)));
  auto previous = llvm::MemoryBuffer::getFile(hashPath);
  if (previous && (*previous)->getBuffer().trim() == hash &&
      llvm::sys::fs::exists(binPath)) {
    llvm::outs() << fmt::format("{} is up to date\n", binPath.str().str());
    return true;
  }
  std::vector<llvm::StringRef> argRefs(args.begin(), args.end());
  std::string message;
  int rc = llvm::sys::ExecuteAndWait(*nvcc, argRefs, std::nullopt, {}, 0, 0,
                                     &message);
  if (rc != 0) {
    error = fmt::format("nvcc failed on '{}' ({}){}", cuPath.str().str(), rc,
                        message.empty() ? "" : ": " + message);
    return false;
  }
  if (!writeFile(hashPath, hash + "\n", error))
    return false;
  llvm::outs() << fmt::format("built {}\n", binPath.str().str());
  return true;
}
} // namespace

int moec::cli::runCompile(const ImportFlags &modelFlags,
                           const TrainingJobFlags &jobFlags) {
  if (!emit.empty() && emit != "cuda")
    return fail(fmt::format("--emit '{}' is not one of: cuda", emit.getValue()));
  // nvcc's spelling: sm_ and the compute capability's digits, with a or f
  // for the architecture- and family-specific features.
  if (!llvm::Regex("^sm_[0-9]{2,3}[af]?$").match(arch.getValue()))
    return fail(fmt::format("--arch '{}' must look like sm_90a (sm_, the "
                            "compute capability's digits, optionally a or f)",
                            arch.getValue()));
  if (attentionKernel != "auto" && attentionKernel != "cudnn" &&
      attentionKernel != "gemm")
    return fail(fmt::format("--attention-kernel '{}' is not one of: auto, "
                            "cudnn, gemm",
                            attentionKernel.getValue()));
  if (attentionKernel == "cudnn" && !kHaveCudnn)
    return fail("--attention-kernel cudnn: this moec was built without "
                "cuDNN or its frontend (pip install nvidia-cudnn-frontend, "
                "then reconfigure the build)");
  moec::TrainingJob job;
  if (llvm::Error err = jobFlags.read(job))
    return fail(llvm::toString(std::move(err)));
  if (llvm::Error err = moec::checkImplemented(job, moec::JobConsumer::Compile))
    return fail(llvm::toString(std::move(err)));
  llvm::Expected<GpuTarget> gpu = getGpuTarget();
  if (!gpu)
    return fail(llvm::toString(gpu.takeError()));

  MLIRContext context;
  DiagnosticPrinter diagnostics(context);
  OwningOpRef<ModuleOp> module =
      loadModel(context, modelPath, modelFlags, /*raise=*/true,
                /*requireComplete=*/true, &job);
  if (!module)
    return 1;
  // The Hugging Face binding (init_from) and config.json, from the raised
  // model, before the pipeline rewrites it.
  func::FuncOp forward = getForward(*module);
  if (!forward)
    return 1;
  FailureOr<moec::ModelConfig> modelConfig = moec::inferModelConfig(forward);
  if (failed(modelConfig))
    return 1;
  llvm::Expected<llvm::json::Object> hfBinding =
      bindHfCheckpoint(forward, *modelConfig, job);
  if (!hfBinding)
    return fail(llvm::toString(hfBinding.takeError()));

  const bool cudnnAttention = attentionKernel != "gemm" && kHaveCudnn;
  // With offloading, the same step without it, for the arena it saves.
  // Under auto that is auto's choice without offloading, which may not fit:
  // its remark or error is not the program's, and a failure leaves the
  // comparison out.
  std::optional<int64_t> arenaWithoutOffloading;
  if (job.smActivationOffloading) {
    OwningOpRef<ModuleOp> onDevice = module->clone();
    moec::TrainingJob deviceJob = job;
    deviceJob.smActivationOffloading = false;
    deviceJob.hostLinkGbPerS = 0;
    const bool automatic =
        job.activationCheckpointing == moe::ActivationCheckpointing::Auto;
    std::optional<ScopedDiagnosticHandler> quiet;
    if (automatic)
      quiet.emplace(&context, [](Diagnostic &) { return success(); });
    PassManager devicePm(&context);
    moec::buildCompilePipeline(devicePm, deviceJob, cudnnAttention);
    LogicalResult planned = devicePm.run(*onDevice);
    quiet.reset();
    if (failed(planned) && !automatic)
      return 1;
    if (succeeded(planned))
      arenaWithoutOffloading =
          onDevice->lookupSymbol<func::FuncOp>("train_step")
              ->getAttrOfType<IntegerAttr>(
                  moe::MoeDialect::getArenaBytesAttrName())
              .getInt();
  }
  PassManager pm(&context);
  moec::buildCompilePipeline(pm, job, cudnnAttention);
  if (failed(pm.run(*module)))
    return 1;
  // The standalone initialisation program creates whole parameters: a
  // partitioned step creates its own blocks.
  const bool partitioned = moec::isPartitioned(job);
  std::string initSource;
  llvm::raw_string_ostream initOs(initSource);
  if (!partitioned && failed(emitCudaInitProgram(*module, initOs)))
    return 1;
  std::string trainSource;
  llvm::raw_string_ostream trainOs(trainSource);
  CudaTrainProgramOptions printOptions;
  printOptions.modelName = llvm::sys::path::filename(modelPath).str();
  printOptions.cudnnAttention = cudnnAttention;
  printOptions.checkNumerics = checkNumerics;
  printOptions.storeParamRemainders = job.storeParamRemainders;
  CudaTrainProgramSummary summary;
  if (failed(emitCudaTrainProgram(*module, printOptions, trainOs, summary)))
    return 1;
  if (llvm::Error err = checkStepFitsGpu(summary, *gpu))
    return fail(llvm::toString(std::move(err)));

  if (std::error_code ec = llvm::sys::fs::create_directories(outDir))
    return fail(fmt::format("cannot create '{}': {}", outDir.getValue(),
                            ec.message()));
  auto step = module->lookupSymbol<func::FuncOp>("train_step");
  int64_t liveBound = step->getAttrOfType<IntegerAttr>(
                              moe::MoeDialect::getArenaLiveBytesAttrName())
                          .getInt();
  // The mesh (R, H, P) and the program of each world rank w = (r·H + h)·P
  // + p: the same SPMD step for all.
  std::array<int64_t, 3> mesh = {1, 1, 1};
  for (auto grid : module->getOps<shard::GridOp>())
    llvm::copy(grid.getShape(), mesh.begin());
  llvm::json::Array ranks;
  for (int64_t w = 0; w < mesh[0] * mesh[1] * mesh[2]; ++w)
    ranks.push_back(llvm::json::Object{
        {"rank", w},
        {"coordinates", llvm::json::Array{w / (mesh[1] * mesh[2]),
                                          w / mesh[2] % mesh[1], w % mesh[2]}},
        {"program", "train_step"}});
  llvm::json::Array programs;
  if (!partitioned)
    programs.push_back("init_params");
  programs.push_back("train_step");
  llvm::json::Object manifest{
      {"format", "moec-compile/3"},
      {"world_size", mesh[0] * mesh[1] * mesh[2]},
      {"mesh", llvm::json::Object{{"replicas", mesh[0]},
                                  {"shard", mesh[1]},
                                  {"expert", mesh[2]}}},
      {"ranks", std::move(ranks)},
      {"model", modelPath.getValue()},
      {"arch", arch.getValue()},
      {"job", job.toJson()},
      {"attention_kernel", summary.usesCudnn ? "cudnn" : "gemm"},
      {"state_bytes", summary.stateBytes},
      {"parameter_copy_bytes", summary.derivedStateBytes},
      {"arena_bytes", summary.arenaBytes},
      {"arena_live_bytes_bound", liveBound},
      {"input_bytes", summary.inputBytes},
      {"scratch_bytes", summary.scratchBytes},
      {"collective_scratch_bytes", summary.collectiveScratchBytes},
      {"model_flops_per_step", summary.modelFlops},
      {"programs", std::move(programs)},
      {"hf_checkpoint", std::move(*hfBinding)}};
  if (summary.hostActivationBytes > 0)
    manifest["host_activation_bytes"] = summary.hostActivationBytes;
  std::string manifestText;
  llvm::raw_string_ostream manifestOs(manifestText);
  manifestOs << llvm::formatv("{0:2}", llvm::json::Value(std::move(manifest)))
             << "\n";
  llvm::SmallString<256> manifestPath(outDir.getValue());
  llvm::sys::path::append(manifestPath, "manifest.json");
  std::string error;
  if (!writeFile(manifestPath, manifestText, error))
    return fail(error);
  std::string copies =
      (summary.derivedStateBytes
           ? fmt::format(" + {} B of bf16 parameter copies",
                         summary.derivedStateBytes)
           : std::string()) +
      (summary.splitMasterElements
           ? fmt::format("; {} master elements kept as copy + 16-bit "
                         "remainder, in their fp32 slots",
                         summary.splitMasterElements)
           : std::string());
  llvm::outs() << fmt::format(
      "memory plan: state {} B (parameters + AdamW moments{}), arena {} B "
      "(live-bytes bound {} B), inputs {} B, kernel scratch {} B{}{}; {:.3e} "
      "model FLOPs per step\n",
      summary.stateBytes, copies, summary.arenaBytes, liveBound,
      summary.inputBytes, summary.scratchBytes,
      summary.collectiveScratchBytes
          ? fmt::format(" + {} B for collectives",
                        summary.collectiveScratchBytes)
          : "",
      uncountedScratch(summary),
      summary.modelFlops);
  if (job.smActivationOffloading)
    llvm::outs() << fmt::format(
        "activation offloading (horizon {}): {} B of activations in pinned "
        "host memory; arena {} B, {}\n",
        job.activationLoadingHorizon, summary.hostActivationBytes,
        summary.arenaBytes,
        arenaWithoutOffloading
            ? fmt::format("{} B without offloading", *arenaWithoutOffloading)
            : std::string("and without offloading auto finds no choice that "
                          "fits"));

  if (job.bf16 && !summary.usesCudnn && attentionKernel == "auto")
    llvm::errs() << "note: this moec was built without cuDNN or its "
                    "frontend; bf16 attention runs on the GEMM kernels (pip "
                    "install nvidia-cudnn-frontend, then reconfigure the "
                    "build, for fused attention)\n";
  std::vector<std::string> trainFlags, trainLinked;
#ifdef MOERT_CUDNN_LIBRARY
  if (summary.usesCudnn) {
    trainLinked.push_back(MOERT_CUDNN_LIBRARY);
    trainFlags = {MOERT_CUDNN_LIBRARY, "-L" MOEC_CUDNN_LIBRARY_DIR,
                  "-Xlinker", "-rpath=" MOEC_CUDNN_LIBRARY_DIR, "-lcudnn",
                  "-lnvrtc"};
  }
#endif
#ifdef MOERT_LIBRARY
  // The runtime core: the driver and the step's CUDA graphs.
  trainLinked.push_back(MOERT_LIBRARY);
  trainFlags.push_back(MOERT_LIBRARY);
  // Hugging Face checkpoints in and out (moert/HfCheckpoint.h).
  trainLinked.push_back(MOERT_HF_LIBRARY);
  trainFlags.push_back(MOERT_HF_LIBRARY);
#endif
#ifdef MOEC_NCCL_LIBRARY_DIR
  if (partitioned)
    trainFlags.insert(trainFlags.end(),
                      {"-L" MOEC_NCCL_LIBRARY_DIR, "-Xlinker",
                       "-rpath=" MOEC_NCCL_LIBRARY_DIR, "-lnccl"});
#endif
  trainFlags.push_back("-lcublas");
  trainFlags.push_back("-lcublasLt");
  if ((!partitioned && !buildProgram("init_params", initSource, {}, {}, error)) ||
      !buildProgram("train_step", trainSource, trainFlags, trainLinked, error))
    return fail(error);
  // A partitioned program creates its parameters in train_step: an
  // init_params an earlier compile left in OUT is not this program's.
  if (partitioned)
    for (llvm::StringRef stale : {"init_params", "init_params.cu",
                                  "init_params.hash"}) {
      llvm::SmallString<256> path(outDir.getValue());
      llvm::sys::path::append(path, stale);
      llvm::sys::fs::remove(path);
    }
  if (emit == "cuda") {
    llvm::SmallString<256> scriptPath(outDir.getValue());
    llvm::sys::path::append(scriptPath, "build.sh");
    if (!writeFile(scriptPath, buildScript, error))
      return fail(error);
    if (std::error_code ec = llvm::sys::fs::setPermissions(
            scriptPath, llvm::sys::fs::all_read | llvm::sys::fs::all_exe |
                            llvm::sys::fs::owner_write))
      return fail(fmt::format("cannot make '{}' executable: {}",
                              scriptPath.str().str(), ec.message()));
    llvm::outs() << fmt::format("wrote {}\n", scriptPath.str().str());
  }
  return 0;
}
