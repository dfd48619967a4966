// RUN: moec-opt %s -split-input-file --pass-pipeline="builtin.module(func.func(moe-widen-weight-grads))" | FileCheck %s

// Tests that a bf16 weight gradient cast to fp32 becomes an fp32 result of
// its op, for every op with a weight gradient, and the casts go.
// CHECK-LABEL: func.func @widen
// CHECK: %[[DX:.+]], %[[DW:.+]] = moe.linear_grad {{.*}} -> (tensor<8x4xbf16>, tensor<4x4xf32>)
// CHECK: moe.rms_norm_grad {{.*}} -> (tensor<8x4xbf16>, tensor<4xf32>)
// CHECK: moe.embedding_grad {{.*}} -> tensor<16x4xf32>
// CHECK-NOT: arith.extf
// CHECK: return %[[DW]],
func.func @widen(%x: tensor<8x4xbf16>, %w: tensor<4x4xbf16>, %g: tensor<4xbf16>, %dy: tensor<8x4xbf16>, %ids: tensor<8xi64>) -> (tensor<4x4xf32>, tensor<4xf32>, tensor<16x4xf32>, tensor<8x4xbf16>) {
  %dx, %dw = moe.linear_grad %x, %w, %dy : (tensor<8x4xbf16>, tensor<4x4xbf16>, tensor<8x4xbf16>) -> (tensor<8x4xbf16>, tensor<4x4xbf16>)
  %a = arith.extf %dw : tensor<4x4xbf16> to tensor<4x4xf32>
  %dn, %dg = moe.rms_norm_grad %x, %g, %dx {epsilon = 1.0e-5 : f64} : (tensor<8x4xbf16>, tensor<4xbf16>, tensor<8x4xbf16>) -> (tensor<8x4xbf16>, tensor<4xbf16>)
  %b = arith.extf %dg : tensor<4xbf16> to tensor<4xf32>
  %dt = moe.embedding_grad %ids, %dn : (tensor<8xi64>, tensor<8x4xbf16>) -> tensor<16x4xbf16>
  %c = arith.extf %dt : tensor<16x4xbf16> to tensor<16x4xf32>
  return %a, %b, %c, %dn : tensor<4x4xf32>, tensor<4xf32>, tensor<16x4xf32>, tensor<8x4xbf16>
}

// -----

// Tests what is left alone: a weight gradient with a second use (the cast
// would not remove the bf16 value), and a cast of an input gradient.
// CHECK-LABEL: func.func @keep
// CHECK: moe.linear_grad {{.*}} -> (tensor<8x4xbf16>, tensor<4x4xbf16>)
// CHECK: arith.extf %{{.*}} : tensor<4x4xbf16> to tensor<4x4xf32>
// CHECK: arith.extf %{{.*}} : tensor<8x4xbf16> to tensor<8x4xf32>
func.func @keep(%x: tensor<8x4xbf16>, %w: tensor<4x4xbf16>, %dy: tensor<8x4xbf16>) -> (tensor<4x4xf32>, tensor<4x4xbf16>, tensor<8x4xf32>) {
  %dx, %dw = moe.linear_grad %x, %w, %dy : (tensor<8x4xbf16>, tensor<4x4xbf16>, tensor<8x4xbf16>) -> (tensor<8x4xbf16>, tensor<4x4xbf16>)
  %a = arith.extf %dw : tensor<4x4xbf16> to tensor<4x4xf32>
  %b = arith.extf %dx : tensor<8x4xbf16> to tensor<8x4xf32>
  return %a, %dw, %b : tensor<4x4xf32>, tensor<4x4xbf16>, tensor<8x4xf32>
}

// -----

// RUN: moec-opt %s -split-input-file --pass-pipeline="builtin.module(func.func(moe-widen-weight-grads{into-readers=true}))" 2>/dev/null | FileCheck %s --check-prefix=READERS
// RUN: moec-opt %s -split-input-file --pass-pipeline="builtin.module(func.func(moe-widen-weight-grads{into-readers=true}))" -verify-diagnostics > /dev/null

