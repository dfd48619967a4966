//===- ImportCommand.cpp - `moec import` ----------------------------------===//
//
// `moec import MODEL.onnx [-o out.mlir] [--no-raise] [--require-complete]
// [--summary]`: imports an ONNX model, raises it to moe ops and prints the IR
// (or writes it atomically to -o), and with --summary a short description of
// the model's geometry.
//
//===----------------------------------------------------------------------===//

#include "Commands.h"
#include "ModelLoading.h"

#include "moec/Analysis/ModelConfig.h"

#include "mlir/IR/MLIRContext.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/raw_ostream.h"

#include <fmt/format.h>

using namespace mlir;
namespace cl = llvm::cl;

cl::SubCommand moec::cli::importCommand(
    "import", "import an ONNX model into moe IR and print it");

namespace {
cl::opt<std::string> inputPath(cl::Positional, cl::desc("<model.onnx>"),
                               cl::Required, cl::sub(moec::cli::importCommand));
cl::opt<std::string> outputPath("o", cl::desc("write the IR to this file"),
                                cl::value_desc("file"),
                                cl::sub(moec::cli::importCommand));
cl::opt<bool> noRaise("no-raise",
                      cl::desc("keep the faithful import, raise nothing"),
                      cl::sub(moec::cli::importCommand));
cl::opt<bool> requireComplete(
    "require-complete",
    cl::desc("fail if any ONNX node could not be raised to moe ops"),
    cl::sub(moec::cli::importCommand));
cl::opt<bool> summary("summary",
                      cl::desc("print the model's geometry instead of its IR"),
                      cl::sub(moec::cli::importCommand));

void printSummary(const moec::ModelConfig &c, llvm::raw_ostream &os) {
  os << fmt::format(
      "model: {} layers, hidden {}, intermediate {}, vocabulary {}\n"
      "attention: {} heads, {} key/value heads, head dim {}, rope theta {:g}"
      "{}\n"
      "experts: {} per layer, top-{}\n"
      "parameters: {} ({} in experts, {} active per token)\n",
      c.numLayers, c.hiddenSize, c.intermediateSize, c.vocabSize, c.numHeads,
      c.numKeyValueHeads, c.headDim, c.ropeTheta,
      c.slidingWindow ? fmt::format(", sliding window {}", *c.slidingWindow)
                      : std::string(),
      c.numExperts, c.topK, c.numParameters, c.numExpertParameters,
      c.numParameters - c.numExpertParameters +
          c.numExpertParameters / c.numExperts * c.topK);
  os << "ops:";
  for (const auto &[name, count] : c.opCounts)
    os << " " << name << " x" << count;
  os << "\n";
}
} // namespace

int moec::cli::runImport(const ImportFlags &modelFlags) {
  MLIRContext context;
  DiagnosticPrinter diagnostics(context);
  OwningOpRef<ModuleOp> module =
      loadModel(context, inputPath, modelFlags, !noRaise, requireComplete);
  if (!module)
    return 1;
  if (summary) {
    func::FuncOp forward = getForward(*module);
    if (!forward)
      return 1;
    FailureOr<ModelConfig> config = inferModelConfig(forward);
    if (failed(config))
      return 1;
    printSummary(*config, llvm::outs());
    return 0;
  }
  if (outputPath.empty() || outputPath == "-") {
    module->print(llvm::outs());
    return 0;
  }
  if (llvm::Error err = checkNotAnInput("-o", outputPath, {inputPath})) {
    llvm::errs() << "error: " << llvm::toString(std::move(err)) << "\n";
    return 1;
  }
  // Written to a temporary file and renamed: never half a file.
  if (llvm::Error err = llvm::writeToOutput(
          outputPath, [&](llvm::raw_ostream &os) -> llvm::Error {
            module->print(os);
            return llvm::Error::success();
          })) {
    llvm::errs() << "error: cannot write '" << outputPath
                 << "': " << llvm::toString(std::move(err)) << "\n";
    return 1;
  }
  return 0;
}
