// RUN: moec-opt %s --moe-compile-pipeline="micro-batch-size=2 seq-length=8" | FileCheck %s
// RUN: moec-opt %s --moe-compile-pipeline="micro-batch-size=2 seq-length=8 bf16=true" | FileCheck %s --check-prefix=BF16
// RUN: moec-opt %s --moe-compile-pipeline="micro-batch-size=2 seq-length=8 bf16=true keep-param-copies=false recompute-experts=true" | FileCheck %s --check-prefix=NO-COPIES
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=4 seq-length=16 moe-load-balancing=sinkhorn return-gradients=true" | FileCheck %s --check-prefix=TRAIN
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=2 seq-length=8 world-size=4 expert-parallel-degree=2 hybrid-shard-degree=2 moe-all-to-all-dispatcher=false" | FileCheck %s --check-prefix=PARTITIONED
// RUN: moec-opt %s --moe-train-pipeline="micro-batch-size=2 seq-length=8 world-size=4 expert-parallel-degree=2 recompute-experts=true" | FileCheck %s --check-prefix=RECOMPUTE

// Tests that moe-compile-pipeline runs the passes of `moec compile` for the
// job in its options: the forward at the job's shapes
// (moe-specialize-shapes), a step with the loss and its gradients in one op
// (moe-fuse-loss-grad), experts that keep gate/up for the backward
// (moe-save-expert-activations), element-wise trees fused
// (moe-fuse-elementwise), an arena plan (moe-plan-memory) and, printed last,
// @init_params (moe-build-init-params).
// CHECK-LABEL: func.func @forward(
// CHECK-SAME: tensor<2x8xi64> {moe.input = "input_ids"}
// CHECK-LABEL: func.func @train_step(
// CHECK-SAME: attributes {moe.arena_bytes = {{[0-9]+}} : i64
// CHECK: moe.router {{.*}}load_balancing = #moe.load_balancing<aux_loss>
// CHECK: %{{.+}}, %[[SAVED:.+]] = moe.experts {{.*}}moe.arena_offsets = array<i64: {{[0-9]+}}, {{[0-9]+}}>
// CHECK: moe.lm_head_cross_entropy_with_grad
// CHECK: moe.fusion
// CHECK: moe.experts_grad {{.*}}, %[[SAVED]] {
// CHECK: moe.adamw
// CHECK-LABEL: func.func @init_params(
// CHECK: moe.param_init
// CHECK-NOT: moe.persistent_copy

// Tests that bf16 compute keeps the bf16 parameter copies across steps
// (moe-keep-param-copies), and that the job turns that and the saved
// expert activations off.
// BF16-LABEL: func.func @train_step(
// BF16: arith.truncf %{{.+}} {moe.persistent_copy} : tensor<64x16xf32> to tensor<64x16xbf16>
// NO-COPIES-LABEL: func.func @train_step(
// NO-COPIES-NOT: moe.persistent_copy
// NO-COPIES: {{^ *}}%{{[^,]+}} = moe.experts %
// NO-COPIES-NOT: moe.persistent_copy

// Tests that moe-train-pipeline stops before the compile-only passes: no
// arena plan; the job's shapes and routing, the gradients returned.
// TRAIN-LABEL: func.func @forward(
// TRAIN-SAME: tensor<4x16xi64> {moe.input = "input_ids"}
// TRAIN-LABEL: func.func @train_step(
// TRAIN-SAME: {moe.gradient = "lm_head.weight"}
// TRAIN-NOT: moe.arena
// TRAIN: moe.router {{.*}}load_balancing = #moe.load_balancing<sinkhorn>
// TRAIN-NOT: moe.arena

func.func @forward(%ids: tensor<?x?xi64> {moe.input = "input_ids"},
                   %table: tensor<64x16xf32> {moe.parameter = "embed.weight"},
                   %norm: tensor<16xf32> {moe.parameter = "norm.weight"},
                   %router: tensor<4x16xf32> {moe.parameter = "gate.weight"},
                   %gate_up: tensor<4x32x16xf32> {moe.parameter = "experts.gate_up_proj"},
                   %down: tensor<4x16x16xf32> {moe.parameter = "experts.down_proj"},
                   %head: tensor<64x16xf32> {moe.parameter = "lm_head.weight"})
    -> (tensor<?x?x64xf32> {moe.output = "logits"}) {
  %h = moe.embedding %table[%ids] : (tensor<64x16xf32>, tensor<?x?xi64>) -> tensor<?x?x16xf32>
  %n = moe.rms_norm %h, %norm {epsilon = 1.0e-05 : f64} : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  %l = moe.linear %n, %router : (tensor<?x?x16xf32>, tensor<4x16xf32>) -> tensor<?x?x4xf32>
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<?x?x4xf32>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi64>)
  %y = moe.experts %n, %g, %e, %gate_up, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<?x?x16xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<?x?x16xf32>
  %r = arith.addf %h, %y : tensor<?x?x16xf32>
  %o = moe.lm_head %r, %head : (tensor<?x?x16xf32>, tensor<64x16xf32>) -> tensor<?x?x64xf32>
  return %o : tensor<?x?x64xf32>
}

// Tests that moe-train-pipeline partitions a job with a parallel layout
// (buildPartitionPipeline): the mesh, each rank's shards of @init_params,
// the job's dispatcher, and the experts' activations saved after
// moe-expert-parallel split them (unless recompute_experts).
// PARTITIONED: shard.grid @mesh(shape = 1x2x2)
// PARTITIONED-LABEL: func.func @train_step(
// PARTITIONED: shard.all_gather
// PARTITIONED: moe.dispatch {{.*}}dispatcher = #moe.dispatcher<all_gather>
// PARTITIONED: %{{.+}}, %[[SAVED:.+]] = moe.experts %rows
// PARTITIONED: moe.experts_grad {{.*}}, %[[SAVED]] {
// PARTITIONED: shard.reduce_scatter
// PARTITIONED-LABEL: func.func @init_params(
// PARTITIONED: moe.param_init {{.*}}grid = @mesh
// RECOMPUTE-LABEL: func.func @train_step(
// RECOMPUTE: moe.dispatch {{.*}}dispatcher = #moe.dispatcher<all_to_all>
// RECOMPUTE: %{{.+}} = moe.experts %rows
// RECOMPUTE-NOT: %saved
// RECOMPUTE: moe.experts_grad
