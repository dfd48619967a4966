// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | moec-opt --pass-pipeline='builtin.module(func.func(moe-offload-activations{horizon=1}))' | FileCheck %s --check-prefix=H1
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | moec-opt --pass-pipeline='builtin.module(func.func(moe-offload-activations{horizon=2}))' | FileCheck %s --check-prefix=H2
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4 activation-checkpointing=full sm-activation-offloading=true activation-loading-horizon=1" | FileCheck %s --check-prefix=FULL
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4 activation-checkpointing=selective sm-activation-offloading=true" | FileCheck %s --check-prefix=SELECTIVE
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4 world-size=2 expert-parallel-degree=2 hybrid-shard-degree=1 activation-checkpointing=selective sm-activation-offloading=true" | FileCheck %s --check-prefix=RANKS
// RUN: moec-opt %s --moe-compile-pipeline="micro-batch-size=1 seq-length=4 sm-activation-offloading=true" | FileCheck %s --check-prefix=PLAN
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | not moec-opt --pass-pipeline='builtin.module(func.func(moe-offload-activations{horizon=0}))' -o /dev/null 2>&1 | FileCheck %s --check-prefix=HORIZON

// Tests that without checkpointing every forward value a layer's backward
// reads moves to the host after its last forward reader (the compute stream
// waits for layer 0's copies at the start of layer 2's forward, where
// `%arg26`, layer 2's input norm weight, is read first, and for layer 1's
// at the start of the backward), a buffer once with
// its views (the attention output, and its collapsed view made again from
// the fetched buffer), and comes back at the start of the backward of the
// layer above (horizon 1): layer 1's before layer 2's experts, layer 0's
// before layer 1's. Layer 2's values stay: they would be joined and
// fetched at the same point, the start of the backward, freeing nothing.
// H1-LABEL: func.func @train_step(
// H1: %[[N0:.+]] = moe.rms_norm
// H1-NEXT: moe.linear %[[N0]]
// H1-NEXT: moe.linear %[[N0]]
// H1-NEXT: moe.linear %[[N0]]
// H1-NEXT: %[[N0_HOST:.+]] = moe.offload %[[N0]] layer 0 : tensor<1x4x8xf32> -> tensor<1x4x8xf32, #moe.host>
// H1: %[[O0:.+]] = moe.attention
// H1: %[[O0_VIEW:.+]] = tensor.collapse_shape %[[O0]]
// H1-NEXT: moe.linear %[[O0_VIEW]]
// H1-NEXT: %[[O0_HOST:.+]] = moe.offload %[[O0]] layer 0
// H1-NOT: moe.offload %[[O0_VIEW]]
// H1: %[[L1_HOST:.+]] = moe.offload %{{.+}} layer 1
// H1-NOT: moe.offload_join %[[L1_HOST]]
// H1: moe.offload_join %[[N0_HOST]]
// H1: moe.offload_join %[[O0_HOST]]
// H1-NOT: moe.offload_join %[[L1_HOST]]
// H1: moe.rms_norm %{{.+}}, %arg26
// H1-NOT: moe.offload %{{.+}} layer 2
// H1: moe.offload_join %[[L1_HOST]]
// H1-NOT: moe.fetch
// H1-NOT: moe.offload %{{.+}} layer 2
// H1: moe.lm_head_cross_entropy_with_grad
// H1-NOT: moe.fetch %{{.+}} layer 0
// H1: moe.fetch %{{.+}} layer 1
// H1-NOT: moe.fetch %{{.+}} layer 0
// H1: moe.experts_grad
// H1: %[[N0_BACK:.+]] = moe.fetch %[[N0_HOST]] layer 0
// H1: %[[O0_BACK:.+]] = moe.fetch %[[O0_HOST]] layer 0
// H1-NEXT: %[[O0_BACK_VIEW:.+]] = tensor.collapse_shape %[[O0_BACK]]
// H1: moe.experts_grad
// H1: moe.experts_grad
// H1: moe.linear_grad %[[O0_BACK_VIEW]],
// H1: moe.linear_grad %[[N0_BACK]],

