// RUN: split-file %s %t
// RUN: not moec-opt %t/forward.mlir -moe-build-train-step -moe-expert-parallel="world-size=6 expert-parallel-degree=3" 2>&1 | FileCheck %s --check-prefix=EXPERTS
// RUN: not moec-opt %t/forward.mlir -moe-build-train-step -moe-expert-parallel="world-size=6 expert-parallel-degree=4" 2>&1 | FileCheck %s --check-prefix=WORLD
// RUN: not moec-opt %t/forward.mlir -moe-build-train-step -moe-expert-parallel="world-size=8 expert-parallel-degree=2 hybrid-shard-degree=3" 2>&1 | FileCheck %s --check-prefix=SHARD
// RUN: not moec-opt %t/forward.mlir -moe-build-train-step -moe-expert-parallel="world-size=2 expert-parallel-degree=2 dispatcher=ring" 2>&1 | FileCheck %s --check-prefix=DISPATCHER
// RUN: not moec-opt %t/forward.mlir -moe-expert-parallel="world-size=2 expert-parallel-degree=2" 2>&1 | FileCheck %s --check-prefix=NOSTEP
// RUN: moec-opt %t/step.mlir -split-input-file -moe-expert-parallel="world-size=2 expert-parallel-degree=2" -verify-diagnostics
// RUN: not moec-opt %t/forward.mlir -moe-build-train-step -moe-expert-parallel="world-size=2 sharding-strategy=zero" 2>&1 | FileCheck %s --check-prefix=STRATEGY
// RUN: not moec-opt %t/no-step.mlir -moe-expert-parallel="world-size=2 expert-parallel-degree=2 global-token-shuffle" 2>&1 | FileCheck %t/no-step.mlir

//--- forward.mlir
// Tests that invalid layouts name the rule and the numbers.
// EXPERTS: error: invalid layout: expert_parallel_degree 3 does not divide num_local_experts 4
// WORLD: error: invalid layout: expert_parallel_degree 4 does not divide world_size 6
// SHARD: error: invalid layout: hybrid_shard_degree 3 does not divide world_size / expert_parallel_degree = 4
// Tests that the typed options refuse a value they do not know.
// DISPATCHER: for the --dispatcher option: Cannot find option named 'ring'!
// NOSTEP: error: moe-expert-parallel needs a function 'train_step' (run moe-build-train-step first)
// STRATEGY: for the --sharding-strategy option: Cannot find option named 'zero'!
func.func @forward(%ids: tensor<2x8xi64> {moe.input = "input_ids"},
                   %table: tensor<64x16xf32> {moe.parameter = "embed.weight"},
                   %router: tensor<4x16xf32> {moe.parameter = "gate.weight"},
                   %gate_up: tensor<4x32x16xf32> {moe.parameter = "experts.gate_up_proj"},
                   %down: tensor<4x16x16xf32> {moe.parameter = "experts.down_proj"},
                   %head: tensor<64x16xf32> {moe.parameter = "lm_head.weight"})
    -> (tensor<2x8x64xf32> {moe.output = "logits"}) {
  %h = moe.embedding %table[%ids] : (tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<2x8x16xf32>
  %l = moe.linear %h, %router : (tensor<2x8x16xf32>, tensor<4x16xf32>) -> tensor<2x8x4xf32>
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<2x8x4xf32>) -> (tensor<2x8x2xf32>, tensor<2x8x2xi64>)
  %y = moe.experts %h, %g, %e, %gate_up, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<2x8x16xf32>, tensor<2x8x2xf32>, tensor<2x8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<2x8x16xf32>
  %o = moe.lm_head %y, %head : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
  return %o : tensor<2x8x64xf32>
}

//--- step.mlir

// Tests that the existing mesh must be the layout's.
// expected-error@+1 {{'shard.grid' op has shape 1x1x4 but the layout's mesh (R, H, P) is 1x1x2}}
shard.grid @mesh(shape = 1x1x4)
func.func @train_step(%l: tensor<8x4xf32>) -> tensor<8x2xi64> {
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<none>} : (tensor<8x4xf32>) -> (tensor<8x2xf32>, tensor<8x2xi64>)
  return %e : tensor<8x2xi64>
}

// -----

