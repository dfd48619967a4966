// RUN: moec-opt %s -split-input-file -verify-diagnostics -pass-pipeline='builtin.module(func.func(moe-offload-activations))'

// Tests that a step whose backward reads no decoder layer's parameters has
// no layers to offload for.
// expected-error@+1 {{'func.func' op has no decoder layer for activation offloading: no backward op reads a parameter named 'layers.<N>.<name>'}}
func.func @no_layers(%x: tensor<4x8xf32> {moe.input = "input_ids"}, %w: tensor<8x8xf32> {moe.parameter = "proj.weight"}, %dy: tensor<4x8xf32>) -> tensor<8x8xf32> {
  %y = moe.linear %x, %w : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %dx, %dw = moe.linear_grad %x, %w, %dy : (tensor<4x8xf32>, tensor<8x8xf32>, tensor<4x8xf32>) -> (tensor<4x8xf32>, tensor<8x8xf32>)
  return %dw : tensor<8x8xf32>
}

// -----

// Tests that a function without a backward is left alone.
func.func @forward_only(%x: tensor<4x8xf32> {moe.input = "input_ids"}, %w: tensor<8x8xf32> {moe.parameter = "proj.weight"}) -> tensor<4x8xf32> {
  %y = moe.linear %x, %w : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  return %y : tensor<4x8xf32>
}
