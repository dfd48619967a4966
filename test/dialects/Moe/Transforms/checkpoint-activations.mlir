// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=full}))' | FileCheck %s --check-prefix=FULL
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=selective}))' | FileCheck %s --check-prefix=SELECTIVE
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=selective}))' | FileCheck %s --check-prefix=KEEPS
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=none}))' | FileCheck %s --check-prefix=NONE
// RUN: moec-opt %s --moe-compile-pipeline="micro-batch-size=1 seq-length=4 bf16=true cudnn-attention=true activation-checkpointing=full" | FileCheck %s --check-prefix=STATS
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4 world-size=2 expert-parallel-degree=2 hybrid-shard-degree=1" | moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=full}))' | FileCheck %s --check-prefix=RANKS
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=auto memory-budget=1000000}))' -o /dev/null 2>&1 | FileCheck %s --check-prefix=AUTO-ROOM
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | not moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=auto memory-budget=1000}))' -o /dev/null 2>&1 | FileCheck %s --check-prefix=AUTO-SMALL
// RUN: not moec-opt %s --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=auto}))' -o /dev/null 2>&1 | FileCheck %s --check-prefix=NO-BUDGET

// Tests that full keeps each decoder layer's input and recomputes the rest
// of the layer right before the backward first reads it: the last layer
// first, then layer 0; the forward's experts no longer save their
// projections for the backward (the recomputed experts do).
// FULL-LABEL: func.func @train_step(
// FULL: {{^ *}}%{{[^,]+}} = moe.experts %{{.+}} -> tensor<1x4x8xf32>
// FULL-NEXT: %[[IN1:.+]] = arith.addf %{{.+}}, %{{.+}} : tensor<1x4x8xf32>
// FULL: moe.lm_head_cross_entropy_with_grad
// FULL: moe.rms_norm_grad
// FULL-NEXT: %[[N1:.+]] = moe.rms_norm %[[IN1]], %{{.+}} {epsilon = 1.000000e-05 : f64, moe.recompute = #moe.recompute<layer = 1, full>}
// FULL-NEXT: moe.linear %[[N1]], %{{.+}} {moe.recompute = #moe.recompute<layer = 1, full>}
// FULL: moe.rotary {{.+}} {moe.recompute = #moe.recompute<layer = 1, full>, theta = 1.000000e+06 : f64}
// FULL: moe.attention {{.+}} {moe.recompute = #moe.recompute<layer = 1, full>, scale = 5.000000e-01 : f64}
// FULL: arith.addf %[[IN1]], %{{.+}} {moe.recompute = #moe.recompute<layer = 1, full>}
// FULL: moe.router {{.+}}moe.recompute = #moe.recompute<layer = 1, full>
// FULL-NEXT: %{{.+}}, %[[SAVED:.+]] = moe.experts {{.+}}moe.recompute = #moe.recompute<layer = 1, full>
// FULL-NEXT: moe.experts_grad {{.+}}, %[[SAVED]] {
// FULL: moe.linear_grad %[[N1]],
// FULL: moe.rms_norm_grad %[[IN1]],
// FULL: moe.rms_norm {{.+}}moe.recompute = #moe.recompute<layer = 0, full>
// FULL: moe.experts_grad
// FULL: moe.embedding_grad

// Tests that with attention on cuDNN (moe-save-attention-stats first) the
// forward attention stops keeping its log-sum-exp and the recomputed one
// keeps it for the gradient.
// STATS-LABEL: func.func @train_step(
// STATS: {{^ *}}%{{[^,]+}} = moe.attention %
// STATS: moe.lm_head_cross_entropy_with_grad
// STATS: %{{.+}}, %[[LSE:.+]] = moe.attention {{.+}}moe.recompute = #moe.recompute<layer = 1, full>
// STATS: moe.attention_grad {{.+}}, %[[LSE]] {

