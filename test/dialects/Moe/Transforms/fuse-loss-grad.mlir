// RUN: moec-opt %s -split-input-file -pass-pipeline='builtin.module(func.func(moe-fuse-loss-grad))' | FileCheck %s

// The loss and the gradient of one lm-head become one op at the loss's
// place; the gradients' users read the fused op's results.
// CHECK-LABEL: func.func @pair(
// CHECK-SAME: %[[H:[^:]+]]: tensor<2x8x16xbf16>, %[[W:[^:]+]]: tensor<64x16xbf16>, %[[L:[^:]+]]: tensor<2x8xi64>
// CHECK-NEXT: %[[LOSS:.+]], %[[DH:.+]], %[[DW:.+]] = moe.lm_head_cross_entropy_with_grad %[[H]], %[[W]], %[[L]] {ignore_index = -1 : i64, scale = 5.000000e-01 : f64} : (tensor<2x8x16xbf16>, tensor<64x16xbf16>, tensor<2x8xi64>) -> (tensor<f32>, tensor<2x8x16xbf16>, tensor<64x16xf32>)
// CHECK-NEXT: %[[TWICE:.+]] = arith.addf %[[LOSS]], %[[LOSS]]
// CHECK-NOT: moe.lm_head_cross_entropy_grad
// CHECK: return %[[TWICE]], %[[DH]], %[[DW]]
func.func @pair(%h: tensor<2x8x16xbf16>, %w: tensor<64x16xbf16>, %labels: tensor<2x8xi64>)
    -> (tensor<f32>, tensor<2x8x16xbf16>, tensor<64x16xf32>) {
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {ignore_index = -1 : i64} : (tensor<2x8x16xbf16>, tensor<64x16xbf16>, tensor<2x8xi64>) -> tensor<f32>
  %twice = arith.addf %loss, %loss : tensor<f32>
  %dh, %dw = moe.lm_head_cross_entropy_grad %h, %w, %labels {ignore_index = -1 : i64, scale = 0.5 : f64} : (tensor<2x8x16xbf16>, tensor<64x16xbf16>, tensor<2x8xi64>) -> (tensor<2x8x16xbf16>, tensor<64x16xf32>)
  return %twice, %dh, %dw : tensor<f32>, tensor<2x8x16xbf16>, tensor<64x16xf32>
}

// -----

// Different labels (or ignore_index, or weights): two computations, kept.
// CHECK-LABEL: func.func @other_labels(
// CHECK: moe.lm_head_cross_entropy %
// CHECK: moe.lm_head_cross_entropy_grad %
// CHECK-NOT: moe.lm_head_cross_entropy_with_grad
func.func @other_labels(%h: tensor<2x8x16xf32>, %w: tensor<64x16xf32>, %a: tensor<2x8xi64>, %b: tensor<2x8xi64>)
    -> (tensor<f32>, tensor<2x8x16xf32>, tensor<64x16xf32>) {
  %loss = moe.lm_head_cross_entropy %h, %w, %a : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<f32>
  %dh, %dw = moe.lm_head_cross_entropy_grad %h, %w, %b {scale = 1.0 : f64} : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>) -> (tensor<2x8x16xf32>, tensor<64x16xf32>)
  return %loss, %dh, %dw : tensor<f32>, tensor<2x8x16xf32>, tensor<64x16xf32>
}

// -----

// A gradient before the loss is not moved after it.
// CHECK-LABEL: func.func @grad_first(
// CHECK: moe.lm_head_cross_entropy_grad %
// CHECK: moe.lm_head_cross_entropy %
func.func @grad_first(%h: tensor<2x8x16xf32>, %w: tensor<64x16xf32>, %a: tensor<2x8xi64>)
    -> (tensor<f32>, tensor<2x8x16xf32>, tensor<64x16xf32>) {
  %dh, %dw = moe.lm_head_cross_entropy_grad %h, %w, %a {scale = 1.0 : f64} : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>) -> (tensor<2x8x16xf32>, tensor<64x16xf32>)
  %loss = moe.lm_head_cross_entropy %h, %w, %a : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<f32>
  return %loss, %dh, %dw : tensor<f32>, tensor<2x8x16xf32>, tensor<64x16xf32>
}

// -----

// The same global target count: fused, and the fused op keeps it; a
// different one: kept apart.
// CHECK-LABEL: func.func @target_count(
// CHECK-SAME: %[[N:[^:]+]]: tensor<f32>
// CHECK: moe.lm_head_cross_entropy_with_grad %{{.+}}, %{{.+}}, %{{.+}}, %[[N]] {scale = 1.000000e+00 : f64}
// CHECK-NOT: moe.lm_head_cross_entropy_with_grad
// CHECK: moe.lm_head_cross_entropy %
// CHECK: moe.lm_head_cross_entropy_grad %
func.func @target_count(%h: tensor<2x8x16xf32>, %w: tensor<64x16xf32>, %l: tensor<2x8xi64>, %n: tensor<f32>, %m: tensor<f32>)
    -> (tensor<f32>, tensor<2x8x16xf32>, tensor<f32>, tensor<2x8x16xf32>) {
  %loss = moe.lm_head_cross_entropy %h, %w, %l, %n : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>, tensor<f32>) -> tensor<f32>
  %dh, %dw = moe.lm_head_cross_entropy_grad %h, %w, %l, %n {scale = 1.0 : f64} : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>, tensor<f32>) -> (tensor<2x8x16xf32>, tensor<64x16xf32>)
  %w2 = arith.addf %w, %w : tensor<64x16xf32>
  %loss2 = moe.lm_head_cross_entropy %h, %w2, %l, %n : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>, tensor<f32>) -> tensor<f32>
  %dh2, %dw2 = moe.lm_head_cross_entropy_grad %h, %w2, %l, %m {scale = 1.0 : f64} : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>, tensor<f32>) -> (tensor<2x8x16xf32>, tensor<64x16xf32>)
  return %loss, %dh, %loss2, %dh2 : tensor<f32>, tensor<2x8x16xf32>, tensor<f32>, tensor<2x8x16xf32>
}
