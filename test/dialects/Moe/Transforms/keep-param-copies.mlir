// RUN: moec-opt %s -split-input-file -pass-pipeline='builtin.module(func.func(moe-keep-param-copies))' | FileCheck %s

// The bf16 cast of an fp32 master weight, used only before the weight's
// AdamW update, is marked: AdamW can keep it for the next step.
// CHECK-LABEL: func.func @step(
// CHECK: arith.truncf %{{.+}} {moe.persistent_copy} : tensor<4x8xf32> to tensor<4x8xbf16>
// The gradient's cast is not a parameter's: untouched.
// CHECK: arith.extf %{{.+}} : tensor<4x8xbf16> to tensor<4x8xf32>
// CHECK-NOT: moe.persistent_copy
// CHECK: moe.adamw
func.func @step(%w: tensor<4x8xf32> {moe.parameter = "w"}, %m: tensor<4x8xf32> {moe.exp_avg = "w"}, %v: tensor<4x8xf32> {moe.exp_avg_sq = "w"}, %x: tensor<2x8xbf16>, %dy: tensor<2x4xbf16>, %step: tensor<i64>, %lr: tensor<f32>, %norm: tensor<f32>) -> (tensor<2x4xbf16>, tensor<4x8xf32>) {
  %c = arith.truncf %w : tensor<4x8xf32> to tensor<4x8xbf16>
  %y = moe.linear %x, %c : (tensor<2x8xbf16>, tensor<4x8xbf16>) -> tensor<2x4xbf16>
  %dx, %dw = moe.linear_grad %x, %c, %dy : (tensor<2x8xbf16>, tensor<4x8xbf16>, tensor<2x4xbf16>) -> (tensor<2x8xbf16>, tensor<4x8xbf16>)
  %g = arith.extf %dw : tensor<4x8xbf16> to tensor<4x8xf32>
  %p, %m2, %v2 = moe.adamw %w, %g, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<4x8xf32>, tensor<i64>, tensor<f32>
  return %y, %p : tensor<2x4xbf16>, tensor<4x8xf32>
}

// -----

// A cast read after the update would not equal the kept copy: not marked.
// CHECK-LABEL: func.func @read_after_update(
// CHECK-NOT: moe.persistent_copy
func.func @read_after_update(%w: tensor<4x8xf32> {moe.parameter = "w"}, %m: tensor<4x8xf32> {moe.exp_avg = "w"}, %v: tensor<4x8xf32> {moe.exp_avg_sq = "w"}, %g: tensor<4x8xf32>, %step: tensor<i64>, %lr: tensor<f32>, %norm: tensor<f32>) -> (tensor<4x8xf32>, tensor<4x8xbf16>) {
  %c = arith.truncf %w : tensor<4x8xf32> to tensor<4x8xbf16>
  %p, %m2, %v2 = moe.adamw %w, %g, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<4x8xf32>, tensor<i64>, tensor<f32>
  %late = arith.negf %c : tensor<4x8xbf16>
  return %p, %late : tensor<4x8xf32>, tensor<4x8xbf16>
}

// -----

// No AdamW updates the parameter (a frozen weight): nothing would write the
// copy, so the cast stays a cast.
// CHECK-LABEL: func.func @frozen(
// CHECK-NOT: moe.persistent_copy
func.func @frozen(%w: tensor<4x8xf32> {moe.parameter = "w"}, %x: tensor<2x8xbf16>) -> tensor<2x4xbf16> {
  %c = arith.truncf %w : tensor<4x8xf32> to tensor<4x8xbf16>
  %y = moe.linear %x, %c : (tensor<2x8xbf16>, tensor<4x8xbf16>) -> tensor<2x4xbf16>
  return %y : tensor<2x4xbf16>
}

// -----

// A partitioned step casts a parameter before each of its gathers (the
// forward's and the backward's): the first cast is kept and the second's
// uses read it, so AdamW writes the one copy every use reads.
// CHECK-LABEL: func.func @cast_twice(
// CHECK: %[[KEPT:.+]] = arith.truncf %{{.+}} {moe.persistent_copy} : tensor<4x8xf32> to tensor<4x8xbf16>
// CHECK-NEXT: moe.linear %{{.+}}, %[[KEPT]]
// CHECK-NOT: arith.truncf
// CHECK: moe.linear_grad %{{.+}}, %[[KEPT]], %{{.+}}
// CHECK: moe.adamw
func.func @cast_twice(%w: tensor<4x8xf32> {moe.parameter = "w"}, %m: tensor<4x8xf32> {moe.exp_avg = "w"}, %v: tensor<4x8xf32> {moe.exp_avg_sq = "w"}, %x: tensor<2x8xbf16>, %dy: tensor<2x4xbf16>, %step: tensor<i64>, %lr: tensor<f32>, %norm: tensor<f32>) -> (tensor<2x4xbf16>, tensor<4x8xf32>) {
  %c = arith.truncf %w : tensor<4x8xf32> to tensor<4x8xbf16>
  %y = moe.linear %x, %c : (tensor<2x8xbf16>, tensor<4x8xbf16>) -> tensor<2x4xbf16>
  %c2 = arith.truncf %w : tensor<4x8xf32> to tensor<4x8xbf16>
  %dx, %dw = moe.linear_grad %x, %c2, %dy : (tensor<2x8xbf16>, tensor<4x8xbf16>, tensor<2x4xbf16>) -> (tensor<2x8xbf16>, tensor<4x8xbf16>)
  %g = arith.extf %dw : tensor<4x8xbf16> to tensor<4x8xf32>
  %p, %m2, %v2 = moe.adamw %w, %g, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<4x8xf32>, tensor<i64>, tensor<f32>
  return %y, %p : tensor<2x4xbf16>, tensor<4x8xf32>
}
