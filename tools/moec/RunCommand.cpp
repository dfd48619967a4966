//===- RunCommand.cpp - `moec run` ----------------------------------------===//
//
// `moec run MODEL.onnx --input ids.pb [--input mask.pb] [--output logits.pb]
// [--expect golden.pb --tolerance T]`: runs the model's forward on the CPU
// reference executor. Parameters are bound by name to the model's
// initializers; the graph inputs (token ids, and an attention mask for a
// model that takes one) come from onnx.TensorProto files (the ONNX test
// data format), in the graph's order; a mask left out is all ones, and one
// with padding is refused by the executor. With --expect, prints the max abs and relative L2 error
// against the golden output and fails when the relative L2 error exceeds
// the tolerance. With --init-from DIR the parameters come from a Hugging
// Face checkpoint folder instead (checked as moec compile checks it): moec's
// forward on a checkpoint that transformers also loads.
//
//===----------------------------------------------------------------------===//

#include "Commands.h"
#include "HfBinding.h"
#include "ModelLoading.h"

#include "dialects/Moe/IR/MoeDialect.h"

#include "moec/Import/Onnx.h"
#include "moec/Reference/Executor.h"
#include "moert/HfCheckpoint.h"

#include "mlir/IR/MLIRContext.h"
#include "llvm/Support/raw_ostream.h"

#include <fmt/format.h>

#include <cmath>

using namespace mlir;
namespace cl = llvm::cl;

cl::SubCommand moec::cli::runCommand(
    "run", "run a model's forward on the CPU reference executor");

namespace {
cl::opt<std::string> modelPath(cl::Positional, cl::desc("<model.onnx>"),
                               cl::Required, cl::sub(moec::cli::runCommand));
cl::list<std::string> inputPaths(
    "input",
    cl::desc("a graph input (onnx.TensorProto file), once per input in the "
             "graph's order: token ids, then an attention mask if the model "
             "takes one (default: all ones)"),
    cl::value_desc("file"), cl::OneOrMore, cl::sub(moec::cli::runCommand));
cl::opt<std::string> outputPath(
    "output", cl::desc("write the logits here (onnx.TensorProto file)"),
    cl::value_desc("file"), cl::sub(moec::cli::runCommand));
cl::opt<std::string> expectPath(
    "expect", cl::desc("compare the logits with this golden tensor"),
    cl::value_desc("file"), cl::sub(moec::cli::runCommand));
cl::opt<std::string> initFrom(
    "init-from",
    cl::desc("take the parameters from this Hugging Face checkpoint folder"),
    cl::value_desc("dir"), cl::sub(moec::cli::runCommand));
cl::opt<double> tolerance(
    "tolerance", cl::desc("largest relative L2 error --expect accepts"),
    cl::init(1e-5), cl::sub(moec::cli::runCommand));

int fail(const std::string &message) {
  llvm::errs() << "error: " << message << "\n";
  return 1;
}
} // namespace

