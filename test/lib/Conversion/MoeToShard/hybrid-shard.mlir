// RUN: moec-opt %s -moe-build-train-step="load-balancing=none z-loss-coef=0.001" -canonicalize -cse -moe-hybrid-shard="world-size=8 hybrid-shard-degree=4" | FileCheck %s
// RUN: moec-opt %s -moe-build-init-params -moe-build-train-step="load-balancing=none" -canonicalize -cse -moe-widen-weight-grads -moe-fuse-loss-grad -moe-hybrid-shard="world-size=6 hybrid-shard-degree=3" | FileCheck %s --check-prefix=PAD
// RUN: moec-opt %s -moe-build-train-step="load-balancing=none" -canonicalize -cse -moe-hybrid-shard="world-size=2 sharding-strategy=no_shard" | FileCheck %s --check-prefix=NOSHARD
// RUN: moec-opt %s -moe-build-train-step="load-balancing=none" -canonicalize -cse -moe-hybrid-shard | FileCheck %s --check-prefix=ONE
// RUN: moec-opt %s -moe-build-train-step="load-balancing=none compute-type=bf16" -canonicalize -cse -moe-widen-weight-grads -moe-fuse-loss-grad -moe-hybrid-shard="world-size=4 hybrid-shard-degree=2" | FileCheck %s --check-prefix=BF16

// One decoder layer without attention, as in build-train-step.mlir.
func.func @forward(%ids: tensor<2x8xi64> {moe.input = "input_ids"},
                   %table: tensor<64x16xf32> {moe.parameter = "model.embed_tokens.weight"},
                   %norm: tensor<16xf32> {moe.parameter = "model.layers.0.post_attention_layernorm.weight"},
                   %router: tensor<4x16xf32> {moe.parameter = "model.layers.0.mlp.gate.weight"},
                   %gate_up: tensor<4x32x16xf32> {moe.parameter = "model.layers.0.mlp.experts.gate_up_proj"},
                   %down: tensor<4x16x16xf32> {moe.parameter = "model.layers.0.mlp.experts.down_proj"},
                   %head: tensor<64x16xf32> {moe.parameter = "lm_head.weight"})
    -> (tensor<2x8x64xf32> {moe.output = "logits"}) {
  %h = moe.embedding %table[%ids] : (tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<2x8x16xf32>
  %n = moe.rms_norm %h, %norm {epsilon = 1.0e-05 : f64} : (tensor<2x8x16xf32>, tensor<16xf32>) -> tensor<2x8x16xf32>
  %l = moe.linear %n, %router : (tensor<2x8x16xf32>, tensor<4x16xf32>) -> tensor<2x8x4xf32>
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<2x8x4xf32>) -> (tensor<2x8x2xf32>, tensor<2x8x2xi64>)
  %y = moe.experts %n, %g, %e, %gate_up, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<2x8x16xf32>, tensor<2x8x2xf32>, tensor<2x8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<2x8x16xf32>
  %r = arith.addf %h, %y : tensor<2x8x16xf32>
  %o = moe.lm_head %r, %head : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
  return %o : tensor<2x8x64xf32>
}

