//===- TrainCommand.cpp - `moec train` ------------------------------------===//
//
// `moec train MODEL --reference --tokens train.pb --steps N ...`: builds
// @init_params and @train_step from the model's raised forward
// (moe-build-init-params, moe-build-train-step), specialises them to the
// job's micro-batch and sequence length, initialises the parameters by
// running @init_params on the seed (delayed_param; or takes the model's own
// weights with --init-from-model), and runs N steps on the CPU reference
// executor, printing one line of
// metrics per step. Token blocks come from an onnx.TensorProto int64
// [blocks, seq] file; labels are the inputs (the loss shifts them) unless
// --labels gives a file of the same shape. --dump writes every step's
// metrics and gradients and the final parameters as TensorProto files, the
// layout python/moec/check_train.py reads; --log writes the metrics as CSV.
//
//===----------------------------------------------------------------------===//

#include "Commands.h"
#include "ModelLoading.h"

#include "dialects/Moe/IR/MoeOps.h"
#include "moec/Import/Onnx.h"
#include "moec/Pipelines/Pipelines.h"
#include "moec/Reference/Executor.h"
#include "moert/Schedule.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/raw_ostream.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>

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
cl::opt<int64_t> microBatchSize("micro-batch-size",
                                cl::desc("token blocks per step"),
                                cl::init(2), cl::sub(sub));
cl::opt<uint64_t> seed("seed", cl::desc("random_seed of the initialisation"),
                       cl::init(1234), cl::sub(sub));
cl::opt<double> initializerRange(
    "initializer-range", cl::desc("std of the normal initialisers"),
    cl::init(0.02), cl::sub(sub));
