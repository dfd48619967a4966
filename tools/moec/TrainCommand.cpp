//===- TrainCommand.cpp - `moec train` ------------------------------------===//
//
// `moec train MODEL --reference --tokens train.pb --steps N [--config
// train.json] [job flags] ...`: builds @init_params and @train_step for the
// job from the model's raised forward (moe-train-pipeline: the step
// specialised to the job's micro-batch and the tokens' sequence length),
// initialises the parameters by running @init_params on the seed
// (delayed_param; with `--delayed-param=false`, takes the model file's
// weights; with `--init-from DIR`, job key init_from, from a Hugging Face
// checkpoint folder, checked as moec compile checks it), and runs N steps on the CPU reference executor, printing one
// line of metrics per step. Token blocks come from an onnx.TensorProto int64
// [blocks, seq] file; labels are the inputs (the loss shifts them) unless
// --labels gives a file of the same shape. --dump writes every step's
// metrics and gradients and the final parameters and AdamW moments as
// TensorProto files, the layout python/moec/check_train.py reads; --log
// writes the metrics as CSV;
// --export-hf DIR writes the final parameters as a Hugging Face checkpoint
// (moert/HfCheckpoint.h), the CPU oracle of the programs' exports.
//
// Numeric faults (docs/reliability.md): after every step the loss and the
// gradient norm are checked; a non-finite one stops the run, or, with
// --skip-nonfinite-steps N (job key skip_nonfinite_steps), up to N steps
// whose gradient norm is not finite are skipped (their AdamW updates left
// the state as it was) and the AdamW step number counts applied updates
// only (moert/NonfiniteSteps.h). --check-numerics checks every op's results
// and stops at the first inf or NaN, naming the op.
// The step's results are read by their tags and names (moe.parameter,
// moe.exp_avg, moe.exp_avg_sq, moe.output, moe.gradient), not by position.
//
// A job with a parallel layout (world_size, expert_parallel_degree,
// hybrid_shard_degree, sharding_strategy, either dispatcher, the token
// shuffle) runs its partitioned step on world_size simulated ranks
// (executeOnRanks): each rank creates its own shards with the partitioned
// @init_params (or cuts them from the model file's or the checkpoint's
// global parameters) and reads its own micro-batch, the r-th of each global
// batch of world_size micro-batches, so the ranks together consume the
// blocks one process would with a micro-batch world_size times larger. The
// metrics are rank 0's: the partitioned step's are the global batch's on
// every rank. --dump and --export-hf gather the ranks' blocks into global
// tensors, checking that replicas agree (moec/Reference/RankBlocks.h).
//
//===----------------------------------------------------------------------===//

#include "Commands.h"
#include "HfBinding.h"
#include "ModelLoading.h"

#include "dialects/Moe/IR/MoeOps.h"
#include "moec/Import/Onnx.h"
#include "moec/Pipelines/Pipelines.h"
#include "moec/Plan/Mesh.h"
#include "moec/Reference/Executor.h"
#include "moec/Reference/RankBlocks.h"
#include "moert/AtomicFile.h"
#include "moert/HfCheckpoint.h"
#include "moert/NonfiniteSteps.h"
#include "moert/Schedule.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/raw_ostream.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <optional>

using namespace mlir;
using moec::HostTensor;
namespace cl = llvm::cl;

cl::SubCommand moec::cli::trainCommand(
    "train", "train a model for some steps (CPU reference executor)");

