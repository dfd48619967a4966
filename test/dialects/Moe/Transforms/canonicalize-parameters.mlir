// RUN: moec-opt %s -split-input-file -moe-canonicalize-parameters 2>&1 | FileCheck %s

// Tests that a decoder layer exported by torch.onnx's optimiser (weights
// renamed val_*, linear weights stored [in, out] behind a transpose, the
// three all-ones norm weights merged into one initializer) gets the
// Hugging Face names in state_dict order, the [out, in] layouts with no
// transpose left, and one norm parameter per norm, with a remark.
// CHECK: remark: initializer 'model.layers.0.input_layernorm.weight' is shared by 3 parameters that Mixtral does not tie ('model.layers.0.input_layernorm.weight', 'model.layers.0.post_attention_layernorm.weight', 'model.norm.weight'), merged by the exporter; each is a parameter of its own
// CHECK-LABEL: func.func @forward(
// CHECK-SAME: %[[IDS:[^:]+]]: tensor<2x8xi64> {moe.input = "input_ids"}
// CHECK-SAME: %[[TABLE:[^:]+]]: tensor<64x16xf32> {moe.parameter = "model.embed_tokens.weight"}
// CHECK-SAME: %[[Q:[^:]+]]: tensor<16x16xf32> {moe.initializer = "val_1", moe.initializer_permutation = array<i64: 1, 0>, moe.parameter = "model.layers.0.self_attn.q_proj.weight"}
// CHECK-SAME: %[[K:[^:]+]]: tensor<8x16xf32> {moe.initializer = "val_2", moe.initializer_permutation = array<i64: 1, 0>, moe.parameter = "model.layers.0.self_attn.k_proj.weight"}
// CHECK-SAME: %[[V:[^:]+]]: tensor<8x16xf32> {moe.initializer = "val_3", moe.initializer_permutation = array<i64: 1, 0>, moe.parameter = "model.layers.0.self_attn.v_proj.weight"}
// CHECK-SAME: %[[O:[^:]+]]: tensor<16x16xf32> {moe.initializer = "val_4", moe.initializer_permutation = array<i64: 1, 0>, moe.parameter = "model.layers.0.self_attn.o_proj.weight"}
// CHECK-SAME: %[[GATE:[^:]+]]: tensor<4x16xf32> {moe.parameter = "model.layers.0.mlp.gate.weight"}
// CHECK-SAME: %[[GATEUP:[^:]+]]: tensor<4x32x16xf32> {moe.initializer = "val_5", moe.parameter = "model.layers.0.mlp.experts.gate_up_proj"}
// CHECK-SAME: %[[DOWN:[^:]+]]: tensor<4x16x16xf32> {moe.initializer = "val_6", moe.parameter = "model.layers.0.mlp.experts.down_proj"}
// CHECK-SAME: %[[NORM1:[^:]+]]: tensor<16xf32> {moe.parameter = "model.layers.0.input_layernorm.weight"}
// CHECK-SAME: %[[NORM2:[^:]+]]: tensor<16xf32> {moe.initializer = "model.layers.0.input_layernorm.weight", moe.parameter = "model.layers.0.post_attention_layernorm.weight"}
// CHECK-SAME: %[[NORM3:[^:]+]]: tensor<16xf32> {moe.initializer = "model.layers.0.input_layernorm.weight", moe.parameter = "model.norm.weight"}
// CHECK-SAME: %[[HEAD:[^:]+]]: tensor<64x16xf32> {moe.initializer = "val_7", moe.initializer_permutation = array<i64: 1, 0>, moe.parameter = "lm_head.weight"})
// CHECK-NOT: linalg.transpose
// CHECK-NOT: tensor.empty
// CHECK: %[[H:.+]] = moe.embedding %[[TABLE]][%[[IDS]]]
// CHECK: %[[N:.+]] = moe.rms_norm %[[H]], %[[NORM1]]
// CHECK: moe.linear %[[N]], %[[Q]]
// CHECK: moe.linear %[[N]], %[[K]]
// CHECK: moe.linear %[[N]], %[[V]]
// CHECK: moe.linear %{{.+}}, %[[O]]
// CHECK: %[[N2:.+]] = moe.rms_norm %{{.+}}, %[[NORM2]]
// CHECK: moe.linear %[[N2]], %[[GATE]]
// CHECK: moe.experts %[[N2]], %{{.+}}, %{{.+}}, %[[GATEUP]], %[[DOWN]]
// CHECK: %[[N3:.+]] = moe.rms_norm %{{.+}}, %[[NORM3]]
// CHECK: moe.lm_head %[[N3]], %[[HEAD]]
func.func @forward(%ids: tensor<2x8xi64> {moe.input = "input_ids"},
                   %table: tensor<64x16xf32> {moe.parameter = "model.embed_tokens.weight"},
                   %gate: tensor<4x16xf32> {moe.parameter = "model.layers.0.mlp.gate.weight"},
                   %norm: tensor<16xf32> {moe.parameter = "model.layers.0.input_layernorm.weight"},
                   %q_t: tensor<16x16xf32> {moe.parameter = "val_1"},
                   %k_t: tensor<16x8xf32> {moe.parameter = "val_2"},
                   %v_t: tensor<16x8xf32> {moe.parameter = "val_3"},
                   %o_t: tensor<16x16xf32> {moe.parameter = "val_4"},
                   %gate_up: tensor<4x32x16xf32> {moe.parameter = "val_5"},
                   %down: tensor<4x16x16xf32> {moe.parameter = "val_6"},
                   %head_t: tensor<16x64xf32> {moe.parameter = "val_7"})
    -> (tensor<2x8x64xf32> {moe.output = "logits"}) {
  %h = moe.embedding %table[%ids] : (tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<2x8x16xf32>
  %n = moe.rms_norm %h, %norm {epsilon = 1.0e-05 : f64} : (tensor<2x8x16xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  %e16 = tensor.empty() : tensor<16x16xf32>
  %e8 = tensor.empty() : tensor<8x16xf32>
  %wq = linalg.transpose ins(%q_t : tensor<16x16xf32>) outs(%e16 : tensor<16x16xf32>) permutation = [1, 0]
  %q = moe.linear %n, %wq : (tensor<2x8x16xf32>, tensor<16x16xf32>) -> tensor<2x8x16xf32>
  %wk = linalg.transpose ins(%k_t : tensor<16x8xf32>) outs(%e8 : tensor<8x16xf32>) permutation = [1, 0]
  %k = moe.linear %n, %wk : (tensor<2x8x16xf32>, tensor<8x16xf32>) -> tensor<2x8x8xf32>
  %wv = linalg.transpose ins(%v_t : tensor<16x8xf32>) outs(%e8 : tensor<8x16xf32>) permutation = [1, 0]
  %v = moe.linear %n, %wv : (tensor<2x8x16xf32>, tensor<8x16xf32>) -> tensor<2x8x8xf32>
  %q4 = tensor.expand_shape %q [[0], [1], [2, 3]] output_shape [2, 8, 4, 4] : tensor<2x8x16xf32> into tensor<2x8x4x4xf32>
  %k4 = tensor.expand_shape %k [[0], [1], [2, 3]] output_shape [2, 8, 2, 4] : tensor<2x8x8xf32> into tensor<2x8x2x4xf32>
  %v4 = tensor.expand_shape %v [[0], [1], [2, 3]] output_shape [2, 8, 2, 4] : tensor<2x8x8xf32> into tensor<2x8x2x4xf32>
  %qr = moe.rotary %q4 {theta = 1.0e+06 : f64} : (tensor<2x8x4x4xf32>) -> tensor<2x8x4x4xf32>
  %kr = moe.rotary %k4 {theta = 1.0e+06 : f64} : (tensor<2x8x2x4xf32>) -> tensor<2x8x2x4xf32>
  %a = moe.attention %qr, %kr, %v4 {scale = 0.5 : f64} : (tensor<2x8x4x4xf32>, tensor<2x8x2x4xf32>, tensor<2x8x2x4xf32>) -> tensor<2x8x4x4xf32>
  %a3 = tensor.collapse_shape %a [[0], [1], [2, 3]] : tensor<2x8x4x4xf32> into tensor<2x8x16xf32>
  %wo = linalg.transpose ins(%o_t : tensor<16x16xf32>) outs(%e16 : tensor<16x16xf32>) permutation = [1, 0]
  %o = moe.linear %a3, %wo : (tensor<2x8x16xf32>, tensor<16x16xf32>) -> tensor<2x8x16xf32>
  %r = arith.addf %h, %o : tensor<2x8x16xf32>
  %n2 = moe.rms_norm %r, %norm {epsilon = 1.0e-05 : f64} : (tensor<2x8x16xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  %l = moe.linear %n2, %gate : (tensor<2x8x16xf32>, tensor<4x16xf32>) -> tensor<2x8x4xf32>
  %g, %x = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<2x8x4xf32>) -> (tensor<2x8x2xf32>, tensor<2x8x2xi64>)
  %y = moe.experts %n2, %g, %x, %gate_up, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<2x8x16xf32>, tensor<2x8x2xf32>, tensor<2x8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<2x8x16xf32>
  %r2 = arith.addf %r, %y : tensor<2x8x16xf32>
  %n3 = moe.rms_norm %r2, %norm {epsilon = 1.0e-05 : f64} : (tensor<2x8x16xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  %e64 = tensor.empty() : tensor<64x16xf32>
  %wh = linalg.transpose ins(%head_t : tensor<16x64xf32>) outs(%e64 : tensor<64x16xf32>) permutation = [1, 0]
  %logits = moe.lm_head %n3, %wh : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
  return %logits : tensor<2x8x64xf32>
}

// -----

// Tests that a parameter with a use the pass does not recognise (here the
// embedding table also added to the hidden state) keeps its name, its
// argument and its uses, while the others are still named.
// CHECK-LABEL: func.func @forward(
// CHECK-SAME: %[[TABLE:[^:]+]]: tensor<8x16xf32> {moe.parameter = "val_9"}
// CHECK-SAME: %[[NORM:[^:]+]]: tensor<16xf32> {moe.initializer = "model.layers.0.input_layernorm.weight", moe.parameter = "model.norm.weight"}
// CHECK-SAME: %[[HEAD:[^:]+]]: tensor<8x16xf32> {moe.initializer = "val_8", moe.parameter = "lm_head.weight"})
// CHECK: moe.embedding %[[TABLE]]
// CHECK: arith.addf %{{.+}}, %[[TABLE]]
func.func @forward(%ids: tensor<8xi64> {moe.input = "input_ids"},
                   %table: tensor<8x16xf32> {moe.parameter = "val_9"},
                   %head: tensor<8x16xf32> {moe.parameter = "val_8"},
                   %norm: tensor<16xf32> {moe.parameter = "model.layers.0.input_layernorm.weight"})
    -> (tensor<8x8xf32> {moe.output = "logits"}) {
  %h = moe.embedding %table[%ids] : (tensor<8x16xf32>, tensor<8xi64>) -> tensor<8x16xf32>
  %s = arith.addf %h, %table : tensor<8x16xf32>
  %n = moe.rms_norm %s, %norm {epsilon = 1.0e-05 : f64} : (tensor<8x16xf32>, tensor<16xf32>) -> tensor<8x16xf32>
  %logits = moe.lm_head %n, %head : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8x8xf32>
  return %logits : tensor<8x8xf32>
}

// -----

// Tests expert weights stored in bf16 (gate_up also transposed, [E, H, 2I])
// and read in f32 through the arith.extf (and linalg.transpose) raising
// made: the parameters become f32 in the layout the experts read, the
// conversions and the transpose leave the function, and the arguments
// remember the initializer and its permutation.
// CHECK-LABEL: func.func @forward(
// CHECK-SAME: %[[GATEUP:[^:]+]]: tensor<4x32x16xf32> {moe.initializer = "val_5", moe.initializer_permutation = array<i64: 0, 2, 1>, moe.parameter = "model.layers.0.mlp.experts.gate_up_proj"}
// CHECK-SAME: %[[DOWN:[^:]+]]: tensor<4x16x16xf32> {moe.parameter = "model.layers.0.mlp.experts.down_proj"}
// CHECK-NOT: arith.extf
// CHECK-NOT: linalg.transpose
// CHECK: moe.experts %{{.+}}, %{{.+}}, %{{.+}}, %[[GATEUP]], %[[DOWN]]
func.func @forward(%ids: tensor<2x8xi64> {moe.input = "input_ids"},
                   %table: tensor<64x16xf32> {moe.parameter = "model.embed_tokens.weight"},
                   %wq: tensor<16x16xf32> {moe.parameter = "q"},
                   %wk: tensor<8x16xf32> {moe.parameter = "k"},
                   %wv: tensor<8x16xf32> {moe.parameter = "v"},
                   %wo: tensor<16x16xf32> {moe.parameter = "o"},
                   %gate: tensor<4x16xf32> {moe.parameter = "model.layers.0.mlp.gate.weight"},
                   %gate_up_t: tensor<4x16x32xbf16> {moe.parameter = "val_5"},
                   %down: tensor<4x16x16xbf16> {moe.parameter = "model.layers.0.mlp.experts.down_proj"},
                   %norm: tensor<16xf32> {moe.parameter = "model.layers.0.input_layernorm.weight"},
                   %norm2: tensor<16xf32> {moe.parameter = "model.layers.0.post_attention_layernorm.weight"},
                   %norm3: tensor<16xf32> {moe.parameter = "model.norm.weight"},
                   %head: tensor<64x16xf32> {moe.parameter = "lm_head.weight"})
    -> (tensor<2x8x64xf32> {moe.output = "logits"}) {
  %h = moe.embedding %table[%ids] : (tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<2x8x16xf32>
  %n = moe.rms_norm %h, %norm {epsilon = 1.0e-05 : f64} : (tensor<2x8x16xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  %q = moe.linear %n, %wq : (tensor<2x8x16xf32>, tensor<16x16xf32>) -> tensor<2x8x16xf32>
  %k = moe.linear %n, %wk : (tensor<2x8x16xf32>, tensor<8x16xf32>) -> tensor<2x8x8xf32>
  %v = moe.linear %n, %wv : (tensor<2x8x16xf32>, tensor<8x16xf32>) -> tensor<2x8x8xf32>
  %q4 = tensor.expand_shape %q [[0], [1], [2, 3]] output_shape [2, 8, 4, 4] : tensor<2x8x16xf32> into tensor<2x8x4x4xf32>
  %k4 = tensor.expand_shape %k [[0], [1], [2, 3]] output_shape [2, 8, 2, 4] : tensor<2x8x8xf32> into tensor<2x8x2x4xf32>
  %v4 = tensor.expand_shape %v [[0], [1], [2, 3]] output_shape [2, 8, 2, 4] : tensor<2x8x8xf32> into tensor<2x8x2x4xf32>
  %a = moe.attention %q4, %k4, %v4 {scale = 0.5 : f64} : (tensor<2x8x4x4xf32>, tensor<2x8x2x4xf32>, tensor<2x8x2x4xf32>) -> tensor<2x8x4x4xf32>
  %a3 = tensor.collapse_shape %a [[0], [1], [2, 3]] : tensor<2x8x4x4xf32> into tensor<2x8x16xf32>
  %o = moe.linear %a3, %wo : (tensor<2x8x16xf32>, tensor<16x16xf32>) -> tensor<2x8x16xf32>
  %r = arith.addf %h, %o : tensor<2x8x16xf32>
  %n2 = moe.rms_norm %r, %norm2 {epsilon = 1.0e-05 : f64} : (tensor<2x8x16xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  %l = moe.linear %n2, %gate : (tensor<2x8x16xf32>, tensor<4x16xf32>) -> tensor<2x8x4xf32>
  %g, %x = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<2x8x4xf32>) -> (tensor<2x8x2xf32>, tensor<2x8x2xi64>)
  %guf = arith.extf %gate_up_t : tensor<4x16x32xbf16> to tensor<4x16x32xf32>
  %e = tensor.empty() : tensor<4x32x16xf32>
  %gu = linalg.transpose ins(%guf : tensor<4x16x32xf32>) outs(%e : tensor<4x32x16xf32>) permutation = [0, 2, 1]
  %downf = arith.extf %down : tensor<4x16x16xbf16> to tensor<4x16x16xf32>
  %y = moe.experts %n2, %g, %x, %gu, %downf {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<2x8x16xf32>, tensor<2x8x2xf32>, tensor<2x8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<2x8x16xf32>
  %r2 = arith.addf %r, %y : tensor<2x8x16xf32>
  %n3 = moe.rms_norm %r2, %norm3 {epsilon = 1.0e-05 : f64} : (tensor<2x8x16xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  %logits = moe.lm_head %n3, %head : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
  return %logits : tensor<2x8x64xf32>
}

// -----

// Tests that parameters stacked from several initializers (moe-raise-onnx)
// get their Hugging Face names and keep their pieces (their own names name
// no initializer), with a remark that says how many they stack.
// CHECK: remark: 2 initializers stacked into parameter 'model.layers.0.mlp.experts.gate_up_proj'
// CHECK: remark: 4 initializers stacked into parameter 'model.layers.0.mlp.experts.down_proj'
// CHECK-LABEL: func.func @stacked(
// CHECK-SAME: %[[GATEUP:[^:]+]]: tensor<4x32x16xf32> {moe.initializer_pieces = [{initializer = "experts.gate", offsets = array<i64: 0, 0, 0>, permutation = array<i64: 0, 1, 2>, sizes = array<i64: 4, 16, 16>}, {initializer = "experts.up", offsets = array<i64: 0, 16, 0>, permutation = array<i64: 0, 1, 2>, sizes = array<i64: 4, 16, 16>}], moe.parameter = "model.layers.0.mlp.experts.gate_up_proj"}
// CHECK-SAME: %[[DOWN:[^:]+]]: tensor<4x16x16xf32> {moe.initializer_pieces = [{initializer = "experts.0.w2", {{.*}}}, {initializer = "experts.3.w2", offsets = array<i64: 3, 0, 0>, permutation = array<i64: 1, 0>, sizes = array<i64: 1, 16, 16>}], moe.parameter = "model.layers.0.mlp.experts.down_proj"}
// CHECK: moe.experts %{{.+}}, %{{.+}}, %{{.+}}, %[[GATEUP]], %[[DOWN]]
func.func @stacked(%ids: tensor<2x8xi64> {moe.input = "input_ids"},
                   %table: tensor<64x16xf32> {moe.parameter = "model.embed_tokens.weight"},
                   %gate: tensor<4x16xf32> {moe.parameter = "model.layers.0.mlp.gate.weight"},
                   %norm: tensor<16xf32> {moe.parameter = "model.layers.0.input_layernorm.weight"},
                   %q_t: tensor<16x16xf32> {moe.parameter = "val_1"},
                   %k_t: tensor<16x8xf32> {moe.parameter = "val_2"},
                   %v_t: tensor<16x8xf32> {moe.parameter = "val_3"},
                   %o_t: tensor<16x16xf32> {moe.parameter = "val_4"},
                   %gate_up: tensor<4x32x16xf32> {moe.parameter = "node_MoE_1.gate_up_proj", moe.initializer_pieces = [{initializer = "experts.gate", offsets = array<i64: 0, 0, 0>, sizes = array<i64: 4, 16, 16>, permutation = array<i64: 0, 1, 2>}, {initializer = "experts.up", offsets = array<i64: 0, 16, 0>, sizes = array<i64: 4, 16, 16>, permutation = array<i64: 0, 1, 2>}]},
                   %down: tensor<4x16x16xf32> {moe.parameter = "node_MoE_1.down_proj", moe.initializer_pieces = [{initializer = "experts.0.w2", offsets = array<i64: 0, 0, 0>, sizes = array<i64: 1, 16, 16>, permutation = array<i64: 1, 0>}, {initializer = "experts.1.w2", offsets = array<i64: 1, 0, 0>, sizes = array<i64: 1, 16, 16>, permutation = array<i64: 1, 0>}, {initializer = "experts.2.w2", offsets = array<i64: 2, 0, 0>, sizes = array<i64: 1, 16, 16>, permutation = array<i64: 1, 0>}, {initializer = "experts.3.w2", offsets = array<i64: 3, 0, 0>, sizes = array<i64: 1, 16, 16>, permutation = array<i64: 1, 0>}]},
                   %head_t: tensor<16x64xf32> {moe.parameter = "val_7"})
    -> (tensor<2x8x64xf32> {moe.output = "logits"}) {
  %h = moe.embedding %table[%ids] : (tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<2x8x16xf32>
  %n = moe.rms_norm %h, %norm {epsilon = 1.0e-05 : f64} : (tensor<2x8x16xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  %e16 = tensor.empty() : tensor<16x16xf32>
  %e8 = tensor.empty() : tensor<8x16xf32>
  %wq = linalg.transpose ins(%q_t : tensor<16x16xf32>) outs(%e16 : tensor<16x16xf32>) permutation = [1, 0]
  %q = moe.linear %n, %wq : (tensor<2x8x16xf32>, tensor<16x16xf32>) -> tensor<2x8x16xf32>
  %wk = linalg.transpose ins(%k_t : tensor<16x8xf32>) outs(%e8 : tensor<8x16xf32>) permutation = [1, 0]
  %k = moe.linear %n, %wk : (tensor<2x8x16xf32>, tensor<8x16xf32>) -> tensor<2x8x8xf32>
  %wv = linalg.transpose ins(%v_t : tensor<16x8xf32>) outs(%e8 : tensor<8x16xf32>) permutation = [1, 0]
  %v = moe.linear %n, %wv : (tensor<2x8x16xf32>, tensor<8x16xf32>) -> tensor<2x8x8xf32>
  %q4 = tensor.expand_shape %q [[0], [1], [2, 3]] output_shape [2, 8, 4, 4] : tensor<2x8x16xf32> into tensor<2x8x4x4xf32>
  %k4 = tensor.expand_shape %k [[0], [1], [2, 3]] output_shape [2, 8, 2, 4] : tensor<2x8x8xf32> into tensor<2x8x2x4xf32>
  %v4 = tensor.expand_shape %v [[0], [1], [2, 3]] output_shape [2, 8, 2, 4] : tensor<2x8x8xf32> into tensor<2x8x2x4xf32>
  %qr = moe.rotary %q4 {theta = 1.0e+06 : f64} : (tensor<2x8x4x4xf32>) -> tensor<2x8x4x4xf32>
  %kr = moe.rotary %k4 {theta = 1.0e+06 : f64} : (tensor<2x8x2x4xf32>) -> tensor<2x8x2x4xf32>
  %a = moe.attention %qr, %kr, %v4 {scale = 0.5 : f64} : (tensor<2x8x4x4xf32>, tensor<2x8x2x4xf32>, tensor<2x8x2x4xf32>) -> tensor<2x8x4x4xf32>
  %a3 = tensor.collapse_shape %a [[0], [1], [2, 3]] : tensor<2x8x4x4xf32> into tensor<2x8x16xf32>
  %wo = linalg.transpose ins(%o_t : tensor<16x16xf32>) outs(%e16 : tensor<16x16xf32>) permutation = [1, 0]
  %o = moe.linear %a3, %wo : (tensor<2x8x16xf32>, tensor<16x16xf32>) -> tensor<2x8x16xf32>
  %r = arith.addf %h, %o : tensor<2x8x16xf32>
  %n2 = moe.rms_norm %r, %norm {epsilon = 1.0e-05 : f64} : (tensor<2x8x16xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  %l = moe.linear %n2, %gate : (tensor<2x8x16xf32>, tensor<4x16xf32>) -> tensor<2x8x4xf32>
  %g, %x = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<2x8x4xf32>) -> (tensor<2x8x2xf32>, tensor<2x8x2xi64>)
  %y = moe.experts %n2, %g, %x, %gate_up, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<2x8x16xf32>, tensor<2x8x2xf32>, tensor<2x8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<2x8x16xf32>
  %r2 = arith.addf %r, %y : tensor<2x8x16xf32>
  %n3 = moe.rms_norm %r2, %norm {epsilon = 1.0e-05 : f64} : (tensor<2x8x16xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  %e64 = tensor.empty() : tensor<64x16xf32>
  %wh = linalg.transpose ins(%head_t : tensor<16x64xf32>) outs(%e64 : tensor<64x16xf32>) permutation = [1, 0]
  %logits = moe.lm_head %n3, %wh : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
  return %logits : tensor<2x8x64xf32>
}