cl::opt<bool> initFromModel("init-from-model",
                            cl::desc("start from the model file's weights "
                                     "instead of delayed_param"),
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
cl::opt<std::string> loadBalancing(
    "moe-load-balancing",
    cl::desc("aux_loss, sinkhorn, balanced or none"), cl::init("aux_loss"),
    cl::sub(sub));
cl::opt<double> auxLossCoef("router-aux-loss-coef",
                            cl::desc("weight of the load-balancing loss"),
                            cl::init(0.02), cl::sub(sub));
cl::opt<double> zLossCoef("router-z-loss-coef",
                          cl::desc("weight of the router z-loss"),
                          cl::init(0.0), cl::sub(sub));
cl::opt<double> weightDecay("weight-decay", cl::desc("AdamW weight decay"),
                            cl::init(0.1), cl::sub(sub));
cl::opt<double> beta1("beta1", cl::init(0.9), cl::desc("AdamW beta1"),
                      cl::sub(sub));
cl::opt<double> beta2("beta2", cl::init(0.95), cl::desc("AdamW beta2"),
                      cl::sub(sub));
cl::opt<double> adamEpsilon("adam-epsilon", cl::init(1e-8),
                            cl::desc("AdamW epsilon"), cl::sub(sub));
cl::opt<double> maxGradNorm("max-grad-norm", cl::init(1.0),
                            cl::desc("gradient clipping norm (0: off)"),
                            cl::sub(sub));
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
cl::opt<bool> bf16("bf16",
                    cl::desc("forward and backward on bf16 copies of the fp32 "
                             "master weights"),
                    cl::sub(sub));
cl::opt<bool> printIr("print-ir", cl::desc("print the training step's IR"),
                      cl::sub(sub));

int fail(const std::string &message) {
  llvm::errs() << "error: " << message << "\n";
  return 1;
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

HostTensor scalarF32(double v) {
  HostTensor t = HostTensor::floats({});
  t.f32[0] = static_cast<float>(v);
  return t;
}
} // namespace

int moec::cli::runTrain() {
  if (!useReference)
    return fail("only the CPU reference executor exists so far: pass "
                "--reference");
  if (steps < 1 || microBatchSize < 1)
    return fail(fmt::format("--steps {} and --micro-batch-size {} must be "
                            "positive",
                            steps.getValue(), microBatchSize.getValue()));
  MLIRContext context;
  DiagnosticPrinter diagnostics(context);
  OwningOpRef<ModuleOp> module =
      loadModel(context, modelPath, /*raise=*/true, /*requireComplete=*/true);
  if (!module)
    return 1;

  // Data.
  std::string error;
  HostTensor tokens, labels;
  if (!readTensorProtoFile(tokensPath, tokens, error))
    return fail(error);
  if (tokens.isFloat() || tokens.shape.size() != 2 || tokens.shape[0] < 1)
    return fail(fmt::format("'{}' must hold int64 token blocks [blocks, seq] "
                            "but has shape {}",
                            tokensPath.getValue(), tokens.shapeString()));
  labels = tokens;
  if (!labelsPath.empty()) {
    if (!readTensorProtoFile(labelsPath, labels, error))
      return fail(error);
    if (labels.shape != tokens.shape || labels.isFloat())
      return fail(fmt::format("labels {} must be int64 with the tokens' shape "
                              "{}",
                              labels.shapeString(), tokens.shapeString()));
  }
  int64_t blocks = tokens.shape[0], seq = tokens.shape[1];
  HostTensor valid;
  if (!validPath.empty()) {
    if (!readTensorProtoFile(validPath, valid, error))
      return fail(error);
    if (valid.isFloat() || valid.shape.size() != 2 || valid.shape[1] != seq ||
        valid.shape[0] < microBatchSize)
      return fail(fmt::format("'{}' must hold at least {} int64 blocks of {} "
                              "tokens but has shape {}",
                              validPath.getValue(),
                              microBatchSize.getValue(), seq,
                              valid.shapeString()));
  }

  moe::BuildTrainStepOptions options;
  options.loadBalancing = loadBalancing;
  options.auxLossCoef = auxLossCoef;
  options.zLossCoef = zLossCoef;
  options.beta1 = beta1;
  options.beta2 = beta2;
  options.epsilon = adamEpsilon;
  options.weightDecay = weightDecay;
  options.maxGradNorm = maxGradNorm;
  options.returnGradients = !dumpDir.empty();
  options.computeType = bf16 ? "bf16" : "f32";
  PassManager pm(&context);
  moe::BuildInitParamsOptions initOptions;
  initOptions.initializerRange = initializerRange;
  pm.addPass(moe::createBuildInitParams(initOptions));
  buildTrainStepPipeline(pm, options);
  // Static shapes for this job, as a compiled step will have them.
  moe::SpecializeShapesOptions shapes;
  shapes.batch = microBatchSize;
  shapes.seq = seq;
  pm.addNestedPass<func::FuncOp>(moe::createSpecializeShapes(shapes));
  if (failed(pm.run(*module)))
    return 1;
  auto step = module->lookupSymbol<func::FuncOp>("train_step");
  auto evalStep = module->lookupSymbol<func::FuncOp>("eval_step");
  if (printIr)
    step->print(llvm::outs());

  // Parameters and optimizer state, in the step's argument order.
  unsigned numArgs = step.getNumArguments();
  unsigned n = (numArgs - 4) / 3;
  std::vector<HostTensor> state(3 * n);
  std::vector<std::string> names(n);
  for (unsigned i = 0; i < n; ++i)
    names[i] = step.getArgAttrOfType<StringAttr>(
                       i, moe::MoeDialect::getParameterAttrName())
                   .str();
  if (initFromModel) {
    std::unique_ptr<OnnxWeights> weights = OnnxWeights::open(modelPath, error);
    if (!weights)
      return fail(error);
    for (unsigned i = 0; i < n; ++i)
      if (!weights->load(names[i], state[i], error))
        return fail(error);
  } else {
    // delayed_param: the compiler's @init_params, run on the seed.
    auto init = module->lookupSymbol<func::FuncOp>("init_params");
    HostTensor seedTensor = HostTensor::ints({});
    seedTensor.i64[0] = static_cast<int64_t>(seed.getValue());
    std::vector<HostTensor> initial;
    if (failed(reference::execute(init, {seedTensor}, initial)))
      return 1;
    for (unsigned i = 0; i < n; ++i)
      state[i] = std::move(initial[i]);
  }
  for (unsigned i = 0; i < n; ++i) {
    state[n + i] = HostTensor::floats(state[i].shape);
    state[2 * n + i] = HostTensor::floats(state[i].shape);
  }

  std::unique_ptr<llvm::raw_fd_ostream> log;
  if (!logPath.empty()) {
    std::error_code ec;
    log = std::make_unique<llvm::raw_fd_ostream>(logPath, ec);
    if (ec)
      return fail(fmt::format("cannot write '{}': {}", logPath.getValue(),
                              ec.message()));
    *log << "step,loss,ce_loss,aux_loss,z_loss,grad_norm,lr,tokens_per_s,"
            "valid_loss\n";
  }

  // The mean loss over the validation blocks, micro-batch by micro-batch
  // (a remainder smaller than a micro-batch is left out).
  auto evaluate = [&](double &meanLoss) -> LogicalResult {
    int64_t batches = valid.shape[0] / microBatchSize, batch = microBatchSize;
    double sum = 0.0;
    for (int64_t i = 0; i < batches; ++i) {
      HostTensor ids = HostTensor::ints({batch, seq});
      std::copy_n(&valid.i64[i * batch * seq], batch * seq, ids.i64.begin());
      std::vector<HostTensor> args(state.begin(), state.begin() + n);
      args.push_back(ids);
      args.push_back(ids);
      std::vector<HostTensor> results;
      if (failed(reference::execute(evalStep, args, results)))
        return failure();
      sum += results[0].f32[0];
    }
    meanLoss = sum / batches;
    return success();
  };

  int64_t total = totalSteps > 0 ? totalSteps.getValue() : steps.getValue();
  int64_t batch = microBatchSize;
  for (int64_t t = 1; t <= steps; ++t) {
    HostTensor ids = HostTensor::ints({batch, seq});
    HostTensor lab = HostTensor::ints({batch, seq});
    for (int64_t b = 0; b < batch; ++b) {
      int64_t block = ((t - 1) * batch + b) % blocks;
      std::copy_n(&tokens.i64[block * seq], seq, &ids.i64[b * seq]);
      std::copy_n(&labels.i64[block * seq], seq, &lab.i64[b * seq]);
    }
    double stepLr = moert::LrSchedule{lr, minLr, warmupSteps, total}.at(t);
    std::vector<HostTensor> args(state.begin(), state.end());
    args.push_back(ids);
    args.push_back(lab);
    HostTensor stepTensor = HostTensor::ints({});
    stepTensor.i64[0] = t;
    args.push_back(stepTensor);
    args.push_back(scalarF32(stepLr));

    auto start = std::chrono::steady_clock::now();
    std::vector<HostTensor> results;
    if (failed(reference::execute(step, args, results)))
      return 1;
    double seconds = std::chrono::duration<double>(
                         std::chrono::steady_clock::now() - start)
                         .count();
    for (unsigned i = 0; i < 3 * n; ++i)
      state[i] = std::move(results[i]);
    const HostTensor &counts = results[3 * n + 5];
    double loss = results[3 * n].f32[0], ce = results[3 * n + 1].f32[0],
           aux = results[3 * n + 2].f32[0], z = results[3 * n + 3].f32[0],
           norm = results[3 * n + 4].f32[0];
    double tokensPerSecond = batch * seq / seconds;
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
                                  valid.shape[0] / microBatchSize *
                                      microBatchSize);
    }
    if (log)
      *log << fmt::format("{},{:.9g},{:.9g},{:.9g},{:.9g},{:.9g},{:.9g},{:.1f},{}\n",
                          t, loss, ce, aux, z, norm, stepLr, tokensPerSecond,
                          validText);
    if (!dumpDir.empty()) {
      std::string prefix = fmt::format("step_{}/", t);
      const char *metricNames[] = {"loss", "ce_loss", "aux_loss", "z_loss",
                                   "grad_norm", "expert_counts"};
      for (unsigned m = 0; m < 6; ++m)
        if (!dumpTensor(prefix + metricNames[m] + ".pb", results[3 * n + m],
                        error))
          return fail(error);
      if (!dumpTensor(prefix + "lr.pb", scalarF32(stepLr), error))
        return fail(error);
      for (unsigned i = 0; i < n; ++i)
        if (!dumpTensor(prefix + "grad/" + names[i] + ".pb",
                        results[3 * n + 6 + i], error))
          return fail(error);
    }
  }
  if (!dumpDir.empty())
    for (unsigned i = 0; i < n; ++i)
      if (!dumpTensor("final/param/" + names[i] + ".pb", state[i], error))
        return fail(error);
  return 0;
}
