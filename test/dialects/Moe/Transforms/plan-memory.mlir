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

// -----

// Tests that moe.adamw updates parameter and moments in place: its results
// get no arena bytes (only the gradient %g and the norm %n do).
// CHECK-LABEL: func.func @adamw_in_place
// CHECK-SAME: moe.arena_bytes = 512 : i64
// CHECK: moe.adamw
// CHECK-NOT: moe.arena_offsets
// CHECK: return
func.func @adamw_in_place(%p: tensor<16xf32>, %m: tensor<16xf32>, %v: tensor<16xf32>, %step: tensor<i64>, %lr: tensor<f32>) -> (tensor<16xf32>, tensor<16xf32>, tensor<16xf32>) {
  %g = arith.mulf %p, %p : tensor<16xf32>
  %n = moe.global_norm %g : (tensor<16xf32>) -> tensor<f32>
  %np, %nm, %nv = moe.adamw %p, %g, %m, %v, %step, %lr, %n {beta1 = 9.000000e-01 : f64, beta2 = 9.500000e-01 : f64, epsilon = 1.000000e-08 : f64, max_grad_norm = 1.000000e+00 : f64, weight_decay = 0.000000e+00 : f64} : tensor<16xf32>, tensor<i64>, tensor<f32>
  return %np, %nm, %nv : tensor<16xf32>, tensor<16xf32>, tensor<16xf32>
}

// -----

// Tests that nothing may read a parameter after moe.adamw updated it.
func.func @read_after_update(%p: tensor<16xf32>, %m: tensor<16xf32>, %v: tensor<16xf32>, %step: tensor<i64>, %lr: tensor<f32>) -> (tensor<16xf32>, tensor<16xf32>) {
  %g = arith.mulf %p, %p : tensor<16xf32>
  %n = moe.global_norm %g : (tensor<16xf32>) -> tensor<f32>
  // expected-note@+1 {{updated here}}
  %np, %nm, %nv = moe.adamw %p, %g, %m, %v, %step, %lr, %n {beta1 = 9.000000e-01 : f64, beta2 = 9.500000e-01 : f64, epsilon = 1.000000e-08 : f64, max_grad_norm = 1.000000e+00 : f64, weight_decay = 0.000000e+00 : f64} : tensor<16xf32>, tensor<i64>, tensor<f32>
  // expected-error@+1 {{'arith.addf' op reads a state that moe.adamw (op #2) already updated in place (this op is #3)}}
  %late = arith.addf %p, %p : tensor<16xf32>
  return %np, %late : tensor<16xf32>, tensor<16xf32>
}

// -----

// A parameter copy kept across steps (moe-keep-param-copies) lives in the
// runtime's persistent storage: no arena bytes, no offsets.
// CHECK-LABEL: func.func @persistent_copy
// CHECK-SAME: attributes {moe.arena_bytes = 256 : i64, moe.arena_live_bytes = 32 : i64}
// CHECK: arith.truncf %{{.+}} {moe.persistent_copy} : tensor<4x64xf32> to tensor<4x64xbf16>
// CHECK: moe.linear {{.*}} {moe.arena_offsets = array<i64: 0>}
func.func @persistent_copy(%w: tensor<4x64xf32>, %x: tensor<4x64xbf16>) -> tensor<4x4xbf16> {
  %c = arith.truncf %w {moe.persistent_copy} : tensor<4x64xf32> to tensor<4x64xbf16>
  %y = moe.linear %x, %c : (tensor<4x64xbf16>, tensor<4x64xbf16>) -> tensor<4x4xbf16>
  return %y : tensor<4x4xbf16>
}

// -----

// Tests that an expert-parallel rank's received rows get the bytes of their
// bound, every slot of the group (2 ranks · 4 tokens · 2 choices = 16 rows):
// rows 16 · 64 fp32 = 4 KiB at 0, the local experts' output 4 KiB at 4096,
// their local experts (128 B), gates (64 B) and the [2, 2] counts (32 B) in
// 256 B steps after them; the combined output reuses the rows' bytes.
// CHECK-LABEL: func.func @received_rows
// CHECK-SAME: moe.arena_bytes = 8960 : i64
// CHECK: moe.dispatch {{.*}} {dispatcher = #moe.dispatcher<all_to_all>, moe.arena_offsets = array<i64: 0, 8192, 8704, 8448>}
// CHECK: moe.experts {{.*}} {gate_up_layout = #moe.gate_up_layout<concatenated>, moe.arena_offsets = array<i64: 4096>}
// CHECK: moe.combine {{.*}} {dispatcher = #moe.dispatcher<all_to_all>, moe.arena_offsets = array<i64: 0>}
func.func @received_rows(%x: tensor<4x64xf32>, %g: tensor<4x2xf32>, %e: tensor<4x2xi64>,
                         %gate_up: tensor<2x32x64xf32>, %down: tensor<2x64x16xf32>) -> tensor<4x64xf32> {
  %rows, %row_e, %counts, %row_g = moe.dispatch %x, %e gates(%g) on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<4x64xf32>, tensor<4x2xi64>, tensor<4x2xf32>) -> (tensor<?x64xf32>, tensor<?x1xi64>, tensor<2x2xi64>, tensor<?x1xf32>)
  %y = moe.experts %rows, %row_g, %row_e, %gate_up, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<?x64xf32>, tensor<?x1xf32>, tensor<?x1xi64>, tensor<2x32x64xf32>, tensor<2x64x16xf32>) -> tensor<?x64xf32>
  %out = moe.combine %y, %e, %counts on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<?x64xf32>, tensor<4x2xi64>, tensor<2x2xi64>) -> tensor<4x64xf32>
  return %out : tensor<4x64xf32>
}

