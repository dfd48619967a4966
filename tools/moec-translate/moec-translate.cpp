//===- moec-translate.cpp - Print moe IR as CUDA programs -----------------===//
//
// mlir-translate with moec's printers registered, so that lit tests drive
// them (and their diagnostics) on hand-written IR:
//
//   --moe-to-cuda       the training program (@train_step after
//                       moe-plan-memory, and @init_params);
//   --moe-to-cuda-init  the initialisation program (@init_params).
//
//===----------------------------------------------------------------------===//

#include "moec/InitAll.h"
#include "moec/Target/Cuda.h"

#include "mlir/IR/DialectRegistry.h"
#include "mlir/Tools/mlir-translate/MlirTranslateMain.h"
#include "mlir/Tools/mlir-translate/Translation.h"
#include "llvm/Support/CommandLine.h"

using namespace mlir;

namespace {

llvm::cl::opt<std::string>
    modelName("cuda-model-name",
              llvm::cl::desc("--moe-to-cuda: the model name printed into "
                             "the program"),
              llvm::cl::init("model"));
llvm::cl::opt<bool> cudnnAttention(
    "cuda-cudnn-attention",
    llvm::cl::desc("--moe-to-cuda: bf16 attention on cuDNN's fused SDPA"),
    llvm::cl::init(false));

llvm::cl::opt<bool> storeParamRemainders(
    "cuda-store-param-remainders",
    llvm::cl::desc("--moe-to-cuda: keep each fp32 master with a kept bf16 "
                   "copy as the copy and a 16-bit remainder"),
    llvm::cl::init(false));

void registerCudaTranslations() {
  TranslateFromMLIRRegistration train(
      "moe-to-cuda", "print @train_step and @init_params as a CUDA program",
      [](Operation *op, llvm::raw_ostream &os) -> LogicalResult {
        auto module = dyn_cast<ModuleOp>(op);
        if (!module)
          return op->emitError() << "--moe-to-cuda needs a module";
        moec::CudaTrainProgramOptions options;
        options.modelName = modelName;
        options.cudnnAttention = cudnnAttention;
        options.storeParamRemainders = storeParamRemainders;
        moec::CudaTrainProgramSummary summary;
        return moec::emitCudaTrainProgram(module, options, os, summary);
      },
      moec::registerAllDialects);
  TranslateFromMLIRRegistration init(
      "moe-to-cuda-init", "print @init_params as a CUDA program",
      [](Operation *op, llvm::raw_ostream &os) -> LogicalResult {
        auto module = dyn_cast<ModuleOp>(op);
        if (!module)
          return op->emitError() << "--moe-to-cuda-init needs a module";
        return moec::emitCudaInitProgram(module, os);
      },
      moec::registerAllDialects);
}

} // namespace

int main(int argc, char **argv) {
  registerCudaTranslations();
  return failed(mlirTranslateMain(argc, argv, "moec translation driver\n"));
}
