// RUN: not moec-opt %s -moe-build-train-step -moe-expert-parallel="world-size=6 expert-parallel-degree=3" 2>&1 | FileCheck %s --check-prefix=EXPERTS
// RUN: not moec-opt %s -moe-build-train-step -moe-expert-parallel="world-size=6 expert-parallel-degree=4" 2>&1 | FileCheck %s --check-prefix=WORLD
// RUN: not moec-opt %s -moe-build-train-step -moe-expert-parallel="world-size=8 expert-parallel-degree=2 hybrid-shard-degree=3" 2>&1 | FileCheck %s --check-prefix=SHARD
// RUN: not moec-opt %s -moe-build-train-step -moe-expert-parallel="world-size=2 expert-parallel-degree=2 dispatcher=ring" 2>&1 | FileCheck %s --check-prefix=DISPATCHER
// RUN: not moec-opt %s -moe-expert-parallel="world-size=2 expert-parallel-degree=2" 2>&1 | FileCheck %s --check-prefix=NOSTEP

// Tests that invalid layouts name the rule and the numbers.
// EXPERTS: error: invalid layout: expert_parallel_degree 3 does not divide num_local_experts 4
// WORLD: error: invalid layout: expert_parallel_degree 4 does not divide world_size 6
// SHARD: error: invalid layout: hybrid_shard_degree 3 does not divide world_size / expert_parallel_degree = 4
// DISPATCHER: error: unknown dispatcher 'ring'; expected all_to_all or all_gather
// NOSTEP: error: moe-expert-parallel needs a function 'train_step' (run moe-build-train-step first)
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
