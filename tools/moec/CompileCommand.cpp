//===- CompileCommand.cpp - `moec compile` --------------------------------===//
//
// `moec compile MODEL [--config train.json] -o OUT [--emit cuda]
// [--arch sm_90a] [--attention-kernel auto|cudnn|gemm]`: builds the
// training step for the job in the config (micro-batch, sequence length,
// precision, MoE and optimizer options),
// specialises its shapes, plans its memory and prints two CUDA programs:
//
//   OUT/init_params   delayed_param only (checked against numpy);
//   OUT/train_step    the whole training step and its host driver.
//
// plus OUT/manifest.json (what was compiled and the memory plan). Sources
// are written atomically; nvcc is skipped when a program's source and flags
// hash to the ones it was built from (OUT/<program>.hash). The config's keys
// follow SMP's names (docs/cuda-backend.md).
//
//===----------------------------------------------------------------------===//

#include "Commands.h"
#include "ModelLoading.h"

#include "dialects/Moe/IR/MoeDialect.h"

#include "dialects/Moe/Transforms/Passes.h"
#include "moec/Pipelines/Pipelines.h"
#include "moec/Target/Cuda.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/SHA256.h"
#include "llvm/Support/raw_ostream.h"

#include <fmt/format.h>

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
cl::opt<std::string> configPath(
    "config", cl::desc("training job (JSON; see docs/cuda-backend.md)"),
    cl::value_desc("train.json"), cl::sub(sub));
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

#ifdef MOERT_CUDNN_LIBRARY
constexpr bool kHaveCudnn = true;
#else
constexpr bool kHaveCudnn = false;
#endif

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

/// The training job. Defaults equal `moec train`'s.
struct Job {
  int64_t microBatchSize = 2, seqLength = 64;
  bool bf16 = false, recomputeExperts = false, keepParamCopies = true;
  std::string paramDtype = "fp32";
  std::string loadBalancing = "aux_loss";
  double auxLossCoef = 0.02, zLossCoef = 0.0, weightDecay = 0.1,
         beta1 = 0.9, beta2 = 0.95, adamEpsilon = 1e-8, maxGradNorm = 1.0,
         initializerRange = 0.02;
};