// Tests that expert weights must be parameters of the step.
func.func @train_step(%x: tensor<8x16xf32>, %l: tensor<8x4xf32>, %gu: tensor<4x32x16xf32> {moe.parameter = "gate_up"}, %down: tensor<4x16x16xf32> {moe.parameter = "down"}) -> tensor<8x16xf32> {
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<none>} : (tensor<8x4xf32>) -> (tensor<8x2xf32>, tensor<8x2xi64>)
  %gu2 = arith.addf %gu, %gu : tensor<4x32x16xf32>
  // expected-error@+1 {{'moe.experts' op takes an expert weight that is not a moe.parameter argument of @train_step; moe-expert-parallel cannot split it}}
  %y = moe.experts %x, %g, %e, %gu2, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<8x16xf32>, tensor<8x2xf32>, tensor<8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<8x16xf32>
  return %y : tensor<8x16xf32>
}

// -----

// Tests that an expert parameter's moments have its expert dimension.
// expected-error@+1 {{'func.func' op expert argument #4 has type 'tensor<2x32x16xf32>'; moe-expert-parallel needs its dimension 0 to be the 4 experts}}
func.func @train_step(%x: tensor<8x16xf32>, %l: tensor<8x4xf32>, %gu: tensor<4x32x16xf32> {moe.parameter = "gate_up"}, %down: tensor<4x16x16xf32> {moe.parameter = "down"}, %m: tensor<2x32x16xf32> {moe.exp_avg = "gate_up"}) -> tensor<8x16xf32> {
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<none>} : (tensor<8x4xf32>) -> (tensor<8x2xf32>, tensor<8x2xi64>)
  %y = moe.experts %x, %g, %e, %gu, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<8x16xf32>, tensor<8x2xf32>, tensor<8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<8x16xf32>
  return %y : tensor<8x16xf32>
}

// -----

// Tests that an experts gradient needs its forward's dispatch.
func.func @train_step(%x: tensor<8x16xf32>, %l: tensor<8x4xf32>, %e: tensor<8x2xi64>, %gu: tensor<4x32x16xf32> {moe.parameter = "gate_up"}, %down: tensor<4x16x16xf32> {moe.parameter = "down"}) -> tensor<8x16xf32> {
  %g, %e2 = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<none>} : (tensor<8x4xf32>) -> (tensor<8x2xf32>, tensor<8x2xi64>)
  %y = moe.experts %x, %g, %e2, %gu, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<8x16xf32>, tensor<8x2xf32>, tensor<8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<8x16xf32>
  // expected-error@+1 {{'moe.experts_grad' op has no moe.experts with the same routing before it; moe-expert-parallel needs the forward's dispatch}}
  %dx, %dg, %dgu, %dd = moe.experts_grad %x, %g, %e, %gu, %down, %y {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<8x16xf32>, tensor<8x2xf32>, tensor<8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>, tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8x2xf32>, tensor<4x32x16xf32>, tensor<4x16x16xf32>)
  return %dx : tensor<8x16xf32>
}

// -----

// Tests that the load-balancing loss's gradient needs the loss's statistics.
func.func @train_step(%l: tensor<8x4xf32>) -> tensor<8x4xf32> {
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<8x4xf32>) -> (tensor<8x2xf32>, tensor<8x2xi64>)
  // expected-error@+1 {{'moe.load_balancing_loss_grad' op has no moe.load_balancing_loss before it}}
  %d = moe.load_balancing_loss_grad %l {k = 2 : i64, scale = 0.02 : f64} : (tensor<8x4xf32>) -> tensor<8x4xf32>
  return %d : tensor<8x4xf32>
}

// -----

// Tests that the pass needs a router with a static number of experts.
// expected-error@+1 {{'func.func' op has no moe.router with a static number of experts}}
func.func @train_step(%x: tensor<8x16xf32>) -> tensor<8x16xf32> {
  return %x : tensor<8x16xf32>
}

//--- no-step.mlir

// Tests that the token shuffle needs the step to seed its permutation.
// CHECK: error: 'func.func' op has no 'step' input; global-token-shuffle seeds its permutation with the step
func.func @train_step(%l: tensor<8x4xf32>) -> tensor<8x2xi64> {
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<none>} : (tensor<8x4xf32>) -> (tensor<8x2xf32>, tensor<8x2xi64>)
  return %e : tensor<8x2xi64>
}
