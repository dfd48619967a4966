// RUN: moec-opt %s -split-input-file -moe-raise-onnx | FileCheck %s

// Tests that a Gather of a parameter table by token ids becomes an embedding.
// CHECK-LABEL: func.func @embedding
// CHECK-SAME: (%[[IDS:.+]]: tensor<?x?xi64> {moe.input = "input_ids"}, %[[TABLE:.+]]: tensor<256x32xf32>
// CHECK: %[[E:.+]] = moe.embedding %[[TABLE]][%[[IDS]]]
// CHECK-NOT: moe.onnx_node
// CHECK: return %[[E]]
func.func @embedding(%ids: tensor<?x?xi64> {moe.input = "input_ids"},
                     %table: tensor<256x32xf32> {moe.parameter = "model.embed_tokens.weight"}) -> tensor<?x?x32xf32> {
  %0 = moe.onnx_node "Gather"(%table, %ids) {axis = 0 : i64} : (tensor<256x32xf32>, tensor<?x?xi64>) -> tensor<?x?x32xf32>
  return %0 : tensor<?x?x32xf32>
}

// -----

// Tests that a Gather from an activation is not an embedding.
// CHECK-LABEL: func.func @gather_of_activation
// CHECK: moe.onnx_node "Gather"
// CHECK-NOT: moe.embedding
func.func @gather_of_activation(%x: tensor<4x8xf32> {moe.input = "x"}, %i: tensor<2xi64> {moe.input = "i"}) -> tensor<2x8xf32> {
  %0 = moe.onnx_node "Gather"(%x, %i) {axis = 0 : i64} : (tensor<4x8xf32>, tensor<2xi64>) -> tensor<2x8xf32>
  return %0 : tensor<2x8xf32>
}

// -----

// Tests that a Gather of a parameter table whose declared result is not
// [ids..., hidden] (here rank-1 ids and a rank-3 result, a shape the
// onnx-import fuzz target made by mutating a model) is not an embedding:
// moe.embedding's verifier would refuse it.
// CHECK-LABEL: func.func @gather_result_not_ids_by_hidden
// CHECK: moe.onnx_node "Gather"
// CHECK-NOT: moe.embedding
func.func @gather_result_not_ids_by_hidden(%ids: tensor<?xi64> {moe.input = "input_ids"},
                                           %table: tensor<256x2xf32> {moe.parameter = "embed.weight"}) -> tensor<?x?x2xf32> {
  %0 = moe.onnx_node "Gather"(%table, %ids) {axis = 0 : i64} : (tensor<256x2xf32>, tensor<?xi64>) -> tensor<?x?x2xf32>
  return %0 : tensor<?x?x2xf32>
}

// -----

// Tests the three spellings of a linear layer: MatMul by a transposed
// parameter, Gemm with transB, and MatMul by a weight an exporter stored
// transposed (which gets an explicit transpose back to [out, in]).
// CHECK-LABEL: func.func @linears
// CHECK-SAME: %[[X:[^:]+]]: tensor<2x8x32xf32>
// CHECK-SAME: %[[W:[^:]+]]: tensor<16x32xf32>
// CHECK-SAME: %[[WT:[^:]+]]: tensor<32x16xf32>
// CHECK: %[[A:.+]] = moe.linear %[[X]], %[[W]] : (tensor<2x8x32xf32>, tensor<16x32xf32>) -> tensor<2x8x16xf32>
// CHECK: %[[B:.+]] = moe.linear %{{.+}}, %[[W]] : (tensor<16x32xf32>, tensor<16x32xf32>) -> tensor<16x16xf32>
// CHECK: %[[T:.+]] = linalg.transpose ins(%[[WT]] : tensor<32x16xf32>) outs(%{{.+}} : tensor<16x32xf32>) permutation = [1, 0]
// CHECK: %[[C:.+]] = moe.linear %[[X]], %[[T]]
// CHECK-NOT: moe.onnx_node "MatMul"
// CHECK-NOT: moe.onnx_node "Gemm"
func.func @linears(%x: tensor<2x8x32xf32> {moe.input = "x"},
                   %w: tensor<16x32xf32> {moe.parameter = "q_proj.weight"},
                   %wt: tensor<32x16xf32> {moe.parameter = "val_12"},
                   %x2: tensor<16x32xf32> {moe.input = "x2"})
    -> (tensor<2x8x16xf32>, tensor<16x16xf32>, tensor<2x8x16xf32>) {
  %t = moe.onnx_node "Transpose"(%w) {perm = array<i64: 1, 0>} : (tensor<16x32xf32>) -> tensor<32x16xf32>
  %a = moe.onnx_node "MatMul"(%x, %t) : (tensor<2x8x32xf32>, tensor<32x16xf32>) -> tensor<2x8x16xf32>
  %b = moe.onnx_node "Gemm"(%x2, %w) {alpha = 1.0 : f32, beta = 1.0 : f32, transB = 1 : i64} : (tensor<16x32xf32>, tensor<16x32xf32>) -> tensor<16x16xf32>
  %c = moe.onnx_node "MatMul"(%x, %wt) : (tensor<2x8x32xf32>, tensor<32x16xf32>) -> tensor<2x8x16xf32>
  return %a, %b, %c : tensor<2x8x16xf32>, tensor<16x16xf32>, tensor<2x8x16xf32>
}

// -----

// Tests that a MatMul or Gemm by a parameter whose declared result is not
// the input's shape with the weight's output features last, or whose weight
// does not take the input's features, stays an ONNX node: moe.linear's
// verifier would refuse it (the onnx-import fuzz target's find: a Gemm
// declaring 108 output features of a [4, 32] weight).
// CHECK-LABEL: func.func @linear_types_disagree
// CHECK-COUNT-3: moe.onnx_node
// CHECK-NOT: moe.linear
func.func @linear_types_disagree(%x: tensor<?x32xf32> {moe.input = "x"},
                                 %w: tensor<4x32xf32> {moe.parameter = "gate.weight"},
                                 %v: tensor<4x16xf32> {moe.parameter = "v.weight"})
    -> (tensor<?x108xf32>, tensor<?x4xf32>, tensor<?x4xf16>) {
  %a = moe.onnx_node "Gemm"(%x, %w) {alpha = 1.0 : f32, beta = 1.0 : f32, transB = 1 : i64} : (tensor<?x32xf32>, tensor<4x32xf32>) -> tensor<?x108xf32>
  %b = moe.onnx_node "Gemm"(%x, %v) {transB = 1 : i64} : (tensor<?x32xf32>, tensor<4x16xf32>) -> tensor<?x4xf32>
  %c = moe.onnx_node "Gemm"(%x, %w) {transB = 1 : i64} : (tensor<?x32xf32>, tensor<4x32xf32>) -> tensor<?x4xf16>
  return %a, %b, %c : tensor<?x108xf32>, tensor<?x4xf32>, tensor<?x4xf16>
}