// Tests that selective recomputes norms, rotary, the residual sum and the
// router from the kept GEMM and attention outputs, and nothing else.
// SELECTIVE-LABEL: func.func @train_step(
// SELECTIVE: moe.lm_head_cross_entropy_with_grad
// SELECTIVE: arith.addf {{.+}} {moe.recompute = #moe.recompute<layer = 1, selective>}
// SELECTIVE-NEXT: moe.rms_norm {{.+}}moe.recompute = #moe.recompute<layer = 1, selective>
// SELECTIVE: moe.router {{.+}}moe.recompute = #moe.recompute<layer = 1, selective>
// SELECTIVE: moe.experts_grad
// SELECTIVE: moe.rotary {{.+}}moe.recompute = #moe.recompute<layer = 1, selective>
// SELECTIVE: moe.attention_grad
// SELECTIVE: moe.rms_norm {{.+}}moe.recompute = #moe.recompute<layer = 1, selective>
// SELECTIVE: moe.linear_grad
// SELECTIVE: arith.addf {{.+}} {moe.recompute = #moe.recompute<layer = 0, selective>}
// KEEPS-LABEL: func.func @train_step(
// KEEPS-NOT: {{moe.linear|moe.attention|moe.experts}} {{.*}}moe.recompute

// Tests that none changes nothing.
// NONE-LABEL: func.func @train_step(
// NONE-NOT: moe.recompute

// Tests that on the partitioned step (two ranks, two expert-parallel ranks)
// full recomputes the dispatch of a layer's tokens too: every rank runs
// the recomputed collective at the same place.
// RANKS-LABEL: func.func @train_step(
// RANKS: moe.lm_head_cross_entropy_with_grad
// RANKS: moe.dispatch {{.+}} {dispatcher = #moe.dispatcher<all_to_all>, moe.recompute = #moe.recompute<layer = 1, full>}
// RANKS: moe.experts {{.+}}moe.recompute = #moe.recompute<layer = 1, full>
// RANKS: moe.experts_grad
// RANKS: moe.dispatch {{.+}} {dispatcher = #moe.dispatcher<all_to_all>, moe.recompute = #moe.recompute<layer = 0, full>}

// Tests that auto explains its choice: with room, every layer keeps
// everything, measured on one candidate; below what any candidate needs,
// it fails with the numbers of the one that needs the least. (At this
// size the step's peak is where the gradients are alive, which no policy
// lowers; test/tools/moec/train-checkpointing.test has a budget that
// makes auto recompute.)
// AUTO-ROOM: remark: activation checkpointing auto: 39.21 KiB for a budget of 976.56 KiB (arguments 26.79 KiB, kernel scratch 3.00 KiB, the most bytes alive at once 9.42 KiB, measured on the rewritten step for 1 of 8 candidates); recomputation adds 0.000 ms
// AUTO-ROOM-NEXT: layer  chosen     none: kept | selective: kept, recomputed, ms | full: kept, recomputed, ms
// AUTO-ROOM-NEXT: 0      none       1.53 KiB | 1.19 KiB, 672 B, 0.000 | 192 B, 1.78 KiB, 0.000
// AUTO-ROOM-NEXT: 1      none       1.53 KiB | 1.19 KiB, 672 B, 0.000 | 192 B, 1.78 KiB, 0.000
// NO-BUDGET: error: 'func.func' op needs a memory budget above 0 for activation checkpointing auto, not 0
// AUTO-SMALL: error: activation checkpointing auto: 39.09 KiB for a budget of 1000 B (arguments 26.79 KiB, kernel scratch 3.00 KiB, the most bytes alive at once 9.30 KiB, measured on the rewritten step for 3 of 8 candidates); recomputation adds 0.000 ms: it does not fit whatever the layers recompute

// A raised two-layer forward (hidden 8, 2 heads, 1 key/value head, 4 experts
// top-2, vocabulary 16).
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
  %f = moe.rms_norm %x2, %normf {epsilon = 1.0e-05 : f64} : (tensor<1x4x8xf32>, tensor<8xf32>) -> tensor<1x4x8xf32>
  %out = moe.lm_head %f, %head : (tensor<1x4x8xf32>, tensor<16x8xf32>) -> tensor<1x4x16xf32>
  return %out : tensor<1x4x16xf32>
}
