// RUN: not moec-opt %s -moe-build-train-step="load-balancing=none" -moe-hybrid-shard="world-size=8 hybrid-shard-degree=3" 2>&1 | FileCheck %s --check-prefix=DIVIDE
// RUN: not moec-opt %s -moe-build-train-step="load-balancing=none" -moe-hybrid-shard="world-size=8 hybrid-shard-degree=2 sharding-strategy=full_shard" 2>&1 | FileCheck %s --check-prefix=FULL
// RUN: not moec-opt %s -moe-build-train-step="load-balancing=none" -moe-hybrid-shard="world-size=8 expert-parallel-degree=3" 2>&1 | FileCheck %s --check-prefix=EXPERTS
// RUN: not moec-opt %s -moe-build-train-step="load-balancing=none" -moe-hybrid-shard="world-size=4 sharding-strategy=zero3" 2>&1 | FileCheck %s --check-prefix=STRATEGY
// RUN: not moec-opt %s -moe-build-train-step="load-balancing=aux_loss" -moe-hybrid-shard="world-size=2" 2>&1 | FileCheck %s --check-prefix=AUX
// RUN: not moec-opt %s -moe-hybrid-shard="world-size=2" 2>&1 | FileCheck %s --check-prefix=NOSTEP

// Tests that invalid layouts fail with the rule and the numbers.
// DIVIDE: error: hybrid_shard_degree 3 does not divide world_size / expert_parallel_degree = 8
// FULL: error: sharding_strategy full_shard shards over all world_size / expert_parallel_degree = 8 ranks, but hybrid_shard_degree is 2
// EXPERTS: error: expert_parallel_degree 3 does not divide num_local_experts 4
// Tests that the typed sharding-strategy option refuses a value it does not know.
// STRATEGY: for the --sharding-strategy option: Cannot find option named 'zero3'!
// Tests that the aux loss, whose statistics moe-expert-parallel gathers, is refused.
// AUX: error: 'moe.load_balancing_loss' op needs the router statistics of all 2 ranks: run moe-expert-parallel first
// NOSTEP: error: moe-hybrid-shard needs @train_step: run moe-build-train-step first

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
