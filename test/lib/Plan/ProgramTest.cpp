//===- ProgramTest.cpp - Reading a partitioned step's footprint -----------===//
//
// readProgramFootprint on hand-written partitioned steps: the state bytes,
// each collective's kind, group, buffer bytes and calls, which calls repeat
// per micro-step, and the errors on a collective the plan cannot count.
//
//===----------------------------------------------------------------------===//

#include "moec/Plan/Program.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Shard/IR/ShardDialect.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"

#include <gtest/gtest.h>

using namespace mlir;
using namespace moec::plan;

namespace {

class ProgramTest : public ::testing::Test {
protected:
  ProgramTest() {
    context.loadDialect<func::FuncDialect, arith::ArithDialect,
                        tensor::TensorDialect, shard::ShardDialect,
                        mlir::moe::MoeDialect>();
  }

  /// The footprint of @train_step in `source`; `diagnostic` receives the
  /// error, if any.
  FailureOr<ProgramFootprint> read(llvm::StringRef source) {
    module = parseSourceString<ModuleOp>(source, &context);
    if (!module)
      return failure();
    ScopedDiagnosticHandler handler(&context, [&](Diagnostic &d) {
      diagnostic = d.str();
      return success();
    });
    return readProgramFootprint(
        module->lookupSymbol<func::FuncOp>("train_step"));
  }

  MLIRContext context;
  OwningOpRef<ModuleOp> module;
  std::string diagnostic;
};

TEST_F(ProgramTest, CountsStatesAndCollectivesByGroup) {
  // One parameter of 4x8 held as 2x8 over H = 2, cast to bf16 and gathered
  // twice (forward, backward), its gradient reduce-scattered and
  // all-reduced over the dense replicas, a loss all-reduced over the world.
  FailureOr<ProgramFootprint> footprint = read(R"mlir(
    shard.grid @mesh(shape = 2x2x1)
    func.func @train_step(%w: tensor<2x8xf32> {moe.parameter = "w"},
                          %m: tensor<2x8xf32> {moe.exp_avg = "w"},
                          %v: tensor<2x8xf32> {moe.exp_avg_sq = "w"},
                          %g: tensor<4x8xf32>, %loss: tensor<f32>,
                          %step: tensor<i64>, %lr: tensor<f32>, %norm: tensor<f32>)
        -> (tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<f32>, tensor<2x8xf32>) {
      %c = arith.truncf %w : tensor<2x8xf32> to tensor<2x8xbf16>
      %f = shard.all_gather %c on @mesh grid_axes = [1] gather_axis = 0 : tensor<2x8xbf16> -> tensor<4x8xbf16>
      %b = shard.all_gather %c on @mesh grid_axes = [1] gather_axis = 0 : tensor<2x8xbf16> -> tensor<4x8xbf16>
      %l = shard.all_reduce %loss on @mesh grid_axes = [0, 1, 2] : tensor<f32> -> tensor<f32>
      %rs = shard.reduce_scatter %g on @mesh grid_axes = [1] scatter_axis = 0 : tensor<4x8xf32> -> tensor<2x8xf32>
      %ar = shard.all_reduce %rs on @mesh grid_axes = [0, 2] : tensor<2x8xf32> -> tensor<2x8xf32>
      %p, %nm, %nv = moe.adamw %w, %ar, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-8 : f64, max_grad_norm = 1.0 : f64, weight_decay = 0.1 : f64} : tensor<2x8xf32>, tensor<i64>, tensor<f32>
      return %f, %b, %l, %p : tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<f32>, tensor<2x8xf32>
    }
  )mlir");
  ASSERT_TRUE(succeeded(footprint)) << diagnostic;
  EXPECT_EQ(footprint->state.parameters, 64);
  EXPECT_EQ(footprint->state.gradients, 64);
  EXPECT_EQ(footprint->state.optimizerStates, 128);
  EXPECT_EQ(footprint->totalBytes(CollectiveKind::AllGather, GroupKind::Shard),
            2 * 64);
  EXPECT_EQ(
      footprint->totalBytes(CollectiveKind::ReduceScatter, GroupKind::Shard),
      128);
  EXPECT_EQ(footprint->totalBytes(CollectiveKind::AllReduce,
                                  GroupKind::DenseReplica),
            64);
  EXPECT_EQ(footprint->totalBytes(CollectiveKind::AllReduce, GroupKind::World),
            4);
  for (const ProgramCollective &c : footprint->collectives) {
    // The parameter gathers and the reduce-scatter repeat per micro-step,
    // the all-reduces once per step.
    EXPECT_EQ(c.perMicroStep, c.kind != CollectiveKind::AllReduce)
        << stringifyCollectiveKind(c.kind).str();
    EXPECT_EQ(c.calls, c.kind == CollectiveKind::AllGather ? 2 : 1)
        << stringifyCollectiveKind(c.kind).str();
  }
}

TEST_F(ProgramTest, RefusesGridAxesThatNameNoGroup) {
  FailureOr<ProgramFootprint> footprint = read(R"mlir(
    shard.grid @mesh(shape = 1x2x2)
    func.func @train_step(%x: tensor<4xf32>) -> tensor<4xf32> {
      %y = shard.all_reduce %x on @mesh grid_axes = [1, 2] : tensor<4xf32> -> tensor<4xf32>
      return %y : tensor<4xf32>
    }
  )mlir");
  EXPECT_TRUE(failed(footprint));
  EXPECT_EQ(diagnostic, "'shard.all_reduce' op runs on grid axes that name no "
                        "group of the mesh; expected [2], [1], [0], [0, 2] or "
                        "[0, 1, 2]");
}

TEST_F(ProgramTest, RefusesABufferOfDynamicSize) {
  FailureOr<ProgramFootprint> footprint = read(R"mlir(
    shard.grid @mesh(shape = 2x1x1)
    func.func @train_step(%x: tensor<?xf32>) -> tensor<?xf32> {
      %y = shard.all_reduce %x on @mesh grid_axes = [0] : tensor<?xf32> -> tensor<?xf32>
      return %y : tensor<?xf32>
    }
  )mlir");
  EXPECT_TRUE(failed(footprint));
  EXPECT_EQ(diagnostic, "'shard.all_reduce' op moves a buffer of dynamic "
                        "size: the plan needs static sizes");
}

} // namespace
