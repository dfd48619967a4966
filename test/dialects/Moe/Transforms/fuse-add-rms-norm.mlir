// RUN: moec-opt %s -split-input-file -pass-pipeline='builtin.module(func.func(moe-fuse-add-rms-norm))' | FileCheck %s

// Tests that a residual add and the norm right after it that reads the sum
// become one moe.add_rms_norm that keeps both planned buffers, and that the
// sum's other users read the fused op's sum.
// CHECK-LABEL: func.func @planned(
// CHECK-SAME: %[[H:.+]]: tensor<2x8x32xf32>, %[[D:.+]]: tensor<2x8x32xf32>, %[[W:.+]]: tensor<32xf32>)
// CHECK-NOT: arith.addf
// CHECK-NOT: moe.rms_norm
// CHECK: %[[SUM:.+]], %[[Y:.+]] = moe.add_rms_norm %[[H]], %[[D]], %[[W]] {epsilon = 1.000000e-05 : f64, moe.arena_offsets = array<i64: 0, 2048>}
// CHECK: return %[[SUM]], %[[Y]]
func.func @planned(%h: tensor<2x8x32xf32>, %d: tensor<2x8x32xf32>, %w: tensor<32xf32>) -> (tensor<2x8x32xf32>, tensor<2x8x32xf32>) {
  %s = arith.addf %h, %d {moe.arena_offsets = array<i64: 0>} : tensor<2x8x32xf32>
  %y = moe.rms_norm %s, %w {epsilon = 1.0e-05 : f64, moe.arena_offsets = array<i64: 2048>} : (tensor<2x8x32xf32>, tensor<32xf32>) -> tensor<2x8x32xf32>
  return %s, %y : tensor<2x8x32xf32>, tensor<2x8x32xf32>
}

// -----

// Tests that without a memory plan the pair is fused and no offsets are
// invented.
// CHECK-LABEL: func.func @unplanned(
// CHECK: moe.add_rms_norm %{{.+}}, %{{.+}}, %{{.+}} {epsilon = 1.000000e-05 : f64} :
// CHECK-NOT: moe.arena_offsets
func.func @unplanned(%h: tensor<4x32xf32>, %d: tensor<4x32xf32>, %w: tensor<32xf32>) -> (tensor<4x32xf32>, tensor<4x32xf32>) {
  %s = arith.addf %h, %d : tensor<4x32xf32>
  %y = moe.rms_norm %s, %w {epsilon = 1.0e-05 : f64} : (tensor<4x32xf32>, tensor<32xf32>) -> tensor<4x32xf32>
  return %s, %y : tensor<4x32xf32>, tensor<4x32xf32>
}

// -----

// Tests that a pair is left alone when the plan gave the norm's result the
// bytes of an addend (here through a view of it): one kernel would
// overwrite rows it has not read yet.
// CHECK-LABEL: func.func @overlapping(
// CHECK: arith.addf
// CHECK: moe.rms_norm
// CHECK-NOT: moe.add_rms_norm
func.func @overlapping(%x: tensor<4x32xf32>, %d: tensor<4x32xf32>, %w: tensor<32xf32>) -> (tensor<4x32xf32>, tensor<4x32xf32>) {
  %h = arith.negf %x {moe.arena_offsets = array<i64: 0>} : tensor<4x32xf32>
  %v = tensor.collapse_shape %h [[0, 1]] : tensor<4x32xf32> into tensor<128xf32>
  %h2 = tensor.expand_shape %v [[0, 1]] output_shape [4, 32] : tensor<128xf32> into tensor<4x32xf32>
  %s = arith.addf %h2, %d {moe.arena_offsets = array<i64: 512>} : tensor<4x32xf32>
  %y = moe.rms_norm %s, %w {epsilon = 1.0e-05 : f64, moe.arena_offsets = array<i64: 256>} : (tensor<4x32xf32>, tensor<32xf32>) -> tensor<4x32xf32>
  return %s, %y : tensor<4x32xf32>, tensor<4x32xf32>
}

// -----

// Tests that an op between the add and the norm keeps them apart (the plan's
// lifetimes assume them apart), and that a norm of something else than the
// add right before it is not fused.
// CHECK-LABEL: func.func @apart(
// CHECK-NOT: moe.add_rms_norm
func.func @apart(%h: tensor<4x32xf32>, %d: tensor<4x32xf32>, %w: tensor<32xf32>) -> (tensor<4x32xf32>, tensor<4x32xf32>, tensor<4x32xf32>) {
  %s = arith.addf %h, %d : tensor<4x32xf32>
  %n = arith.negf %h : tensor<4x32xf32>
  %y = moe.rms_norm %s, %w {epsilon = 1.0e-05 : f64} : (tensor<4x32xf32>, tensor<32xf32>) -> tensor<4x32xf32>
  %t = arith.addf %h, %d : tensor<4x32xf32>
  %z = moe.rms_norm %n, %w {epsilon = 1.0e-05 : f64} : (tensor<4x32xf32>, tensor<32xf32>) -> tensor<4x32xf32>
  return %y, %t, %z : tensor<4x32xf32>, tensor<4x32xf32>, tensor<4x32xf32>
}
