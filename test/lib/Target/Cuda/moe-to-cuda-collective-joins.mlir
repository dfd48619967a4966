// RUN: moec-translate %s --moe-to-cuda --cuda-model-name=tiny | FileCheck %s

// Tests the printed collective schedule of a step whose gradients are
// all-reduced over the replicas: both reductions run on the gradient stream
// and are joined late, "w"'s right before the clipping norm that reads it,
// "o"'s (which the norm does not read) right before the launch of the
// update group that reads it, after the first group's launch.

// CHECK-LABEL: void segment1(
// CHECK: moert::kernels::adamw<float, float>(ctx, group[[G0:[0-9]+]],
// CHECK-LABEL: void segment2(
// CHECK: moert::kernels::adamw<float, float>(ctx, group[[G1:[0-9]+]],
// CHECK-LABEL: void step(
// CHECK-NEXT: moert::runSegment(ctx, segments[0], segment0, state, arena, inputs);
// CHECK-NEXT: moert::kernels::mark(ctx, "shard.all_reduce");
// CHECK-NEXT: const moert::kernels::Context collective0 = moert::kernels::forkGradientReduction(ctx, 0); // joined before moe.global_norm
// CHECK-NEXT: moert::kernels::allReduceSum<float>(collective0, moert::meshAxes({0}), 2,
// CHECK-NEXT: moert::kernels::endCollective(collective0, 0);
// CHECK-NEXT: moert::kernels::mark(ctx, "shard.all_reduce");
// CHECK-NEXT: const moert::kernels::Context collective1 = moert::kernels::forkGradientReduction(ctx, 1); // joined before moe.adamw
// CHECK-NEXT: moert::kernels::allReduceSum<float>(collective1, moert::meshAxes({0}), 2,
// CHECK-NEXT: moert::kernels::endCollective(collective1, 1);
// CHECK-NEXT: moert::kernels::joinCollective(ctx, 0);
// CHECK-NEXT: moert::runSegment(ctx, segments[1], segment1, state, arena, inputs);
// CHECK-NEXT: moert::kernels::joinCollective(ctx, 1);
// CHECK-NEXT: moert::runSegment(ctx, segments[2], segment2, state, arena, inputs);
// CHECK: program.gradientScratchBytes = gradientScratchBytes;
shard.grid @mesh(shape = 2x1x1)
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}, tensor<4xf32> {moe.parameter = "o"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  %o = moe.param_init %seed {name = "o", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<4xf32>
  return %w, %o : tensor<8x4xf32>, tensor<4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %o: tensor<4xf32> {moe.parameter = "o"}, %om: tensor<4xf32> {moe.exp_avg = "o"}, %ov: tensor<4xf32> {moe.exp_avg_sq = "o"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 2048 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 1792>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %gw = arith.negf %w {moe.arena_offsets = array<i64: 1024>} : tensor<8x4xf32>
  %go = arith.negf %o {moe.arena_offsets = array<i64: 1280>} : tensor<4xf32>
  %rw = shard.all_reduce %gw on @mesh grid_axes = [0] {moe.arena_offsets = array<i64: 256>} : tensor<8x4xf32> -> tensor<8x4xf32>
  %ro = shard.all_reduce %go on @mesh grid_axes = [0] {moe.arena_offsets = array<i64: 1920>} : tensor<4xf32> -> tensor<4xf32>
  %norm = moe.global_norm %rw {moe.arena_offsets = array<i64: 1536>} : (tensor<8x4xf32>) -> tensor<f32>
  %p0, %m0, %v0 = moe.adamw %w, %rw, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.0 : f64, max_grad_norm = 1.0 : f64, moe.adamw_group = 0 : i64} : tensor<8x4xf32>, tensor<i64>, tensor<f32>
  %p1, %m1, %v1 = moe.adamw %o, %ro, %om, %ov, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.9 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64, moe.adamw_group = 1 : i64} : tensor<4xf32>, tensor<i64>, tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 1856>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %norm, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}