namespace {
cl::SubCommand &sub = moec::cli::trainCommand;
cl::opt<std::string> modelPath(cl::Positional, cl::desc("<model.onnx|.mlir>"),
                               cl::Required, cl::sub(sub));
cl::opt<bool> useReference("reference",
                        cl::desc("run on the CPU reference executor (fp32)"),
                        cl::sub(sub));
cl::opt<std::string> tokensPath("tokens",
                                cl::desc("token blocks: onnx.TensorProto "
                                         "int64 [blocks, seq]"),
                                cl::value_desc("file"), cl::Required,
                                cl::sub(sub));
cl::opt<std::string> labelsPath("labels",
                                cl::desc("labels of the same shape (default: "
                                         "the tokens; -100 is ignored)"),
                                cl::value_desc("file"), cl::sub(sub));
cl::opt<int64_t> steps("steps", cl::desc("training steps"), cl::init(10),
                       cl::sub(sub));
cl::opt<double> lr("lr", cl::desc("peak learning rate"), cl::init(1e-3),
                   cl::sub(sub));
cl::opt<double> minLr("min-lr", cl::desc("final learning rate"),
                      cl::init(1e-4), cl::sub(sub));
cl::opt<int64_t> warmupSteps("warmup-steps", cl::desc("linear warm-up steps"),
                             cl::init(2), cl::sub(sub));
cl::opt<int64_t> totalSteps("total-steps",
                            cl::desc("length of the cosine schedule "
                                     "(default: --steps)"),
                            cl::init(0), cl::sub(sub));
cl::opt<std::string> validPath(
    "valid", cl::desc("validation token blocks (same format and length as "
                      "--tokens): report the mean loss on them"),
    cl::value_desc("file"), cl::sub(sub));
cl::opt<int64_t> evalInterval("eval-interval",
                              cl::desc("evaluate every N steps (default: "
                                       "after the last step only)"),
                              cl::init(0), cl::sub(sub));
cl::opt<std::string> dumpDir("dump",
                             cl::desc("write metrics, gradients and final "
                                      "parameters here"),
                             cl::value_desc("dir"), cl::sub(sub));
cl::opt<std::string> logPath("log", cl::desc("write per-step metrics as CSV"),
                             cl::value_desc("file"), cl::sub(sub));
cl::opt<std::string> exportHfDir(
    "export-hf",
    cl::desc("write the final parameters as a Hugging Face checkpoint folder "
             "(fp32; docs/hf-checkpoints.md)"),
    cl::value_desc("dir"), cl::sub(sub));
cl::opt<bool> printIr("print-ir", cl::desc("print the training step's IR"),
                      cl::sub(sub));
cl::opt<bool> checkNumerics(
    "check-numerics",
    cl::desc("check every op's results for inf and NaN and stop at the first "
             "(slow; docs/reliability.md)"),
    cl::sub(sub));

int fail(const std::string &message) {
  llvm::errs() << "error: " << message << "\n";
  return 1;
}

/// The host memory the kernel says is available for a new allocation
/// (/proc/meminfo's MemAvailable), where there is such a file.
std::optional<uint64_t> availableHostBytes() {
  auto meminfo = llvm::MemoryBuffer::getFileAsStream("/proc/meminfo");
  if (!meminfo)
    return std::nullopt;
  llvm::SmallVector<llvm::StringRef> lines;
  (*meminfo)->getBuffer().split(lines, '\n');
  for (llvm::StringRef line : lines) {
    if (!line.consume_front("MemAvailable:"))
      continue;
    uint64_t kib = 0;
    line = line.trim();
    if (line.consume_back("kB") && !line.trim().getAsInteger(10, kib))
      return kib << 10;
    break;
  }
  return std::nullopt;
}

/// Writes `tensor` to DIR/relative, creating folders.
bool dumpTensor(llvm::StringRef relative, const HostTensor &tensor,
                std::string &error) {
  llvm::SmallString<256> path(dumpDir.getValue());
  llvm::sys::path::append(path, relative);
  llvm::SmallString<256> folder = path;
  llvm::sys::path::remove_filename(folder);
  if (std::error_code ec = llvm::sys::fs::create_directories(folder)) {
    error = fmt::format("cannot create '{}': {}", folder.str().str(),
                        ec.message());
    return false;
  }
  std::string name = llvm::sys::path::stem(relative).str();
  return moec::writeTensorProtoFile(path, name, tensor, error);
}

/// Where @train_step returns what a run reads.
struct StepResults {
  std::vector<unsigned> params, expAvg, expAvgSq, gradients;
  unsigned loss, ceLoss, auxLoss, zLoss, gradNorm, expertCounts;
};

/// Finds every result of @train_step the run reads by its name; gradients
/// only when `withGradients`.
llvm::Expected<StepResults> findStepResults(func::FuncOp step,
                                            llvm::ArrayRef<std::string> names,
                                            bool withGradients) {
  moec::reference::ResultIndex index(step);
  StepResults results;
  auto find = [&](llvm::StringRef tag, llvm::StringRef name,
                  unsigned &slot) -> llvm::Error {
    llvm::Expected<unsigned> i = index.lookup(tag, name);
    if (!i)
      return i.takeError();
    slot = *i;
    return llvm::Error::success();
  };
  for (const std::string &name : names) {
    for (auto [tag, list] :
         {std::pair{moe::MoeDialect::getParameterAttrName(), &results.params},
          std::pair{moe::MoeDialect::getExpAvgAttrName(), &results.expAvg},
          std::pair{moe::MoeDialect::getExpAvgSqAttrName(),
                    &results.expAvgSq}}) {
      if (llvm::Error err = find(tag, name, list->emplace_back()))
        return std::move(err);
    }
    if (withGradients)
      if (llvm::Error err = find(moe::MoeDialect::getGradientAttrName(), name,
                                 results.gradients.emplace_back()))
        return std::move(err);
  }
  for (auto [name, slot] :
       {std::pair{"loss", &results.loss}, std::pair{"ce_loss", &results.ceLoss},
        std::pair{"aux_loss", &results.auxLoss},
        std::pair{"z_loss", &results.zLoss},
        std::pair{"grad_norm", &results.gradNorm},
        std::pair{"expert_counts", &results.expertCounts}})
    if (llvm::Error err =
            find(moe::MoeDialect::getOutputAttrName(), name, *slot))
      return std::move(err);
  return results;
}

HostTensor scalarF32(double v) {
  HostTensor t = HostTensor::floats({});
  t.f32[0] = static_cast<float>(v);
  return t;
}
} // namespace