// -----

// Tests that a gradient reduction the compute stream joins late keeps its
// input alive until the join (moe::scheduleCollectives: before the
// moe.global_norm, its first reader off the gradient stream): %t, made
// while the reduce-scatter may still read %g, gets bytes of its own.
shard.grid @mesh(shape = 1x2x1)
// CHECK-LABEL: func.func @late_join_keeps_the_input
// CHECK-SAME: moe.arena_bytes = 1536 : i64
// CHECK: arith.mulf {{.*}} {moe.arena_offsets = array<i64: 0>}
// CHECK: shard.reduce_scatter {{.*}} {moe.arena_offsets = array<i64: 1024>}
// CHECK: arith.addf {{.*}} {moe.arena_offsets = array<i64: 512>}
func.func @late_join_keeps_the_input(%p: tensor<64xf32>, %m: tensor<64xf32>, %v: tensor<64xf32>, %step: tensor<i64>, %lr: tensor<f32>, %x: tensor<128xf32>) -> (tensor<64xf32>, tensor<128xf32>) {
  %g = arith.mulf %x, %x : tensor<128xf32>
  %r = shard.reduce_scatter %g on @mesh grid_axes = [1] scatter_axis = 0 : tensor<128xf32> -> tensor<64xf32>
  %t = arith.addf %x, %x : tensor<128xf32>
  %n = moe.global_norm %r : (tensor<64xf32>) -> tensor<f32>
  %np, %nm, %nv = moe.adamw %p, %r, %m, %v, %step, %lr, %n {beta1 = 9.000000e-01 : f64, beta2 = 9.500000e-01 : f64, epsilon = 1.000000e-08 : f64, max_grad_norm = 1.000000e+00 : f64, weight_decay = 0.000000e+00 : f64} : tensor<64xf32>, tensor<i64>, tensor<f32>
  return %np, %t : tensor<64xf32>, tensor<128xf32>
}

// -----

// Tests the same reduce-scatter of a value no update reads: it is joined
// at once, and %t reuses %g's bytes.
shard.grid @mesh(shape = 1x2x1)
// CHECK-LABEL: func.func @joined_at_once
// CHECK: arith.mulf {{.*}} {moe.arena_offsets = array<i64: 0>}
// CHECK: shard.reduce_scatter {{.*}} {moe.arena_offsets = array<i64: 512>}
// CHECK: arith.addf {{.*}} {moe.arena_offsets = array<i64: 0>}
func.func @joined_at_once(%x: tensor<128xf32>) -> (tensor<f32>, tensor<128xf32>) {
  %g = arith.mulf %x, %x : tensor<128xf32>
  %r = shard.reduce_scatter %g on @mesh grid_axes = [1] scatter_axis = 0 : tensor<128xf32> -> tensor<64xf32>
  %t = arith.addf %x, %x : tensor<128xf32>
  %n = moe.global_norm %r : (tensor<64xf32>) -> tensor<f32>
  return %n, %t : tensor<f32>, tensor<128xf32>
}

// -----

// Tests that transposes sharing one tensor.empty (as CSE leaves the weight
// transposes of raising) get buffers of their own, both alive to the end,
// and that the tensor.empty gets none.
// CHECK-LABEL: func.func @shared_transpose_init
// CHECK-SAME: moe.arena_bytes = 2048 : i64
// CHECK: tensor.empty() : tensor<16x16xf32>
// CHECK-NOT: moe.arena_offsets
// CHECK: linalg.transpose {{.*}} {moe.arena_offsets = array<i64: 0>}
// CHECK: linalg.transpose {{.*}} {moe.arena_offsets = array<i64: 1024>}
func.func @shared_transpose_init(%a: tensor<16x16xf32>, %b: tensor<16x16xf32>) -> (tensor<16x16xf32>, tensor<16x16xf32>) {
  %e = tensor.empty() : tensor<16x16xf32>
  %ta = linalg.transpose ins(%a : tensor<16x16xf32>) outs(%e : tensor<16x16xf32>) permutation = [1, 0]
  %tb = linalg.transpose ins(%b : tensor<16x16xf32>) outs(%e : tensor<16x16xf32>) permutation = [1, 0]
  return %ta, %tb : tensor<16x16xf32>, tensor<16x16xf32>
}

