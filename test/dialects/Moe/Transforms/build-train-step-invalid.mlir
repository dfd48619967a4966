// RUN: moec-opt %s -split-input-file -moe-build-train-step -verify-diagnostics
// RUN: not moec-opt %s -split-input-file -moe-build-train-step="load-balancing=greedy" 2>&1 | FileCheck %s --check-prefix=MODE
// RUN: not moec-opt %s -split-input-file -moe-build-train-step="param-type=bf16" 2>&1 | FileCheck %s --check-prefix=PARAM
// RUN: not moec-opt %s -split-input-file -moe-build-train-step="compute-type=bf16 param-type=f16" 2>&1 | FileCheck %s --check-prefix=PARAM-TYPE
// PARAM: error: param-type bf16 needs compute-type bf16 (got 'f32')
// PARAM-TYPE: error: unknown param-type 'f16'; expected f32 or bf16

// Tests that an unraised ONNX node in the forward is an error at that node.
// MODE: for the --load-balancing option: Cannot find option named 'greedy'!
func.func @forward(%ids: tensor<2x8xi64> {moe.input = "input_ids"},
                   %table: tensor<64x16xf32> {moe.parameter = "embed.weight"},
                   %head: tensor<64x16xf32> {moe.parameter = "lm_head.weight"}) -> tensor<2x8x64xf32> {
  %h = moe.embedding %table[%ids] : (tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<2x8x16xf32>
  // expected-error@+1 {{'moe.onnx_node' op was not raised; the training step needs a fully raised forward}}
  %s = moe.onnx_node "Softmax"(%h) {axis = -1 : i64} : (tensor<2x8x16xf32>) -> tensor<2x8x16xf32>
  %g, %e = moe.router %s {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<2x8x16xf32>) -> (tensor<2x8x2xf32>, tensor<2x8x2xi64>)
  %o = moe.lm_head %s, %head : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
  return %o : tensor<2x8x64xf32>
}

// -----

// Tests that a linear with a bias on the gradient path is reported.
func.func @forward(%ids: tensor<2x8xi64> {moe.input = "input_ids"},
                   %table: tensor<64x16xf32> {moe.parameter = "embed.weight"},
                   %w: tensor<4x16xf32> {moe.parameter = "gate.weight"},
                   %b: tensor<4xf32> {moe.parameter = "gate.bias"},
                   %gate_up: tensor<4x32x16xf32> {moe.parameter = "experts.gate_up_proj"},
                   %down: tensor<4x16x16xf32> {moe.parameter = "experts.down_proj"},
                   %head: tensor<64x16xf32> {moe.parameter = "lm_head.weight"}) -> tensor<2x8x64xf32> {
  %h = moe.embedding %table[%ids] : (tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<2x8x16xf32>
  // expected-error@+1 {{'moe.linear' op has a bias, which moe-build-train-step cannot differentiate yet}}
  %l = moe.linear %h, %w bias %b : (tensor<2x8x16xf32>, tensor<4x16xf32>, tensor<4xf32>) -> tensor<2x8x4xf32>
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<2x8x4xf32>) -> (tensor<2x8x2xf32>, tensor<2x8x2xi64>)
  %x = moe.experts %h, %g, %e, %gate_up, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<2x8x16xf32>, tensor<2x8x2xf32>, tensor<2x8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<2x8x16xf32>
  %o = moe.lm_head %x, %head : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
  return %o : tensor<2x8x64xf32>
}

// -----

// Tests that a model without routers is refused: there is nothing to balance.
// expected-error@+1 {{'func.func' op has no moe.router; nothing to balance}}
func.func @forward(%ids: tensor<2x8xi64> {moe.input = "input_ids"},
                   %table: tensor<64x16xf32> {moe.parameter = "embed.weight"},
                   %head: tensor<64x16xf32> {moe.parameter = "lm_head.weight"}) -> tensor<2x8x64xf32> {
  %h = moe.embedding %table[%ids] : (tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<2x8x16xf32>
  %o = moe.lm_head %h, %head : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
  return %o : tensor<2x8x64xf32>
}

// -----

// Tests that an input tagged moe.all_ones (a mask the raising removed) is
// bound to ones, and said so; one the forward still reads is refused.
// expected-remark@+2 {{input 'attention_mask' is bound to all ones: the training step runs on packed blocks without padding}}
// expected-error@+1 {{'func.func' op reads input 'other_mask', tagged 'moe.all_ones' as an input it no longer reads}}
func.func @forward(%ids: tensor<2x8xi64> {moe.input = "input_ids"},
                   %mask: tensor<2x8xi64> {moe.input = "attention_mask", moe.all_ones},
                   %other: tensor<2x8xi64> {moe.input = "other_mask", moe.all_ones},
                   %table: tensor<64x16xf32> {moe.parameter = "embed.weight"},
                   %head: tensor<64x16xf32> {moe.parameter = "lm_head.weight"}) -> tensor<2x8x64xf32> {
  %h = moe.embedding %table[%other] : (tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<2x8x16xf32>
  %o = moe.lm_head %h, %head : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
  return %o : tensor<2x8x64xf32>
}
