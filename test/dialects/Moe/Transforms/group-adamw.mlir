// RUN: moec-opt %s -split-input-file -pass-pipeline='builtin.module(func.func(moe-group-adamw))' | FileCheck %s

// Tests that consecutive updates that share hyperparameters and scalar
// operands form one group, whatever their shapes and weight decays.
// CHECK-LABEL: func.func @one_group(
// CHECK: moe.adamw {{.+}} moe.adamw_group = 0 : i64
// CHECK: moe.adamw {{.+}} moe.adamw_group = 0 : i64
// CHECK-NOT: moe.adamw_group = 1
func.func @one_group(%a: tensor<32xf32>, %b: tensor<4x32xf32>, %step: tensor<i64>, %lr: tensor<f32>, %norm: tensor<f32>) -> (tensor<32xf32>, tensor<4x32xf32>) {
  %p0, %m0, %v0 = moe.adamw %a, %a, %a, %a, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.0 : f64, max_grad_norm = 1.0 : f64} : tensor<32xf32>, tensor<i64>, tensor<f32>
  %p1, %m1, %v1 = moe.adamw %b, %b, %b, %b, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<4x32xf32>, tensor<i64>, tensor<f32>
  return %p0, %p1 : tensor<32xf32>, tensor<4x32xf32>
}

// -----

// Tests that a new group starts at an update that differs from its group's
// first in a hyperparameter, in a scalar operand or in the element type,
// and after any other op.
// CHECK-LABEL: func.func @new_groups(
// CHECK: moe.adamw {{.+}} moe.adamw_group = 0 : i64
// CHECK: moe.adamw {{.+}} beta2 = 9.000000e-01 : f64{{.+}} moe.adamw_group = 1 : i64
// CHECK: moe.adamw {{.+}} moe.adamw_group = 2 : i64
// CHECK: moe.adamw {{.+}} moe.adamw_group = 3 : i64{{.+}} : tensor<32xbf16>
// CHECK: arith.negf
// CHECK: moe.adamw {{.+}} moe.adamw_group = 4 : i64
func.func @new_groups(%a: tensor<32xf32>, %b: tensor<32xbf16>, %step: tensor<i64>, %lr: tensor<f32>, %lr2: tensor<f32>, %norm: tensor<f32>) -> (tensor<32xf32>, tensor<32xf32>, tensor<32xf32>, tensor<32xbf16>, tensor<32xf32>, tensor<32xf32>) {
  %p0, %m0, %v0 = moe.adamw %a, %a, %a, %a, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<32xf32>, tensor<i64>, tensor<f32>
  %p1, %m1, %v1 = moe.adamw %a, %a, %a, %a, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.9 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<32xf32>, tensor<i64>, tensor<f32>
  %p2, %m2, %v2 = moe.adamw %a, %a, %a, %a, %step, %lr2, %norm {beta1 = 0.9 : f64, beta2 = 0.9 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<32xf32>, tensor<i64>, tensor<f32>
  %p3, %m3, %v3 = moe.adamw %b, %b, %b, %b, %step, %lr2, %norm {beta1 = 0.9 : f64, beta2 = 0.9 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<32xbf16>, tensor<i64>, tensor<f32>
  %n = arith.negf %a : tensor<32xf32>
  %p4, %m4, %v4 = moe.adamw %n, %a, %a, %a, %step, %lr2, %norm {beta1 = 0.9 : f64, beta2 = 0.9 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<32xf32>, tensor<i64>, tensor<f32>
  return %p0, %p1, %p2, %p3, %p4, %n : tensor<32xf32>, tensor<32xf32>, tensor<32xf32>, tensor<32xbf16>, tensor<32xf32>, tensor<32xf32>
}