// W = 8 as (R, H, P) = (2, 4, 1): every state is a quarter along dim 0,
// gathered over H just before its first use, and the decoder layer's
// parameters again before their first use in the backward (the embedding's
// gradient does not read it; the head is kept); gradients are
// reduce-scattered over H and all-reduced over R and P; the norm gathers the
// shards' norms over H.
// CHECK: shard.grid @mesh(shape = 2x4x1)
// The evaluation step reads the same shards; its loss is the global batch's.
// CHECK-LABEL: func.func @eval_step(
// CHECK-SAME: %[[EVAL_TABLE:[^:]+]]: tensor<16x16xf32> {moe.parameter = "model.embed_tokens.weight"}
// CHECK: shard.all_gather %[[EVAL_TABLE]] on @mesh grid_axes = [1] gather_axis = 0 : tensor<16x16xf32> -> tensor<64x16xf32>
// CHECK: moe.target_count
// CHECK: %[[EVAL_CE:.+]] = moe.lm_head_cross_entropy %{{.+}}, %{{.+}}, %{{.+}}, %{{.+}} :
// CHECK: %[[EVAL_GCE:.+]] = shard.all_reduce %[[EVAL_CE]] on @mesh grid_axes = [0, 1, 2]
// CHECK: return %[[EVAL_GCE]] : tensor<f32>
// CHECK-LABEL: func.func @train_step(
// CHECK-SAME: %[[TABLE:[^:]+]]: tensor<16x16xf32> {moe.parameter = "model.embed_tokens.weight"}
// CHECK-SAME: %[[NORM:[^:]+]]: tensor<4xf32> {moe.parameter = "model.layers.0.post_attention_layernorm.weight"}
// CHECK-SAME: %[[GATE_UP:[^:]+]]: tensor<1x32x16xf32> {moe.parameter = "model.layers.0.mlp.experts.gate_up_proj"}
// CHECK-SAME: %[[TABLE_M:[^:]+]]: tensor<16x16xf32> {moe.exp_avg = "model.embed_tokens.weight"}
// CHECK-SAME: %[[TABLE_V:[^:]+]]: tensor<16x16xf32> {moe.exp_avg_sq = "model.embed_tokens.weight"}
// CHECK-SAME: %[[IDS:[^:]+]]: tensor<2x8xi64> {moe.input = "input_ids"}
// CHECK-SAME: %[[LABELS:[^:]+]]: tensor<2x8xi64> {moe.input = "labels"}
// CHECK-SAME: -> (tensor<16x16xf32> {moe.parameter = "model.embed_tokens.weight"}
// CHECK: %[[FULL_TABLE:.+]] = shard.all_gather %[[TABLE]] on @mesh grid_axes = [1] gather_axis = 0 : tensor<16x16xf32> -> tensor<64x16xf32>
// CHECK-NEXT: %[[X:.+]] = moe.embedding %[[FULL_TABLE]][%[[IDS]]]
// CHECK-NEXT: %[[FULL_NORM:.+]] = shard.all_gather %[[NORM]] on @mesh grid_axes = [1] gather_axis = 0 : tensor<4xf32> -> tensor<16xf32>
// CHECK-NEXT: %[[NORMED:.+]] = moe.rms_norm %[[X]], %[[FULL_NORM]]

// The cross-entropy and its gradients divide by the global batch's target
// count: the rank's loss is its share of the global mean.
// CHECK: %[[COUNT:.+]] = moe.target_count %[[LABELS]] : (tensor<2x8xi64>) -> tensor<f32>
// CHECK: %[[TOTAL:.+]] = shard.all_reduce %[[COUNT]] on @mesh grid_axes = [0, 1, 2] : tensor<f32> -> tensor<f32>
// CHECK: %[[ATLEAST1:.+]] = arith.maximumf %[[TOTAL]]
// CHECK: %[[CE:.+]] = moe.lm_head_cross_entropy %{{.+}}, %{{.+}}, %[[LABELS]], %[[ATLEAST1]] : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>, tensor<f32>) -> tensor<f32>
// CHECK: %[[GCE:.+]] = shard.all_reduce %[[CE]] on @mesh grid_axes = [0, 1, 2] : tensor<f32> -> tensor<f32>
// The z-loss is the mean of the ranks' means; its gradient scale is 1e-3 / 8.
// CHECK: %[[Z:.+]] = moe.router_z_loss
// CHECK: %[[ZSUM:.+]] = shard.all_reduce %[[Z]] on @mesh grid_axes = [0, 1, 2]
// CHECK: %[[ZMEAN:.+]] = arith.mulf %[[ZSUM]], %{{.+}} : tensor<f32>
// CHECK: %[[COUNTS:.+]] = moe.expert_counts
// CHECK: %[[GCOUNTS:.+]] = shard.all_reduce %[[COUNTS]] on @mesh grid_axes = [0, 1, 2] : tensor<1x4xi64> -> tensor<1x4xi64>
// CHECK: %{{.+}}, %[[DHEAD:.+]] = moe.lm_head_cross_entropy_grad %{{.+}}, %{{.+}}, %[[LABELS]], %[[ATLEAST1]] {
// CHECK-NOT: linalg.broadcast
// CHECK: moe.router_z_loss_grad %{{.+}} {scale = 1.250000e-04 : f64}
// The decoder layer's parameters are gathered again for the backward.
// CHECK: %[[BWD_GATE_UP:.+]] = shard.all_gather %[[GATE_UP]] on @mesh grid_axes = [1] gather_axis = 0 : tensor<1x32x16xf32> -> tensor<4x32x16xf32>
// CHECK: moe.experts_grad %[[NORMED]], %{{.+}}, %{{.+}}, %[[BWD_GATE_UP]],
// CHECK: %[[BWD_NORM:.+]] = shard.all_gather %[[NORM]] on @mesh grid_axes = [1] gather_axis = 0 : tensor<4xf32> -> tensor<16xf32>
// CHECK-NEXT: moe.rms_norm_grad %[[X]], %[[BWD_NORM]],
// CHECK-NOT: shard.all_gather %[[TABLE]]

