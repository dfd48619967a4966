// RUN: moec-opt %s -moe-build-train-step -moe-expert-parallel="world-size=4 expert-parallel-degree=2 hybrid-shard-degree=1" | FileCheck %s
// RUN: moec-opt %s -moe-build-train-step -moe-expert-parallel="world-size=2 expert-parallel-degree=2 dispatcher=all_gather global-token-shuffle seed=5" | FileCheck %s --check-prefix=SHUFFLE
// RUN: moec-opt %s -moe-build-train-step -moe-expert-parallel="world-size=2 expert-parallel-degree=2 global-token-shuffle" | FileCheck %s --check-prefix=EVAL
// RUN: moec-opt %s -moe-build-train-step -moe-expert-parallel="world-size=2" | FileCheck %s --check-prefix=DATA
// RUN: moec-opt %s -moe-build-train-step -moe-save-expert-activations -moe-expert-parallel="world-size=2 expert-parallel-degree=2" | FileCheck %s --check-prefix=SAVED
// RUN: moec-opt %s -moe-build-train-step="compute-type=bf16" -moe-widen-weight-grads -moe-expert-parallel="world-size=2 expert-parallel-degree=2" | FileCheck %s --check-prefix=BF16
// The partitioned step parses back.
// RUN: moec-opt %s -moe-build-train-step -moe-expert-parallel="world-size=4 expert-parallel-degree=4" | moec-opt | FileCheck %s --check-prefix=ROUNDTRIP