// -----

// Tests that a Gemm with a scale other than 1 stays an ONNX node.
// CHECK-LABEL: func.func @scaled_gemm
// CHECK: moe.onnx_node "Gemm"
// CHECK-NOT: moe.linear
func.func @scaled_gemm(%x: tensor<16x32xf32> {moe.input = "x"},
                       %w: tensor<16x32xf32> {moe.parameter = "w.weight"}) -> tensor<16x16xf32> {
  %b = moe.onnx_node "Gemm"(%x, %w) {alpha = 2.0 : f32, transB = 1 : i64} : (tensor<16x32xf32>, tensor<16x32xf32>) -> tensor<16x16xf32>
  return %b : tensor<16x16xf32>
}

// -----

// Tests that the RMSNorm chain becomes one op with its epsilon.
// CHECK-LABEL: func.func @rms_norm
// CHECK-SAME: %[[X:[^:]+]]: tensor<?x?x32xf32>
// CHECK-SAME: %[[W:[^:]+]]: tensor<32xf32>
// CHECK: %[[N:.+]] = moe.rms_norm %[[X]], %[[W]] {epsilon = 9.9999997473787516E-6 : f64}
// CHECK-NOT: moe.onnx_node
// CHECK: return %[[N]]
func.func @rms_norm(%x: tensor<?x?x32xf32> {moe.input = "x"},
                    %w: tensor<32xf32> {moe.parameter = "norm.weight"}) -> tensor<?x?x32xf32> {
  %two = arith.constant dense<2.0> : tensor<f32>
  %axes = arith.constant dense<-1> : tensor<1xi64>
  %eps = arith.constant dense<1.0e-05> : tensor<f32>
  %0 = moe.onnx_node "Pow"(%x, %two) : (tensor<?x?x32xf32>, tensor<f32>) -> tensor<?x?x32xf32>
  %1 = moe.onnx_node "ReduceMean"(%0, %axes) {keepdims = 1 : i64} : (tensor<?x?x32xf32>, tensor<1xi64>) -> tensor<?x?x1xf32>
  %2 = moe.onnx_node "Add"(%1, %eps) : (tensor<?x?x1xf32>, tensor<f32>) -> tensor<?x?x1xf32>
  %3 = moe.onnx_node "Sqrt"(%2) : (tensor<?x?x1xf32>) -> tensor<?x?x1xf32>
  %4 = moe.onnx_node "Reciprocal"(%3) : (tensor<?x?x1xf32>) -> tensor<?x?x1xf32>
  %5 = moe.onnx_node "Mul"(%x, %4) : (tensor<?x?x32xf32>, tensor<?x?x1xf32>) -> tensor<?x?x32xf32>
  %6 = moe.onnx_node "Mul"(%w, %5) : (tensor<32xf32>, tensor<?x?x32xf32>) -> tensor<?x?x32xf32>
  return %6 : tensor<?x?x32xf32>
}

// -----

// Tests that an RMSNorm chain adding a negative epsilon (the onnx-import
// fuzz target's find: a mutated model's -1), or scaling by a weight of
// another width than x's, stays ONNX nodes: moe.rms_norm's verifier would
// refuse it.
// CHECK-LABEL: func.func @rms_norm_not_raised
// CHECK-NOT: moe.rms_norm
// CHECK: return
func.func @rms_norm_not_raised(%x: tensor<?x?x32xf32> {moe.input = "x"},
                               %w: tensor<32xf32> {moe.parameter = "norm.weight"},
                               %v: tensor<16xf32> {moe.parameter = "other.weight"}) -> (tensor<?x?x32xf32>, tensor<?x?x32xf32>) {
  %two = arith.constant dense<2.0> : tensor<f32>
  %axes = arith.constant dense<-1> : tensor<1xi64>
  %eps = arith.constant dense<-1.0> : tensor<f32>
  %good = arith.constant dense<1.0e-05> : tensor<f32>
  %0 = moe.onnx_node "Pow"(%x, %two) : (tensor<?x?x32xf32>, tensor<f32>) -> tensor<?x?x32xf32>
  %1 = moe.onnx_node "ReduceMean"(%0, %axes) {keepdims = 1 : i64} : (tensor<?x?x32xf32>, tensor<1xi64>) -> tensor<?x?x1xf32>
  %2 = moe.onnx_node "Add"(%1, %eps) : (tensor<?x?x1xf32>, tensor<f32>) -> tensor<?x?x1xf32>
  %3 = moe.onnx_node "Sqrt"(%2) : (tensor<?x?x1xf32>) -> tensor<?x?x1xf32>
  %4 = moe.onnx_node "Reciprocal"(%3) : (tensor<?x?x1xf32>) -> tensor<?x?x1xf32>
  %5 = moe.onnx_node "Mul"(%x, %4) : (tensor<?x?x32xf32>, tensor<?x?x1xf32>) -> tensor<?x?x32xf32>
  %6 = moe.onnx_node "Mul"(%w, %5) : (tensor<32xf32>, tensor<?x?x32xf32>) -> tensor<?x?x32xf32>
  %7 = moe.onnx_node "Add"(%1, %good) : (tensor<?x?x1xf32>, tensor<f32>) -> tensor<?x?x1xf32>
  %8 = moe.onnx_node "Sqrt"(%7) : (tensor<?x?x1xf32>) -> tensor<?x?x1xf32>
  %9 = moe.onnx_node "Reciprocal"(%8) : (tensor<?x?x1xf32>) -> tensor<?x?x1xf32>
  %10 = moe.onnx_node "Mul"(%x, %9) : (tensor<?x?x32xf32>, tensor<?x?x1xf32>) -> tensor<?x?x32xf32>
  %11 = moe.onnx_node "Mul"(%v, %10) : (tensor<16xf32>, tensor<?x?x32xf32>) -> tensor<?x?x32xf32>
  return %6, %11 : tensor<?x?x32xf32>, tensor<?x?x32xf32>
}

// -----