// Gradients: reduce-scatter over H, all-reduce over R and P, then the norm.
// CHECK: %[[DTABLE:.+]] = moe.embedding_grad
// CHECK: %[[RS_TABLE:.+]] = shard.reduce_scatter %[[DTABLE]] on @mesh grid_axes = [1] scatter_axis = 0 : tensor<64x16xf32> -> tensor<16x16xf32>
// CHECK: %[[G_TABLE:.+]] = shard.all_reduce %[[RS_TABLE]] on @mesh grid_axes = [0, 2] : tensor<16x16xf32> -> tensor<16x16xf32>
// CHECK: %[[RS_HEAD:.+]] = shard.reduce_scatter %[[DHEAD]] on @mesh grid_axes = [1] scatter_axis = 0 : tensor<64x16xf32> -> tensor<16x16xf32>
// CHECK: %[[G_HEAD:.+]] = shard.all_reduce %[[RS_HEAD]] on @mesh grid_axes = [0, 2]
// CHECK: %[[LOCAL_NORM:.+]] = moe.global_norm %[[G_TABLE]], {{.+}}, %[[G_HEAD]] :
// CHECK: %[[NORM1:.+]] = tensor.expand_shape %[[LOCAL_NORM]] [] output_shape [1] : tensor<f32> into tensor<1xf32>
// CHECK: %[[NORMS:.+]] = shard.all_gather %[[NORM1]] on @mesh grid_axes = [1] gather_axis = 0 : tensor<1xf32> -> tensor<4xf32>
// CHECK: %[[GNORM:.+]] = moe.global_norm %[[NORMS]] : (tensor<4xf32>) -> tensor<f32>
// CHECK: %[[NEW_TABLE:[^,]+]], {{.+}} = moe.adamw %[[TABLE]], %[[G_TABLE]], %[[TABLE_M]], %[[TABLE_V]], %{{.+}}, %{{.+}}, %[[GNORM]] {{.+}} : tensor<16x16xf32>, tensor<i64>, tensor<f32>
// CHECK: return %[[NEW_TABLE]],
// CHECK-SAME: %[[GCE]], %{{.+}}, %[[ZMEAN]], %[[GNORM]], %[[GCOUNTS]] :

