// RUN: moec-opt %s | moec-opt | FileCheck %s
// RUN: moec-opt %s -mlir-print-op-generic | moec-opt | FileCheck %s

// Round trip of every moe op, static and dynamic shapes.

// CHECK-LABEL: func.func @decoder_layer
func.func @decoder_layer(%ids: tensor<?x?xi64>, %table: tensor<256x32xf32>,
                         %norm: tensor<32xf32>, %wq: tensor<32x32xf32>,
                         %wk: tensor<16x32xf32>, %wv: tensor<16x32xf32>,
                         %wo: tensor<32x32xf32>, %gate: tensor<4x32xf32>,
                         %gate_up: tensor<4x128x32xf32>,
                         %down: tensor<4x32x64xf32>,
                         %head: tensor<256x32xf32>) -> tensor<?x?x256xf32> {
  // CHECK: moe.embedding %{{.*}}[%{{.*}}] : (tensor<256x32xf32>, tensor<?x?xi64>) -> tensor<?x?x32xf32>
  %h = moe.embedding %table[%ids] : (tensor<256x32xf32>, tensor<?x?xi64>) -> tensor<?x?x32xf32>
  // CHECK: moe.rms_norm %{{.*}}, %{{.*}} {epsilon = 1.000000e-05 : f64}
  %n = moe.rms_norm %h, %norm {epsilon = 1.0e-05 : f64} : (tensor<?x?x32xf32>, tensor<32xf32>) -> tensor<?x?x32xf32>
  // CHECK: moe.linear %{{.*}}, %{{.*}} : (tensor<?x?x32xf32>, tensor<32x32xf32>) -> tensor<?x?x32xf32>
  %q2 = moe.linear %n, %wq : (tensor<?x?x32xf32>, tensor<32x32xf32>) -> tensor<?x?x32xf32>
  %k2 = moe.linear %n, %wk : (tensor<?x?x32xf32>, tensor<16x32xf32>) -> tensor<?x?x16xf32>
  %v2 = moe.linear %n, %wv : (tensor<?x?x32xf32>, tensor<16x32xf32>) -> tensor<?x?x16xf32>
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %b = tensor.dim %q2, %c0 : tensor<?x?x32xf32>
  %s = tensor.dim %q2, %c1 : tensor<?x?x32xf32>
  %q = tensor.expand_shape %q2 [[0], [1], [2, 3]] output_shape [%b, %s, 4, 8] : tensor<?x?x32xf32> into tensor<?x?x4x8xf32>
  %k = tensor.expand_shape %k2 [[0], [1], [2, 3]] output_shape [%b, %s, 2, 8] : tensor<?x?x16xf32> into tensor<?x?x2x8xf32>
  %v = tensor.expand_shape %v2 [[0], [1], [2, 3]] output_shape [%b, %s, 2, 8] : tensor<?x?x16xf32> into tensor<?x?x2x8xf32>
  // CHECK: moe.rotary %{{.*}} {theta = 1.000000e+06 : f64} : (tensor<?x?x4x8xf32>) -> tensor<?x?x4x8xf32>
  %qr = moe.rotary %q {theta = 1.0e+06 : f64} : (tensor<?x?x4x8xf32>) -> tensor<?x?x4x8xf32>
  %kr = moe.rotary %k {theta = 1.0e+06 : f64} : (tensor<?x?x2x8xf32>) -> tensor<?x?x2x8xf32>
  // CHECK: moe.attention %{{.*}}, %{{.*}}, %{{.*}} {scale = 0.35355339059327379 : f64, sliding_window = 4096 : i64}
  %o = moe.attention %qr, %kr, %v {scale = 0.35355339059327379 : f64, sliding_window = 4096 : i64} : (tensor<?x?x4x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>) -> tensor<?x?x4x8xf32>
  %o2 = tensor.collapse_shape %o [[0], [1], [2, 3]] : tensor<?x?x4x8xf32> into tensor<?x?x32xf32>
  %a = moe.linear %o2, %wo : (tensor<?x?x32xf32>, tensor<32x32xf32>) -> tensor<?x?x32xf32>
  %r = arith.addf %h, %a : tensor<?x?x32xf32>
  %logits = moe.linear %r, %gate : (tensor<?x?x32xf32>, tensor<4x32xf32>) -> tensor<?x?x4xf32>
  // CHECK: %{{.*}}, %{{.*}} = moe.router %{{.*}} {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<?x?x4xf32>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi64>)
  %g, %e = moe.router %logits {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<?x?x4xf32>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi64>)
  // CHECK: moe.experts %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} {gate_up_layout = #moe.gate_up_layout<concatenated>}
  %y = moe.experts %r, %g, %e, %gate_up, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<?x?x32xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi64>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<?x?x32xf32>
  // CHECK: moe.lm_head %{{.*}}, %{{.*}} : (tensor<?x?x32xf32>, tensor<256x32xf32>) -> tensor<?x?x256xf32>
  %out = moe.lm_head %y, %head : (tensor<?x?x32xf32>, tensor<256x32xf32>) -> tensor<?x?x256xf32>
  return %out : tensor<?x?x256xf32>
}

