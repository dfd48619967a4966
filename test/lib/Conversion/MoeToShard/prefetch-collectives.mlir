// RUN: moec-opt %s -moe-build-train-step="load-balancing=none" -canonicalize -cse -moe-hybrid-shard="world-size=2 hybrid-shard-degree=2" -moe-prefetch-collectives | FileCheck %s
// RUN: moec-opt %s -moe-build-train-step="load-balancing=none" -canonicalize -cse -moe-hybrid-shard="world-size=2 hybrid-shard-degree=2" -moe-prefetch-collectives="layers=0" | FileCheck %s --check-prefix=NOGATHERS
// RUN: moec-opt %s -moe-build-train-step="load-balancing=none compute-type=bf16" -canonicalize -cse -moe-widen-weight-grads -moe-fuse-loss-grad -moe-hybrid-shard="world-size=3 hybrid-shard-degree=3" -moe-prefetch-collectives | FileCheck %s --check-prefix=PAD

// Two decoder layers without attention.
func.func @forward(%ids: tensor<2x8xi64> {moe.input = "input_ids"},
                   %table: tensor<64x16xf32> {moe.parameter = "model.embed_tokens.weight"},
                   %norm0: tensor<16xf32> {moe.parameter = "model.layers.0.post_attention_layernorm.weight"},
                   %router0: tensor<4x16xf32> {moe.parameter = "model.layers.0.mlp.gate.weight"},
                   %gate_up0: tensor<4x32x16xf32> {moe.parameter = "model.layers.0.mlp.experts.gate_up_proj"},
                   %down0: tensor<4x16x16xf32> {moe.parameter = "model.layers.0.mlp.experts.down_proj"},
                   %norm1: tensor<16xf32> {moe.parameter = "model.layers.1.post_attention_layernorm.weight"},
                   %router1: tensor<4x16xf32> {moe.parameter = "model.layers.1.mlp.gate.weight"},
                   %gate_up1: tensor<4x32x16xf32> {moe.parameter = "model.layers.1.mlp.experts.gate_up_proj"},
                   %down1: tensor<4x16x16xf32> {moe.parameter = "model.layers.1.mlp.experts.down_proj"},
                   %head: tensor<64x16xf32> {moe.parameter = "lm_head.weight"})
    -> (tensor<2x8x64xf32> {moe.output = "logits"}) {
  %h = moe.embedding %table[%ids] : (tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<2x8x16xf32>
  %n0 = moe.rms_norm %h, %norm0 {epsilon = 1.0e-05 : f64} : (tensor<2x8x16xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  %l0 = moe.linear %n0, %router0 : (tensor<2x8x16xf32>, tensor<4x16xf32>) -> tensor<2x8x4xf32>
  %g0, %e0 = moe.router %l0 {k = 2 : i64, load_balancing = #moe.load_balancing<none>} : (tensor<2x8x4xf32>) -> (tensor<2x8x2xf32>, tensor<2x8x2xi64>)
  %y0 = moe.experts %n0, %g0, %e0, %gate_up0, %down0 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<2x8x16xf32>, tensor<2x8x2xf32>, tensor<2x8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<2x8x16xf32>
  %r0 = arith.addf %h, %y0 : tensor<2x8x16xf32>
  %n1 = moe.rms_norm %r0, %norm1 {epsilon = 1.0e-05 : f64} : (tensor<2x8x16xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  %l1 = moe.linear %n1, %router1 : (tensor<2x8x16xf32>, tensor<4x16xf32>) -> tensor<2x8x4xf32>
  %g1, %e1 = moe.router %l1 {k = 2 : i64, load_balancing = #moe.load_balancing<none>} : (tensor<2x8x4xf32>) -> (tensor<2x8x2xf32>, tensor<2x8x2xi64>)
  %y1 = moe.experts %n1, %g1, %e1, %gate_up1, %down1 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<2x8x16xf32>, tensor<2x8x2xf32>, tensor<2x8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<2x8x16xf32>
  %r1 = arith.addf %r0, %y1 : tensor<2x8x16xf32>
  %o = moe.lm_head %r1, %head : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
  return %o : tensor<2x8x64xf32>
}

// The evaluation step: both layers' gathers before layer 0's first op, in
// their order; the embedding's and the head's where they were.
// CHECK-LABEL: func.func @eval_step(
// CHECK: %[[E_TABLE:.+]] = shard.all_gather %arg0
// CHECK-NEXT: moe.embedding %[[E_TABLE]]
// CHECK-NEXT: %[[E_NORM0:.+]] = shard.all_gather %arg1
// CHECK-NEXT: shard.all_gather %arg2
// CHECK-NEXT: shard.all_gather %arg3
// CHECK-NEXT: shard.all_gather %arg4
// CHECK-NEXT: %[[E_NORM1:.+]] = shard.all_gather %arg5
// CHECK-NEXT: shard.all_gather %arg6
// CHECK-NEXT: shard.all_gather %arg7
// CHECK-NEXT: shard.all_gather %arg8
// CHECK-NEXT: moe.rms_norm %{{.+}}, %[[E_NORM0]]
// CHECK: moe.rms_norm %{{.+}}, %[[E_NORM1]]
// CHECK: shard.all_gather %arg9
// CHECK-NEXT: moe.target_count

// The training step's forward: the same.
// CHECK-LABEL: func.func @train_step(
// CHECK-SAME: %[[TABLE:[^:]+]]: tensor<32x16xf32> {moe.parameter = "model.embed_tokens.weight"}
// CHECK-SAME: %[[NORM0:[^:]+]]: tensor<8xf32> {moe.parameter = "model.layers.0.post_attention_layernorm.weight"}
// CHECK-SAME: %[[ROUTER0:[^:]+]]: tensor<2x16xf32> {moe.parameter = "model.layers.0.mlp.gate.weight"}
// CHECK-SAME: %[[GATE_UP0:[^:]+]]: tensor<2x32x16xf32> {moe.parameter = "model.layers.0.mlp.experts.gate_up_proj"}
// CHECK-SAME: %[[DOWN0:[^:]+]]: tensor<2x16x16xf32> {moe.parameter = "model.layers.0.mlp.experts.down_proj"}
// CHECK-SAME: %[[NORM1:[^:]+]]: tensor<8xf32> {moe.parameter = "model.layers.1.post_attention_layernorm.weight"}
// CHECK-SAME: %[[ROUTER1:[^:]+]]: tensor<2x16xf32> {moe.parameter = "model.layers.1.mlp.gate.weight"}
// CHECK-SAME: %[[GATE_UP1:[^:]+]]: tensor<2x32x16xf32> {moe.parameter = "model.layers.1.mlp.experts.gate_up_proj"}
// CHECK-SAME: %[[DOWN1:[^:]+]]: tensor<2x16x16xf32> {moe.parameter = "model.layers.1.mlp.experts.down_proj"}
// CHECK-SAME: %[[HEAD:[^:]+]]: tensor<32x16xf32> {moe.parameter = "lm_head.weight"}
// CHECK: shard.all_gather %[[TABLE]]
// CHECK-NEXT: %[[X:.+]] = moe.embedding
// CHECK-NEXT: %[[F_NORM0:.+]] = shard.all_gather %[[NORM0]]
// CHECK-NEXT: shard.all_gather %[[ROUTER0]]
// CHECK-NEXT: shard.all_gather %[[GATE_UP0]]
// CHECK-NEXT: shard.all_gather %[[DOWN0]]
// CHECK-NEXT: %[[F_NORM1:.+]] = shard.all_gather %[[NORM1]]
// CHECK-NEXT: %[[F_ROUTER1:.+]] = shard.all_gather %[[ROUTER1]]
// CHECK-NEXT: shard.all_gather %[[GATE_UP1]]
// CHECK-NEXT: shard.all_gather %[[DOWN1]]
// CHECK-NEXT: moe.rms_norm %[[X]], %[[F_NORM0]]
// CHECK-NOT: shard.all_gather
// CHECK: moe.rms_norm %{{.+}}, %[[F_NORM1]]
// CHECK-NEXT: moe.linear %{{.+}}, %[[F_ROUTER1]]
// CHECK: %[[F_HEAD:.+]] = shard.all_gather %[[HEAD]]
// CHECK-NEXT: moe.lm_head_cross_entropy %{{.+}}, %[[F_HEAD]]

// The backward: the head's gradient reduced at once; the last layer's
// backward gathers, then layer 0's, before the last layer's first backward
// op; each gradient reduced right after the op that computes it.
// CHECK: %{{.+}}, %[[D_HEAD:.+]] = moe.lm_head_cross_entropy_grad
// CHECK-NEXT: shard.reduce_scatter %[[D_HEAD]]
// CHECK-NEXT: %[[B_GATE_UP1:.+]] = shard.all_gather %[[GATE_UP1]]
// CHECK-NEXT: shard.all_gather %[[DOWN1]]
// CHECK-NEXT: shard.all_gather %[[ROUTER1]]
// CHECK-NEXT: shard.all_gather %[[NORM1]]
// CHECK-NEXT: %[[B_GATE_UP0:.+]] = shard.all_gather %[[GATE_UP0]]
// CHECK-NEXT: shard.all_gather %[[DOWN0]]
// CHECK-NEXT: shard.all_gather %[[ROUTER0]]
// CHECK-NEXT: shard.all_gather %[[NORM0]]
// CHECK-NEXT: %{{.+}}, %{{.+}}, %[[D_GATE_UP1:.+]], %[[D_DOWN1:.+]] = moe.experts_grad %{{.+}}, %{{.+}}, %{{.+}}, %[[B_GATE_UP1]]
// CHECK-NEXT: shard.reduce_scatter %[[D_DOWN1]]
// CHECK-NEXT: shard.reduce_scatter %[[D_GATE_UP1]]
// CHECK-NEXT: moe.router_grad
// CHECK-NOT: shard.all_gather
// CHECK: %{{.+}}, %{{.+}}, %[[D_GATE_UP0:.+]], %[[D_DOWN0:.+]] = moe.experts_grad %{{.+}}, %{{.+}}, %{{.+}}, %[[B_GATE_UP0]]
// CHECK-NEXT: shard.reduce_scatter %[[D_DOWN0]]
// CHECK-NEXT: shard.reduce_scatter %[[D_GATE_UP0]]
// CHECK: %[[D_TABLE:.+]] = moe.embedding_grad
// CHECK-NEXT: shard.reduce_scatter %[[D_TABLE]]
// CHECK-NEXT: moe.global_norm

// layers=0 leaves the gathers before their first reader and only moves the
// reductions.
// NOGATHERS-LABEL: func.func @train_step(
// NOGATHERS: moe.embedding
// NOGATHERS-NEXT: shard.all_gather %arg1
// NOGATHERS-NEXT: moe.rms_norm
// NOGATHERS-NEXT: shard.all_gather %arg2
// NOGATHERS-NEXT: moe.linear
// NOGATHERS: %{{.+}}, %[[D_HEAD:.+]] = moe.lm_head_cross_entropy_grad
// NOGATHERS-NEXT: shard.reduce_scatter %[[D_HEAD]]
// NOGATHERS-NEXT: shard.all_gather %arg7
// NOGATHERS-NEXT: shard.all_gather %arg8
// NOGATHERS-NEXT: moe.experts_grad

// Under bf16 with padding (H = 3), the cast and the slice move with their
// gather, the padding's zeros and insert_slice with their reduce-scatter.
// PAD-LABEL: func.func @train_step(
// PAD: moe.embedding
// PAD-NEXT: arith.truncf %arg1
// PAD-NEXT: shard.all_gather
// PAD-NEXT: tensor.extract_slice
// PAD-COUNT-7: arith.truncf
// PAD: %[[SLICE:.+]] = tensor.extract_slice %{{.+}}[0, 0, 0] [4, 16, 16]
// PAD-NEXT: moe.rms_norm
// PAD: %{{.+}}, %{{.+}}, %{{.+}}, %[[D_DOWN1:.+]] = moe.experts_grad
// PAD-NEXT: %[[ZEROS:.+]] = arith.constant dense<0.000000e+00> : tensor<6x16x16xf32>
// PAD-NEXT: %[[PADDED:.+]] = tensor.insert_slice %[[D_DOWN1]] into %[[ZEROS]]
// PAD-NEXT: shard.reduce_scatter %[[PADDED]]