// Tests into-readers (grad_dtype bf16): the gradients stay bf16, the norm
// and AdamW read them, the casts go; the op's results are not widened.
// READERS-LABEL: func.func @readers
// READERS: %[[DX:.+]], %[[DW:.+]] = moe.linear_grad {{.*}} -> (tensor<8x4xbf16>, tensor<4x4xbf16>)
// READERS: %[[DN:.+]], %[[DG:.+]] = moe.rms_norm_grad {{.*}} -> (tensor<8x4xbf16>, tensor<4xbf16>)
// READERS-NOT: arith.extf
// READERS: %[[N:.+]] = moe.global_norm %[[DW]], %[[DG]] : (tensor<4x4xbf16>, tensor<4xbf16>) -> tensor<f32>
// READERS: moe.adamw %{{.+}}, %[[DW]], {{.*}} : tensor<4x4xf32> grad tensor<4x4xbf16>,
// READERS: moe.adamw %{{.+}}, %[[DG]], {{.*}} : tensor<4xf32> grad tensor<4xbf16>,
func.func @readers(%x: tensor<8x4xbf16>, %w: tensor<4x4xbf16>, %g: tensor<4xbf16>, %dy: tensor<8x4xbf16>, %w32: tensor<4x4xf32>, %g32: tensor<4xf32>, %step: tensor<i64>, %lr: tensor<f32>) -> (tensor<4x4xf32>, tensor<4xf32>) {
  %dx, %dw = moe.linear_grad %x, %w, %dy : (tensor<8x4xbf16>, tensor<4x4xbf16>, tensor<8x4xbf16>) -> (tensor<8x4xbf16>, tensor<4x4xbf16>)
  %a = arith.extf %dw : tensor<4x4xbf16> to tensor<4x4xf32>
  %dn, %dg = moe.rms_norm_grad %x, %g, %dx {epsilon = 1.0e-5 : f64} : (tensor<8x4xbf16>, tensor<4xbf16>, tensor<8x4xbf16>) -> (tensor<8x4xbf16>, tensor<4xbf16>)
  %b = arith.extf %dg : tensor<4xbf16> to tensor<4xf32>
  %n = moe.global_norm %a, %b : (tensor<4x4xf32>, tensor<4xf32>) -> tensor<f32>
  %p1, %m1, %v1 = moe.adamw %w32, %a, %w32, %w32, %step, %lr, %n {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<4x4xf32>, tensor<i64>, tensor<f32>
  %p2, %m2, %v2 = moe.adamw %g32, %b, %g32, %g32, %step, %lr, %n {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.0 : f64, max_grad_norm = 1.0 : f64} : tensor<4xf32>, tensor<i64>, tensor<f32>
  return %p1, %p2 : tensor<4x4xf32>, tensor<4xf32>
}

// -----

// Tests that a norm with a gradient that is no widened weight gradient
// folds none of its casts (the GPU norm reads one element type), with a
// warning (below, -verify-diagnostics), and that a folded cast with another
// user stays for it.
// READERS-LABEL: func.func @readers_keep
// READERS: arith.extf %{{.*}} : tensor<4x4xbf16> to tensor<4x4xf32>
// READERS: moe.global_norm %{{.+}}, %{{.+}} : (tensor<4x4xf32>, tensor<4xf32>) -> tensor<f32>
// READERS-LABEL: func.func @readers_returned
// READERS: %[[DX:.+]], %[[DW:.+]] = moe.linear_grad
// READERS: %[[A:.+]] = arith.extf %[[DW]]
// READERS: moe.global_norm %[[DW]] : (tensor<4x4xbf16>) -> tensor<f32>
// READERS: return %[[A]],
func.func @readers_keep(%x: tensor<8x4xbf16>, %w: tensor<4x4xbf16>, %dy: tensor<8x4xbf16>, %other: tensor<4xf32>) -> tensor<f32> {
  %dx, %dw = moe.linear_grad %x, %w, %dy : (tensor<8x4xbf16>, tensor<4x4xbf16>, tensor<8x4xbf16>) -> (tensor<8x4xbf16>, tensor<4x4xbf16>)
  %a = arith.extf %dw : tensor<4x4xbf16> to tensor<4x4xf32>
  // expected-warning@+1 {{reads 1 widened bf16 weight gradients and 1 other gradients; its norm reads one element type, so all stay fp32 (grad_dtype bf16 applies to none of them)}}
  %n = moe.global_norm %a, %other : (tensor<4x4xf32>, tensor<4xf32>) -> tensor<f32>
  return %n : tensor<f32>
}
func.func @readers_returned(%x: tensor<8x4xbf16>, %w: tensor<4x4xbf16>, %dy: tensor<8x4xbf16>) -> (tensor<4x4xf32>, tensor<f32>) {
  %dx, %dw = moe.linear_grad %x, %w, %dy : (tensor<8x4xbf16>, tensor<4x4xbf16>, tensor<8x4xbf16>) -> (tensor<8x4xbf16>, tensor<4x4xbf16>)
  %a = arith.extf %dw : tensor<4x4xbf16> to tensor<4x4xf32>
  %n = moe.global_norm %a : (tensor<4x4xf32>) -> tensor<f32>
  return %a, %n : tensor<4x4xf32>, tensor<f32>
}
