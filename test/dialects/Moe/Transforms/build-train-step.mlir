// RUN: moec-opt %s -moe-build-train-step | FileCheck %s
// RUN: moec-opt %s -moe-build-train-step="load-balancing=sinkhorn z-loss-coef=0.001 weight-decay=0.5 return-gradients" | FileCheck %s --check-prefix=SINKHORN
// RUN: moec-opt %s -moe-build-train-step="load-balancing=sinkhorn" | FileCheck %s --check-prefix=EVAL
// RUN: moec-opt %s -moe-build-train-step="compute-type=bf16" | FileCheck %s --check-prefix=BF16
// RUN: moec-opt %s -moe-build-train-step="compute-type=bf16 param-type=bf16" | FileCheck %s --check-prefix=BF16MODEL
// The printed step parses back, generic and custom form alike.
// RUN: moec-opt %s -moe-build-init-params -moe-build-train-step="z-loss-coef=0.001" -mlir-print-op-generic | moec-opt | moec-opt | FileCheck %s --check-prefix=ROUNDTRIP

// One decoder layer without attention: embedding, norm, router + experts,
// residual add, final norm, lm-head.
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

// The forward stays; the step takes params, both moments, ids, labels,
// step and lr, and returns new params, new moments and the metrics.
// CHECK-LABEL: func.func @forward(
// CHECK-LABEL: func.func @train_step(
// CHECK-SAME: %[[TABLE:[^:]+]]: tensor<64x16xf32> {moe.parameter = "embed.weight"}
// CHECK-SAME: %[[NORM:[^:]+]]: tensor<16xf32> {moe.parameter = "norm.weight"}
// CHECK-SAME: {moe.exp_avg = "embed.weight"}
// CHECK-SAME: {moe.exp_avg_sq = "lm_head.weight"}
// CHECK-SAME: %[[IDS:[^:]+]]: tensor<2x8xi64> {moe.input = "input_ids"}
// CHECK-SAME: %[[LABELS:[^:]+]]: tensor<2x8xi64> {moe.input = "labels"}
// CHECK-SAME: %[[STEP:[^:]+]]: tensor<i64> {moe.input = "step"}
// CHECK-SAME: %[[LR:[^:]+]]: tensor<f32> {moe.input = "lr"}
// CHECK-SAME: tensor<f32> {moe.output = "loss"}
// CHECK-SAME: tensor<1x4xi64> {moe.output = "expert_counts"}

// Forward: the lm-head became the fused loss; the router keeps its mode.
// CHECK: %[[H:.+]] = moe.embedding %[[TABLE]][%[[IDS]]]
// CHECK: %[[N:.+]] = moe.rms_norm %[[H]], %[[NORM]]
// CHECK: %[[L:.+]] = moe.linear %[[N]]
// CHECK: %[[G:.+]], %[[E:.+]] = moe.router %[[L]] {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>}
// CHECK: %[[Y:.+]] = moe.experts %[[N]], %[[G]], %[[E]]
// CHECK: %[[R:.+]] = arith.addf %[[H]], %[[Y]]
// CHECK-NOT: moe.lm_head %
// CHECK: %[[CE:.+]] = moe.lm_head_cross_entropy %[[R]], %{{.+}}, %[[LABELS]] :
// CHECK: %[[AUX:.+]] = moe.load_balancing_loss %[[L]] {k = 2 : i64}
// CHECK: %[[WAUX:.+]] = arith.mulf %{{.+}}, %[[AUX]] : tensor<f32>
// CHECK: %[[LOSS:.+]] = arith.addf %[[CE]], %[[WAUX]] : tensor<f32>
// CHECK: %[[COUNTS:.+]] = moe.expert_counts %[[E]]

// Backward, last op first; the residual's two uses sum their gradients.
// CHECK: %[[DR:.+]], %[[DHEAD:.+]] = moe.lm_head_cross_entropy_grad %[[R]], %{{.+}}, %[[LABELS]] {scale = 1.000000e+00 : f64}
// CHECK: %[[DAUX:.+]] = moe.load_balancing_loss_grad %[[L]] {k = 2 : i64, scale = 2.000000e-02 : f64}
// CHECK: %[[DN1:.+]], %[[DG:.+]], %[[DGU:.+]], %[[DDOWN:.+]] = moe.experts_grad %[[N]], %[[G]], %[[E]], %{{.+}}, %{{.+}}, %[[DR]]
// CHECK: %[[DL:.+]] = moe.router_grad %[[L]], %[[E]], %[[DG]] {load_balancing = #moe.load_balancing<aux_loss>}
// CHECK: %[[DLSUM:.+]] = arith.addf %[[DAUX]], %[[DL]]
// CHECK: %[[DN2:.+]], %[[DROUTER:.+]] = moe.linear_grad %[[N]], %{{.+}}, %[[DLSUM]]
// CHECK: %[[DN:.+]] = arith.addf %[[DN1]], %[[DN2]]
// CHECK: %[[DH1:.+]], %[[DNORM:.+]] = moe.rms_norm_grad %[[H]], %[[NORM]], %[[DN]]
// CHECK: %[[DH:.+]] = arith.addf %[[DR]], %[[DH1]]
// CHECK: %[[DTABLE:.+]] = moe.embedding_grad %[[IDS]], %[[DH]] : (tensor<2x8xi64>, tensor<2x8x16xf32>) -> tensor<64x16xf32>

