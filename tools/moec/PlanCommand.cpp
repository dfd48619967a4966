//===- PlanCommand.cpp - `moec plan` --------------------------------------===//
//
// `moec plan MODEL --world-size W --expert-parallel-degree P
// --hybrid-shard-degree H [--config train.json] ...`: shows the mesh, the
// placement of every
// parameter, per-rank memory, the collectives of one
// step and an estimated step time before any GPU is rented; `--recommend` ranks every valid
// (P, H, checkpointing). MODEL is a preset name, a JSON file of
// MixtralConfig fields, an ONNX file or a .mlir file of raised moe IR. All
// decisions are moec::plan's (lib/Plan); this file reads options and prints.
//
//===----------------------------------------------------------------------===//

#include "Commands.h"
#include "ModelLoading.h"
#include "PlanFormats.h"

#include "moec/Pipelines/Pipelines.h"
#include "moec/Plan/Plan.h"
#include "moec/Target/Cuda.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/raw_ostream.h"

#include <fmt/format.h>

using namespace mlir;
using namespace moec::plan;
namespace cl = llvm::cl;

cl::SubCommand moec::cli::planCommand(
    "plan", "show the expert-parallel / sharded plan of a training job");

namespace {
cl::SubCommand &sub = moec::cli::planCommand;
cl::opt<std::string> modelSpec(cl::Positional,
                               cl::desc("<preset|config.json|model.onnx|"
                                        "model.mlir>"),
                               cl::Required, cl::sub(sub));
cl::opt<int64_t> gpusPerNode("gpus-per-node", cl::desc("GPUs in one node"),
                             cl::init(8), cl::sub(sub));
cl::opt<std::string> gpuName("gpu",
                             cl::desc("h100-80gb, h200-141gb, a100-80gb, "
                                      "a100-40gb, or custom (give every "
                                      "number below)"),
                             cl::init("h100-80gb"), cl::sub(sub));
cl::opt<double> gpuMemoryGib("gpu-memory-gib",
                             cl::desc("override: GPU memory, GiB"),
                             cl::sub(sub));
cl::opt<double> gpuTflops("gpu-tflops",
                          cl::desc("override: dense bf16 peak, TFLOP/s"),
                          cl::sub(sub));
cl::opt<double> memoryBandwidth("memory-bandwidth",
                                cl::desc("override: HBM bandwidth, GB/s"),
                                cl::sub(sub));
cl::opt<double> nvlinkBandwidth(
    "nvlink-bandwidth",
    cl::desc("override: intra-node bandwidth per GPU and direction, GB/s"),
    cl::sub(sub));
cl::opt<double> internodeBandwidth(
    "internode-bandwidth",
    cl::desc("override: inter-node bandwidth per GPU and direction, GB/s"),
    cl::sub(sub));
cl::opt<double> computeEfficiency(
    "compute-efficiency", cl::desc("fraction of peak FLOP/s reached"),
    cl::init(0.5), cl::sub(sub));
cl::opt<double> communicationEfficiency(
    "communication-efficiency",
    cl::desc("fraction of link bandwidth NCCL reaches"), cl::init(0.7),
    cl::sub(sub));
cl::opt<double> reservedGib(
    "reserved-memory-gib",
    cl::desc("memory for CUDA context, NCCL and library workspaces, GiB"),
    cl::init(1.0), cl::sub(sub));
cl::opt<bool> recommendFlag(
    "recommend",
    cl::desc("rank every valid (P, H, checkpointing) for the world size"),
    cl::sub(sub));
cl::opt<bool> jsonFlag("json", cl::desc("print JSON (schema moec-plan/1)"),
                       cl::sub(sub));
cl::opt<bool> svgFlag("svg",
                      cl::desc("print an SVG of the mesh and memory bars"),
                      cl::sub(sub));
cl::opt<bool> allPlacements(
    "placement", cl::desc("list every parameter's shard on every rank"),
    cl::sub(sub));
cl::opt<std::string> outputPath("o", cl::desc("write to this file"),
                                cl::value_desc("file"), cl::sub(sub));

int fail(const llvm::Twine &message) {
  llvm::errs() << "error: " << message << "\n";
  return 1;
}

/// A preset, a JSON config, or a model file (read with `flags` and `job`'s
/// custom_ops); for a model file, `module` receives its raised forward (in
/// `context`).
std::optional<ModelDescription>
loadDescription(MLIRContext &context, const moec::cli::ImportFlags &flags,
                const moec::TrainingJob &job, OwningOpRef<ModuleOp> &module) {
  llvm::StringRef spec = modelSpec;
  if (std::optional<moec::ModelConfig> preset = getPreset(spec)) {
    return ModelDescription{spec.str(), *preset, mixtralParameters(*preset)};
  }
  if (!llvm::sys::fs::exists(spec)) {
    fail("'" + spec + "' is neither a file nor a preset (" +
         llvm::join(presetNames(), ", ") + ")");
    return std::nullopt;
  }
  if (spec.ends_with(".json")) {
    llvm::ErrorOr<std::unique_ptr<llvm::MemoryBuffer>> file =
        llvm::MemoryBuffer::getFile(spec);
    if (!file) {
      fail("cannot read '" + spec + "': " + file.getError().message());
      return std::nullopt;
    }
    llvm::Expected<moec::ModelConfig> config =
        parseMixtralConfigJson((*file)->getBuffer());
    if (!config) {
      fail(spec + ": " + llvm::toString(config.takeError()));
      return std::nullopt;
    }
    return ModelDescription{spec.str(), *config, mixtralParameters(*config)};
  }
  moec::cli::DiagnosticPrinter diagnostics(context);
  module = moec::cli::loadModel(context, spec, flags, /*raise=*/true,
                                /*requireComplete=*/false, &job);
  if (!module)
    return std::nullopt;
  func::FuncOp forward = moec::cli::getForward(*module);
  if (!forward)
    return std::nullopt;
  FailureOr<ModelDescription> model = describeForward(forward);
  if (failed(model))
    return std::nullopt;
  model->source = spec.str();
  return *model;
}

/// The footprint of `job`'s partitioned @train_step, built from the raised
/// forward in `module` (shapes only: the import reads no weights).
std::optional<ProgramFootprint> readProgram(MLIRContext &context,
                                            ModuleOp module,
                                            const moec::TrainingJob &job) {
  moec::cli::DiagnosticPrinter diagnostics(context);
  OwningOpRef<ModuleOp> program(module.clone());
  PassManager pm(&context);
  moec::buildTrainPipeline(pm, job);
  if (failed(pm.run(*program)))
    return std::nullopt;
  FailureOr<ProgramFootprint> footprint =
      readProgramFootprint(program->lookupSymbol<func::FuncOp>("train_step"));
  if (failed(footprint))
    return std::nullopt;
  return *footprint;
}

/// What `moec compile` plans for `job`'s rank program (its memory plan:
/// state, arena, inputs, kernel scratch), from the raised forward in
/// `module`: moe-compile-pipeline and the CUDA printer, writing nothing.
/// bf16 attention counts as cuDNN's where this moec was built with it, as
/// `moec compile`'s default does.
llvm::Expected<ProgramMemory> measureProgram(MLIRContext &context,
                                             ModuleOp module,
                                             const moec::TrainingJob &job) {
  const bool cudnnAttention = moec::cli::kHaveCudnn;
  auto error = [&](const llvm::Twine &what) {
    return llvm::createStringError(
        llvm::inconvertibleErrorCode(),
        "cannot compile the program of expert_parallel_degree " +
            llvm::Twine(job.expertParallelDegree) + ", hybrid_shard_degree " +
            llvm::Twine(job.hybridShardDegree) +
            ", activation_checkpointing " +
            moec::stringifyActivationCheckpointing(job.activationCheckpointing) +
            ": " + what);
  };
  moec::cli::DiagnosticPrinter diagnostics(context);
  // Errors print; auto's remark is the step readProgram builds to print.
  ScopedDiagnosticHandler quiet(&context, [](Diagnostic &diagnostic) {
    return success(diagnostic.getSeverity() == DiagnosticSeverity::Remark);
  });
  OwningOpRef<ModuleOp> program(module.clone());
  PassManager pm(&context);
  moec::buildCompilePipeline(pm, job, cudnnAttention);
  if (failed(pm.run(*program)))
    return error("moe-compile-pipeline failed (above)");
  moec::CudaTrainProgramOptions options;
  options.cudnnAttention = cudnnAttention;
  moec::CudaTrainProgramSummary summary;
  llvm::raw_null_ostream discard;
  if (failed(moec::emitCudaTrainProgram(*program, options, discard, summary)))
    return error("the CUDA printer failed (above)");
  return ProgramMemory{summary.stateBytes, summary.arenaBytes,
                       summary.inputBytes,
                       summary.scratchBytes + summary.collectiveScratchBytes};
}

/// The GPU with any overridden numbers.
std::optional<GpuSpec> readGpu() {
  std::optional<GpuSpec> gpu = getGpu(gpuName);
  if (!gpu) {
    if (gpuName != "custom") {
      fail("unknown gpu '" + gpuName + "'; expected " +
           llvm::join(gpuNames(), ", ") +
           " or custom with --gpu-memory-gib, --gpu-tflops, "
           "--memory-bandwidth, --nvlink-bandwidth and --internode-bandwidth");
      return std::nullopt;
    }
    gpu = GpuSpec{"custom"};
    std::vector<std::string> missing;
    for (const cl::opt<double> *option :
         {&gpuMemoryGib, &gpuTflops, &memoryBandwidth, &nvlinkBandwidth,
          &internodeBandwidth})
      if (!option->getNumOccurrences())
        missing.push_back(("--" + option->ArgStr).str());
    if (!missing.empty()) {
      fail("--gpu custom needs every hardware number; missing " +
           llvm::join(missing, ", "));
      return std::nullopt;
    }
  }
  // Every hardware number given is checked before it is converted: NaN,
  // 1e30 GiB or 1e-300 GB/s would become a negative byte count or an
  // estimate of 1e300 s.
  for (const cl::opt<double> *option :
       {&gpuMemoryGib, &gpuTflops, &memoryBandwidth, &nvlinkBandwidth,
        &internodeBandwidth})
    if (option->getNumOccurrences() &&
        !(option->getValue() >= 1e-3 && option->getValue() <= 1e6)) {
      fail(fmt::format("--{} {} must be in [0.001, 1e6]",
                       option->ArgStr.str(), option->getValue()));
      return std::nullopt;
    }
  if (gpuMemoryGib.getNumOccurrences())
    gpu->memoryBytes = int64_t(gpuMemoryGib * double(int64_t(1) << 30));
  if (gpuTflops.getNumOccurrences())
    gpu->peakFlops = gpuTflops * 1e12;
  if (memoryBandwidth.getNumOccurrences())
    gpu->memoryBandwidth = memoryBandwidth * 1e9;
  if (nvlinkBandwidth.getNumOccurrences())
    gpu->intraNodeBandwidth = nvlinkBandwidth * 1e9;
  if (internodeBandwidth.getNumOccurrences())
    gpu->interNodeBandwidth = internodeBandwidth * 1e9;
  return gpu;
}

/// Prints to stdout or, atomically, to -o.
int emit(llvm::function_ref<void(llvm::raw_ostream &)> print) {
  if (outputPath.empty() || outputPath == "-") {
    print(llvm::outs());
    return 0;
  }
  if (llvm::Error err =
          moec::cli::checkNotAnInput("-o", outputPath, {modelSpec}))
    return fail(llvm::toString(std::move(err)));
  if (llvm::Error err = llvm::writeToOutput(
          outputPath, [&](llvm::raw_ostream &os) -> llvm::Error {
            print(os);
            return llvm::Error::success();
          }))
    return fail("cannot write '" + outputPath +
                "': " + llvm::toString(std::move(err)));
  return 0;
}

} // namespace

