//===- InitAll.cpp - Register moec's dialects and passes ------------------===//
//
// The registration functions of moec/InitAll.h.
//
//===----------------------------------------------------------------------===//

#include "moec/InitAll.h"

#include "dialects/Moe/IR/MoeOps.h"
#include "dialects/Moe/Transforms/Passes.h"
#include "moec/Conversion/OnnxToMoe/Passes.h"
#include "moec/Conversion/MoeToShard/Passes.h"
#include "moec/Pipelines/Pipelines.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Shard/IR/ShardDialect.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Transforms/Passes.h"

void moec::registerAllDialects(mlir::DialectRegistry &registry) {
  registry.insert<mlir::moe::MoeDialect, mlir::arith::ArithDialect,
                  mlir::func::FuncDialect, mlir::linalg::LinalgDialect,
                  mlir::shard::ShardDialect,
                  mlir::tensor::TensorDialect>();
}

void moec::registerAllPasses() {
  mlir::registerCanonicalizerPass();
  mlir::registerCSEPass();
  mlir::moe::registerMoePasses();
  registerOnnxToMoePasses();
  registerMoeToShardPasses();
  registerPipelines();
}
