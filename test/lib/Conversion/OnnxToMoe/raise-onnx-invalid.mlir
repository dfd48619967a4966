// RUN: moec-opt %s -split-input-file -moe-raise-onnx="require-complete" -verify-diagnostics

// Tests that with require-complete an ONNX node left unraised is an error
// naming its op type.
func.func @unraised(%x: tensor<2x4xf32> {moe.input = "x"}) -> tensor<2x4xf32> {
  // expected-error@+1 {{'moe.onnx_node' op ONNX node (Softmax) is not part of any pattern moe-raise-onnx recognises}}
  %0 = moe.onnx_node "Softmax"(%x) {axis = -1 : i64} : (tensor<2x4xf32>) -> tensor<2x4xf32>
  return %0 : tensor<2x4xf32>
}

// -----

// Tests that an unsupported onnxruntime MoE activation is reported.
func.func @gelu_experts(%x: tensor<16x32xf32> {moe.input = "x"},
                        %wr: tensor<4x32xf32> {moe.parameter = "mlp.gate.weight"},
                        %fc1: tensor<4x64x32xf32> {moe.parameter = "fc1"},
                        %down: tensor<4x32x64xf32> {moe.parameter = "fc2"}) -> tensor<16x32xf32> {
  %t = moe.onnx_node "Transpose"(%wr) {perm = array<i64: 1, 0>} : (tensor<4x32xf32>) -> tensor<32x4xf32>
  %1 = moe.onnx_node "MatMul"(%x, %t) : (tensor<16x32xf32>, tensor<32x4xf32>) -> tensor<16x4xf32>
  // expected-error@+1 {{'moe.onnx_node' op ONNX node (MoE) is not part of any pattern moe-raise-onnx recognises}}
  %2 = moe.onnx_node "MoE"(%x, %1, %fc1, %down) {absent_inputs = array<i64: 3>, activation_type = "gelu", domain = "com.microsoft", k = 2 : i64} : (tensor<16x32xf32>, tensor<16x4xf32>, tensor<4x64x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  return %2 : tensor<16x32xf32>
}
