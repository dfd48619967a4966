// RUN: moec-translate %s --moe-to-cuda --cuda-model-name=tiny | FileCheck %s

// Tests that the printer prints what the passes before it made explicit: a
// moe.add_rms_norm as one kernel writing both planned buffers, and each
// moe.adamw_group as one multi-tensor launch (two groups here: the second
// differs in beta2) with its updates' weight decays in its entries, chunked
// for AdamW over its state type. The
// model FLOPs: the norm weight "o" (4 elements; "w" is the embedding table)
// over 8 tokens, 6 · 4 · 8 = 192.

// CHECK-LABEL: void setup(char *state, char *arena, char *inputs) {
// CHECK-NEXT: group[[NORM:[0-9]+]].init({
// CHECK-NEXT: {nullptr, nullptr, nullptr, reinterpret_cast<float *>(arena + 1024), 32, 0.0f},
// CHECK-NEXT: {nullptr, nullptr, nullptr, reinterpret_cast<float *>(arena + 1280), 4, 0.0f},
// CHECK-NEXT: });
// CHECK-NEXT: group[[G0:[0-9]+]].init({
// CHECK-NEXT: {reinterpret_cast<float *>(state + 0), reinterpret_cast<float *>(state + 256), reinterpret_cast<float *>(state + 512), reinterpret_cast<float *>(arena + 1024), 32, 0.00000000f, nullptr},
// CHECK-NEXT: }, moert::kernels::kAdamWChunk<float>);
// CHECK-NEXT: group[[G1:[0-9]+]].init({
// CHECK-NEXT: {reinterpret_cast<float *>(state + 768), reinterpret_cast<float *>(state + 1024), reinterpret_cast<float *>(state + 1280), reinterpret_cast<float *>(arena + 1280), 4, 0.100000000f, nullptr},
// CHECK-NEXT: }, moert::kernels::kAdamWChunk<float>);

// CHECK-LABEL: void segment0(
// CHECK: moert::kernels::mark(ctx, "moe.add_rms_norm");
// CHECK-NEXT: moert::kernels::addRmsNorm(ctx, reinterpret_cast<float *>(arena + 0), reinterpret_cast<float *>(arena + 256), reinterpret_cast<float *>(state + 768), 8, 4, 1.00000000e-05f, reinterpret_cast<float *>(arena + 512), reinterpret_cast<float *>(arena + 768));
// CHECK: moert::kernels::globalNorm<float>(ctx, group[[NORM]], reinterpret_cast<float *>(arena + 1536));
// CHECK-NEXT: moert::kernels::mark(ctx, "moe.adamw");
// CHECK-NEXT: moert::kernels::adamw<float, float>(ctx, group[[G0]], reinterpret_cast<int64_t *>(inputs + 512), reinterpret_cast<float *>(inputs + 768), reinterpret_cast<float *>(arena + 1536), 0.900000000f, 0.950000000f, 1.00000000e-08f, 1.00000000f);
// CHECK-NEXT: moert::kernels::mark(ctx, "moe.adamw");
// CHECK-NEXT: moert::kernels::adamw<float, float>(ctx, group[[G1]], reinterpret_cast<int64_t *>(inputs + 512), reinterpret_cast<float *>(inputs + 768), reinterpret_cast<float *>(arena + 1536), 0.900000000f, 0.900000000f, 1.00000000e-08f, 1.00000000f);

// CHECK-LABEL: int main(
// CHECK: program.model = "tiny";
// CHECK: program.modelFlops = 192;
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}, tensor<4xf32> {moe.parameter = "o"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  %o = moe.param_init %seed {name = "o", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<4xf32>
  return %w, %o : tensor<8x4xf32>, tensor<4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %o: tensor<4xf32> {moe.parameter = "o"}, %om: tensor<4xf32> {moe.exp_avg = "o"}, %ov: tensor<4xf32> {moe.exp_avg_sq = "o"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 2048 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %d = arith.negf %h {moe.arena_offsets = array<i64: 256>} : tensor<2x4x4xf32>
  %s, %y = moe.add_rms_norm %h, %d, %o {epsilon = 1.0e-05 : f64, moe.arena_offsets = array<i64: 512, 768>} : (tensor<2x4x4xf32>, tensor<2x4x4xf32>, tensor<4xf32>) -> (tensor<2x4x4xf32>, tensor<2x4x4xf32>)
  %loss = moe.lm_head_cross_entropy %y, %w, %labels {moe.arena_offsets = array<i64: 1792>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %gw = arith.negf %w {moe.arena_offsets = array<i64: 1024>} : tensor<8x4xf32>
  %go = arith.negf %o {moe.arena_offsets = array<i64: 1280>} : tensor<4xf32>
  %norm = moe.global_norm %gw, %go {moe.arena_offsets = array<i64: 1536>} : (tensor<8x4xf32>, tensor<4xf32>) -> tensor<f32>
  %p0, %m0, %v0 = moe.adamw %w, %gw, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.0 : f64, max_grad_norm = 1.0 : f64, moe.adamw_group = 0 : i64} : tensor<8x4xf32>, tensor<i64>, tensor<f32>
  %p1, %m1, %v1 = moe.adamw %o, %go, %om, %ov, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.9 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64, moe.adamw_group = 1 : i64} : tensor<4xf32>, tensor<i64>, tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 1856>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %norm, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}
