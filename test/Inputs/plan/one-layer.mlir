// A raised one-layer Mixtral forward (tiny geometry: vocabulary 256, hidden
// 32, intermediate 64, 4 heads, 2 key/value heads, 4 experts top-2), written
// by hand for the `moec plan` tests of the .mlir input path, with dynamic
// batch and sequence as the ONNX export has them.
func.func @forward(%ids: tensor<?x?xi64> {moe.input = "input_ids"},
    %table: tensor<256x32xf32> {moe.parameter = "model.embed_tokens.weight"},
    %wq: tensor<32x32xf32> {moe.parameter = "model.layers.0.self_attn.q_proj.weight"},
    %wk: tensor<16x32xf32> {moe.parameter = "model.layers.0.self_attn.k_proj.weight"},
    %wv: tensor<16x32xf32> {moe.parameter = "model.layers.0.self_attn.v_proj.weight"},
    %wo: tensor<32x32xf32> {moe.parameter = "model.layers.0.self_attn.o_proj.weight"},
    %gate: tensor<4x32xf32> {moe.parameter = "model.layers.0.mlp.gate.weight"},
    %gate_up: tensor<4x128x32xf32> {moe.parameter = "model.layers.0.mlp.experts.gate_up_proj"},
    %down: tensor<4x32x64xf32> {moe.parameter = "model.layers.0.mlp.experts.down_proj"},
    %norm1: tensor<32xf32> {moe.parameter = "model.layers.0.input_layernorm.weight"},
    %norm2: tensor<32xf32> {moe.parameter = "model.layers.0.post_attention_layernorm.weight"},
    %normf: tensor<32xf32> {moe.parameter = "model.norm.weight"},
    %head: tensor<256x32xf32> {moe.parameter = "lm_head.weight"}) -> tensor<?x?x256xf32> {
  %h = moe.embedding %table[%ids] : (tensor<256x32xf32>, tensor<?x?xi64>) -> tensor<?x?x32xf32>
  %n = moe.rms_norm %h, %norm1 {epsilon = 1.0e-05 : f64} : (tensor<?x?x32xf32>, tensor<32xf32>) -> tensor<?x?x32xf32>
  %q2 = moe.linear %n, %wq : (tensor<?x?x32xf32>, tensor<32x32xf32>) -> tensor<?x?x32xf32>
  %k2 = moe.linear %n, %wk : (tensor<?x?x32xf32>, tensor<16x32xf32>) -> tensor<?x?x16xf32>
  %v2 = moe.linear %n, %wv : (tensor<?x?x32xf32>, tensor<16x32xf32>) -> tensor<?x?x16xf32>
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %batch = tensor.dim %n, %c0 : tensor<?x?x32xf32>
  %seq = tensor.dim %n, %c1 : tensor<?x?x32xf32>
  %q = tensor.expand_shape %q2 [[0], [1], [2, 3]] output_shape [%batch, %seq, 4, 8] : tensor<?x?x32xf32> into tensor<?x?x4x8xf32>
  %k = tensor.expand_shape %k2 [[0], [1], [2, 3]] output_shape [%batch, %seq, 2, 8] : tensor<?x?x16xf32> into tensor<?x?x2x8xf32>
  %v = tensor.expand_shape %v2 [[0], [1], [2, 3]] output_shape [%batch, %seq, 2, 8] : tensor<?x?x16xf32> into tensor<?x?x2x8xf32>
  %qr = moe.rotary %q {theta = 1.0e+06 : f64} : (tensor<?x?x4x8xf32>) -> tensor<?x?x4x8xf32>
  %kr = moe.rotary %k {theta = 1.0e+06 : f64} : (tensor<?x?x2x8xf32>) -> tensor<?x?x2x8xf32>
  %o = moe.attention %qr, %kr, %v {scale = 0.35355339059327379 : f64} : (tensor<?x?x4x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>) -> tensor<?x?x4x8xf32>
  %o2 = tensor.collapse_shape %o [[0], [1], [2, 3]] : tensor<?x?x4x8xf32> into tensor<?x?x32xf32>
  %a = moe.linear %o2, %wo : (tensor<?x?x32xf32>, tensor<32x32xf32>) -> tensor<?x?x32xf32>
  %r = arith.addf %h, %a : tensor<?x?x32xf32>
  %n2 = moe.rms_norm %r, %norm2 {epsilon = 1.0e-05 : f64} : (tensor<?x?x32xf32>, tensor<32xf32>) -> tensor<?x?x32xf32>
  %logits = moe.linear %n2, %gate : (tensor<?x?x32xf32>, tensor<4x32xf32>) -> tensor<?x?x4xf32>
  %g, %e = moe.router %logits {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<?x?x4xf32>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi64>)
  %y = moe.experts %n2, %g, %e, %gate_up, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<?x?x32xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi64>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<?x?x32xf32>
  %y2 = arith.addf %r, %y : tensor<?x?x32xf32>
  %f = moe.rms_norm %y2, %normf {epsilon = 1.0e-05 : f64} : (tensor<?x?x32xf32>, tensor<32xf32>) -> tensor<?x?x32xf32>
  %out = moe.lm_head %f, %head : (tensor<?x?x32xf32>, tensor<256x32xf32>) -> tensor<?x?x256xf32>
  return %out : tensor<?x?x256xf32>
}