int moec::cli::runRun(const ImportFlags &modelFlags) {
  if (!std::isfinite(tolerance) || tolerance < 0)
    return fail(fmt::format("--tolerance {} must be a finite relative error "
                            "of at least 0",
                            tolerance.getValue()));
  if (!outputPath.empty()) {
    std::vector<std::string> inputs(inputPaths.begin(), inputPaths.end());
    inputs.push_back(modelPath);
    inputs.push_back(expectPath);
    if (llvm::Error err = checkNotAnInput("--output", outputPath, inputs))
      return fail(llvm::toString(std::move(err)));
  }
  MLIRContext context;
  DiagnosticPrinter diagnostics(context);
  OwningOpRef<ModuleOp> module =
      loadModel(context, modelPath, modelFlags, /*raise=*/true,
                /*requireComplete=*/true);
  if (!module)
    return 1;
  func::FuncOp forward = getForward(*module);
  if (!forward)
    return 1;

  std::string error;
  // The graph inputs, in order; those left out that the model only needs to
  // be all ones (an attention mask) are ones of the token ids' shape.
  std::vector<HostTensor> inputs;
  for (const std::string &path : inputPaths) {
    if (!readTensorProtoFile(path, inputs.emplace_back(), error))
      return fail(error);
    if (llvm::is_contained(inputs.back().shape, 0))
      return fail(fmt::format("'{}' has shape {}: an input needs at least one "
                              "sequence of at least one token",
                              path, inputs.back().shapeString()));
  }
  unsigned numInputs = 0;
  for (unsigned i = 0; i < forward.getNumArguments(); ++i) {
    auto name = forward.getArgAttrOfType<StringAttr>(
        i, moe::MoeDialect::getInputAttrName());
    if (!name)
      continue;
    if (++numInputs <= inputs.size())
      continue;
    if (!forward.getArgAttr(i, moe::MoeDialect::getAllOnesAttrName()))
      return fail(fmt::format("the model's input '{}' needs a value: give "
                              "--input once per graph input, in order",
                              name.getValue().str()));
    HostTensor ones = HostTensor::ints(inputs.front().shape);
    std::fill(ones.i64.begin(), ones.i64.end(), 1);
    inputs.push_back(std::move(ones));
    llvm::errs() << fmt::format("note: input '{}' is all ones (no padding)\n",
                                name.getValue().str());
  }
  if (inputs.size() > numInputs)
    return fail(fmt::format("{} --input files for a model of {} inputs",
                            inputs.size(), numInputs));
  std::unique_ptr<OnnxWeights> weights;
  std::unique_ptr<moert::HfCheckpoint> checkpoint;
  if (initFrom.empty()) {
    weights = OnnxWeights::open(modelPath, error);
    if (!weights)
      return fail(error);
  } else {
    FailureOr<ModelConfig> config = inferModelConfig(forward);
    if (failed(config))
      return 1;
    TrainingJob job;
    job.initFrom = initFrom;
    llvm::Expected<llvm::json::Object> binding =
        bindHfCheckpoint(forward, *config, job);
    if (!binding)
      return fail(llvm::toString(binding.takeError()));
    if (moert::Status s = moert::HfCheckpoint::open(initFrom.getValue(),
                                                    checkpoint);
        !s.ok())
      return fail(s.message());
  }

  std::vector<HostTensor> arguments;
  size_t nextInput = 0;
  for (unsigned i = 0; i < forward.getNumArguments(); ++i) {
    if (auto name = forward.getArgAttrOfType<StringAttr>(
            i, moe::MoeDialect::getParameterAttrName())) {
      HostTensor value;
      if (checkpoint) {
        auto type = cast<RankedTensorType>(forward.getArgument(i).getType());
        std::vector<int64_t> shape(type.getShape().begin(),
                                   type.getShape().end());
        value = HostTensor::floats(shape);
        if (moert::Status s = checkpoint->readBlock(
                name.str(), shape, shape,
                std::vector<int64_t>(shape.size(), 0), shape,
                moert::TensorDtype::F32,
                reinterpret_cast<char *>(value.f32.data()));
            !s.ok())
          return fail(s.message());
      } else if (!loadParameter(*weights, forward, name.getValue(), value,
                                error)) {
        return fail(error);
      }
      arguments.push_back(std::move(value));
    } else if (forward.getArgAttr(i, moe::MoeDialect::getInputAttrName())) {
      arguments.push_back(inputs[nextInput++]);
    } else {
      return fail(fmt::format("argument {} of forward is neither an input "
                              "nor a parameter",
                              i));
    }
  }

  std::vector<HostTensor> results;
  if (failed(reference::execute(forward, arguments, results)))
    return 1;
  if (results.empty())
    return fail("forward returns nothing");
  const HostTensor &logits = results.front();
  llvm::outs() << fmt::format("logits: shape {}\n", logits.shapeString());

  if (!outputPath.empty() &&
      !writeTensorProtoFile(outputPath, "logits", logits, error))
    return fail(error);

  if (!expectPath.empty()) {
    HostTensor golden;
    if (!readTensorProtoFile(expectPath, golden, error))
      return fail(error);
    if (golden.shape != logits.shape)
      return fail(fmt::format("golden '{}' has shape {} but the logits have "
                              "shape {}",
                              expectPath.getValue(), golden.shapeString(),
                              logits.shapeString()));
    reference::ErrorStats stats = reference::compare(logits, golden);
    llvm::outs() << fmt::format(
        "vs golden: max abs error {:.3e}, relative L2 error {:.3e} "
        "(tolerance {:.1e})\n",
        stats.maxAbs, stats.relativeL2, tolerance.getValue());
    if (!(stats.relativeL2 <= tolerance))
      return fail(fmt::format("relative L2 error {:.3e} exceeds the "
                              "tolerance {:.1e}",
                              stats.relativeL2, tolerance.getValue()));
  }
  return 0;
}