// Tests that horizon 2 waits for layer 0's copies at the start of the
// backward (no third layer after layer 0) and fetches layer 0's values at
// the start of layer 2's backward; layers 1 and 2 (no layer two above
// them) would be joined and fetched at the start of the backward, so their
// values stay.
// H2-LABEL: func.func @train_step(
// H2: %[[N0_HOST:.+]] = moe.offload %{{.+}} layer 0
// H2-NOT: moe.offload_join %[[N0_HOST]]
// H2: moe.rms_norm %{{.+}}, %arg26
// H2-NOT: moe.offload %{{.+}} layer {{[12]}}
// H2: moe.offload_join %[[N0_HOST]]
// H2-NOT: moe.fetch
// H2: moe.lm_head_cross_entropy_with_grad
// H2-NOT: moe.experts_grad
// H2: moe.fetch %{{.+}} layer 0
// H2: moe.experts_grad

// Tests that under full checkpointing only the layer inputs the policy
// keeps move (layer 2's stays: joined and fetched at the start of the
// backward); each layer's recomputation reads its fetched input.
// FULL-LABEL: func.func @train_step(
// FULL: %[[X0:.+]] = moe.embedding
// FULL: %[[X0_HOST:.+]] = moe.offload %[[X0]] layer 0
// FULL: moe.offload %{{.+}} layer 1
// FULL-NOT: moe.offload %
// FULL: moe.lm_head_cross_entropy_with_grad
// FULL: %[[X1_BACK:.+]] = moe.fetch %{{.+}} layer 1
// FULL-NEXT: moe.rms_norm {{.+}}moe.recompute = #moe.recompute<layer = 2, full>
// FULL: %[[X0_BACK:.+]] = moe.fetch %[[X0_HOST]] layer 0
// FULL-NEXT: moe.rms_norm %[[X1_BACK]], {{.+}}moe.recompute = #moe.recompute<layer = 1, full>
// FULL: moe.rms_norm %[[X0_BACK]], {{.+}}moe.recompute = #moe.recompute<layer = 0, full>

// Tests that under selective checkpointing the recomputed norms stay: the
// first layer's norm output is not offloaded, its projections are.
// SELECTIVE-LABEL: func.func @train_step(
// SELECTIVE: %[[N0:.+]] = moe.rms_norm
// SELECTIVE-NEXT: %[[Q0:.+]] = moe.linear %[[N0]]
// SELECTIVE-NOT: moe.offload %[[N0]] layer
// SELECTIVE: moe.offload %[[Q0]] layer 0
// SELECTIVE-NOT: moe.offload %[[N0]] layer
// SELECTIVE: moe.lm_head_cross_entropy_with_grad
// SELECTIVE: moe.rms_norm {{.+}}moe.recompute = #moe.recompute<layer = 2, selective>

// Tests that on the partitioned step (two ranks, two expert-parallel ranks)
// the received rows move too, at their dynamic row count.
// RANKS-LABEL: func.func @train_step(
// RANKS: %[[ROWS:[^,]+]], %{{[^,]+}}, %{{[^,]+}}, %{{[^ ]+}} = moe.dispatch
// RANKS: moe.offload %[[ROWS]] layer 0 : tensor<?x8xf32> -> tensor<?x8xf32, #moe.host>
// RANKS: moe.fetch %{{.+}} layer 0 : tensor<?x8xf32, #moe.host> -> tensor<?x8xf32>

// Tests that in moe-compile-pipeline the memory plan places the host
// copies in a region of their own.
// PLAN-LABEL: func.func @train_step(
// PLAN-SAME: moe.host_bytes = {{[1-9][0-9]*}} : i64
// PLAN: moe.offload %{{.+}} layer 0 {moe.host_offsets = array<i64: {{[0-9]+}}>}
// PLAN: moe.fetch %{{.+}} layer 0 {moe.arena_offsets = array<i64: {{[0-9]+}}>}

// HORIZON: error: 'func.func' op has activation_loading_horizon 0; it must be at least 1