// -----

// Tests that an offloaded value's device bytes are free between its
// moe.offload and its moe.fetch: %c, made while %a is on the host, takes
// %a's bytes, and the fetched %f gets bytes of its own from the fetch on
// (on the device all along, %a would make the arena 4 KiB). The host copy
// is planned in the host region.
// CHECK-LABEL: func.func @offload
// CHECK-SAME: moe.arena_bytes = 3072 : i64
// CHECK-SAME: moe.host_bytes = 1024 : i64
// CHECK: %[[A:.+]] = moe.linear {{.*}} {moe.arena_offsets = array<i64: 0>}
// CHECK: %[[B:.+]] = moe.linear %[[A]], {{.*}} {moe.arena_offsets = array<i64: 1024>}
// CHECK: %[[H:.+]] = moe.offload %[[A]] layer 0 {moe.host_offsets = array<i64: 0>}
// CHECK: %[[C:.+]] = moe.linear %[[B]], {{.*}} {moe.arena_offsets = array<i64: 0>}
// CHECK: %[[F:.+]] = moe.fetch %[[H]] layer 0 {moe.arena_offsets = array<i64: 1024>}
// CHECK: arith.addf %[[C]], %[[F]] {moe.arena_offsets = array<i64: 2048>}
func.func @offload(%x: tensor<4x64xf32>, %w: tensor<64x64xf32>) -> tensor<4x64xf32> {
  %a = moe.linear %x, %w : (tensor<4x64xf32>, tensor<64x64xf32>) -> tensor<4x64xf32>
  %b = moe.linear %a, %w : (tensor<4x64xf32>, tensor<64x64xf32>) -> tensor<4x64xf32>
  %h = moe.offload %a layer 0 : tensor<4x64xf32> -> tensor<4x64xf32, #moe.host>
  %c = moe.linear %b, %w : (tensor<4x64xf32>, tensor<64x64xf32>) -> tensor<4x64xf32>
  %f = moe.fetch %h layer 0 : tensor<4x64xf32, #moe.host> -> tensor<4x64xf32>
  %d = arith.addf %c, %f : tensor<4x64xf32>
  return %d : tensor<4x64xf32>
}

// -----

// Tests that an offloaded value's device bytes are held until its
// moe.offload_join, where the compute stream waits for the copy that reads
// them: %c, made before the join, cannot take %a's bytes (in @offload
// above it does), %e, made after it, does.
// CHECK-LABEL: func.func @offload_join
// CHECK-SAME: moe.arena_bytes = 3072 : i64
// CHECK: %[[A:.+]] = moe.linear {{.*}} {moe.arena_offsets = array<i64: 0>}
// CHECK: %[[B:.+]] = moe.linear %[[A]], {{.*}} {moe.arena_offsets = array<i64: 1024>}
// CHECK: %[[H:.+]] = moe.offload %[[A]] layer 0 {moe.host_offsets = array<i64: 0>}
// CHECK: %[[C:.+]] = moe.linear %[[B]], {{.*}} {moe.arena_offsets = array<i64: 2048>}
// CHECK: moe.offload_join %[[H]]
// CHECK-NOT: moe.arena_offsets
// CHECK: %[[E:.+]] = moe.linear %[[C]], {{.*}} {moe.arena_offsets = array<i64: 0>}
// CHECK: %[[F:.+]] = moe.fetch %[[H]] layer 0
// CHECK: arith.addf %[[E]], %[[F]]
func.func @offload_join(%x: tensor<4x64xf32>, %w: tensor<64x64xf32>) -> tensor<4x64xf32> {
  %a = moe.linear %x, %w : (tensor<4x64xf32>, tensor<64x64xf32>) -> tensor<4x64xf32>
  %b = moe.linear %a, %w : (tensor<4x64xf32>, tensor<64x64xf32>) -> tensor<4x64xf32>
  %h = moe.offload %a layer 0 : tensor<4x64xf32> -> tensor<4x64xf32, #moe.host>
  %c = moe.linear %b, %w : (tensor<4x64xf32>, tensor<64x64xf32>) -> tensor<4x64xf32>
  moe.offload_join %h : tensor<4x64xf32, #moe.host>
  %e = moe.linear %c, %w : (tensor<4x64xf32>, tensor<64x64xf32>) -> tensor<4x64xf32>
  %f = moe.fetch %h layer 0 : tensor<4x64xf32, #moe.host> -> tensor<4x64xf32>
  %d = arith.addf %e, %f : tensor<4x64xf32>
  return %d : tensor<4x64xf32>
}
