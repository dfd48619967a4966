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
