// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=full}))' | FileCheck %s --check-prefix=FULL
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=selective}))' | FileCheck %s --check-prefix=SELECTIVE
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=selective}))' | FileCheck %s --check-prefix=KEEPS
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=none}))' | FileCheck %s --check-prefix=NONE
// RUN: moec-opt %s --moe-compile-pipeline="micro-batch-size=1 seq-length=4 bf16=true cudnn-attention=true activation-checkpointing=full" | FileCheck %s --check-prefix=STATS
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4 world-size=2 expert-parallel-degree=2 hybrid-shard-degree=1" | moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=full}))' | FileCheck %s --check-prefix=RANKS
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=auto memory-budget=1000000}))' -o /dev/null 2>&1 | FileCheck %s --check-prefix=AUTO-ROOM
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | not moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=auto memory-budget=1000}))' -o /dev/null 2>&1 | FileCheck %s --check-prefix=AUTO-SMALL
// RUN: not moec-opt %s --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=auto}))' -o /dev/null 2>&1 | FileCheck %s --check-prefix=NO-BUDGET
// RUN: moec-opt %inputs/mixtral-8x7b-4l/forward.mlir --moe-compile-pipeline="micro-batch-size=4 seq-length=8192 bf16=true param-dtype=bf16 activation-checkpointing=auto memory-budget-gib=100 sm-activation-offloading=true activation-loading-horizon=2" -o /dev/null 2>&1 | FileCheck %s --check-prefix=OFFLOAD-ROOM
// RUN: moec-opt %inputs/mixtral-8x7b-4l/forward.mlir --moe-compile-pipeline="micro-batch-size=4 seq-length=8192 bf16=true param-dtype=bf16 activation-checkpointing=auto memory-budget-gib=64 sm-activation-offloading=true activation-loading-horizon=2" 2>&1 | FileCheck %s --check-prefix=OFFLOAD
// RUN: moec-opt %inputs/mixtral-8x7b-4l/forward.mlir --moe-compile-pipeline="micro-batch-size=4 seq-length=8192 bf16=true param-dtype=bf16 activation-checkpointing=auto memory-budget-gib=64" -o /dev/null 2>&1 | FileCheck %s --check-prefix=NO-OFFLOADING
// RUN: moec-opt %inputs/tiny-4l/forward.mlir --moe-train-pipeline="micro-batch-size=16 seq-length=128 activation-checkpointing=auto memory-budget-gib=0.029 sm-activation-offloading=true activation-loading-horizon=1" 2>&1 | FileCheck %s --check-prefix=SLOW-LINK
// RUN: moec-opt %inputs/tiny-4l/forward.mlir --moe-train-pipeline="micro-batch-size=16 seq-length=128 activation-checkpointing=auto memory-budget-gib=0.029 sm-activation-offloading=true activation-loading-horizon=1 host-link-gb-per-s=100000" 2>&1 | FileCheck %s --check-prefix=FAST-LINK
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=1 seq-length=4" | not moec-opt --pass-pipeline='builtin.module(func.func(moe-checkpoint-activations{policy=auto memory-budget=1000000 offloading=true host-link-bytes-per-second=0}))' -o /dev/null 2>&1 | FileCheck %s --check-prefix=NO-LINK

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