// One decoder layer without attention: embedding, norm, router + experts,
// residual add, final norm, lm-head; 4 experts.
func.func @forward(%ids: tensor<2x8xi64> {moe.input = "input_ids"},
                   %table: tensor<64x16xf32> {moe.parameter = "embed.weight"},
                   %norm: tensor<16xf32> {moe.parameter = "norm.weight"},
                   %router: tensor<4x16xf32> {moe.parameter = "gate.weight"},
                   %gate_up: tensor<4x32x16xf32> {moe.parameter = "experts.gate_up_proj"},
                   %down: tensor<4x16x16xf32> {moe.parameter = "experts.down_proj"},
                   %head: tensor<64x16xf32> {moe.parameter = "lm_head.weight"})
    -> (tensor<2x8x64xf32> {moe.output = "logits"}) {
  %h = moe.embedding %table[%ids] : (tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<2x8x16xf32>
  %n = moe.rms_norm %h, %norm {epsilon = 1.0e-05 : f64} : (tensor<2x8x16xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  %l = moe.linear %n, %router : (tensor<2x8x16xf32>, tensor<4x16xf32>) -> tensor<2x8x4xf32>
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<2x8x4xf32>) -> (tensor<2x8x2xf32>, tensor<2x8x2xi64>)
  %y = moe.experts %n, %g, %e, %gate_up, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<2x8x16xf32>, tensor<2x8x2xf32>, tensor<2x8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<2x8x16xf32>
  %r = arith.addf %h, %y : tensor<2x8x16xf32>
  %o = moe.lm_head %r, %head : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
  return %o : tensor<2x8x64xf32>
}

// Tests that the step gets the (R, H, P) mesh, local expert weights and
// moments marked moe.expert_local, dispatch → local experts → combine and
// the mirror in the backward, and global load-balancing statistics.
// CHECK: shard.grid @mesh(shape = 2x1x2)
// CHECK-LABEL: func.func @train_step(
// CHECK-SAME: tensor<4x16xf32> {moe.parameter = "gate.weight"}
// CHECK-SAME: %[[GATE_UP:[^:]+]]: tensor<2x32x16xf32> {moe.expert_local, moe.parameter = "experts.gate_up_proj"}
// CHECK-SAME: %[[DOWN:[^:]+]]: tensor<2x16x16xf32> {moe.expert_local, moe.parameter = "experts.down_proj"}
// CHECK-SAME: tensor<2x32x16xf32> {moe.exp_avg = "experts.gate_up_proj", moe.expert_local}
// CHECK-SAME: tensor<2x16x16xf32> {moe.exp_avg_sq = "experts.down_proj", moe.expert_local}
// CHECK-SAME: -> (
// CHECK-SAME: tensor<2x32x16xf32> {moe.parameter = "experts.gate_up_proj"}
// CHECK: %[[N:.+]] = moe.rms_norm
// CHECK: %[[L:.+]] = moe.linear %[[N]]
// CHECK: %[[G:.+]], %[[E:.+]] = moe.router %[[L]]
// CHECK-NOT: moe.experts %[[N]]
// CHECK: %[[ROWS:.+]], %[[ROW_E:.+]], %[[COUNTS:.+]], %[[ROW_G:.+]] = moe.dispatch %[[N]], %[[E]] gates(%[[G]]) on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<2x8x16xf32>, tensor<2x8x2xi64>, tensor<2x8x2xf32>) -> (tensor<?x16xf32>, tensor<?x1xi64>, tensor<2x2xi64>, tensor<?x1xf32>)
// CHECK: %[[Y:.+]] = moe.experts %[[ROWS]], %[[ROW_G]], %[[ROW_E]], %[[GATE_UP]], %[[DOWN]] {{.*}} -> tensor<?x16xf32>
// CHECK: %[[OUT:.+]] = moe.combine %[[Y]], %[[E]], %[[COUNTS]] on @mesh grid_axes = [2] {{.*}} -> tensor<2x8x16xf32>
// CHECK: arith.addf %{{.+}}, %[[OUT]]
// CHECK-NOT: moe.load_balancing_loss %
// CHECK: %[[STATS:.+]] = moe.load_balancing_stats %[[L]] {k = 2 : i64} : (tensor<2x8x4xf32>) -> tensor<2x4xf32>
// CHECK: %[[GLOBAL:.+]] = shard.all_reduce %[[STATS]] on @mesh grid_axes = [0, 1, 2] : tensor<2x4xf32> -> tensor<2x4xf32>
// CHECK: moe.load_balancing_loss_from_stats %[[GLOBAL]] {k = 2 : i64}
// CHECK: %[[DOUT:.+]], %{{.+}} = moe.lm_head_cross_entropy_grad
// CHECK: moe.load_balancing_stats_grad %[[L]], %[[GLOBAL]] {k = 2 : i64, scale = 2.000000e-02 : f64}
// CHECK: %[[DY:.+]], %{{.+}}, %{{.+}} = moe.dispatch %[[DOUT]], %[[E]] on @mesh grid_axes = [2]
// CHECK: %[[DX_ROWS:.+]], %[[DG_ROWS:.+]], %[[DGU:.+]], %[[DDOWN:.+]] = moe.experts_grad %[[ROWS]], %[[ROW_G]], %[[ROW_E]], %[[GATE_UP]], %[[DOWN]], %[[DY]] {{.*}} -> (tensor<?x16xf32>, tensor<?x1xf32>, tensor<2x32x16xf32>, tensor<2x16x16xf32>)
// CHECK: moe.combine %[[DX_ROWS]], %[[E]], %[[COUNTS]] {{.*}} -> tensor<2x8x16xf32>
// CHECK: %[[SLOTS:.+]] = tensor.expand_shape %[[E]] {{\[}}[0], [1], [2, 3]] output_shape [2, 8, 2, 1]
// CHECK: %[[DG:.+]] = moe.combine %[[DG_ROWS]], %[[SLOTS]], %[[COUNTS]] {{.*}} -> tensor<2x8x2x1xf32>
// CHECK: %[[DGATES:.+]] = tensor.collapse_shape %[[DG]] {{\[}}[0], [1], [2, 3]] : tensor<2x8x2x1xf32> into tensor<2x8x2xf32>
// CHECK: moe.router_grad %[[L]], %[[E]], %[[DGATES]]
// CHECK: moe.adamw %[[GATE_UP]], %[[DGU]], {{.*}} : tensor<2x32x16xf32>, tensor<i64>, tensor<f32>
// CHECK: moe.adamw %[[DOWN]], %[[DDOWN]], {{.*}} : tensor<2x16x16xf32>, tensor<i64>, tensor<f32>

// Tests that the evaluation step dispatches too, without a shuffle (it has
// no step).
// EVAL-LABEL: func.func @eval_step(
// EVAL-SAME: tensor<2x32x16xf32> {moe.expert_local, moe.parameter = "experts.gate_up_proj"}
// EVAL-NOT: moe.token_shuffle
// EVAL: moe.dispatch
// EVAL-NOT: moe.token_shuffle
// EVAL: moe.combine
// EVAL-LABEL: func.func @train_step(

// Tests that the token shuffle permutes the block's input before the router
// and the experts, and back after; the backward gets the adjoints.
// SHUFFLE: shard.grid @mesh(shape = 1x1x2)
// SHUFFLE-LABEL: func.func @train_step(
// SHUFFLE: %[[N:.+]] = moe.rms_norm
// SHUFFLE: %[[S:.+]] = moe.token_shuffle %[[N]], %[[STEP:.+]] on @mesh grid_axes = [2] {seed = 5 : i64}
// SHUFFLE: %[[L:.+]] = moe.linear %[[S]]
// SHUFFLE: moe.dispatch %[[S]], %{{.+}} gates(%{{.+}}) on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_gather>}
// SHUFFLE: %[[OUT:.+]] = moe.combine
// SHUFFLE: %[[BACK:.+]] = moe.token_shuffle %[[OUT]], %[[STEP]] on @mesh grid_axes = [2] {inverse, seed = 5 : i64}
// SHUFFLE: arith.addf %{{.+}}, %[[BACK]]
// The output gradient is shuffled like the tokens, the input gradients back.
// SHUFFLE: %[[DOUT:.+]], %{{.+}} = moe.lm_head_cross_entropy_grad
// SHUFFLE: %[[DS:.+]] = moe.token_shuffle %[[DOUT]], %[[STEP]] {{.*}} {seed = 5 : i64}
// SHUFFLE: moe.dispatch %[[DS]]
// SHUFFLE: %[[DX:.+]] = moe.combine
// SHUFFLE: moe.token_shuffle %[[DX]], %[[STEP]] {{.*}} {inverse, seed = 5 : i64}
// SHUFFLE: %[[DR:.+]], %{{.+}} = moe.linear_grad %[[S]]
// SHUFFLE: moe.token_shuffle %[[DR]], %[[STEP]] {{.*}} {inverse, seed = 5 : i64}

// ROUNDTRIP: shard.grid @mesh(shape = 1x1x4)
// ROUNDTRIP: moe.dispatch {{.*}} -> (tensor<?x16xf32>, tensor<?x1xi64>, tensor<4x1xi64>, tensor<?x1xf32>)

// Tests that without expert parallelism (P = 1) the experts stay whole and
// only the load-balancing statistics become global.
// DATA: shard.grid @mesh(shape = 1x2x1)
// DATA-LABEL: func.func @train_step(
// DATA-SAME: tensor<4x32x16xf32> {moe.parameter = "experts.gate_up_proj"}
// DATA-NOT: moe.dispatch
// DATA: moe.experts %{{.+}} : (tensor<2x8x16xf32>, tensor<2x8x2xf32>, tensor<2x8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>)
// DATA: %[[STATS:.+]] = moe.load_balancing_stats
// DATA: shard.all_reduce %[[STATS]] on @mesh grid_axes = [0, 1, 2]
// DATA-NOT: moe.combine

// Tests that saved expert activations (moe-save-expert-activations) are kept
// for the received rows and read by the local gradient.
// SAVED-LABEL: func.func @train_step(
// SAVED: %[[ROWS:.+]], %[[ROW_E:.+]], %[[COUNTS:.+]], %[[ROW_G:.+]] = moe.dispatch
// SAVED: %{{.+}}, %[[SAVED:.+]] = moe.experts %[[ROWS]], %[[ROW_G]], %[[ROW_E]], {{.*}} -> (tensor<?x16xf32>, tensor<?x32xf32>)
// SAVED: moe.experts_grad %[[ROWS]], %[[ROW_G]], %[[ROW_E]], %{{.+}}, %{{.+}}, %{{.+}}, %[[SAVED]] {{.*}} : (tensor<?x16xf32>, tensor<?x1xf32>, tensor<?x1xi64>, tensor<2x32x16xf32>, tensor<2x16x16xf32>, tensor<?x16xf32>, tensor<?x32xf32>)

// Tests that the local experts' weight gradients keep the fp32 that
// moe-widen-weight-grads gave them under bf16 compute, so that the fp32
// master's update takes them.
// BF16-LABEL: func.func @train_step(
// BF16: %{{.+}}, %{{.+}}, %[[DGU:.+]], %[[DDOWN:.+]] = moe.experts_grad {{.*}} -> (tensor<?x16xbf16>, tensor<?x1xbf16>, tensor<2x32x16xf32>, tensor<2x16x16xf32>)
// BF16: moe.adamw %{{.+}}, %[[DGU]], {{.+}} : tensor<2x32x16xf32>
// BF16: moe.adamw %{{.+}}, %[[DDOWN]], {{.+}} : tensor<2x16x16xf32>