// Tests that a mean over the wrong axis is not an RMSNorm.
// CHECK-LABEL: func.func @not_rms_norm
// CHECK-NOT: moe.rms_norm
// CHECK: moe.onnx_node "ReduceMean"
func.func @not_rms_norm(%x: tensor<4x32xf32> {moe.input = "x"},
                        %w: tensor<32xf32> {moe.parameter = "norm.weight"}) -> tensor<4x32xf32> {
  %two = arith.constant dense<2.0> : tensor<f32>
  %axes = arith.constant dense<0> : tensor<1xi64>
  %eps = arith.constant dense<1.0e-05> : tensor<f32>
  %0 = moe.onnx_node "Pow"(%x, %two) : (tensor<4x32xf32>, tensor<f32>) -> tensor<4x32xf32>
  %1 = moe.onnx_node "ReduceMean"(%0, %axes) {keepdims = 1 : i64} : (tensor<4x32xf32>, tensor<1xi64>) -> tensor<1x32xf32>
  %2 = moe.onnx_node "Add"(%1, %eps) : (tensor<1x32xf32>, tensor<f32>) -> tensor<1x32xf32>
  %3 = moe.onnx_node "Sqrt"(%2) : (tensor<1x32xf32>) -> tensor<1x32xf32>
  %4 = moe.onnx_node "Reciprocal"(%3) : (tensor<1x32xf32>) -> tensor<1x32xf32>
  %5 = moe.onnx_node "Mul"(%x, %4) : (tensor<4x32xf32>, tensor<1x32xf32>) -> tensor<4x32xf32>
  %6 = moe.onnx_node "Mul"(%w, %5) : (tensor<32xf32>, tensor<4x32xf32>) -> tensor<4x32xf32>
  return %6 : tensor<4x32xf32>
}

// -----

