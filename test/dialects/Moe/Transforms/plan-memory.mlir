// RUN: moec-opt %s -split-input-file --pass-pipeline="builtin.module(func.func(moe-plan-memory{alignment=256}))" -verify-diagnostics | FileCheck %s

// Tests the placement on four 1 KiB buffers: %a lives to the end, %b dies
// when %c is made, so %d reuses %b's bytes; the reshape is a view of %d and
// gets no buffer; the arena is the three buffers alive at once.
// CHECK-LABEL: func.func @chain
// CHECK-SAME: attributes {moe.arena_bytes = 3072 : i64, moe.arena_live_bytes = 3072 : i64}
// CHECK: %[[A:.+]] = moe.linear {{.*}} {moe.arena_offsets = array<i64: 0>}
// CHECK: %[[B:.+]] = moe.linear {{.*}} {moe.arena_offsets = array<i64: 1024>}
// CHECK: %[[C:.+]] = moe.linear {{.*}} {moe.arena_offsets = array<i64: 2048>}
// CHECK: %[[D:.+]] = arith.addf {{.*}} {moe.arena_offsets = array<i64: 1024>}
// CHECK: tensor.expand_shape %[[D]]
// CHECK-NOT: moe.arena_offsets
// CHECK: return
func.func @chain(%x: tensor<4x64xf32>, %w: tensor<64x64xf32>) -> tensor<4x4x16xf32> {
  %a = moe.linear %x, %w : (tensor<4x64xf32>, tensor<64x64xf32>) -> tensor<4x64xf32>
  %b = moe.linear %a, %w : (tensor<4x64xf32>, tensor<64x64xf32>) -> tensor<4x64xf32>
  %c = moe.linear %b, %w : (tensor<4x64xf32>, tensor<64x64xf32>) -> tensor<4x64xf32>
  %d = arith.addf %c, %a : tensor<4x64xf32>
  %e = tensor.expand_shape %d [[0], [1, 2]] output_shape [4, 4, 16] : tensor<4x64xf32> into tensor<4x4x16xf32>
  return %e : tensor<4x4x16xf32>
}

// -----

// Tests that a view read late keeps its source alive: %s (viewed as %v,
// read by the last op) cannot share bytes with %t; sizes are rounded up to
// the alignment (64 B buffers at 256 B steps).
// CHECK-LABEL: func.func @view_liveness
// CHECK-SAME: moe.arena_bytes = 768 : i64
// CHECK: %[[S:.+]] = arith.addf {{.*}} {moe.arena_offsets = array<i64: 0>}
// CHECK: %[[T:.+]] = arith.mulf {{.*}} {moe.arena_offsets = array<i64: 256>}
// CHECK: arith.addf {{.*}} {moe.arena_offsets = array<i64: 512>}
func.func @view_liveness(%x: tensor<16xf32>) -> tensor<4x4xf32> {
  %s = arith.addf %x, %x : tensor<16xf32>
  %v = tensor.expand_shape %s [[0, 1]] output_shape [4, 4] : tensor<16xf32> into tensor<4x4xf32>
  %t = arith.mulf %x, %x : tensor<16xf32>
  %u = tensor.expand_shape %t [[0, 1]] output_shape [4, 4] : tensor<16xf32> into tensor<4x4xf32>
  %r = arith.addf %v, %u : tensor<4x4xf32>
  return %r : tensor<4x4xf32>
}

// -----

// Tests that dynamic shapes must be specialised first.
func.func @dynamic(%x: tensor<?x64xf32>, %w: tensor<64x64xf32>) -> tensor<?x64xf32> {
  // expected-error@+1 {{'moe.linear' op has a result of dynamic shape 'tensor<?x64xf32>'; run moe-specialize-shapes first}}
  %a = moe.linear %x, %w : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
  return %a : tensor<?x64xf32>
}