// CHECK-LABEL: func.func @optional_operands
func.func @optional_operands(%x: tensor<2x8x4x8xf32>, %pos: tensor<2x8xi64>,
                             %y: tensor<2x8x32xf32>, %w: tensor<16x32xf32>,
                             %bias: tensor<16xf32>) -> (tensor<2x8x4x8xf32>, tensor<2x8x16xf32>) {
  // CHECK: moe.rotary %{{.*}} positions %{{.*}} {theta = 1.000000e+04 : f64}
  %r = moe.rotary %x positions %pos {theta = 1.0e+04 : f64} : (tensor<2x8x4x8xf32>, tensor<2x8xi64>) -> tensor<2x8x4x8xf32>
  // CHECK: moe.linear %{{.*}}, %{{.*}} bias %{{.*}} :
  %l = moe.linear %y, %w bias %bias : (tensor<2x8x32xf32>, tensor<16x32xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  return %r, %l : tensor<2x8x4x8xf32>, tensor<2x8x16xf32>
}

// CHECK-LABEL: func.func @onnx_node
func.func @onnx_node(%x: tensor<2x4xf32>) -> tensor<2x4xf32> {
  // CHECK: moe.onnx_node "Softmax"(%{{.*}}) {axis = -1 : i64} : (tensor<2x4xf32>) -> tensor<2x4xf32>
  %0 = moe.onnx_node "Softmax"(%x) {axis = -1 : i64} : (tensor<2x4xf32>) -> tensor<2x4xf32>
  // CHECK: moe.onnx_node "MoE"(%{{.*}}) {domain = "com.microsoft", k = 2 : i64}
  %1 = moe.onnx_node "MoE"(%0) {domain = "com.microsoft", k = 2 : i64} : (tensor<2x4xf32>) -> tensor<2x4xf32>
  return %1 : tensor<2x4xf32>
}

// A bf16 weight's gradient stored in fp32 (moe-widen-weight-grads).
// CHECK-LABEL: func.func @wide_weight_grad
// CHECK: moe.linear_grad {{.*}} -> (tensor<2x8xbf16>, tensor<4x8xf32>)
func.func @wide_weight_grad(%x: tensor<2x8xbf16>, %w: tensor<4x8xbf16>, %dy: tensor<2x4xbf16>) -> tensor<4x8xf32> {
  %dx, %dw = moe.linear_grad %x, %w, %dy : (tensor<2x8xbf16>, tensor<4x8xbf16>, tensor<2x4xbf16>) -> (tensor<2x8xbf16>, tensor<4x8xf32>)
  return %dw : tensor<4x8xf32>
}

// CHECK-LABEL: func.func @lm_head_ce_with_grad
// CHECK: moe.lm_head_cross_entropy_with_grad {{.*}} {scale = 1.000000e+00 : f64} : (tensor<2x8x16xbf16>, tensor<64x16xbf16>, tensor<2x8xi64>) -> (tensor<f32>, tensor<2x8x16xbf16>, tensor<64x16xf32>)
func.func @lm_head_ce_with_grad(%h: tensor<2x8x16xbf16>, %w: tensor<64x16xbf16>, %labels: tensor<2x8xi64>) -> tensor<f32> {
  %l, %dh, %dw = moe.lm_head_cross_entropy_with_grad %h, %w, %labels {scale = 1.0 : f64} : (tensor<2x8x16xbf16>, tensor<64x16xbf16>, tensor<2x8xi64>) -> (tensor<f32>, tensor<2x8x16xbf16>, tensor<64x16xf32>)
  return %l : tensor<f32>
}

// CHECK-LABEL: func.func @lm_head_ce_with_target_count
// CHECK: %[[CE:.+]] = moe.lm_head_cross_entropy %{{.+}}, %{{.+}}, %{{.+}}, %[[COUNT:.+]] : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>, tensor<f32>) -> tensor<f32>
// CHECK: moe.lm_head_cross_entropy_grad %{{.+}}, %{{.+}}, %{{.+}}, %[[COUNT]] {scale = 1.000000e+00 : f64} : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>, tensor<f32>) -> (tensor<2x8x16xf32>, tensor<64x16xf32>)
// CHECK: moe.lm_head_cross_entropy_with_grad %{{.+}}, %{{.+}}, %{{.+}}, %[[COUNT]] {scale = 1.000000e+00 : f64} : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>, tensor<f32>) -> (tensor<f32>, tensor<2x8x16xf32>, tensor<64x16xf32>)
func.func @lm_head_ce_with_target_count(%h: tensor<2x8x16xf32>, %w: tensor<64x16xf32>, %labels: tensor<2x8xi64>, %count: tensor<f32>) -> tensor<f32> {
  %ce = moe.lm_head_cross_entropy %h, %w, %labels, %count : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>, tensor<f32>) -> tensor<f32>
  %dh, %dw = moe.lm_head_cross_entropy_grad %h, %w, %labels, %count {scale = 1.0 : f64} : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>, tensor<f32>) -> (tensor<2x8x16xf32>, tensor<64x16xf32>)
  %l, %dh2, %dw2 = moe.lm_head_cross_entropy_with_grad %h, %w, %labels, %count {scale = 1.0 : f64} : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>, tensor<f32>) -> (tensor<f32>, tensor<2x8x16xf32>, tensor<64x16xf32>)
  return %ce : tensor<f32>
}