// Tests that with offloading on, auto weighs offloading a layer's kept
// values (host link copies at 55 GB/s each way that the compute of the
// layers between does not hide) against recomputing them. Mixtral 8x7B's
// geometry with four layers, bf16, 4 x 8192 tokens, horizon 2: with room,
// nothing moves; at 64 GiB, offloading layer 0 (its copies hide but for
// 5 ms under the forward of layers 1 and 2 and the backward of layers 3
// and 2) is cheaper than any recomputation that fits (46.8 ms without
// offloading), and the step shrinks from 65.78 to 63.36 GiB. Layers 2 and
// 3 cannot offload at horizon 2: their values would be back at the
// start of the backward.
// OFFLOAD-ROOM: remark: activation checkpointing auto: 65.78 GiB for a budget of 100.00 GiB ({{.+}}); recomputation adds 0.000 ms; offloads no layer (horizon 2)
// OFFLOAD: remark: activation checkpointing auto: 63.36 GiB for a budget of 64.00 GiB (arguments 33.90 GiB, kernel scratch 8.00 GiB, the most bytes alive at once 21.45 GiB, measured on the rewritten step for 6 of 18 candidates); recomputation adds 0.000 ms; offloading layer 0 (horizon 2) moves 4.88 GiB each way, 95.175 ms of copies each way at 55 GB/s, and adds 5.016 ms
// OFFLOAD-NEXT: layer  chosen     none: kept | selective: kept, recomputed, ms | full: kept, recomputed, ms | offload alone: each way, ms
// OFFLOAD-NEXT: 0      none+offload 5.13 GiB | 4.63 GiB, 1.06 GiB, 0.654 | 256.50 MiB, 5.69 GiB, 44.804 | 4.88 GiB, 5.016
// OFFLOAD-NEXT: 1      none       5.13 GiB | 4.63 GiB, 1.06 GiB, 0.654 | 256.50 MiB, 5.69 GiB, 44.804 | 4.88 GiB, 5.016
// OFFLOAD-NEXT: 2      none       5.13 GiB | 4.63 GiB, 1.06 GiB, 0.654 | 256.50 MiB, 5.69 GiB, 44.804 | - (back at the backward's start)
// OFFLOAD-NEXT: 3      none       5.13 GiB | 4.63 GiB, 1.06 GiB, 0.654 | 256.50 MiB, 5.69 GiB, 44.804 | - (back at the backward's start)
// OFFLOAD-LABEL: func.func @train_step(
// OFFLOAD-SAME: moe.offload_layers = array<i64: 0>
// OFFLOAD: moe.offload %{{.+}} layer 0
// OFFLOAD-NOT: moe.offload %{{.+}} layer {{[1-9]}}
// OFFLOAD-NOT: moe.recompute
// OFFLOAD: moe.fetch %{{.+}} layer 0
// NO-OFFLOADING: remark: activation checkpointing auto: 59.65 GiB for a budget of 64.00 GiB ({{.+}}); recomputation adds 46.766 ms{{$}}
// NO-OFFLOADING-NEXT: layer  chosen     none: kept | selective: kept, recomputed, ms | full: kept, recomputed, ms{{$}}
// NO-OFFLOADING-NEXT: 0      full

// Tests that auto does not offload where the copies cannot hide: the tiny
// model's layers (hidden 32) compute almost nothing per byte they keep, so
// recomputing layers 0 and 1 adds microseconds where their copies would
// add 0.128 ms each; moe-offload-activations then moves nothing. With a
// link fast enough to hide the copies (host_link_gb_per_s 100000), auto
// offloads those two layers instead.
// SLOW-LINK: remark: activation checkpointing auto: 27.87 MiB for a budget of 29.70 MiB (arguments 1.49 MiB, kernel scratch 17.25 MiB, the most bytes alive at once 9.13 MiB, measured on the rewritten step for 6 of 15 candidates); recomputation adds 0.004 ms; offloads no layer (horizon 1)
// SLOW-LINK-NEXT: layer  chosen     none: kept | selective: kept, recomputed, ms | full: kept, recomputed, ms | offload alone: each way, ms
// SLOW-LINK-NEXT: 0      full       3.83 MiB | 3.28 MiB, 1.17 MiB, 0.001 | 288.00 KiB, 4.42 MiB, 0.002 | 256.00 KiB, 0.002
// SLOW-LINK-NEXT: 1      full       3.83 MiB | 3.28 MiB, 1.17 MiB, 0.001 | 288.00 KiB, 4.42 MiB, 0.002 | 256.00 KiB, 0.002
// SLOW-LINK-NEXT: 2      none       3.83 MiB | 3.28 MiB, 1.17 MiB, 0.001 | 288.00 KiB, 4.42 MiB, 0.002 | 3.52 MiB, 0.127
// SLOW-LINK-NEXT: 3      none       3.83 MiB | 3.28 MiB, 1.17 MiB, 0.001 | 288.00 KiB, 4.42 MiB, 0.002 | - (back at the backward's start)
// SLOW-LINK-LABEL: func.func @train_step(
// SLOW-LINK-SAME: moe.offload_layers = array<i64>
// SLOW-LINK-NOT: moe.offload %
// SLOW-LINK: moe.recompute = #moe.recompute<layer = 1, full>
// SLOW-LINK-NOT: moe.offload %
// FAST-LINK: remark: activation checkpointing auto: 27.93 MiB for a budget of 29.70 MiB ({{.+}}); recomputation adds 0.000 ms; offloading layers 0, 1 (horizon 1) moves 7.03 MiB each way, 0.000 ms of copies each way at 100000 GB/s, and adds 0.000 ms
// FAST-LINK-LABEL: func.func @train_step(
// FAST-LINK-SAME: moe.offload_layers = array<i64: 0, 1>
// FAST-LINK-NOT: moe.recompute
// FAST-LINK: moe.offload %{{.+}} layer 0
// FAST-LINK: moe.offload %{{.+}} layer 1
// FAST-LINK-NOT: moe.offload %{{.+}} layer {{[2-9]}}
// NO-LINK: error: 'func.func' op needs a host link rate above 0 bytes/s for activation offloading under auto, not 0

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
