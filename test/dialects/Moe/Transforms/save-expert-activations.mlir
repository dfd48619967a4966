// RUN: moec-opt %s -split-input-file -pass-pipeline='builtin.module(func.func(moe-save-expert-activations))' | FileCheck %s

// The forward keeps its projections (16 tokens x top-2 = 32 rows of
// 2 x intermediate) and the gradient reads them.
// CHECK-LABEL: func.func @pair(
// CHECK: %[[Y:.+]], %[[SAVED:.+]] = moe.experts %{{.*}} -> (tensor<16x32xbf16>, tensor<32x128xbf16>)
// CHECK: moe.experts_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[SAVED]] {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<16x32xbf16>, tensor<16x2xbf16>, tensor<16x2xi64>, tensor<4x128x32xbf16>, tensor<4x32x64xbf16>, tensor<16x32xbf16>, tensor<32x128xbf16>)
func.func @pair(%x: tensor<16x32xbf16>, %g: tensor<16x2xbf16>, %e: tensor<16x2xi64>, %w1: tensor<4x128x32xbf16>, %w2: tensor<4x32x64xbf16>, %dy: tensor<16x32xbf16>)
    -> (tensor<16x32xbf16>, tensor<16x32xbf16>, tensor<4x128x32xf32>) {
  %y = moe.experts %x, %g, %e, %w1, %w2 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<16x32xbf16>, tensor<16x2xbf16>, tensor<16x2xi64>, tensor<4x128x32xbf16>, tensor<4x32x64xbf16>) -> tensor<16x32xbf16>
  %dx, %dg, %dw1, %dw2 = moe.experts_grad %x, %g, %e, %w1, %w2, %dy {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<16x32xbf16>, tensor<16x2xbf16>, tensor<16x2xi64>, tensor<4x128x32xbf16>, tensor<4x32x64xbf16>, tensor<16x32xbf16>) -> (tensor<16x32xbf16>, tensor<16x2xbf16>, tensor<4x128x32xf32>, tensor<4x32x64xf32>)
  return %y, %dx, %dw1 : tensor<16x32xbf16>, tensor<16x32xbf16>, tensor<4x128x32xf32>
}

// -----

// Dynamic token counts give a dynamic number of rows.
// CHECK-LABEL: func.func @dynamic(
// CHECK: moe.experts {{.*}} -> (tensor<?x32xf32>, tensor<?x128xf32>)
func.func @dynamic(%x: tensor<?x32xf32>, %g: tensor<?x2xf32>, %e: tensor<?x2xi64>, %w1: tensor<4x128x32xf32>, %w2: tensor<4x32x64xf32>, %dy: tensor<?x32xf32>)
    -> tensor<?x32xf32> {
  %y = moe.experts %x, %g, %e, %w1, %w2 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<?x32xf32>, tensor<?x2xf32>, tensor<?x2xi64>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<?x32xf32>
  %dx, %dg, %dw1, %dw2 = moe.experts_grad %x, %g, %e, %w1, %w2, %dy {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<?x32xf32>, tensor<?x2xf32>, tensor<?x2xi64>, tensor<4x128x32xf32>, tensor<4x32x64xf32>, tensor<?x32xf32>) -> (tensor<?x32xf32>, tensor<?x2xf32>, tensor<4x128x32xf32>, tensor<4x32x64xf32>)
  return %dx : tensor<?x32xf32>
}

// -----

// A gradient of other experts (another down projection) saves nothing.
// CHECK-LABEL: func.func @other_weights(
// CHECK: moe.experts {{.*}} -> tensor<16x32xf32>
// CHECK-NOT: tensor<32x128xf32>
func.func @other_weights(%x: tensor<16x32xf32>, %g: tensor<16x2xf32>, %e: tensor<16x2xi64>, %w1: tensor<4x128x32xf32>, %w2: tensor<4x32x64xf32>, %w3: tensor<4x32x64xf32>, %dy: tensor<16x32xf32>)
    -> (tensor<16x32xf32>, tensor<16x32xf32>) {
  %y = moe.experts %x, %g, %e, %w1, %w2 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<16x32xf32>, tensor<16x2xf32>, tensor<16x2xi64>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  %dx, %dg, %dw1, %dw2 = moe.experts_grad %x, %g, %e, %w1, %w3, %dy {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<16x32xf32>, tensor<16x2xf32>, tensor<16x2xi64>, tensor<4x128x32xf32>, tensor<4x32x64xf32>, tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<16x2xf32>, tensor<4x128x32xf32>, tensor<4x32x64xf32>)
  return %y, %dx : tensor<16x32xf32>, tensor<16x32xf32>
}