// CHECK-LABEL: func.func @fusion
// CHECK: moe.fusion(%{{.*}}, %{{.*}}) : (tensor<4x8xbf16>, tensor<4x8xbf16>) -> tensor<4x8xf32> {
// CHECK: arith.addf
// CHECK: arith.extf
// CHECK: moe.yield %{{.*}} : tensor<4x8xf32>
func.func @fusion(%a: tensor<4x8xbf16>, %b: tensor<4x8xbf16>) -> tensor<4x8xf32> {
  %0 = moe.fusion(%a, %b) : (tensor<4x8xbf16>, tensor<4x8xbf16>) -> tensor<4x8xf32> {
  ^bb0(%x: tensor<4x8xbf16>, %y: tensor<4x8xbf16>):
    %1 = arith.addf %x, %y : tensor<4x8xbf16>
    %2 = arith.extf %1 : tensor<4x8xbf16> to tensor<4x8xf32>
    moe.yield %2 : tensor<4x8xf32>
  }
  return %0 : tensor<4x8xf32>
}

// CHECK-LABEL: func.func @attention_saved
// CHECK: %{{.+}}, %{{.+}} = moe.attention {{.*}} -> (tensor<2x8x4x16xbf16>, tensor<2x4x8xf32>)
// CHECK: moe.attention_grad {{.*}} : (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x4x16xbf16>, tensor<2x8x4x16xbf16>, tensor<2x4x8xf32>)
func.func @attention_saved(%q: tensor<2x8x4x16xbf16>, %k: tensor<2x8x2x16xbf16>, %v: tensor<2x8x2x16xbf16>, %do: tensor<2x8x4x16xbf16>) -> tensor<2x8x4x16xbf16> {
  %o, %lse = moe.attention %q, %k, %v {scale = 0.25 : f64} : (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>) -> (tensor<2x8x4x16xbf16>, tensor<2x4x8xf32>)
  %dq, %dk, %dv = moe.attention_grad %q, %k, %v, %do, %o, %lse {scale = 0.25 : f64} : (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x4x16xbf16>, tensor<2x8x4x16xbf16>, tensor<2x4x8xf32>) -> (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>)
  return %dq : tensor<2x8x4x16xbf16>
}