int moec::cli::runTrain(const ImportFlags &modelFlags,
                         const TrainingJobFlags &jobFlags) {
  if (!useReference)
    return fail("only the CPU reference executor exists so far: pass "
                "--reference");
  if (steps < 1)
    return fail(fmt::format("--steps {} must be at least 1",
                            steps.getValue()));
  if (std::string problem = moert::scheduleFlagsProblem(
          lr, minLr, warmupSteps, totalSteps);
      !problem.empty())
    return fail(problem);
  if (evalInterval < 0)
    return fail(fmt::format("--eval-interval {} must not be negative (0: "
                            "after the last step only)",
                            evalInterval.getValue()));
  // An export is refused before training, not after it: only a new folder
  // or a previous export is written (a user's folder is never replaced).
  if (!exportHfDir.empty()) {
    std::filesystem::path target;
    if (moert::Status s = moert::checkHfExportTarget(exportHfDir.getValue(),
                                                     target);
        !s.ok())
      return fail("--export-hf: " + s.message());
  }
  moec::TrainingJob job;
  if (llvm::Error err = jobFlags.read(job))
    return fail(llvm::toString(std::move(err)));
  if (llvm::Error err = moec::checkImplemented(job, moec::JobConsumer::Train))
    return fail(llvm::toString(std::move(err)));
  const int64_t microBatchSize = job.microBatchSize;
  // Ranks, and the blocks one step of all of them reads.
  const int64_t ranks = job.worldSize;
  const int64_t globalBatch = ranks * microBatchSize;
  MLIRContext context;
  DiagnosticPrinter diagnostics(context);
  OwningOpRef<ModuleOp> module =
      loadModel(context, modelPath, modelFlags, /*raise=*/true,
                /*requireComplete=*/true, &job);
  if (!module)
    return 1;
  // The Hugging Face checkpoint to start from (job key init_from), checked
  // against the model, and the config.json an export writes.
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

  // Data.
  std::string error;
  HostTensor tokens, labels;
  if (!readTensorProtoFile(tokensPath, tokens, error))
    return fail(error);
  if (tokens.isFloat())
    return fail(fmt::format("'{}' must hold int64 token ids, not floats",
                            tokensPath.getValue()));
  if (tokens.shape.size() != 2 || tokens.shape[0] < 1 || tokens.shape[1] < 2)
    return fail(fmt::format("'{}' must hold token blocks [blocks, seq] with "
                            "at least 1 block of at least 2 tokens (each "
                            "token is trained to predict the next) but has "
                            "shape {}",
                            tokensPath.getValue(), tokens.shapeString()));
  labels = tokens;
  if (!labelsPath.empty()) {
    if (!readTensorProtoFile(labelsPath, labels, error))
      return fail(error);
    if (labels.shape != tokens.shape || labels.isFloat())
      return fail(fmt::format("labels '{}' {} must be int64 with the tokens' "
                              "shape {}",
                              labelsPath.getValue(), labels.shapeString(),
                              tokens.shapeString()));
    // Each label is a token id or -100 (ignored), and some label counts
    // (every block's first label predicts nothing): otherwise every loss
    // would be 0 and the run would train on nothing.
    const int64_t vocab = modelConfig->vocabSize, seqLen = tokens.shape[1];
    bool anyCounted = false;
    for (size_t i = 0; i < labels.i64.size(); ++i) {
      const int64_t label = labels.i64[i];
      if (label != -100 && (label < 0 || label >= vocab))
        return fail(fmt::format("labels '{}': label {} at [{}, {}] is "
                                "outside the vocabulary [0, {}) (and not "
                                "-100, the ignored label)",
                                labelsPath.getValue(), label, i / seqLen,
                                i % seqLen, vocab));
      anyCounted |= label != -100 && int64_t(i % seqLen) != 0;
    }
    if (!anyCounted)
      return fail(fmt::format("labels '{}' ignore every position (-100, or "
                              "a block's first): no step would train on "
                              "anything",
                              labelsPath.getValue()));
  }
  int64_t blocks = tokens.shape[0], seq = tokens.shape[1];
  HostTensor valid;
  if (!validPath.empty()) {
    if (!readTensorProtoFile(validPath, valid, error))
      return fail(error);
    if (valid.isFloat() || valid.shape.size() != 2 || valid.shape[1] != seq ||
        valid.shape[0] < globalBatch)
      return fail(fmt::format("'{}' must hold at least {} int64 blocks of {} "
                              "tokens but has shape {}",
                              validPath.getValue(), globalBatch, seq,
                              valid.shapeString()));
  }

  // The step's sequence length is the tokens'.
  if (job.isExplicit("seq_length") && job.seqLength != seq)
    return fail(fmt::format("seq_length {} does not match the {} tokens per "
                            "block of '{}'",
                            job.seqLength, seq, tokensPath.getValue()));
  job.seqLength = seq;
  PassManager pm(&context);
  moec::buildTrainPipeline(pm, job, /*returnGradients=*/!dumpDir.empty());
  if (failed(pm.run(*module)))
    return 1;
  auto step = module->lookupSymbol<func::FuncOp>("train_step");
  auto evalStep = module->lookupSymbol<func::FuncOp>("eval_step");
  if (printIr)
    step->print(llvm::outs());

  // The mesh of a partitioned step, as its passes resolved it.
  std::optional<plan::Mesh> mesh;
  if (moec::isPartitioned(job)) {
    int64_t numExperts = 0;
    step.walk([&](moe::RouterOp router) {
      numExperts = router.getLogits().getType().getShape().back();
    });
    llvm::Expected<plan::Mesh> resolved = plan::resolveMesh(
        plan::getParallelConfig(job, plan::ParallelConfig().gpusPerNode),
        numExperts);
    if (!resolved)
      return fail(llvm::toString(resolved.takeError()));
    mesh = *resolved;
  }
  // Runs `func` on every rank, `arguments[r]` on rank r (one process
  // unpartitioned).
  auto runOnRanks =
      [&](func::FuncOp func,
          const std::vector<std::vector<HostTensor>> &arguments,
          std::vector<std::vector<HostTensor>> &results,
          const reference::ExecuteOptions &options = {}) -> LogicalResult {
    if (!mesh) {
      results.resize(1);
      return reference::execute(func, arguments[0], results[0], options);
    }
    return reference::executeOnRanks(func, *mesh, arguments, results, options);
  };

  // Each rank's parameters and optimizer state, in the step's argument
  // order.
  unsigned numArgs = step.getNumArguments();
  unsigned n = (numArgs - 4) / 3;
  std::vector<std::vector<HostTensor>> state(
      ranks, std::vector<HostTensor>(3 * n));
  std::vector<std::string> names(n);
  for (unsigned i = 0; i < n; ++i)
    names[i] = step.getArgAttrOfType<StringAttr>(
                       i, moe::MoeDialect::getParameterAttrName())
                   .str();
  // Every rank's fp32 parameters, gradients and two AdamW moments live in
  // this process: a model too large for the host is refused here, by the
  // numbers, rather than killed (or aborted by an allocation) minutes in.
  int64_t elements = 0;
  for (unsigned i = 0; i < n; ++i)
    elements += cast<RankedTensorType>(step.getArgument(i).getType())
                    .getNumElements();
  const double stateBytes = 16.0 * double(elements) * double(ranks);
  if (std::optional<uint64_t> available = availableHostBytes();
      available && stateBytes > double(*available))
    return fail(fmt::format(
        "the CPU reference needs at least {:.1f} GiB for {} parameter "
        "elements per rank x {} rank(s) (fp32 parameters, gradients and both "
        "AdamW moments, before any activation); this machine has {:.1f} GiB "
        "available",
        stateBytes / double(1 << 30), elements, ranks,
        double(*available) / double(1 << 30)));
  // A partitioned step's ranks hold blocks: global parameters are cut into
  // them and gathered from them (moec/Reference/RankBlocks.h).
  auto init = module->lookupSymbol<func::FuncOp>("init_params");
  std::optional<reference::RankBlocks> rankBlocks;
  if (mesh) {
    llvm::Expected<reference::RankBlocks> blocks =
        reference::RankBlocks::get(init, names, *mesh);
    if (!blocks)
      return fail(llvm::toString(blocks.takeError()));
    rankBlocks = std::move(*blocks);
  }
  // Parameter i's global tensor from every rank's `slot` (one rank: its
  // own); `what` names it in errors.
  auto gather = [&](const std::vector<std::vector<HostTensor>> &perRank,
                    auto slotOf, unsigned i,
                    llvm::StringRef what) -> llvm::Expected<HostTensor> {
    if (!rankBlocks)
      return perRank[0][slotOf(i)];
    std::vector<const HostTensor *> blocks;
    for (const std::vector<HostTensor> &rank : perRank)
      blocks.push_back(&rank[slotOf(i)]);
    return rankBlocks->gather(i, blocks, what);
  };
  // Parameter i's global shape.
  auto globalShape = [&](unsigned i) {
    if (rankBlocks)
      return rankBlocks->globalShape(i);
    ArrayRef<int64_t> shape =
        cast<RankedTensorType>(step.getArgument(i).getType()).getShape();
    return std::vector<int64_t>(shape.begin(), shape.end());
  };
  llvm::Expected<StepResults> stepResults =
      findStepResults(step, names, /*withGradients=*/!dumpDir.empty());
  if (!stepResults)
    return fail(llvm::toString(stepResults.takeError()));
  llvm::Expected<unsigned> evalLoss =
      reference::ResultIndex(evalStep).lookup(moe::MoeDialect::getOutputAttrName(), "ce_loss");
  if (!evalLoss)
    return fail(llvm::toString(evalLoss.takeError()));
  if (!job.initFrom.empty() || !job.delayedParam) {
    // Global parameters from a Hugging Face checkpoint or the model file,
    // cut into every rank's blocks.
    std::unique_ptr<moert::HfCheckpoint> checkpoint;
    std::unique_ptr<OnnxWeights> weights;
    if (!job.initFrom.empty()) {
      if (moert::Status s = moert::HfCheckpoint::open(
              hfBinding->getString("init_from")->str(), checkpoint);
          !s.ok())
        return fail(s.message());
    } else if (!(weights = OnnxWeights::open(modelPath, error))) {
      return fail(error);
    }
    for (unsigned i = 0; i < n; ++i) {
      HostTensor global;
      if (checkpoint) {
        std::vector<int64_t> shape = globalShape(i);
        global = HostTensor::floats(shape);
        if (moert::Status s = checkpoint->readBlock(
                names[i], shape, shape, std::vector<int64_t>(shape.size(), 0),
                shape, moert::TensorDtype::F32,
                reinterpret_cast<char *>(global.f32.data()));
            !s.ok())
          return fail(s.message());
      } else if (!loadParameter(*weights, forward, names[i], global, error)) {
        return fail(error);
      }
      if (!rankBlocks) {
        state[0][i] = std::move(global);
        continue;
      }
      for (int64_t r = 0; r < ranks; ++r)
        state[r][i] = rankBlocks->scatter(i, global, r);
    }
  } else {
    // delayed_param: the compiler's @init_params, run on the seed (each
    // rank creates its own blocks).
    HostTensor seedTensor = HostTensor::ints({});
    seedTensor.i64[0] = job.randomSeed;
    std::vector<std::vector<HostTensor>> initial;
    if (failed(runOnRanks(
            init, std::vector<std::vector<HostTensor>>(ranks, {seedTensor}),
            initial)))
      return 1;
    reference::ResultIndex initResults(init);
    for (unsigned i = 0; i < n; ++i) {
      llvm::Expected<unsigned> slot =
          initResults.lookup(moe::MoeDialect::getParameterAttrName(), names[i]);
      if (!slot)
        return fail(llvm::toString(slot.takeError()));
      for (int64_t r = 0; r < ranks; ++r)
        state[r][i] = std::move(initial[r][*slot]);
    }
  }
  for (std::vector<HostTensor> &rankState : state)
    for (unsigned i = 0; i < n; ++i) {
      rankState[n + i] = HostTensor::floats(rankState[i].shape);
      rankState[2 * n + i] = HostTensor::floats(rankState[i].shape);
    }

  // The per-step CSV, rewritten whole (atomically) after every step: an
  // existing file is replaced only once a step has finished.
  std::string logText =
      "step,loss,ce_loss,aux_loss,z_loss,grad_norm,lr,tokens_per_s,"
      "valid_loss\n";
  if (!logPath.empty() && llvm::sys::fs::is_directory(logPath.getValue()))
    return fail(fmt::format("--log '{}' is a folder", logPath.getValue()));
  if (!logPath.empty())
    if (llvm::Error err = checkNotAnInput(
            "--log", logPath,
            {modelPath, tokensPath, labelsPath, validPath}))
      return fail(llvm::toString(std::move(err)));

  // The mean loss over the validation blocks, global batch by global batch,
  // each rank its own micro-batch of it (a remainder smaller than a global
  // batch is left out). The partitioned step's loss is the global batch's.
  auto evaluate = [&](double &meanLoss) -> LogicalResult {
    int64_t batches = valid.shape[0] / globalBatch, batch = microBatchSize;
    double sum = 0.0;
    for (int64_t i = 0; i < batches; ++i) {
      std::vector<std::vector<HostTensor>> args(ranks), results;
      for (int64_t r = 0; r < ranks; ++r) {
        HostTensor ids = HostTensor::ints({batch, seq});
        std::copy_n(&valid.i64[(i * ranks + r) * batch * seq], batch * seq,
                    ids.i64.begin());
        args[r].assign(state[r].begin(), state[r].begin() + n);
        args[r].push_back(ids);
        args[r].push_back(ids);
      }
      if (failed(runOnRanks(evalStep, args, results)))
        return failure();
      sum += results[0][*evalLoss].f32[0];
    }
    meanLoss = sum / batches;
    return success();
  };

  int64_t total = totalSteps > 0 ? totalSteps.getValue() : steps.getValue();
  int64_t batch = microBatchSize;
  moert::NonfiniteSteps nonfinite(job.skipNonfiniteSteps);
  reference::ExecuteOptions stepOptions;
  stepOptions.checkNumerics = checkNumerics;
  for (int64_t t = 1; t <= steps; ++t) {
    double stepLr = moert::LrSchedule{lr, minLr, warmupSteps, total}.at(t);
    HostTensor stepTensor = HostTensor::ints({});
    stepTensor.i64[0] = nonfinite.adamwStep(t);
    // Rank r's micro-batch: the r-th of the step's global batch.
    std::vector<std::vector<HostTensor>> args(ranks), rankResults;
    for (int64_t r = 0; r < ranks; ++r) {
      HostTensor ids = HostTensor::ints({batch, seq});
      HostTensor lab = HostTensor::ints({batch, seq});
      for (int64_t b = 0; b < batch; ++b) {
        int64_t block = moert::trainingBlock(t, r, ranks, batch, b, blocks);
        std::copy_n(&tokens.i64[block * seq], seq, &ids.i64[b * seq]);
        std::copy_n(&labels.i64[block * seq], seq, &lab.i64[b * seq]);
      }
      args[r] = state[r];
      args[r].push_back(ids);
      args[r].push_back(lab);
      args[r].push_back(stepTensor);
      args[r].push_back(scalarF32(stepLr));
    }

    auto start = std::chrono::steady_clock::now();
    if (failed(runOnRanks(step, args, rankResults, stepOptions)))
      return checkNumerics
                 ? fail(fmt::format("step {}: stopping at the op above "
                                    "(--check-numerics)",
                                    t))
                 : 1;
    double seconds = std::chrono::duration<double>(
                         std::chrono::steady_clock::now() - start)
                         .count();
    const StepResults &slots = *stepResults;
    for (int64_t r = 0; r < ranks; ++r)
      for (unsigned i = 0; i < n; ++i) {
        state[r][i] = std::move(rankResults[r][slots.params[i]]);
        state[r][n + i] = std::move(rankResults[r][slots.expAvg[i]]);
        state[r][2 * n + i] = std::move(rankResults[r][slots.expAvgSq[i]]);
      }
    // The metrics and expert counts are the global batch's on every rank.
    std::vector<HostTensor> &results = rankResults[0];
    const HostTensor &counts = results[slots.expertCounts];
    double loss = results[slots.loss].f32[0],
           ce = results[slots.ceLoss].f32[0],
           aux = results[slots.auxLoss].f32[0],
           z = results[slots.zLoss].f32[0],
           norm = results[slots.gradNorm].f32[0];
    double tokensPerSecond = globalBatch * seq / seconds;
    std::string countText;
    for (int64_t l = 0; l < counts.shape[0]; ++l) {
      countText += l ? " | " : "";
      for (int64_t e = 0; e < counts.shape[1]; ++e)
        countText += fmt::format("{}{}", e ? " " : "",
                                 counts.i64[l * counts.shape[1] + e]);
    }
    llvm::outs() << fmt::format(
        "step {:4d}  loss {:.6f}  ce {:.6f}  aux {:.6f}  z {:.6f}  "
        "grad_norm {:.4f}  lr {:.3e}  {:.0f} tokens/s  experts [{}]\n",
        t, loss, ce, aux, z, norm, stepLr, tokensPerSecond, countText);
    std::string nonfiniteText;
    switch (nonfinite.decide(t, loss, norm, nonfiniteText)) {
    case moert::NonfiniteSteps::Outcome::Finite:
      break;
    case moert::NonfiniteSteps::Outcome::Skipped:
      llvm::outs() << nonfiniteText << "\n";
      break;
    case moert::NonfiniteSteps::Outcome::Stop:
      return fail(nonfiniteText);
    }
    std::string validText;
    bool evalNow = !validPath.empty() &&
                   (t == steps || (evalInterval > 0 && t % evalInterval == 0));
    if (evalNow) {
      double validLoss;
      if (failed(evaluate(validLoss)))
        return 1;
      validText = fmt::format("{:.9g}", validLoss);
      llvm::outs() << fmt::format("step {:4d}  valid loss {:.6f} ({} blocks)\n",
                                  t, validLoss,
                                  valid.shape[0] / globalBatch * globalBatch);
    }
    if (!logPath.empty()) {
      logText += fmt::format("{},{:.9g},{:.9g},{:.9g},{:.9g},{:.9g},{:.9g},"
                             "{:.1f},{}\n",
                             t, loss, ce, aux, z, norm, stepLr, tokensPerSecond,
                             validText);
      if (moert::Status s = moert::writeFileAtomically(
              logPath.getValue(), {{logText.data(), logText.size()}});
          !s.ok())
        return fail("--log: " + s.message());
    }
    if (!dumpDir.empty()) {
      std::string prefix = fmt::format("step_{}/", t);
      for (auto [name, slot] :
           {std::pair{"loss", slots.loss}, std::pair{"ce_loss", slots.ceLoss},
            std::pair{"aux_loss", slots.auxLoss},
            std::pair{"z_loss", slots.zLoss},
            std::pair{"grad_norm", slots.gradNorm},
            std::pair{"expert_counts", slots.expertCounts}})
        if (!dumpTensor(prefix + name + ".pb", results[slot], error))
          return fail(error);
      if (!dumpTensor(prefix + "lr.pb", scalarF32(stepLr), error))
        return fail(error);
      for (unsigned i = 0; i < n; ++i) {
        llvm::Expected<HostTensor> gradient = gather(
            rankResults, [&](unsigned j) { return slots.gradients[j]; }, i,
            fmt::format("step {} gradient", t));
        if (!gradient)
          return fail(llvm::toString(gradient.takeError()));
        if (!dumpTensor(prefix + "grad/" + names[i] + ".pb", *gradient,
                        error))
          return fail(error);
      }
    }
  }
  // The final global parameters and moments.
  std::vector<HostTensor> finalParams(n);
  if (!dumpDir.empty() || !exportHfDir.empty())
    for (unsigned i = 0; i < n; ++i) {
      llvm::Expected<HostTensor> param = gather(
          state, [](unsigned j) { return j; }, i, "final parameter");
      if (!param)
        return fail(llvm::toString(param.takeError()));
      finalParams[i] = std::move(*param);
    }
  if (!dumpDir.empty())
    for (unsigned i = 0; i < n; ++i) {
      if (!dumpTensor(fmt::format("final/param/{}.pb", names[i]),
                      finalParams[i], error))
        return fail(error);
      for (auto [folder, offset] :
           {std::pair{"exp_avg", n}, std::pair{"exp_avg_sq", 2 * n}}) {
        llvm::Expected<HostTensor> moment = gather(
            state, [offset = offset](unsigned j) { return offset + j; }, i,
            fmt::format("final {}", folder));
        if (!moment)
          return fail(llvm::toString(moment.takeError()));
        if (!dumpTensor(fmt::format("final/{}/{}.pb", folder, names[i]),
                        *moment, error))
          return fail(error);
      }
    }
  if (!exportHfDir.empty()) {
    std::vector<moert::ExportedParameter> parameters;
    for (unsigned i = 0; i < n; ++i)
      parameters.push_back(
          {names[i], finalParams[i].shape, finalParams[i].f32.data()});
    std::string text;
    llvm::raw_string_ostream os(text);
    os << llvm::json::Value(llvm::json::Object(*hfBinding->getObject("config")));
    if (moert::Status s = moert::exportHfCheckpoint(
            exportHfDir.getValue(), parameters, text, moert::TensorDtype::F32,
            uint64_t{5} << 30);
        !s.ok())
      return fail(s.message());
    llvm::outs() << fmt::format("exported '{}' (Hugging Face, fp32)\n",
                                exportHfDir.getValue());
  }
  return 0;
}
