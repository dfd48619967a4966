// RUN: moec-opt %s -split-input-file -pass-pipeline='builtin.module(func.func(moe-fuse-elementwise))' | FileCheck %s

// A gradient accumulation across a producer: the first add moves down to
// the second, both become one fusion whose inputs are the three addends.
// CHECK-LABEL: func.func @accumulate(
// CHECK-SAME: %[[A:[^:]+]]: tensor<4x32xf32>, %[[B:[^:]+]]: tensor<4x32xf32>
// CHECK-NOT: arith.addf
// CHECK: %[[D:.+]], %{{.+}} = moe.linear_grad
// CHECK-NEXT: %[[F:.+]] = moe.fusion(%[[A]], %[[B]], %[[D]]) : (tensor<4x32xf32>, tensor<4x32xf32>, tensor<4x32xf32>) -> tensor<4x32xf32> {
// CHECK-NEXT: ^bb0(%[[P:.+]]: tensor<4x32xf32>, %[[Q:.+]]: tensor<4x32xf32>, %[[R:.+]]: tensor<4x32xf32>):
// CHECK-NEXT: %[[S:.+]] = arith.addf %[[P]], %[[Q]] : tensor<4x32xf32>
// CHECK-NEXT: %[[T:.+]] = arith.addf %[[S]], %[[R]] : tensor<4x32xf32>
// CHECK-NEXT: moe.yield %[[T]] : tensor<4x32xf32>
// CHECK-NEXT: }
// CHECK-NEXT: return %[[F]]
func.func @accumulate(%a: tensor<4x32xf32>, %b: tensor<4x32xf32>, %x: tensor<4x32xf32>, %w: tensor<16x32xf32>, %dy: tensor<4x16xf32>) -> tensor<4x32xf32> {
  %0 = arith.addf %a, %b : tensor<4x32xf32>
  %dx, %dw = moe.linear_grad %x, %w, %dy : (tensor<4x32xf32>, tensor<16x32xf32>, tensor<4x16xf32>) -> (tensor<4x32xf32>, tensor<16x32xf32>)
  %1 = arith.addf %0, %dx : tensor<4x32xf32>
  return %1 : tensor<4x32xf32>
}

// -----

// Splat constants are copied into the body; casts fuse too.
// CHECK-LABEL: func.func @scale_and_cast(
// CHECK-NOT: arith.constant
// CHECK: moe.fusion(%{{.+}}, %{{.+}}) : (tensor<8xf32>, tensor<8xf32>) -> tensor<8xbf16> {
// CHECK: arith.constant dense<5.000000e-01> : tensor<8xf32>
// CHECK: arith.mulf
// CHECK: arith.subf
// CHECK: arith.truncf
// CHECK: moe.yield %{{.+}} : tensor<8xbf16>
func.func @scale_and_cast(%a: tensor<8xf32>, %b: tensor<8xf32>) -> tensor<8xbf16> {
  %half = arith.constant dense<0.5> : tensor<8xf32>
  %0 = arith.mulf %a, %half : tensor<8xf32>
  %1 = arith.subf %0, %b : tensor<8xf32>
  %2 = arith.truncf %1 : tensor<8xf32> to tensor<8xbf16>
  return %2 : tensor<8xbf16>
}

// -----

// An intermediate with a second use stays a root of its own: nothing is
// computed twice. Here %0 is returned too, so only %1 and %2 fuse.
// CHECK-LABEL: func.func @shared(
// CHECK: %[[S:.+]] = arith.addf %{{.+}}, %{{.+}} : tensor<8xf32>
// CHECK: %[[F:.+]] = moe.fusion(%[[S]], %{{.+}}) :
// CHECK: arith.mulf
// CHECK: arith.negf
// CHECK: return %[[S]], %[[F]]
func.func @shared(%a: tensor<8xf32>, %b: tensor<8xf32>) -> (tensor<8xf32>, tensor<8xf32>) {
  %0 = arith.addf %a, %b : tensor<8xf32>
  %1 = arith.mulf %0, %b : tensor<8xf32>
  %2 = arith.negf %1 : tensor<8xf32>
  return %0, %2 : tensor<8xf32>, tensor<8xf32>
}

// -----

// A single element-wise op is left alone.
// CHECK-LABEL: func.func @single(
// CHECK-NOT: moe.fusion
// CHECK: arith.addf
func.func @single(%a: tensor<8xf32>, %b: tensor<8xf32>) -> tensor<8xf32> {
  %0 = arith.addf %a, %b : tensor<8xf32>
  return %0 : tensor<8xf32>
}