int moec::cli::runPlan(const ImportFlags &modelFlags,
                        const TrainingJobFlags &jobFlags) {
  if (jsonFlag && svgFlag)
    return fail("--json and --svg are exclusive");
  // Plans are of full-size jobs: one sequence of 4096 tokens per rank, bf16
  // compute copies of fp32 masters (the other defaults are the job's).
  moec::TrainingJob job;
  job.microBatchSize = 1;
  job.seqLength = 4096;
  job.bf16 = true;
  if (llvm::Error err = jobFlags.read(job))
    return fail(llvm::toString(std::move(err)));
  if (llvm::Error err = moec::checkImplemented(job, moec::JobConsumer::Plan))
    return fail(llvm::toString(std::move(err)));
  std::optional<GpuSpec> gpu = readGpu();
  if (!gpu)
    return 1;
  MLIRContext context;
  OwningOpRef<ModuleOp> forward;
  std::optional<ModelDescription> model =
      loadDescription(context, modelFlags, job, forward);
  if (!model)
    return 1;

  if (!(reservedGib >= 0 && reservedGib <= 1e6))
    return fail(fmt::format("--reserved-memory-gib {} must be in [0, 1e6]",
                            reservedGib.getValue()));
  Efficiency efficiency;
  efficiency.compute = computeEfficiency;
  efficiency.communication = communicationEfficiency;
  efficiency.reservedBytes = int64_t(reservedGib * double(int64_t(1) << 30));

  if (recommendFlag) {
    if (svgFlag)
      return fail("--svg draws one plan; drop it or --recommend");
    // A model file: every candidate that may fit is compiled (its memory
    // plan, not the sources) and judged by what the program would need.
    auto measure = [&](const moec::TrainingJob &candidate) {
      return measureProgram(context, *forward, candidate);
    };
    llvm::Expected<std::vector<Recommendation>> list =
        forward ? recommend(*model, job, gpusPerNode, *gpu, efficiency, measure)
                : recommend(*model, job, gpusPerNode, *gpu, efficiency);
    if (!list)
      return fail(llvm::toString(list.takeError()));
    return emit([&](llvm::raw_ostream &os) {
      if (jsonFlag)
        os << llvm::formatv("{0:2}", recommendationsToJson(*list)) << "\n";
      else
        printRecommendationsTable(*list, os);
    });
  }

  // A model file gives the partitioned program, which the plan reads its
  // state bytes and gradient reductions from; a preset or a JSON config has
  // only the analytic model.
  std::optional<ProgramFootprint> program;
  std::optional<ProgramMemory> programMemory;
  if (forward) {
    // The mesh's rules first, in the planner's words; the program is built
    // for the mesh the planner resolved (an automatic H from the node size).
    llvm::Expected<TrainingPlan> analytic =
        makePlan(*model, job, gpusPerNode, *gpu, efficiency);
    if (!analytic)
      return fail(llvm::toString(analytic.takeError()));
    moec::TrainingJob resolved = job;
    resolved.hybridShardDegree = analytic->mesh.shardDegree();
    program = readProgram(context, *forward, resolved);
    if (!program)
      return 1;
    // The compiled program's memory plan (under auto, with moec compile's
    // own per-layer choice).
    llvm::Expected<ProgramMemory> memory =
        measureProgram(context, *forward, resolved);
    if (!memory)
      return fail(llvm::toString(memory.takeError()));
    programMemory = *memory;
  }
  llvm::Expected<TrainingPlan> plan =
      makePlan(*model, job, gpusPerNode, *gpu, efficiency,
               program ? &*program : nullptr,
               programMemory ? &*programMemory : nullptr);
  if (!plan)
    return fail(llvm::toString(plan.takeError()));
  return emit([&](llvm::raw_ostream &os) {
    if (jsonFlag)
      os << llvm::formatv("{0:2}", planToJson(*plan)) << "\n";
    else if (svgFlag)
      printPlanSvg(*plan, os);
    else
      printPlanTable(*plan, allPlacements, os);
  });
}