// A raised three-layer forward (hidden 8, 2 heads, 1 key/value head, 4
// experts top-2, vocabulary 16).
func.func @forward(%ids: tensor<1x4xi64> {moe.input = "input_ids"},
    %table: tensor<16x8xf32> {moe.parameter = "model.embed_tokens.weight"},
    %wq0: tensor<8x8xf32> {moe.parameter = "model.layers.0.self_attn.q_proj.weight"},
    %wk0: tensor<4x8xf32> {moe.parameter = "model.layers.0.self_attn.k_proj.weight"},
    %wv0: tensor<4x8xf32> {moe.parameter = "model.layers.0.self_attn.v_proj.weight"},
    %wo0: tensor<8x8xf32> {moe.parameter = "model.layers.0.self_attn.o_proj.weight"},
    %gate0: tensor<4x8xf32> {moe.parameter = "model.layers.0.mlp.gate.weight"},
    %gate_up0: tensor<4x16x8xf32> {moe.parameter = "model.layers.0.mlp.experts.gate_up_proj"},
    %down0: tensor<4x8x8xf32> {moe.parameter = "model.layers.0.mlp.experts.down_proj"},
    %norm1_0: tensor<8xf32> {moe.parameter = "model.layers.0.input_layernorm.weight"},
    %norm2_0: tensor<8xf32> {moe.parameter = "model.layers.0.post_attention_layernorm.weight"},
    %wq1: tensor<8x8xf32> {moe.parameter = "model.layers.1.self_attn.q_proj.weight"},
    %wk1: tensor<4x8xf32> {moe.parameter = "model.layers.1.self_attn.k_proj.weight"},
    %wv1: tensor<4x8xf32> {moe.parameter = "model.layers.1.self_attn.v_proj.weight"},
    %wo1: tensor<8x8xf32> {moe.parameter = "model.layers.1.self_attn.o_proj.weight"},
    %gate1: tensor<4x8xf32> {moe.parameter = "model.layers.1.mlp.gate.weight"},
    %gate_up1: tensor<4x16x8xf32> {moe.parameter = "model.layers.1.mlp.experts.gate_up_proj"},
    %down1: tensor<4x8x8xf32> {moe.parameter = "model.layers.1.mlp.experts.down_proj"},
    %norm1_1: tensor<8xf32> {moe.parameter = "model.layers.1.input_layernorm.weight"},
    %norm2_1: tensor<8xf32> {moe.parameter = "model.layers.1.post_attention_layernorm.weight"},
    %wq2: tensor<8x8xf32> {moe.parameter = "model.layers.2.self_attn.q_proj.weight"},
    %wk2: tensor<4x8xf32> {moe.parameter = "model.layers.2.self_attn.k_proj.weight"},
    %wv2: tensor<4x8xf32> {moe.parameter = "model.layers.2.self_attn.v_proj.weight"},
    %wo2: tensor<8x8xf32> {moe.parameter = "model.layers.2.self_attn.o_proj.weight"},
    %gate2: tensor<4x8xf32> {moe.parameter = "model.layers.2.mlp.gate.weight"},
    %gate_up2: tensor<4x16x8xf32> {moe.parameter = "model.layers.2.mlp.experts.gate_up_proj"},
    %down2: tensor<4x8x8xf32> {moe.parameter = "model.layers.2.mlp.experts.down_proj"},
    %norm1_2: tensor<8xf32> {moe.parameter = "model.layers.2.input_layernorm.weight"},
    %norm2_2: tensor<8xf32> {moe.parameter = "model.layers.2.post_attention_layernorm.weight"},
    %normf: tensor<8xf32> {moe.parameter = "model.norm.weight"},
    %head: tensor<16x8xf32> {moe.parameter = "lm_head.weight"})
    -> (tensor<1x4x16xf32> {moe.output = "logits"}) {
  %x0 = moe.embedding %table[%ids] : (tensor<16x8xf32>, tensor<1x4xi64>) -> tensor<1x4x8xf32>
  %n0 = moe.rms_norm %x0, %norm1_0 {epsilon = 1.0e-05 : f64} : (tensor<1x4x8xf32>, tensor<8xf32>) -> tensor<1x4x8xf32>
  %q0 = moe.linear %n0, %wq0 : (tensor<1x4x8xf32>, tensor<8x8xf32>) -> tensor<1x4x8xf32>
  %k0 = moe.linear %n0, %wk0 : (tensor<1x4x8xf32>, tensor<4x8xf32>) -> tensor<1x4x4xf32>
  %v0 = moe.linear %n0, %wv0 : (tensor<1x4x8xf32>, tensor<4x8xf32>) -> tensor<1x4x4xf32>
  %q4_0 = tensor.expand_shape %q0 [[0], [1], [2, 3]] output_shape [1, 4, 2, 4] : tensor<1x4x8xf32> into tensor<1x4x2x4xf32>
  %k4_0 = tensor.expand_shape %k0 [[0], [1], [2, 3]] output_shape [1, 4, 1, 4] : tensor<1x4x4xf32> into tensor<1x4x1x4xf32>
  %v4_0 = tensor.expand_shape %v0 [[0], [1], [2, 3]] output_shape [1, 4, 1, 4] : tensor<1x4x4xf32> into tensor<1x4x1x4xf32>
  %qr0 = moe.rotary %q4_0 {theta = 1.0e+06 : f64} : (tensor<1x4x2x4xf32>) -> tensor<1x4x2x4xf32>
  %kr0 = moe.rotary %k4_0 {theta = 1.0e+06 : f64} : (tensor<1x4x1x4xf32>) -> tensor<1x4x1x4xf32>
  %o4_0 = moe.attention %qr0, %kr0, %v4_0 {scale = 0.5 : f64} : (tensor<1x4x2x4xf32>, tensor<1x4x1x4xf32>, tensor<1x4x1x4xf32>) -> tensor<1x4x2x4xf32>
  %o0 = tensor.collapse_shape %o4_0 [[0], [1], [2, 3]] : tensor<1x4x2x4xf32> into tensor<1x4x8xf32>
  %a0 = moe.linear %o0, %wo0 : (tensor<1x4x8xf32>, tensor<8x8xf32>) -> tensor<1x4x8xf32>
  %r0 = arith.addf %x0, %a0 : tensor<1x4x8xf32>
  %m0 = moe.rms_norm %r0, %norm2_0 {epsilon = 1.0e-05 : f64} : (tensor<1x4x8xf32>, tensor<8xf32>) -> tensor<1x4x8xf32>
  %logits0 = moe.linear %m0, %gate0 : (tensor<1x4x8xf32>, tensor<4x8xf32>) -> tensor<1x4x4xf32>
  %g0, %e0 = moe.router %logits0 {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<1x4x4xf32>) -> (tensor<1x4x2xf32>, tensor<1x4x2xi64>)
  %y0 = moe.experts %m0, %g0, %e0, %gate_up0, %down0 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<1x4x8xf32>, tensor<1x4x2xf32>, tensor<1x4x2xi64>, tensor<4x16x8xf32>, tensor<4x8x8xf32>) -> tensor<1x4x8xf32>
  %x1 = arith.addf %r0, %y0 : tensor<1x4x8xf32>
  %n1 = moe.rms_norm %x1, %norm1_1 {epsilon = 1.0e-05 : f64} : (tensor<1x4x8xf32>, tensor<8xf32>) -> tensor<1x4x8xf32>
  %q1 = moe.linear %n1, %wq1 : (tensor<1x4x8xf32>, tensor<8x8xf32>) -> tensor<1x4x8xf32>
  %k1 = moe.linear %n1, %wk1 : (tensor<1x4x8xf32>, tensor<4x8xf32>) -> tensor<1x4x4xf32>
  %v1 = moe.linear %n1, %wv1 : (tensor<1x4x8xf32>, tensor<4x8xf32>) -> tensor<1x4x4xf32>
  %q4_1 = tensor.expand_shape %q1 [[0], [1], [2, 3]] output_shape [1, 4, 2, 4] : tensor<1x4x8xf32> into tensor<1x4x2x4xf32>
  %k4_1 = tensor.expand_shape %k1 [[0], [1], [2, 3]] output_shape [1, 4, 1, 4] : tensor<1x4x4xf32> into tensor<1x4x1x4xf32>
  %v4_1 = tensor.expand_shape %v1 [[0], [1], [2, 3]] output_shape [1, 4, 1, 4] : tensor<1x4x4xf32> into tensor<1x4x1x4xf32>
  %qr1 = moe.rotary %q4_1 {theta = 1.0e+06 : f64} : (tensor<1x4x2x4xf32>) -> tensor<1x4x2x4xf32>
  %kr1 = moe.rotary %k4_1 {theta = 1.0e+06 : f64} : (tensor<1x4x1x4xf32>) -> tensor<1x4x1x4xf32>
  %o4_1 = moe.attention %qr1, %kr1, %v4_1 {scale = 0.5 : f64} : (tensor<1x4x2x4xf32>, tensor<1x4x1x4xf32>, tensor<1x4x1x4xf32>) -> tensor<1x4x2x4xf32>
  %o1 = tensor.collapse_shape %o4_1 [[0], [1], [2, 3]] : tensor<1x4x2x4xf32> into tensor<1x4x8xf32>
  %a1 = moe.linear %o1, %wo1 : (tensor<1x4x8xf32>, tensor<8x8xf32>) -> tensor<1x4x8xf32>
  %r1 = arith.addf %x1, %a1 : tensor<1x4x8xf32>
  %m1 = moe.rms_norm %r1, %norm2_1 {epsilon = 1.0e-05 : f64} : (tensor<1x4x8xf32>, tensor<8xf32>) -> tensor<1x4x8xf32>
  %logits1 = moe.linear %m1, %gate1 : (tensor<1x4x8xf32>, tensor<4x8xf32>) -> tensor<1x4x4xf32>
  %g1, %e1 = moe.router %logits1 {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<1x4x4xf32>) -> (tensor<1x4x2xf32>, tensor<1x4x2xi64>)
  %y1 = moe.experts %m1, %g1, %e1, %gate_up1, %down1 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<1x4x8xf32>, tensor<1x4x2xf32>, tensor<1x4x2xi64>, tensor<4x16x8xf32>, tensor<4x8x8xf32>) -> tensor<1x4x8xf32>
  %x2 = arith.addf %r1, %y1 : tensor<1x4x8xf32>
  %n2 = moe.rms_norm %x2, %norm1_2 {epsilon = 1.0e-05 : f64} : (tensor<1x4x8xf32>, tensor<8xf32>) -> tensor<1x4x8xf32>
  %q2 = moe.linear %n2, %wq2 : (tensor<1x4x8xf32>, tensor<8x8xf32>) -> tensor<1x4x8xf32>
  %k2 = moe.linear %n2, %wk2 : (tensor<1x4x8xf32>, tensor<4x8xf32>) -> tensor<1x4x4xf32>
  %v2 = moe.linear %n2, %wv2 : (tensor<1x4x8xf32>, tensor<4x8xf32>) -> tensor<1x4x4xf32>
  %q4_2 = tensor.expand_shape %q2 [[0], [1], [2, 3]] output_shape [1, 4, 2, 4] : tensor<1x4x8xf32> into tensor<1x4x2x4xf32>
  %k4_2 = tensor.expand_shape %k2 [[0], [1], [2, 3]] output_shape [1, 4, 1, 4] : tensor<1x4x4xf32> into tensor<1x4x1x4xf32>
  %v4_2 = tensor.expand_shape %v2 [[0], [1], [2, 3]] output_shape [1, 4, 1, 4] : tensor<1x4x4xf32> into tensor<1x4x1x4xf32>
  %qr2 = moe.rotary %q4_2 {theta = 1.0e+06 : f64} : (tensor<1x4x2x4xf32>) -> tensor<1x4x2x4xf32>
  %kr2 = moe.rotary %k4_2 {theta = 1.0e+06 : f64} : (tensor<1x4x1x4xf32>) -> tensor<1x4x1x4xf32>
  %o4_2 = moe.attention %qr2, %kr2, %v4_2 {scale = 0.5 : f64} : (tensor<1x4x2x4xf32>, tensor<1x4x1x4xf32>, tensor<1x4x1x4xf32>) -> tensor<1x4x2x4xf32>
  %o2 = tensor.collapse_shape %o4_2 [[0], [1], [2, 3]] : tensor<1x4x2x4xf32> into tensor<1x4x8xf32>
  %a2 = moe.linear %o2, %wo2 : (tensor<1x4x8xf32>, tensor<8x8xf32>) -> tensor<1x4x8xf32>
  %r2 = arith.addf %x2, %a2 : tensor<1x4x8xf32>
  %m2 = moe.rms_norm %r2, %norm2_2 {epsilon = 1.0e-05 : f64} : (tensor<1x4x8xf32>, tensor<8xf32>) -> tensor<1x4x8xf32>
  %logits2 = moe.linear %m2, %gate2 : (tensor<1x4x8xf32>, tensor<4x8xf32>) -> tensor<1x4x4xf32>
  %g2, %e2 = moe.router %logits2 {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<1x4x4xf32>) -> (tensor<1x4x2xf32>, tensor<1x4x2xi64>)
  %y2 = moe.experts %m2, %g2, %e2, %gate_up2, %down2 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<1x4x8xf32>, tensor<1x4x2xf32>, tensor<1x4x2xi64>, tensor<4x16x8xf32>, tensor<4x8x8xf32>) -> tensor<1x4x8xf32>
  %x3 = arith.addf %r2, %y2 : tensor<1x4x8xf32>
  %f = moe.rms_norm %x3, %normf {epsilon = 1.0e-05 : f64} : (tensor<1x4x8xf32>, tensor<8xf32>) -> tensor<1x4x8xf32>
  %out = moe.lm_head %f, %head : (tensor<1x4x8xf32>, tensor<16x8xf32>) -> tensor<1x4x16xf32>
  return %out : tensor<1x4x16xf32>
}