// W = 6 as (2, 3, 1): no dimension of the embedding [64, 16] splits in 3,
// so dim 0 is chunked in 22 rows, the last shard padded by 2 zero rows;
// the fused loss takes the global target count as the unfused one does.
// PAD: shard.grid @mesh(shape = 2x3x1)
// PAD-LABEL: func.func @train_step(
// PAD-SAME: %[[TABLE:[^:]+]]: tensor<22x16xf32> {moe.parameter = "model.embed_tokens.weight"}
// PAD-SAME: tensor<6xf32> {moe.parameter = "model.layers.0.post_attention_layernorm.weight"}
// PAD-SAME: tensor<22x16xf32> {moe.exp_avg = "model.embed_tokens.weight"}
// PAD: %[[GATHERED:.+]] = shard.all_gather %[[TABLE]] on @mesh grid_axes = [1] gather_axis = 0 : tensor<22x16xf32> -> tensor<66x16xf32>
// PAD: %[[FULL:.+]] = tensor.extract_slice %[[GATHERED]][0, 0] [64, 16] [1, 1] : tensor<66x16xf32> to tensor<64x16xf32>
// PAD: moe.embedding %[[FULL]]
// PAD: %[[COUNT:.+]] = moe.target_count
// PAD: %[[TOTAL:.+]] = shard.all_reduce %[[COUNT]]
// PAD: %[[ATLEAST1:.+]] = arith.maximumf %[[TOTAL]]
// PAD: %[[CE:.+]], %{{.+}}, %{{.+}} = moe.lm_head_cross_entropy_with_grad %{{.+}}, %{{.+}}, %{{.+}}, %[[ATLEAST1]] {
// PAD: shard.all_reduce %[[CE]] on @mesh grid_axes = [0, 1, 2] : tensor<f32> -> tensor<f32>
// PAD: %[[DTABLE:.+]] = moe.embedding_grad
// PAD: %[[ZEROS:.+]] = arith.constant dense<0.000000e+00> : tensor<66x16xf32>
// PAD: %[[PADDED:.+]] = tensor.insert_slice %[[DTABLE]] into %[[ZEROS]][0, 0] [64, 16] [1, 1] : tensor<64x16xf32> into tensor<66x16xf32>
// PAD: shard.reduce_scatter %[[PADDED]] on @mesh grid_axes = [1] scatter_axis = 0 : tensor<66x16xf32> -> tensor<22x16xf32>
// Each rank creates only its block of every parameter (delayed_param).
// PAD-LABEL: func.func @init_params(
// PAD-SAME: -> (tensor<22x16xf32> {moe.parameter = "model.embed_tokens.weight"}, tensor<6xf32> {moe.parameter = "model.layers.0.post_attention_layernorm.weight"}
// PAD: moe.param_init %{{.+}} {global_shape = array<i64: 64, 16>, grid = @mesh, kind = #moe.param_init<normal>, name = "model.embed_tokens.weight", split_axes = array<i64: 1, -1>, std = 2.000000e-02 : f64} : (tensor<i64>) -> tensor<22x16xf32>
// PAD: moe.param_init %{{.+}} {global_shape = array<i64: 16>, grid = @mesh, kind = #moe.param_init<ones>, name = "model.layers.0.post_attention_layernorm.weight", split_axes = array<i64: 1>} : (tensor<i64>) -> tensor<6xf32>

// no_shard on 2 ranks: full states, no gathers; gradients only all-reduced;
// the local norm is the global one.
// NOSHARD: shard.grid @mesh(shape = 2x1x1)
// NOSHARD-LABEL: func.func @train_step(
// NOSHARD-SAME: tensor<64x16xf32> {moe.parameter = "model.embed_tokens.weight"}
// NOSHARD-NOT: shard.all_gather
// NOSHARD-NOT: shard.reduce_scatter
// NOSHARD: %[[G:.+]] = shard.all_reduce %{{.+}} on @mesh grid_axes = [0, 2] : tensor<64x16xf32> -> tensor<64x16xf32>
// NOSHARD: %[[NORM:.+]] = moe.global_norm %[[G]],
// NOSHARD-NOT: shard.all_gather
// NOSHARD: moe.adamw %{{.+}}, %[[G]], %{{.+}}, %{{.+}}, %{{.+}}, %{{.+}}, %[[NORM]]

// One rank: a mesh of 1x1x1 and no collective at all.
// ONE: shard.grid @mesh(shape = 1x1x1)
// ONE-NOT: shard.all
// ONE-NOT: shard.reduce_scatter
// ONE-NOT: moe.target_count

// bf16 compute: the fp32 master shards are cast, then gathered, so the
// gathers move bf16; the fused bf16 loss divides by the global target count
// (fp32) in its kernel.
// BF16-LABEL: func.func @train_step(
// BF16-SAME: %[[TABLE:[^:]+]]: tensor<32x16xf32> {moe.parameter = "model.embed_tokens.weight"}
// BF16: %[[TABLE16:.+]] = arith.truncf %[[TABLE]] : tensor<32x16xf32> to tensor<32x16xbf16>
// BF16-NEXT: %[[FULL_TABLE:.+]] = shard.all_gather %[[TABLE16]] on @mesh grid_axes = [1] gather_axis = 0 : tensor<32x16xbf16> -> tensor<64x16xbf16>
// BF16-NEXT: moe.embedding %[[FULL_TABLE]]
// BF16: %[[TOTAL:.+]] = arith.maximumf
// BF16: moe.lm_head_cross_entropy_with_grad %{{.+}}, %{{.+}}, %{{.+}}, %[[TOTAL]] {{.+}} : (tensor<2x8x16xbf16>, tensor<64x16xbf16>, tensor<2x8xi64>, tensor<f32>) -> (tensor<f32>, tensor<2x8x16xbf16>, tensor<64x16xf32>)
// BF16-NOT: linalg.broadcast