// CHECK-LABEL: func.func @add_rms_norm
// CHECK: %{{.+}}, %{{.+}} = moe.add_rms_norm %{{.+}}, %{{.+}}, %{{.+}} {epsilon = 1.000000e-05 : f64} : (tensor<2x8x32xbf16>, tensor<2x8x32xbf16>, tensor<32xbf16>) -> (tensor<2x8x32xbf16>, tensor<2x8x32xbf16>)
func.func @add_rms_norm(%h: tensor<2x8x32xbf16>, %d: tensor<2x8x32xbf16>, %w: tensor<32xbf16>) -> tensor<2x8x32xbf16> {
  %s, %y = moe.add_rms_norm %h, %d, %w {epsilon = 1.0e-05 : f64} : (tensor<2x8x32xbf16>, tensor<2x8x32xbf16>, tensor<32xbf16>) -> (tensor<2x8x32xbf16>, tensor<2x8x32xbf16>)
  return %y : tensor<2x8x32xbf16>
}

// The dialect's discardable attributes, each where it belongs.
// CHECK-LABEL: func.func @step
// CHECK-SAME: {moe.parameter = "w"}
// CHECK-SAME: {moe.exp_avg = "w"}
// CHECK-SAME: {moe.exp_avg_sq = "w"}
// CHECK-SAME: {moe.input = "step"}
// CHECK-SAME: {moe.output = "loss"}
// CHECK-SAME: {moe.gradient = "w"}
// CHECK-SAME: attributes {moe.arena_bytes = 256 : i64, moe.arena_live_bytes = 128 : i64}
// CHECK: arith.truncf %{{.+}} {moe.persistent_copy}
// CHECK: arith.negf %{{.+}} {moe.arena_offsets = array<i64: 0>}
// CHECK: arith.negf %{{.+}} {moe.recompute = #moe.recompute<layer = 2, selective>}
// CHECK: moe.adamw {{.+}}moe.adamw_group = 0 : i64
func.func @step(%w: tensor<32xf32> {moe.parameter = "w"}, %m: tensor<32xf32> {moe.exp_avg = "w"}, %v: tensor<32xf32> {moe.exp_avg_sq = "w"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32>) -> (tensor<f32> {moe.output = "loss"}, tensor<32xf32> {moe.gradient = "w"}, tensor<32xbf16>, tensor<32xf32>) attributes {moe.arena_bytes = 256 : i64, moe.arena_live_bytes = 128 : i64} {
  %c = arith.truncf %w {moe.persistent_copy} : tensor<32xf32> to tensor<32xbf16>
  %g = arith.negf %w {moe.arena_offsets = array<i64: 0>} : tensor<32xf32>
  %r = arith.negf %w {moe.recompute = #moe.recompute<layer = 2, selective>} : tensor<32xf32>
  %p, %m2, %v2 = moe.adamw %w, %g, %m, %v, %step, %lr, %lr {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64, moe.adamw_group = 0 : i64} : tensor<32xf32>, tensor<i64>, tensor<f32>
  return %lr, %g, %c, %p : tensor<f32>, tensor<32xf32>, tensor<32xbf16>, tensor<32xf32>
}

// Expert parallelism: a layer's dispatch, local experts and combine, its
// backward mirror, the token shuffle and the global load-balancing loss.
// CHECK-LABEL: func.func @expert_parallel
// CHECK: %[[ROWS:.+]], %[[ROW_EXPERTS:.+]], %[[COUNTS:.+]], %[[ROW_GATES:.+]] = moe.dispatch %{{.*}}, %{{.*}} gates(%{{.*}}) on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<16x32xf32>, tensor<16x2xi64>, tensor<16x2xf32>) -> (tensor<?x32xf32>, tensor<?x1xi64>, tensor<2x2xi64>, tensor<?x1xf32>)
// CHECK: moe.experts %[[ROWS]], %[[ROW_GATES]], %[[ROW_EXPERTS]]
// CHECK: moe.combine %{{.*}}, %{{.*}}, %[[COUNTS]] on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<?x32xf32>, tensor<16x2xi64>, tensor<2x2xi64>) -> tensor<16x32xf32>
// CHECK: moe.dispatch %{{.*}}, %{{.*}} on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_gather>} : (tensor<16x32xf32>, tensor<16x2xi64>) -> (tensor<?x32xf32>, tensor<?x1xi64>, tensor<2x2xi64>)
// CHECK: moe.token_shuffle %{{.*}}, %{{.*}} on @mesh grid_axes = [2] {seed = 7 : i64} : (tensor<16x32xf32>, tensor<i64>) -> tensor<16x32xf32>
// CHECK: moe.token_shuffle %{{.*}}, %{{.*}} on @mesh grid_axes = [2] {inverse, seed = 7 : i64}
// CHECK: moe.load_balancing_stats %{{.*}} {k = 2 : i64} : (tensor<16x4xf32>) -> tensor<2x4xf32>
// CHECK: moe.load_balancing_loss_from_stats %{{.*}} {k = 2 : i64} : (tensor<2x4xf32>) -> tensor<f32>
// CHECK: moe.load_balancing_stats_grad %{{.*}}, %{{.*}} {k = 2 : i64, scale = 2.000000e-02 : f64} : (tensor<16x4xf32>, tensor<2x4xf32>) -> tensor<16x4xf32>
func.func @expert_parallel(%x: tensor<16x32xf32>, %gates: tensor<16x2xf32>,
                           %experts: tensor<16x2xi64>,
                           %gate_up: tensor<2x128x32xf32>,
                           %down: tensor<2x32x64xf32>, %step: tensor<i64>,
                           %logits: tensor<16x4xf32>)
    -> (tensor<16x32xf32>, tensor<?x32xf32>, tensor<16x32xf32>, tensor<f32>, tensor<16x4xf32>) {
  %rows, %row_experts, %counts, %row_gates = moe.dispatch %x, %experts gates(%gates) on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<16x32xf32>, tensor<16x2xi64>, tensor<16x2xf32>) -> (tensor<?x32xf32>, tensor<?x1xi64>, tensor<2x2xi64>, tensor<?x1xf32>)
  %y = moe.experts %rows, %row_gates, %row_experts, %gate_up, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<?x32xf32>, tensor<?x1xf32>, tensor<?x1xi64>, tensor<2x128x32xf32>, tensor<2x32x64xf32>) -> tensor<?x32xf32>
  %out = moe.combine %y, %experts, %counts on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<?x32xf32>, tensor<16x2xi64>, tensor<2x2xi64>) -> tensor<16x32xf32>
  %d_rows, %d_row_experts, %d_counts = moe.dispatch %out, %experts on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_gather>} : (tensor<16x32xf32>, tensor<16x2xi64>) -> (tensor<?x32xf32>, tensor<?x1xi64>, tensor<2x2xi64>)
  %s = moe.token_shuffle %x, %step on @mesh grid_axes = [2] {seed = 7 : i64} : (tensor<16x32xf32>, tensor<i64>) -> tensor<16x32xf32>
  %u = moe.token_shuffle %s, %step on @mesh grid_axes = [2] {seed = 7 : i64, inverse} : (tensor<16x32xf32>, tensor<i64>) -> tensor<16x32xf32>
  %stats = moe.load_balancing_stats %logits {k = 2 : i64} : (tensor<16x4xf32>) -> tensor<2x4xf32>
  %aux = moe.load_balancing_loss_from_stats %stats {k = 2 : i64} : (tensor<2x4xf32>) -> tensor<f32>
  %d_logits = moe.load_balancing_stats_grad %logits, %stats {k = 2 : i64, scale = 0.02 : f64} : (tensor<16x4xf32>, tensor<2x4xf32>) -> tensor<16x4xf32>
  return %out, %d_rows, %u, %aux, %d_logits : tensor<16x32xf32>, tensor<?x32xf32>, tensor<16x32xf32>, tensor<f32>, tensor<16x4xf32>
}

