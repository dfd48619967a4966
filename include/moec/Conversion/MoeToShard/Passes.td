//===- Passes.td - Partitioning of the training step -------*- tablegen -*-===//
//
// The passes that turn the built @train_step into one SPMD program per rank
// of the (R, H, P) mesh (DESIGN.md §2), with every collective explicit: the
// static ones as upstream `shard` ops on a `shard.grid`, the routed ones as
// moe ops. They need lib/Plan's Mesh, so they live here and not in the
// dialect.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_CONVERSION_MOETOSHARD_PASSES_TD
#define MOEC_CONVERSION_MOETOSHARD_PASSES_TD

include "mlir/Pass/PassBase.td"

def ExpertParallel : Pass<"moe-expert-parallel", "::mlir::ModuleOp"> {
  let summary = "splits the experts over the expert-parallel ranks";
  let description = [{
    Partitions `@train_step` and `@eval_step` (built by moe-build-train-step)
    for expert parallelism on the mesh of `world-size`,
    `expert-parallel-degree` P and `hybrid-shard-degree` H, which it adds as
    `shard.grid @mesh(shape = RxHxP)` (axes R, H, P; P fastest):

    - every expert weight (and its AdamW moments) becomes the rank's
      `[E/P, ...]` slice, experts `p·E/P .. (p+1)·E/P - 1` of group rank p,
      and its argument is marked `moe.expert_local` (the grid axes it is
      split over), so that moe-hybrid-shard reduces its gradient only over
      the ranks that hold the same experts (never over P);
    - each `moe.experts` becomes moe.dispatch → moe.experts on the local
      experts (one choice per received row) → moe.combine, and each
      `moe.experts_grad` its mirror (the output gradient dispatched like the
      tokens, the input and gate gradients combined back); activations a
      moe.experts saves (moe-save-expert-activations) are kept for the
      received rows;
    - with `global-token-shuffle`, the router's and the experts' input is
      moe.token_shuffle'd across the expert group (seeded by `seed` and the
      step) and the experts' output shuffled back, in the backward too;
    - data parallelism over all W ranks: the load-balancing loss is computed
      from moe.load_balancing_stats all-reduced over the mesh, the same on
      every rank, and its gradient is each rank's share (summed over the
      ranks with the other gradients). Sinkhorn and balanced routing stay
      per rank on the rank's tokens. With P = 1 this is all the pass does:
      every rank keeps every expert.

    A collective whose group is one rank is left out (with P = 1 nothing is
    dispatched), unless `keep-one-rank-collectives`: then the pass rewrites
    the step as for any P and W, every collective on its (possibly one-rank)
    group. That program computes what the unpartitioned one does and runs
    each collective through the communicator, which is how the collective
    path (NCCL) is verified on one GPU (docs/partitioning.md).

    Gradient reduction across ranks, the cross-entropy's global mean, the
    expert counts' sum, the clipping norm and parameter sharding are
    moe-hybrid-shard's. Invalid layouts fail with the rule and
    the numbers (lib/Plan's resolveMesh).
  }];
  let dependentDialects = [
    "::mlir::moe::MoeDialect",
    "::mlir::shard::ShardDialect",
    "::mlir::tensor::TensorDialect"
  ];
  let options = [
    Option<"worldSize", "world-size", "int64_t", "1",
           "number of ranks W">,
    Option<"expertParallelDegree", "expert-parallel-degree", "int64_t", "1",
           "expert_parallel_degree P: ranks that split the experts">,
    Option<"hybridShardDegree", "hybrid-shard-degree", "int64_t", "0",
           "hybrid_shard_degree (H); 0 means automatic">,
    Option<"shardingStrategy", "sharding-strategy", "::moec::ShardingStrategy",
           "::moec::ShardingStrategy::HybridShard",
           "sharding_strategy: full_shard, hybrid_shard or no_shard",
           "::moec::ShardingStrategyNames{}">,
    Option<"dispatcher", "dispatcher", "::mlir::moe::Dispatcher",
           "::mlir::moe::Dispatcher::all_to_all",
           "moe_all_to_all_dispatcher (a moe::Dispatcher name): all_to_all, "
           "or all_gather for false",
           "::moec::DispatcherNames{}">,
    Option<"globalTokenShuffle", "global-token-shuffle", "bool", "false",
           "permute tokens across the expert group before routing">,
    Option<"seed", "seed", "int64_t", "0",
           "random_seed of the token shuffle">,
    Option<"keepOneRankCollectives", "keep-one-rank-collectives", "bool",
           "false",
           "keep collectives whose group is one rank: with P = 1 the experts "
           "are still dispatched and combined (and shuffled) over the "
           "one-rank expert group, and the statistics all-reduced at W = 1; "
           "for verifying the collective path on one GPU">
  ];
  let statistics = [
    Statistic<"numDispatches", "num-dispatches",
              "moe.dispatch ops inserted">,
    Statistic<"numExpertParams", "num-expert-params",
              "expert parameters made local">
  ];
}