// Tests onnxruntime's MoE node with an in-graph gate/up interleave: the
// router becomes linear + router, the experts read the checkpoint tensor in
// its concatenated layout, on the unflattened [batch, seq, hidden] input.
// CHECK-LABEL: func.func @ort_moe
// CHECK-SAME: %[[X:[^:]+]]: tensor<2x8x32xf32>
// CHECK-SAME: %[[WR:[^:]+]]: tensor<4x32xf32>
// CHECK-SAME: %[[GU:[^:]+]]: tensor<4x128x32xf32>
// CHECK-SAME: %[[DOWN:[^:]+]]: tensor<4x32x64xf32>
// CHECK: %[[L:.+]] = moe.linear %[[X]], %[[WR]] : (tensor<2x8x32xf32>, tensor<4x32xf32>) -> tensor<2x8x4xf32>
// CHECK: %[[G:.+]], %[[E:.+]] = moe.router %[[L]] {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>}
// CHECK: %[[Y:.+]] = moe.experts %[[X]], %[[G]], %[[E]], %[[GU]], %[[DOWN]] {gate_up_layout = #moe.gate_up_layout<concatenated>}
// CHECK-NOT: moe.onnx_node
// CHECK: return %[[Y]]
func.func @ort_moe(%x: tensor<2x8x32xf32> {moe.input = "x"},
                   %wr: tensor<4x32xf32> {moe.parameter = "mlp.gate.weight"},
                   %gu: tensor<4x128x32xf32> {moe.parameter = "mlp.experts.gate_up_proj"},
                   %down: tensor<4x32x64xf32> {moe.parameter = "mlp.experts.down_proj"}) -> tensor<2x8x32xf32> {
  %flat = arith.constant dense<[-1, 32]> : tensor<2xi64>
  %split = arith.constant dense<[4, 2, 64, 32]> : tensor<4xi64>
  %merge = arith.constant dense<[4, 128, 32]> : tensor<3xi64>
  %0 = moe.onnx_node "Reshape"(%x, %flat) : (tensor<2x8x32xf32>, tensor<2xi64>) -> tensor<16x32xf32>
  %t = moe.onnx_node "Transpose"(%wr) {perm = array<i64: 1, 0>} : (tensor<4x32xf32>) -> tensor<32x4xf32>
  %1 = moe.onnx_node "MatMul"(%0, %t) : (tensor<16x32xf32>, tensor<32x4xf32>) -> tensor<16x4xf32>
  %2 = moe.onnx_node "Reshape"(%gu, %split) : (tensor<4x128x32xf32>, tensor<4xi64>) -> tensor<4x2x64x32xf32>
  %3 = moe.onnx_node "Transpose"(%2) {perm = array<i64: 0, 2, 1, 3>} : (tensor<4x2x64x32xf32>) -> tensor<4x64x2x32xf32>
  %4 = moe.onnx_node "Reshape"(%3, %merge) : (tensor<4x64x2x32xf32>, tensor<3xi64>) -> tensor<4x128x32xf32>
  %5 = moe.onnx_node "MoE"(%0, %1, %4, %down) {absent_inputs = array<i64: 3>, activation_alpha = 1.0 : f32, activation_beta = 0.0 : f32, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 1 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  %6 = moe.onnx_node "Shape"(%x) : (tensor<2x8x32xf32>) -> tensor<3xi64>
  %7 = moe.onnx_node "Reshape"(%5, %6) : (tensor<16x32xf32>, tensor<3xi64>) -> tensor<2x8x32xf32>
  return %7 : tensor<2x8x32xf32>
}

// -----

// Tests fc1 interleaved from the checkpoint layout by Split, Unsqueeze,
// Concat and Reshape (as torch's chunk/stack/flatten export), and by Slices
// with a Cast and a Transpose pair around down: read structurally, the
// experts take the parameters themselves. Gate and up stacked the wrong
// way round (up rows first) are not Mixtral's interleave: not raised.
// CHECK-LABEL: func.func @ort_moe_rearranged
// CHECK-SAME: %[[GU:[^:]+]]: tensor<4x128x32xf32>
// CHECK-SAME: %[[DOWN:[^:]+]]: tensor<4x32x64xf32>
// CHECK: moe.experts %{{.+}}, %{{.+}}, %{{.+}}, %[[GU]], %[[DOWN]] {gate_up_layout = #moe.gate_up_layout<concatenated>}
// CHECK: moe.experts %{{.+}}, %{{.+}}, %{{.+}}, %[[GU]], %[[DOWN]] {gate_up_layout = #moe.gate_up_layout<concatenated>}
// CHECK: moe.onnx_node "MoE"
func.func @ort_moe_rearranged(%x: tensor<16x32xf32> {moe.input = "x"},
                              %wr: tensor<4x32xf32> {moe.parameter = "mlp.gate.weight"},
                              %gu: tensor<4x128x32xf32> {moe.parameter = "mlp.experts.gate_up_proj"},
                              %down: tensor<4x32x64xf32> {moe.parameter = "mlp.experts.down_proj"}) -> (tensor<16x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>) {
  %axis2 = arith.constant dense<[2]> : tensor<1xi64>
  %axis1 = arith.constant dense<[1]> : tensor<1xi64>
  %zero = arith.constant dense<[0]> : tensor<1xi64>
  %half = arith.constant dense<[64]> : tensor<1xi64>
  %end = arith.constant dense<[9223372036854775807]> : tensor<1xi64>
  %merge = arith.constant dense<[4, 128, 32]> : tensor<3xi64>
  %t = moe.onnx_node "Transpose"(%wr) {perm = array<i64: 1, 0>} : (tensor<4x32xf32>) -> tensor<32x4xf32>
  %logits = moe.onnx_node "MatMul"(%x, %t) : (tensor<16x32xf32>, tensor<32x4xf32>) -> tensor<16x4xf32>
  %gate, %up = moe.onnx_node "Split"(%gu) {axis = 1 : i64, num_outputs = 2 : i64} : (tensor<4x128x32xf32>) -> (tensor<4x64x32xf32>, tensor<4x64x32xf32>)
  %g3 = moe.onnx_node "Unsqueeze"(%gate, %axis2) : (tensor<4x64x32xf32>, tensor<1xi64>) -> tensor<4x64x1x32xf32>
  %u3 = moe.onnx_node "Unsqueeze"(%up, %axis2) : (tensor<4x64x32xf32>, tensor<1xi64>) -> tensor<4x64x1x32xf32>
  %stacked = moe.onnx_node "Concat"(%g3, %u3) {axis = 2 : i64} : (tensor<4x64x1x32xf32>, tensor<4x64x1x32xf32>) -> tensor<4x64x2x32xf32>
  %fc1 = moe.onnx_node "Reshape"(%stacked, %merge) : (tensor<4x64x2x32xf32>, tensor<3xi64>) -> tensor<4x128x32xf32>
  %y1 = moe.onnx_node "MoE"(%x, %logits, %fc1, %down) {absent_inputs = array<i64: 3>, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 1 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  %gs = moe.onnx_node "Slice"(%gu, %zero, %half, %axis1) : (tensor<4x128x32xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<4x64x32xf32>
  %us = moe.onnx_node "Slice"(%gu, %half, %end, %axis1) : (tensor<4x128x32xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<4x64x32xf32>
  %gc = moe.onnx_node "Cast"(%gs) {to = 1 : i64} : (tensor<4x64x32xf32>) -> tensor<4x64x32xf32>
  %g4 = moe.onnx_node "Unsqueeze"(%gc, %axis2) : (tensor<4x64x32xf32>, tensor<1xi64>) -> tensor<4x64x1x32xf32>
  %u4 = moe.onnx_node "Unsqueeze"(%us, %axis2) : (tensor<4x64x32xf32>, tensor<1xi64>) -> tensor<4x64x1x32xf32>
  %stacked2 = moe.onnx_node "Concat"(%g4, %u4) {axis = 2 : i64} : (tensor<4x64x1x32xf32>, tensor<4x64x1x32xf32>) -> tensor<4x64x2x32xf32>
  %fc1b = moe.onnx_node "Reshape"(%stacked2, %merge) : (tensor<4x64x2x32xf32>, tensor<3xi64>) -> tensor<4x128x32xf32>
  %dt = moe.onnx_node "Transpose"(%down) {perm = array<i64: 0, 2, 1>} : (tensor<4x32x64xf32>) -> tensor<4x64x32xf32>
  %fc2 = moe.onnx_node "Transpose"(%dt) {perm = array<i64: 0, 2, 1>} : (tensor<4x64x32xf32>) -> tensor<4x32x64xf32>
  %y2 = moe.onnx_node "MoE"(%x, %logits, %fc1b, %fc2) {absent_inputs = array<i64: 3>, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 1 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  %swapped = moe.onnx_node "Concat"(%u3, %g3) {axis = 2 : i64} : (tensor<4x64x1x32xf32>, tensor<4x64x1x32xf32>) -> tensor<4x64x2x32xf32>
  %fc1c = moe.onnx_node "Reshape"(%swapped, %merge) : (tensor<4x64x2x32xf32>, tensor<3xi64>) -> tensor<4x128x32xf32>
  %y3 = moe.onnx_node "MoE"(%x, %logits, %fc1c, %down) {absent_inputs = array<i64: 3>, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 1 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  return %y1, %y2, %y3 : tensor<16x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>
}

// -----

// Tests the other layouts of the expert weights a user's export computes for
// onnxruntime's MoE, read structurally: fc1 given as Hugging Face's
// gate_up_proj itself (swiglu_fusion 2: gate rows, then up rows); fc1 and
// fc3 split from it (swiglu_fusion 0); both weights stored transposed
// ([E, H, 2I] and [E, I, H], a Transpose in front of the interleave and of
// fc2). The experts read the parameter, through a linalg.transpose where it
// is stored transposed (moe-canonicalize-parameters folds it).
// CHECK-LABEL: func.func @ort_moe_fusions
// CHECK-SAME: %[[GU:[^:]+]]: tensor<4x128x32xf32> {moe.parameter = "mlp.experts.gate_up_proj"}
// CHECK-SAME: %[[DOWN:[^:]+]]: tensor<4x32x64xf32> {moe.parameter = "mlp.experts.down_proj"}
// CHECK-SAME: %[[GUT:[^:]+]]: tensor<4x32x128xf32> {moe.parameter = "stored.gate_up_t"}
// CHECK-SAME: %[[DOWNT:[^:]+]]: tensor<4x64x32xf32> {moe.parameter = "stored.down_t"}
// CHECK-DAG: %[[GU2:.+]] = linalg.transpose ins(%[[GUT]] : tensor<4x32x128xf32>) outs(%{{.+}} : tensor<4x128x32xf32>) permutation = [0, 2, 1]
// CHECK-DAG: %[[DOWN2:.+]] = linalg.transpose ins(%[[DOWNT]] : tensor<4x64x32xf32>) outs(%{{.+}} : tensor<4x32x64xf32>) permutation = [0, 2, 1]
// CHECK: moe.experts %{{.+}}, %{{.+}}, %{{.+}}, %[[GU]], %[[DOWN]] {gate_up_layout = #moe.gate_up_layout<concatenated>}
// CHECK: moe.experts %{{.+}}, %{{.+}}, %{{.+}}, %[[GU]], %[[DOWN]] {gate_up_layout = #moe.gate_up_layout<concatenated>}
// CHECK: moe.experts %{{.+}}, %{{.+}}, %{{.+}}, %[[GU2]], %[[DOWN2]] {gate_up_layout = #moe.gate_up_layout<concatenated>}
// CHECK-NOT: moe.onnx_node "MoE"
func.func @ort_moe_fusions(%x: tensor<16x32xf32> {moe.input = "x"},
                           %wr: tensor<4x32xf32> {moe.parameter = "mlp.gate.weight"},
                           %gu: tensor<4x128x32xf32> {moe.parameter = "mlp.experts.gate_up_proj"},
                           %down: tensor<4x32x64xf32> {moe.parameter = "mlp.experts.down_proj"},
                           %gut: tensor<4x32x128xf32> {moe.parameter = "stored.gate_up_t"},
                           %downt: tensor<4x64x32xf32> {moe.parameter = "stored.down_t"}) -> (tensor<16x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>) {
  %split = arith.constant dense<[4, 2, 64, 32]> : tensor<4xi64>
  %merge = arith.constant dense<[4, 128, 32]> : tensor<3xi64>
  %t = moe.onnx_node "Transpose"(%wr) {perm = array<i64: 1, 0>} : (tensor<4x32xf32>) -> tensor<32x4xf32>
  %logits = moe.onnx_node "MatMul"(%x, %t) : (tensor<16x32xf32>, tensor<32x4xf32>) -> tensor<16x4xf32>
  %y1 = moe.onnx_node "MoE"(%x, %logits, %gu, %down) {absent_inputs = array<i64: 3>, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 2 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  %gate, %up = moe.onnx_node "Split"(%gu) {axis = 1 : i64, num_outputs = 2 : i64} : (tensor<4x128x32xf32>) -> (tensor<4x64x32xf32>, tensor<4x64x32xf32>)
  %y2 = moe.onnx_node "MoE"(%x, %logits, %gate, %down, %up) {absent_inputs = array<i64: 3, 5>, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 0 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x64x32xf32>, tensor<4x32x64xf32>, tensor<4x64x32xf32>) -> tensor<16x32xf32>
  %gu2 = moe.onnx_node "Transpose"(%gut) {perm = array<i64: 0, 2, 1>} : (tensor<4x32x128xf32>) -> tensor<4x128x32xf32>
  %0 = moe.onnx_node "Reshape"(%gu2, %split) : (tensor<4x128x32xf32>, tensor<4xi64>) -> tensor<4x2x64x32xf32>
  %1 = moe.onnx_node "Transpose"(%0) {perm = array<i64: 0, 2, 1, 3>} : (tensor<4x2x64x32xf32>) -> tensor<4x64x2x32xf32>
  %fc1 = moe.onnx_node "Reshape"(%1, %merge) : (tensor<4x64x2x32xf32>, tensor<3xi64>) -> tensor<4x128x32xf32>
  %fc2 = moe.onnx_node "Transpose"(%downt) {perm = array<i64: 0, 2, 1>} : (tensor<4x64x32xf32>) -> tensor<4x32x64xf32>
  %y3 = moe.onnx_node "MoE"(%x, %logits, %fc1, %fc2) {absent_inputs = array<i64: 3>, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 1 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  return %y1, %y2, %y3 : tensor<16x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>
}

// -----

// Tests expert weights stored in another type than the model computes in:
// bf16 in the file, Cast to f32 before the interleave (and before fc2); f32
// in the file, Cast to bf16 in a bf16 model. The experts read the parameter
// converted once (arith.extf, arith.truncf), which
// moe-canonicalize-parameters folds into the parameter.
// CHECK-LABEL: func.func @ort_moe_cast
// CHECK-SAME: %[[GU:[^:]+]]: tensor<4x128x32xbf16> {moe.parameter = "mlp.experts.gate_up_proj"}
// CHECK-SAME: %[[DOWN:[^:]+]]: tensor<4x32x64xbf16> {moe.parameter = "mlp.experts.down_proj"}
// CHECK-SAME: %[[GU32:[^:]+]]: tensor<4x128x32xf32> {moe.parameter = "f32.gate_up_proj"}
// CHECK-SAME: %[[DOWN32:[^:]+]]: tensor<4x32x64xf32> {moe.parameter = "f32.down_proj"}
// CHECK-DAG: %[[GUF:.+]] = arith.extf %[[GU]] : tensor<4x128x32xbf16> to tensor<4x128x32xf32>
// CHECK-DAG: %[[DOWNF:.+]] = arith.extf %[[DOWN]] : tensor<4x32x64xbf16> to tensor<4x32x64xf32>
// CHECK-DAG: %[[GUB:.+]] = arith.truncf %[[GU32]] : tensor<4x128x32xf32> to tensor<4x128x32xbf16>
// CHECK-DAG: %[[DOWNB:.+]] = arith.truncf %[[DOWN32]] : tensor<4x32x64xf32> to tensor<4x32x64xbf16>
// CHECK: moe.experts %{{.+}}, %{{.+}}, %{{.+}}, %[[GUF]], %[[DOWNF]] {gate_up_layout = #moe.gate_up_layout<concatenated>}
// CHECK: moe.experts %{{.+}}, %{{.+}}, %{{.+}}, %[[GUB]], %[[DOWNB]] {gate_up_layout = #moe.gate_up_layout<concatenated>}
// CHECK-NOT: moe.onnx_node "MoE"
func.func @ort_moe_cast(%x: tensor<16x32xf32> {moe.input = "x"},
                        %xb: tensor<16x32xbf16> {moe.input = "xb"},
                        %wr: tensor<4x32xf32> {moe.parameter = "mlp.gate.weight"},
                        %wrb: tensor<4x32xbf16> {moe.parameter = "bf16.gate.weight"},
                        %gu: tensor<4x128x32xbf16> {moe.parameter = "mlp.experts.gate_up_proj"},
                        %down: tensor<4x32x64xbf16> {moe.parameter = "mlp.experts.down_proj"},
                        %gu32: tensor<4x128x32xf32> {moe.parameter = "f32.gate_up_proj"},
                        %down32: tensor<4x32x64xf32> {moe.parameter = "f32.down_proj"}) -> (tensor<16x32xf32>, tensor<16x32xbf16>) {
  %split = arith.constant dense<[4, 2, 64, 32]> : tensor<4xi64>
  %merge = arith.constant dense<[4, 128, 32]> : tensor<3xi64>
  %t = moe.onnx_node "Transpose"(%wr) {perm = array<i64: 1, 0>} : (tensor<4x32xf32>) -> tensor<32x4xf32>
  %logits = moe.onnx_node "MatMul"(%x, %t) : (tensor<16x32xf32>, tensor<32x4xf32>) -> tensor<16x4xf32>
  %guf = moe.onnx_node "Cast"(%gu) {to = 1 : i64} : (tensor<4x128x32xbf16>) -> tensor<4x128x32xf32>
  %0 = moe.onnx_node "Reshape"(%guf, %split) : (tensor<4x128x32xf32>, tensor<4xi64>) -> tensor<4x2x64x32xf32>
  %1 = moe.onnx_node "Transpose"(%0) {perm = array<i64: 0, 2, 1, 3>} : (tensor<4x2x64x32xf32>) -> tensor<4x64x2x32xf32>
  %fc1 = moe.onnx_node "Reshape"(%1, %merge) : (tensor<4x64x2x32xf32>, tensor<3xi64>) -> tensor<4x128x32xf32>
  %fc2 = moe.onnx_node "Cast"(%down) {to = 1 : i64} : (tensor<4x32x64xbf16>) -> tensor<4x32x64xf32>
  %y1 = moe.onnx_node "MoE"(%x, %logits, %fc1, %fc2) {absent_inputs = array<i64: 3>, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 1 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  %tb = moe.onnx_node "Transpose"(%wrb) {perm = array<i64: 1, 0>} : (tensor<4x32xbf16>) -> tensor<32x4xbf16>
  %logitsb = moe.onnx_node "MatMul"(%xb, %tb) : (tensor<16x32xbf16>, tensor<32x4xbf16>) -> tensor<16x4xbf16>
  %fc1b = moe.onnx_node "Cast"(%gu32) {to = 16 : i64} : (tensor<4x128x32xf32>) -> tensor<4x128x32xbf16>
  %fc2b = moe.onnx_node "Cast"(%down32) {to = 16 : i64} : (tensor<4x32x64xf32>) -> tensor<4x32x64xbf16>
  %y2 = moe.onnx_node "MoE"(%xb, %logitsb, %fc1b, %fc2b) {absent_inputs = array<i64: 3>, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 2 : i64} : (tensor<16x32xbf16>, tensor<16x4xbf16>, tensor<4x128x32xbf16>, tensor<4x32x64xbf16>) -> tensor<16x32xbf16>
  return %y1, %y2 : tensor<16x32xf32>, tensor<16x32xbf16>
}

// -----

// Tests that onnxruntime's MoE with fc1 given directly keeps the interleaved
// layout, and that an activation other than plain SwiGLU is not raised.
// CHECK-LABEL: func.func @ort_moe_layouts
// CHECK: moe.experts {{.*}} {gate_up_layout = #moe.gate_up_layout<interleaved>}
// CHECK: moe.onnx_node "MoE"{{.*}}activation_alpha = 1.702
func.func @ort_moe_layouts(%x: tensor<16x32xf32> {moe.input = "x"},
                           %wr: tensor<4x32xf32> {moe.parameter = "mlp.gate.weight"},
                           %fc1: tensor<4x128x32xf32> {moe.parameter = "fc1"},
                           %down: tensor<4x32x64xf32> {moe.parameter = "fc2"}) -> (tensor<16x32xf32>, tensor<16x32xf32>) {
  %t = moe.onnx_node "Transpose"(%wr) {perm = array<i64: 1, 0>} : (tensor<4x32xf32>) -> tensor<32x4xf32>
  %1 = moe.onnx_node "MatMul"(%x, %t) : (tensor<16x32xf32>, tensor<32x4xf32>) -> tensor<16x4xf32>
  %2 = moe.onnx_node "MoE"(%x, %1, %fc1, %down) {absent_inputs = array<i64: 3>, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 1 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  %3 = moe.onnx_node "MoE"(%x, %1, %fc1, %down) {absent_inputs = array<i64: 3>, activation_alpha = 1.702 : f32, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 1 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  return %2, %3 : tensor<16x32xf32>, tensor<16x32xf32>
}

// -----

// Tests that an Add of two activations becomes arith.addf and the final
// projection the lm-head; an Add with a constant stays.
// CHECK-LABEL: func.func @residual_and_head
// CHECK: %[[E:.+]] = moe.embedding
// CHECK: %[[S:.+]] = arith.addf %[[E]], %[[E]] : tensor<2x8x32xf32>
// CHECK: moe.onnx_node "Add"(%[[S]], %{{.+}})
// CHECK: %[[H:.+]] = moe.lm_head %[[S]], %{{.+}} : (tensor<2x8x32xf32>, tensor<256x32xf32>) -> tensor<2x8x256xf32>
// CHECK: return %[[H]]
func.func @residual_and_head(%ids: tensor<2x8xi64> {moe.input = "input_ids"},
                             %table: tensor<256x32xf32> {moe.parameter = "embed.weight"},
                             %head: tensor<256x32xf32> {moe.parameter = "lm_head.weight"}) -> (tensor<2x8x256xf32>, tensor<2x8x32xf32>) {
  %one = arith.constant dense<1.0> : tensor<f32>
  %e = moe.onnx_node "Gather"(%table, %ids) {axis = 0 : i64} : (tensor<256x32xf32>, tensor<2x8xi64>) -> tensor<2x8x32xf32>
  %s = moe.onnx_node "Add"(%e, %e) : (tensor<2x8x32xf32>, tensor<2x8x32xf32>) -> tensor<2x8x32xf32>
  %c = moe.onnx_node "Add"(%s, %one) : (tensor<2x8x32xf32>, tensor<f32>) -> tensor<2x8x32xf32>
  %t = moe.onnx_node "Transpose"(%head) {perm = array<i64: 1, 0>} : (tensor<256x32xf32>) -> tensor<32x256xf32>
  %l = moe.onnx_node "MatMul"(%s, %t) : (tensor<2x8x32xf32>, tensor<32x256xf32>) -> tensor<2x8x256xf32>
  return %l, %c : tensor<2x8x256xf32>, tensor<2x8x32xf32>
}

// -----

// Tests expert weights the graph stacks from several parameters: separate
// gate and up stacks Concat'ed on the rows (swiglu_fusion 2), per-expert
// down tensors stored [I, H], each Transposed and Unsqueezed, Concat'ed on
// the experts; per-expert gate tensors as fc1 and up tensors as fc3
// (swiglu_fusion 0). Each role becomes one new parameter, named after the
// node, that lists its initializers and the box of it each fills (the
// initializer transposed by `permutation`, reshaped to `sizes`, at
// `offsets`); the parameters stacked into it are gone.
// CHECK-LABEL: func.func @ort_moe_stacked
// CHECK-SAME: %{{[^:]+}}: tensor<16x32xf32> {moe.input = "x"}, %{{[^:]+}}: tensor<4x32xf32> {moe.parameter = "mlp.gate.weight"}, %[[DOWN:[^:]+]]: tensor<4x32x64xf32> {moe.parameter = "experts.down"}
// CHECK-SAME: %[[GU1:[^:]+]]: tensor<4x128x32xf32> {moe.initializer_pieces = [{initializer = "experts.gate", offsets = array<i64: 0, 0, 0>, permutation = array<i64: 0, 1, 2>, sizes = array<i64: 4, 64, 32>}, {initializer = "experts.up", offsets = array<i64: 0, 64, 0>, permutation = array<i64: 0, 1, 2>, sizes = array<i64: 4, 64, 32>}], moe.parameter = "node_MoE_1.gate_up_proj"}
// CHECK-SAME: %[[DOWN1:[^:]+]]: tensor<4x32x64xf32> {moe.initializer_pieces = [{initializer = "experts.0.w2", offsets = array<i64: 0, 0, 0>, permutation = array<i64: 1, 0>, sizes = array<i64: 1, 32, 64>}, {initializer = "experts.1.w2", offsets = array<i64: 1, 0, 0>, permutation = array<i64: 1, 0>, sizes = array<i64: 1, 32, 64>}, {initializer = "experts.2.w2", offsets = array<i64: 2, 0, 0>, permutation = array<i64: 1, 0>, sizes = array<i64: 1, 32, 64>}, {initializer = "experts.3.w2", offsets = array<i64: 3, 0, 0>, permutation = array<i64: 1, 0>, sizes = array<i64: 1, 32, 64>}], moe.parameter = "node_MoE_1.down_proj"}
// CHECK-SAME: %[[GU2:[^:]+]]: tensor<4x128x32xf32> {moe.initializer_pieces = [{initializer = "experts.0.w1", offsets = array<i64: 0, 0, 0>, permutation = array<i64: 0, 1>, sizes = array<i64: 1, 64, 32>}, {initializer = "experts.1.w1", offsets = array<i64: 1, 0, 0>, {{.*}}}, {initializer = "experts.3.w3", offsets = array<i64: 3, 64, 0>, permutation = array<i64: 0, 1>, sizes = array<i64: 1, 64, 32>}], moe.parameter = "node_MoE_2.gate_up_proj"}
// CHECK-NOT: moe.parameter = "experts.0.w1"
// CHECK: moe.experts %{{.+}}, %{{.+}}, %{{.+}}, %[[GU1]], %[[DOWN1]] {gate_up_layout = #moe.gate_up_layout<concatenated>}
// CHECK: moe.experts %{{.+}}, %{{.+}}, %{{.+}}, %[[GU2]], %[[DOWN]] {gate_up_layout = #moe.gate_up_layout<concatenated>}
// CHECK-NOT: moe.onnx_node "MoE"
func.func @ort_moe_stacked(%x: tensor<16x32xf32> {moe.input = "x"},
                           %wr: tensor<4x32xf32> {moe.parameter = "mlp.gate.weight"},
                           %gate: tensor<4x64x32xf32> {moe.parameter = "experts.gate"},
                           %up: tensor<4x64x32xf32> {moe.parameter = "experts.up"},
                           %down: tensor<4x32x64xf32> {moe.parameter = "experts.down"},
                           %d0: tensor<64x32xf32> {moe.parameter = "experts.0.w2"},
                           %d1: tensor<64x32xf32> {moe.parameter = "experts.1.w2"},
                           %d2: tensor<64x32xf32> {moe.parameter = "experts.2.w2"},
                           %d3: tensor<64x32xf32> {moe.parameter = "experts.3.w2"},
                           %g0: tensor<64x32xf32> {moe.parameter = "experts.0.w1"},
                           %g1: tensor<64x32xf32> {moe.parameter = "experts.1.w1"},
                           %g2: tensor<64x32xf32> {moe.parameter = "experts.2.w1"},
                           %g3: tensor<64x32xf32> {moe.parameter = "experts.3.w1"},
                           %u0: tensor<64x32xf32> {moe.parameter = "experts.0.w3"},
                           %u1: tensor<64x32xf32> {moe.parameter = "experts.1.w3"},
                           %u2: tensor<64x32xf32> {moe.parameter = "experts.2.w3"},
                           %u3: tensor<64x32xf32> {moe.parameter = "experts.3.w3"}) -> (tensor<16x32xf32>, tensor<16x32xf32>) {
  %axis0 = arith.constant dense<[0]> : tensor<1xi64>
  %t = moe.onnx_node "Transpose"(%wr) {perm = array<i64: 1, 0>} : (tensor<4x32xf32>) -> tensor<32x4xf32>
  %logits = moe.onnx_node "MatMul"(%x, %t) : (tensor<16x32xf32>, tensor<32x4xf32>) -> tensor<16x4xf32>
  %fc1 = moe.onnx_node "Concat"(%gate, %up) {axis = 1 : i64} : (tensor<4x64x32xf32>, tensor<4x64x32xf32>) -> tensor<4x128x32xf32>
  %dt0 = moe.onnx_node "Transpose"(%d0) {perm = array<i64: 1, 0>} : (tensor<64x32xf32>) -> tensor<32x64xf32>
  %dt1 = moe.onnx_node "Transpose"(%d1) {perm = array<i64: 1, 0>} : (tensor<64x32xf32>) -> tensor<32x64xf32>
  %dt2 = moe.onnx_node "Transpose"(%d2) {perm = array<i64: 1, 0>} : (tensor<64x32xf32>) -> tensor<32x64xf32>
  %dt3 = moe.onnx_node "Transpose"(%d3) {perm = array<i64: 1, 0>} : (tensor<64x32xf32>) -> tensor<32x64xf32>
  %du0 = moe.onnx_node "Unsqueeze"(%dt0, %axis0) : (tensor<32x64xf32>, tensor<1xi64>) -> tensor<1x32x64xf32>
  %du1 = moe.onnx_node "Unsqueeze"(%dt1, %axis0) : (tensor<32x64xf32>, tensor<1xi64>) -> tensor<1x32x64xf32>
  %du2 = moe.onnx_node "Unsqueeze"(%dt2, %axis0) : (tensor<32x64xf32>, tensor<1xi64>) -> tensor<1x32x64xf32>
  %du3 = moe.onnx_node "Unsqueeze"(%dt3, %axis0) : (tensor<32x64xf32>, tensor<1xi64>) -> tensor<1x32x64xf32>
  %fc2 = moe.onnx_node "Concat"(%du0, %du1, %du2, %du3) {axis = 0 : i64} : (tensor<1x32x64xf32>, tensor<1x32x64xf32>, tensor<1x32x64xf32>, tensor<1x32x64xf32>) -> tensor<4x32x64xf32>
  %y1 = moe.onnx_node "MoE"(%x, %logits, %fc1, %fc2) {absent_inputs = array<i64: 3>, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 2 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32> loc("node_MoE_1")
  %gu0 = moe.onnx_node "Unsqueeze"(%g0, %axis0) : (tensor<64x32xf32>, tensor<1xi64>) -> tensor<1x64x32xf32>
  %gu1 = moe.onnx_node "Unsqueeze"(%g1, %axis0) : (tensor<64x32xf32>, tensor<1xi64>) -> tensor<1x64x32xf32>
  %gu2 = moe.onnx_node "Unsqueeze"(%g2, %axis0) : (tensor<64x32xf32>, tensor<1xi64>) -> tensor<1x64x32xf32>
  %gu3 = moe.onnx_node "Unsqueeze"(%g3, %axis0) : (tensor<64x32xf32>, tensor<1xi64>) -> tensor<1x64x32xf32>
  %uu0 = moe.onnx_node "Unsqueeze"(%u0, %axis0) : (tensor<64x32xf32>, tensor<1xi64>) -> tensor<1x64x32xf32>
  %uu1 = moe.onnx_node "Unsqueeze"(%u1, %axis0) : (tensor<64x32xf32>, tensor<1xi64>) -> tensor<1x64x32xf32>
  %uu2 = moe.onnx_node "Unsqueeze"(%u2, %axis0) : (tensor<64x32xf32>, tensor<1xi64>) -> tensor<1x64x32xf32>
  %uu3 = moe.onnx_node "Unsqueeze"(%u3, %axis0) : (tensor<64x32xf32>, tensor<1xi64>) -> tensor<1x64x32xf32>
  %fc1b = moe.onnx_node "Concat"(%gu0, %gu1, %gu2, %gu3) {axis = 0 : i64} : (tensor<1x64x32xf32>, tensor<1x64x32xf32>, tensor<1x64x32xf32>, tensor<1x64x32xf32>) -> tensor<4x64x32xf32>
  %fc3b = moe.onnx_node "Concat"(%uu0, %uu1, %uu2, %uu3) {axis = 0 : i64} : (tensor<1x64x32xf32>, tensor<1x64x32xf32>, tensor<1x64x32xf32>, tensor<1x64x32xf32>) -> tensor<4x64x32xf32>
  %y2 = moe.onnx_node "MoE"(%x, %logits, %fc1b, %down, %fc3b) {absent_inputs = array<i64: 3, 5>, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 0 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x64x32xf32>, tensor<4x32x64xf32>, tensor<4x64x32xf32>) -> tensor<16x32xf32> loc("node_MoE_2")
  return %y1, %y2 : tensor<16x32xf32>, tensor<16x32xf32>
}

// -----

// Tests a stack of parameters stored in bf16 and Cast to float one by one
// before the Concat: the stacked parameter has the type the experts read
// (f32); its pieces are read from the bf16 initializers, widened exactly.
// CHECK-LABEL: func.func @ort_moe_stacked_bf16
// CHECK-SAME: %[[GU:[^:]+]]: tensor<4x128x32xf32> {moe.initializer_pieces = [{initializer = "experts.gate", offsets = array<i64: 0, 0, 0>, permutation = array<i64: 0, 1, 2>, sizes = array<i64: 4, 64, 32>}, {initializer = "experts.up", offsets = array<i64: 0, 64, 0>, permutation = array<i64: 0, 1, 2>, sizes = array<i64: 4, 64, 32>}], moe.parameter = "node_MoE_3.gate_up_proj"}
// CHECK-NOT: moe.parameter = "experts.gate"
// CHECK: moe.experts %{{.+}}, %{{.+}}, %{{.+}}, %[[GU]], %{{.+}} {gate_up_layout = #moe.gate_up_layout<concatenated>}
func.func @ort_moe_stacked_bf16(%x: tensor<16x32xf32> {moe.input = "x"},
                                %wr: tensor<4x32xf32> {moe.parameter = "mlp.gate.weight"},
                                %gate: tensor<4x64x32xbf16> {moe.parameter = "experts.gate"},
                                %up: tensor<4x64x32xbf16> {moe.parameter = "experts.up"},
                                %down: tensor<4x32x64xbf16> {moe.parameter = "experts.down"}) -> tensor<16x32xf32> {
  %t = moe.onnx_node "Transpose"(%wr) {perm = array<i64: 1, 0>} : (tensor<4x32xf32>) -> tensor<32x4xf32>
  %logits = moe.onnx_node "MatMul"(%x, %t) : (tensor<16x32xf32>, tensor<32x4xf32>) -> tensor<16x4xf32>
  %gf = moe.onnx_node "Cast"(%gate) {to = 1 : i64} : (tensor<4x64x32xbf16>) -> tensor<4x64x32xf32>
  %uf = moe.onnx_node "Cast"(%up) {to = 1 : i64} : (tensor<4x64x32xbf16>) -> tensor<4x64x32xf32>
  %fc1 = moe.onnx_node "Concat"(%gf, %uf) {axis = 1 : i64} : (tensor<4x64x32xf32>, tensor<4x64x32xf32>) -> tensor<4x128x32xf32>
  %fc2 = moe.onnx_node "Cast"(%down) {to = 1 : i64} : (tensor<4x32x64xbf16>) -> tensor<4x32x64xf32>
  %y = moe.onnx_node "MoE"(%x, %logits, %fc1, %fc2) {absent_inputs = array<i64: 3>, activation_type = "swiglu", domain = "com.microsoft", k = 2 : i64, normalize_routing_weights = 1 : i64, swiglu_fusion = 2 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32> loc("node_MoE_3")
  return %y : tensor<16x32xf32>
}