// CHECK-LABEL: func.func @target_count
// CHECK: moe.target_count %{{.+}} {ignore_index = -1 : i64} : (tensor<2x8xi64>) -> tensor<f32>
func.func @target_count(%labels: tensor<2x8xi64>) -> tensor<f32> {
  %n = moe.target_count %labels {ignore_index = -1 : i64} : (tensor<2x8xi64>) -> tensor<f32>
  return %n : tensor<f32>
}

// CHECK-LABEL: func.func @router_groups
// CHECK: moe.router %{{.+}} {k = 2 : i64, load_balancing = #moe.load_balancing<sinkhorn>, tokens_per_group = 8 : i64}
func.func @router_groups(%logits: tensor<2x8x4xf32>) -> tensor<2x8x2xi64> {
  %g, %e = moe.router %logits {k = 2 : i64, load_balancing = #moe.load_balancing<sinkhorn>, tokens_per_group = 8 : i64} : (tensor<2x8x4xf32>) -> (tensor<2x8x2xf32>, tensor<2x8x2xi64>)
  return %e : tensor<2x8x2xi64>
}

// CHECK-LABEL: func.func @param_init_block
// CHECK: moe.param_init %{{.+}} {global_shape = array<i64: 8, 6>, grid = @mesh, kind = #moe.param_init<normal>, name = "w", split_axes = array<i64: 2, 1>, std = 5.000000e-01 : f64} : (tensor<i64>) -> tensor<4x3xf32>
func.func @param_init_block(%seed: tensor<i64>) -> tensor<4x3xf32> {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.5 : f64, global_shape = array<i64: 8, 6>, grid = @mesh, split_axes = array<i64: 2, 1>} : (tensor<i64>) -> tensor<4x3xf32>
  return %w : tensor<4x3xf32>
}