def HybridShard : Pass<"moe-hybrid-shard", "::mlir::ModuleOp"> {
  let summary = "shards parameters, gradients and AdamW moments over the shard groups";
  let description = [{
    Rewrites the built `@train_step` (moe-build-train-step, then canonicalize
    and cse; after moe-expert-parallel, before the fusion and memory passes,
    which then see the per-rank program) into the program every rank of the
    (R, H, P) mesh runs, with the mesh as `shard.grid @mesh` (axes R, H, P):

    - Each parameter and its two AdamW moments become this rank's shard, with
      the layout of lib/Plan's Placement: one dimension chunked along H in
      chunks of ceil(n / H), the last chunks padded with zeros so that every
      rank's shard has the same static shape. Arguments keep their order and
      names, with the shard's type.
    - Just before its first use, `shard.all_gather` over H
      (`grid_axes = [1]`) restores the parameter (`tensor.extract_slice`
      drops the padding); under bf16 compute the shard is cast first, so
      the gather moves bf16. A decoder layer's parameters (`layers.N.` in
      the name) are gathered again before their first use in the backward
      (from the cross-entropy's gradient on), as the memory plan frees them
      in between; the head's are kept, the embedding's gradient does not
      read it.
    - Each gradient is padded, `shard.reduce_scatter`ed over H, then
      `shard.all_reduce`d over the ranks that hold the same shard: R and P for
      dense parameters (`[0, 2]`), only R for expert parameters that
      moe-expert-parallel split (marked `moe.expert_local`, `[0]`). AdamW
      then updates the shard; zero padding stays zero.
    - The clipping norm counts every shard once: the local norms of the dense
      shards are all-gathered over H, those of the expert shards over H and
      P, and their norm is the global one.
    - The loss is the global batch's: the cross-entropy and its gradients
      divide the rank's sum by the global batch's target count
      (`moe.target_count`, all-reduced, as the ops' `target_count`), and
      the ranks' shares are summed; the router z-loss is the mean
      of the ranks' and its gradient scale is divided by W. Expert slot
      counts are summed over all ranks.

    - `@init_params` (delayed_param) creates only the rank's block of each
      parameter: its `moe.param_init` gets the shard's type, the global
      shape, and `grid`/`split_axes` (the expert axis for the experts'
      dimension, the shard axis for the chunked one), so the gathered global
      parameters are the same bits for every (W, P, H).

    - `@eval_step` takes the same shards, gathers them before use, and its
      cross-entropy divides by the global count as the training step's.

    Run it after moe-expert-parallel and moe-specialize-shapes (the shards
    need static shapes) and before the
    compile-only passes (moe-fuse-elementwise, moe-keep-param-copies,
    moe-plan-memory), which then see the per-rank program. It takes the
    cross-entropy in either form (moe-fuse-loss-grad or not).

    Collectives whose group is one rank are left out, unless
    `keep-one-rank-collectives`: then every collective stays, on its
    one-rank group, and with H = 1 each parameter is held as one chunk of
    the dimension it would be chunked along (gathered and reduce-scattered
    over the one-rank shard group). Invalid layouts are
    errors that name the rule and the numbers, as lib/Plan's resolveMesh
    words them.
  }];
  let dependentDialects = [
    "::mlir::moe::MoeDialect",
    "::mlir::arith::ArithDialect",
    "::mlir::linalg::LinalgDialect",
    "::mlir::shard::ShardDialect",
    "::mlir::tensor::TensorDialect"
  ];
  let options = [
    Option<"worldSize", "world-size", "int64_t", "1", "number of ranks (W)">,
    Option<"expertParallelDegree", "expert-parallel-degree", "int64_t", "1",
           "expert_parallel_degree (P): the mesh's expert axis; the experts "
           "themselves are moe-expert-parallel's">,
    Option<"hybridShardDegree", "hybrid-shard-degree", "int64_t", "0",
           "hybrid_shard_degree (H); 0 means automatic">,
    Option<"shardingStrategy", "sharding-strategy", "::moec::ShardingStrategy",
           "::moec::ShardingStrategy::HybridShard",
           "sharding_strategy: full_shard, hybrid_shard or no_shard",
           "::moec::ShardingStrategyNames{}">,
    Option<"keepOneRankCollectives", "keep-one-rank-collectives", "bool",
           "false",
           "keep collectives whose group is one rank: with H = 1 every "
           "parameter is one chunk, gathered and reduce-scattered over the "
           "one-rank shard group, and the reductions of W = 1 are kept; for "
           "verifying the collective path on one GPU">
  ];
  let statistics = [
    Statistic<"numShardedParameters", "num-sharded-parameters",
              "parameters sharded over H">
  ];
}

def PrefetchCollectives
    : Pass<"moe-prefetch-collectives", "::mlir::func::FuncOp"> {
  let summary = "issues parameter gathers a layer ahead and gradient "
                "reductions where the gradient is produced";
  let description = [{
    Reorders the collectives of a step that moe-hybrid-shard partitioned, so
    that the collective stream works while the compute stream runs other
    layers (docs/partitioning.md, "Overlap"); only the order changes, every
    rank computes the same values.

    Parameter all-gathers, which moe-hybrid-shard places just before a
    parameter's first use (in the forward, and again in the backward), move
    earlier:

    - in the forward, the gathers of decoder layer N move to just before the
      first op that reads a parameter of layer N - `layers`;
    - in the backward, those of layer N move to just before the first
      backward op that reads a parameter of layer N + `layers`.

    The first `layers` layers' forward gathers (the last `layers` layers'
    backward gathers) have no layer that far ahead: they move to the start
    of the first (last) layer, so that a layer's gathers are issued together
    and never queue behind the next layer's on the collective stream. A
    gather moves with the arith.truncf of the shard before it (bf16) and the
    tensor.extract_slice of the padding after it, keeps its order among the
    gathers moved to the same place, and never moves above the definition of
    what it reads. Layers are the `layers.N.` parameters an op reads, as
    moe-checkpoint-activations finds them. A gathered value is alive from its
    gather to its last reader, so moe-plan-memory holds up to `layers` more
    layers' gathered parameters. The embedding's, the final norm's and the
    head's gathers stay where they are; `layers=0` leaves the gathers alone.

    Each gradient's reduction (the padding's tensor.insert_slice,
    shard.reduce_scatter, shard.all_reduce: what a moe.adamw reads), which
    moe-hybrid-shard places where the clipping norm is taken, moves to just
    after the op that produces the gradient: the whole local gradient is
    dead once scattered, and a layer's gradients are reduced before the
    layers below it compute theirs.
  }];
  let dependentDialects = ["::mlir::shard::ShardDialect"];
  let options = [
    Option<"layers", "layers", "int64_t", "1",
           "how many decoder layers ahead of its reader a gather is issued "
           "(0: leaves the step as it is)">
  ];
  let statistics = [
    Statistic<"numMovedGathers", "num-moved-gathers",
              "parameter all-gathers moved ahead of their layer">,
    Statistic<"numMovedReductions", "num-moved-reductions",
              "gradient reductions moved up to their gradient">
  ];
}

#endif // MOEC_CONVERSION_MOETOSHARD_PASSES_TD
