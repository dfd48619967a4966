//===- moec-opt.cpp - Run moec passes on .mlir files ----------------------===//
//
// mlir-opt with moec's dialects, passes and pipelines registered; the tool
// lit tests drive.
//
//===----------------------------------------------------------------------===//

#include "moec/InitAll.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"

int main(int argc, char **argv) {
  mlir::DialectRegistry registry;
  moec::registerAllDialects(registry);
  moec::registerAllPasses();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "moec optimizer driver\n", registry));
}
