// RUN: moec-opt %s -split-input-file --pass-pipeline="builtin.module(func.func(moe-specialize-shapes{batch=2 seq=8}))" -verify-diagnostics | FileCheck %s

// Tests that the token ids fix batch and sequence and every result type
// follows, through head splits, attention, routing and the lm-head.
// CHECK-LABEL: func.func @layer(
// CHECK-SAME: tensor<2x8xi64> {moe.input = "input_ids"}
// CHECK-SAME: -> tensor<2x8x64xf32>
// CHECK: moe.embedding {{.*}} -> tensor<2x8x16xf32>
// CHECK: tensor.expand_shape %{{.+}} {{\[}}[0], [1], [2, 3]] output_shape [2, 8, 4, 4] : tensor<2x8x16xf32> into tensor<2x8x4x4xf32>
// CHECK: moe.attention {{.*}} -> tensor<2x8x4x4xf32>
// CHECK: tensor.collapse_shape {{.*}} into tensor<2x8x16xf32>
// CHECK: moe.router {{.*}} -> (tensor<2x8x2xf32>, tensor<2x8x2xi64>)
// CHECK: moe.lm_head {{.*}} -> tensor<2x8x64xf32>
// CHECK-NOT: ?x
func.func @layer(%ids: tensor<?x?xi64> {moe.input = "input_ids"},
                 %table: tensor<64x16xf32> {moe.parameter = "embed.weight"},
                 %router: tensor<4x16xf32> {moe.parameter = "gate.weight"},
                 %head: tensor<64x16xf32> {moe.parameter = "lm_head.weight"}) -> tensor<?x?x64xf32> {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %h = moe.embedding %table[%ids] : (tensor<64x16xf32>, tensor<?x?xi64>) -> tensor<?x?x16xf32>
  %b = tensor.dim %h, %c0 : tensor<?x?x16xf32>
  %s = tensor.dim %h, %c1 : tensor<?x?x16xf32>
  %q = tensor.expand_shape %h [[0], [1], [2, 3]] output_shape [%b, %s, 4, 4] : tensor<?x?x16xf32> into tensor<?x?x4x4xf32>
  %a = moe.attention %q, %q, %q {scale = 0.5 : f64} : (tensor<?x?x4x4xf32>, tensor<?x?x4x4xf32>, tensor<?x?x4x4xf32>) -> tensor<?x?x4x4xf32>
  %m = tensor.collapse_shape %a [[0], [1], [2, 3]] : tensor<?x?x4x4xf32> into tensor<?x?x16xf32>
  %l = moe.linear %m, %router : (tensor<?x?x16xf32>, tensor<4x16xf32>) -> tensor<?x?x4xf32>
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<?x?x4xf32>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi64>)
  %o = moe.lm_head %m, %head : (tensor<?x?x16xf32>, tensor<64x16xf32>) -> tensor<?x?x64xf32>
  return %o : tensor<?x?x64xf32>
}

// -----

// Tests that a static dimension that disagrees with the job is an error.
// expected-error@+1 {{input 0 has static dimension 1 = 16, not 8}}
func.func @wrong_seq(%ids: tensor<2x16xi64> {moe.input = "input_ids"}) {
  return
}

// -----

// Tests that an op without a shape rule and a dynamic result is reported.
func.func @no_rule(%ids: tensor<?x?xi64> {moe.input = "input_ids"}) -> tensor<?xi64> {
  // expected-error@+1 {{'moe.onnx_node' op has a dynamic result, and moe-specialize-shapes has no shape rule for it}}
  %0 = moe.onnx_node "Flatten"(%ids) : (tensor<?x?xi64>) -> tensor<?xi64>
  return %0 : tensor<?xi64>
}