/// Reads `path` into `job`; every key must be known and of the right type.
bool readJob(llvm::StringRef path, Job &job, std::string &error) {
  auto buffer = llvm::MemoryBuffer::getFile(path);
  if (!buffer) {
    error = fmt::format("cannot read config '{}': {}", path.str(),
                        buffer.getError().message());
    return false;
  }
  llvm::Expected<llvm::json::Value> parsed =
      llvm::json::parse((*buffer)->getBuffer());
  if (!parsed) {
    error = fmt::format("config '{}' is not JSON: {}", path.str(),
                        llvm::toString(parsed.takeError()));
    return false;
  }
  const llvm::json::Object *object = parsed->getAsObject();
  if (!object) {
    error = fmt::format("config '{}' must be a JSON object", path.str());
    return false;
  }
  for (const auto &[key, value] : *object) {
    std::string k = key.str();
    auto number = [&](auto &field) {
      if (auto v = value.getAsNumber()) {
        field = static_cast<std::remove_reference_t<decltype(field)>>(*v);
        return true;
      }
      error = fmt::format("config '{}': '{}' must be a number", path.str(), k);
      return false;
    };
    auto boolean = [&](bool &field) {
      if (auto v = value.getAsBoolean()) {
        field = *v;
        return true;
      }
      error = fmt::format("config '{}': '{}' must be true or false",
                          path.str(), k);
      return false;
    };
    bool ok;
    if (k == "micro_batch_size")
      ok = number(job.microBatchSize);
    else if (k == "seq_length")
      ok = number(job.seqLength);
    else if (k == "router_aux_loss_coef")
      ok = number(job.auxLossCoef);
    else if (k == "router_z_loss_coef")
      ok = number(job.zLossCoef);
    else if (k == "weight_decay")
      ok = number(job.weightDecay);
    else if (k == "beta1")
      ok = number(job.beta1);
    else if (k == "beta2")
      ok = number(job.beta2);
    else if (k == "adam_epsilon")
      ok = number(job.adamEpsilon);
    else if (k == "max_grad_norm")
      ok = number(job.maxGradNorm);
    else if (k == "initializer_range")
      ok = number(job.initializerRange);
    else if (k == "bf16")
      ok = boolean(job.bf16);
    else if (k == "recompute_experts")
      ok = boolean(job.recomputeExperts);
    else if (k == "keep_param_copies")
      ok = boolean(job.keepParamCopies);
    else if (k == "param_dtype") {
      ok = value.getAsString() &&
           llvm::is_contained({"fp32", "bf16"}, *value.getAsString());
      if (ok)
        job.paramDtype = value.getAsString()->str();
      else
        error = fmt::format("config '{}': 'param_dtype' must be \"fp32\" or "
                            "\"bf16\"",
                            path.str());
    } else if (k == "moe_load_balancing") {
      ok = value.getAsString().has_value();
      if (ok)
        job.loadBalancing = value.getAsString()->str();
      else
        error = fmt::format("config '{}': 'moe_load_balancing' must be a "
                            "string",
                            path.str());
    } else {
      error = fmt::format(
          "config '{}': unknown key '{}' (known: micro_batch_size, "
          "seq_length, bf16, param_dtype, recompute_experts, "
          "keep_param_copies, "
          "moe_load_balancing, router_aux_loss_coef, router_z_loss_coef, "
          "weight_decay, beta1, beta2, adam_epsilon, max_grad_norm, "
          "initializer_range)",
          path.str(), k);
      ok = false;
    }
    if (!ok)
      return false;
  }
  if (job.microBatchSize < 1 || job.seqLength < 2) {
    error = fmt::format("config '{}': micro_batch_size {} must be at least 1 "
                        "and seq_length {} at least 2",
                        path.str(), job.microBatchSize, job.seqLength);
    return false;
  }
  if (job.paramDtype == "bf16" && !job.bf16) {
    error = fmt::format("config '{}': param_dtype \"bf16\" needs \"bf16\": "
                        "true (a bf16 model computes in bf16)",
                        path.str());
    return false;
  }
  return true;
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
  if (emit == "cuda")
    return true;

  llvm::ErrorOr<std::string> nvcc =
      llvm::sys::findProgramByName("nvcc", {"/usr/local/cuda/bin"});
  if (!nvcc) {
    error = "nvcc not found on PATH or in /usr/local/cuda/bin; install the "
            "CUDA toolkit or use --emit cuda";
    return false;
  }
  std::string archNumber = arch.getValue().substr(3);
  std::vector<std::string> args = {
      *nvcc, "-O3", "-std=c++17",
      fmt::format("-gencode=arch=compute_{},code={}", archNumber,
                  arch.getValue()),
      "-I" MOEC_INCLUDE_DIR, "-I" MOERT_INCLUDE_DIR, std::string(cuPath),
      "-o", std::string(binPath)};
  args.insert(args.end(), extraFlags.begin(), extraFlags.end());
  // The kernel cache: the source, every header it can include, and the
  // command line, hashed.
  std::string key = source;
  for (const std::string &a : args)
    key += "\n" + a;
  std::error_code ec;
  for (const char *dir : {MOEC_INCLUDE_DIR, MOERT_INCLUDE_DIR})
    for (llvm::sys::fs::recursive_directory_iterator it(dir, ec), end;
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

int moec::cli::runCompile() {
  if (!emit.empty() && emit != "cuda")
    return fail(fmt::format("--emit '{}' is not one of: cuda", emit.getValue()));
  if (!llvm::StringRef(arch).starts_with("sm_"))
    return fail(fmt::format("--arch '{}' must look like sm_90a",
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
  Job job;
  std::string error;
  if (!configPath.empty() && !readJob(configPath, job, error))
    return fail(error);

  MLIRContext context;
  DiagnosticPrinter diagnostics(context);
  OwningOpRef<ModuleOp> module =
      loadModel(context, modelPath, /*raise=*/true, /*requireComplete=*/true);
  if (!module)
    return 1;
  PassManager pm(&context);
  moe::BuildInitParamsOptions initOptions;
  initOptions.initializerRange = job.initializerRange;
  pm.addPass(moe::createBuildInitParams(initOptions));
  if (failed(pm.run(*module)))
    return 1;
  std::string initSource;
  llvm::raw_string_ostream initOs(initSource);
  if (failed(emitCudaInitProgram(*module, initOs)))
    return 1;

  moe::BuildTrainStepOptions options;
  options.loadBalancing = job.loadBalancing;
  options.auxLossCoef = job.auxLossCoef;
  options.zLossCoef = job.zLossCoef;
  options.beta1 = job.beta1;
  options.beta2 = job.beta2;
  options.epsilon = job.adamEpsilon;
  options.weightDecay = job.weightDecay;
  options.maxGradNorm = job.maxGradNorm;
  options.computeType = job.bf16 ? "bf16" : "f32";
  options.paramType = job.paramDtype == "bf16" ? "bf16" : "f32";
  PassManager trainPm(&context);
  buildTrainStepPipeline(trainPm, options, job.recomputeExperts);
  moe::SpecializeShapesOptions shapes;
  shapes.batch = job.microBatchSize;
  shapes.seq = job.seqLength;
  trainPm.addNestedPass<func::FuncOp>(moe::createSpecializeShapes(shapes));
  // bf16 attention on cuDNN keeps its output and log-sum-exp for the
  // backward, as flash attention does (the GEMM kernels recompute).
  const bool cudnnAttention = attentionKernel != "gemm" && kHaveCudnn;
  if (cudnnAttention && job.bf16)
    trainPm.addNestedPass<func::FuncOp>(moe::createSaveAttentionStats());
  trainPm.addNestedPass<func::FuncOp>(moe::createFuseElementwise());
  if (job.keepParamCopies)
    trainPm.addNestedPass<func::FuncOp>(moe::createKeepParamCopies());
  trainPm.addNestedPass<func::FuncOp>(moe::createPlanMemory());
  trainPm.addNestedPass<func::FuncOp>(moe::createFuseAddRmsNorm());
  trainPm.addNestedPass<func::FuncOp>(moe::createGroupAdamW());
  if (failed(trainPm.run(*module)))
    return 1;
  std::string trainSource;
  llvm::raw_string_ostream trainOs(trainSource);
  CudaTrainProgramOptions printOptions;
  printOptions.modelName = llvm::sys::path::filename(modelPath).str();
  printOptions.cudnnAttention = cudnnAttention;
  CudaTrainProgramSummary summary;
  if (failed(emitCudaTrainProgram(*module, printOptions, trainOs, summary)))
    return 1;

  if (std::error_code ec = llvm::sys::fs::create_directories(outDir))
    return fail(fmt::format("cannot create '{}': {}", outDir.getValue(),
                            ec.message()));
  auto step = module->lookupSymbol<func::FuncOp>("train_step");
  int64_t liveBound = step->getAttrOfType<IntegerAttr>(
                              moe::MoeDialect::getArenaLiveBytesAttrName())
                          .getInt();
  llvm::json::Object manifest{
      {"format", "moec-compile/1"},
      {"model", modelPath.getValue()},
      {"arch", arch.getValue()},
      {"micro_batch_size", job.microBatchSize},
      {"seq_length", job.seqLength},
      {"bf16", job.bf16},
      {"param_dtype", job.paramDtype},
      {"recompute_experts", job.recomputeExperts},
      {"keep_param_copies", job.keepParamCopies},
      {"attention_kernel", summary.usesCudnn ? "cudnn" : "gemm"},
      {"moe_load_balancing", job.loadBalancing},
      {"router_aux_loss_coef", job.auxLossCoef},
      {"router_z_loss_coef", job.zLossCoef},
      {"state_bytes", summary.stateBytes},
      {"parameter_copy_bytes", summary.derivedStateBytes},
      {"arena_bytes", summary.arenaBytes},
      {"arena_live_bytes_bound", liveBound},
      {"input_bytes", summary.inputBytes},
      {"model_flops_per_step", summary.modelFlops},
      {"programs", llvm::json::Array{"init_params", "train_step"}}};
  std::string manifestText;
  llvm::raw_string_ostream manifestOs(manifestText);
  manifestOs << llvm::formatv("{0:2}", llvm::json::Value(std::move(manifest)))
             << "\n";
  llvm::SmallString<256> manifestPath(outDir.getValue());
  llvm::sys::path::append(manifestPath, "manifest.json");
  if (!writeFile(manifestPath, manifestText, error))
    return fail(error);
  std::string copies =
      summary.derivedStateBytes
          ? fmt::format(" + {} B of bf16 parameter copies",
                        summary.derivedStateBytes)
          : "";
  llvm::outs() << fmt::format(
      "memory plan: state {} B (parameters + AdamW moments{}), arena {} B "
      "(live-bytes bound {} B), inputs {} B; {:.3e} model FLOPs per step\n",
      summary.stateBytes, copies, summary.arenaBytes, liveBound,
      summary.inputBytes, summary.modelFlops);

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
  trainFlags.push_back("-lcublas");
  trainFlags.push_back("-lcublasLt");
  if (!buildProgram("init_params", initSource, {}, {}, error) ||
      !buildProgram("train_step", trainSource, trainFlags, trainLinked, error))
    return fail(error);
  return 0;
}