// Optimizer: one norm over all gradients; weight decay only on matrices.
// CHECK: %[[NORM2:.+]] = moe.global_norm %[[DTABLE]], %[[DNORM]], %[[DROUTER]], %[[DGU]], %[[DDOWN]], %[[DHEAD]]
// CHECK: moe.adamw %[[TABLE]], %[[DTABLE]], %{{.+}}, %{{.+}}, %[[STEP]], %[[LR]], %[[NORM2]] {{{.*}}max_grad_norm = 1.000000e+00 : f64, skip_nonfinite, weight_decay = 1.000000e-01 : f64}
// CHECK: moe.adamw %[[NORM]], %[[DNORM]], %{{.+}}, %{{.+}}, %[[STEP]], %[[LR]], %[[NORM2]] {{{.*}}weight_decay = 0.000000e+00 : f64}
// CHECK: return
// CHECK-SAME: %[[LOSS]], %[[CE]], %[[AUX]], %{{.+}}, %[[NORM2]], %[[COUNTS]]

// Sinkhorn: no load-balancing loss, a z-loss, routers in sinkhorn mode, and
// the gradients returned.
// SINKHORN-LABEL: func.func @train_step(
// SINKHORN-SAME: tensor<64x16xf32> {moe.gradient = "embed.weight"}
// SINKHORN: moe.router %{{.+}} {k = 2 : i64, load_balancing = #moe.load_balancing<sinkhorn>}
// SINKHORN-NOT: moe.load_balancing_loss
// SINKHORN: moe.router_z_loss
// SINKHORN: moe.router_z_loss_grad %{{.+}} {scale = 1.000000e-03 : f64}
// SINKHORN: moe.router_grad {{.*}}load_balancing = #moe.load_balancing<sinkhorn>
// SINKHORN: moe.adamw {{.*}}weight_decay = 5.000000e-01

// ROUNDTRIP: moe.lm_head_cross_entropy
// ROUNDTRIP: moe.load_balancing_loss
// ROUNDTRIP: moe.router_z_loss
// ROUNDTRIP: moe.expert_counts
// ROUNDTRIP: moe.lm_head_cross_entropy_grad
// ROUNDTRIP: moe.router_z_loss_grad
// ROUNDTRIP: moe.experts_grad
// ROUNDTRIP: moe.router_grad
// ROUNDTRIP: moe.linear_grad
// ROUNDTRIP: moe.rms_norm_grad
// ROUNDTRIP: moe.embedding_grad
// ROUNDTRIP: moe.global_norm
// ROUNDTRIP: moe.adamw
// ROUNDTRIP: moe.param_init %{{.+}} {kind = #moe.param_init<ones>, name = "norm.weight"}

// The evaluation step: the forward with evaluation routing and the fused
// loss, no backward, no optimizer.
// EVAL-LABEL: func.func @eval_step(
// EVAL-SAME: tensor<2x8xi64> {moe.input = "labels"}) -> (tensor<f32> {moe.output = "ce_loss"})
// EVAL: moe.router {{.*}}load_balancing = #moe.load_balancing<sinkhorn>, training = false
// EVAL: %[[CE:.+]] = moe.lm_head_cross_entropy
// EVAL-NOT: _grad
// EVAL-NOT: moe.adamw
// EVAL: return %[[CE]]
// EVAL-LABEL: func.func @train_step(

// bf16 compute on fp32 masters: bf16 copies in, fp32 gradients out, fp32
// update.
// BF16-LABEL: func.func @train_step(
// BF16-SAME: tensor<64x16xf32> {moe.parameter = "embed.weight"}
// BF16: arith.truncf %{{.*}} : tensor<64x16xf32> to tensor<64x16xbf16>
// BF16: moe.embedding %{{.*}} : (tensor<64x16xbf16>, tensor<2x8xi64>) -> tensor<2x8x16xbf16>
// BF16: arith.extf %{{.*}} : tensor<64x16xbf16> to tensor<64x16xf32>
// BF16: moe.adamw {{.*}} : tensor<64x16xf32>, tensor<i64>, tensor<f32>

// A bf16 model: the state is bf16, no casts, the update on bf16 tensors;
// @eval_step takes the same bf16 parameters.
// BF16MODEL-LABEL: func.func @eval_step(
// BF16MODEL-SAME: tensor<64x16xbf16> {moe.parameter = "embed.weight"}
// BF16MODEL-LABEL: func.func @train_step(
// BF16MODEL-SAME: tensor<64x16xbf16> {moe.parameter = "embed.weight"}
// BF16MODEL-SAME: tensor<64x16xbf16> {moe.exp_avg = "embed.weight"}
// BF16MODEL-SAME: tensor<64x16xbf16> {moe.exp_avg_sq = "embed.weight"}
// BF16MODEL-SAME: -> (tensor<64x16xbf16> {moe.parameter = "embed.weight"}
// BF16MODEL-NOT: arith.truncf
// BF16MODEL-NOT: arith.extf
// BF16MODEL: moe.global_norm {{.*}} : (tensor<64x16xbf16>,
// BF16MODEL: moe.adamw {{.*}} : tensor<64x16xbf16>, tensor<i64>, tensor<f32>