// CHECK-LABEL: func.func @offload_fetch
// CHECK-SAME: moe.offload_layers = array<i64: 0, 1>
// CHECK: %[[HOST:.+]] = moe.offload %{{.+}} layer 1 {moe.host_offsets = array<i64: 256>} : tensor<2x4x8xf32> -> tensor<2x4x8xf32, #moe.host>
// CHECK: moe.offload_join %[[HOST]] : tensor<2x4x8xf32, #moe.host>
// CHECK: moe.fetch %[[HOST]] layer 1 : tensor<2x4x8xf32, #moe.host> -> tensor<2x4x8xf32>
// CHECK: moe.offload %{{.+}} layer 0 : tensor<?x2xi64> -> tensor<?x2xi64, #moe.host>
func.func @offload_fetch(%x: tensor<2x4x8xf32>, %e: tensor<?x2xi64>) -> (tensor<2x4x8xf32>, tensor<?x2xi64>) attributes {moe.host_bytes = 512 : i64, moe.offload_layers = array<i64: 0, 1>} {
  %h = moe.offload %x layer 1 {moe.host_offsets = array<i64: 256>} : tensor<2x4x8xf32> -> tensor<2x4x8xf32, #moe.host>
  moe.offload_join %h : tensor<2x4x8xf32, #moe.host>
  %y = moe.fetch %h layer 1 : tensor<2x4x8xf32, #moe.host> -> tensor<2x4x8xf32>
  %he = moe.offload %e layer 0 : tensor<?x2xi64> -> tensor<?x2xi64, #moe.host>
  %f = moe.fetch %he layer 0 : tensor<?x2xi64, #moe.host> -> tensor<?x2xi64>
  return %y, %f : tensor<2x4x8xf32>, tensor<?x2xi64>
}

// An fp32 parameter's update from a bf16 gradient (moe-fold-grad-casts):
// the gradient's type is printed after the parameter's.
// CHECK-LABEL: func.func @adamw_bf16_grad
// CHECK: moe.adamw %{{.+}} : tensor<32xf32> grad tensor<32xbf16>, tensor<i64>, tensor<f32>
func.func @adamw_bf16_grad(%w: tensor<32xf32>, %g: tensor<32xbf16>, %m: tensor<32xf32>, %v: tensor<32xf32>, %step: tensor<i64>, %lr: tensor<f32>) -> tensor<32xf32> {
  %p, %m2, %v2 = moe.adamw %w, %g, %m, %v, %step, %lr, %lr {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<32xf32> grad tensor<32xbf16>, tensor<i64>, tensor<f32>
  return %p : tensor<32xf32>
}
