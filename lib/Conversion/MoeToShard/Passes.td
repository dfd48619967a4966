//===- Passes.td - Partitioning passes --------------------*- tablegen -*-===//
//
// The passes that turn the unpartitioned training step into one SPMD program
// per rank on the (R, H, P) mesh of docs/partitioning.md.
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
      tokens, the input and gate gradients combined back);
    - with `global-token-shuffle`, the router's and the experts' input is
      moe.token_shuffle'd across the expert group (seeded by `seed` and the
      step) and the experts' output shuffled back, in the backward too;
    - data parallelism over all W ranks: the load-balancing loss is computed
      from moe.load_balancing_stats all-reduced over the mesh, the same on
      every rank, and its gradient is each rank's share (summed over the
      ranks with the other gradients). Sinkhorn and balanced routing stay
      per rank on the rank's tokens.

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
    Option<"shardingStrategy", "sharding-strategy", "std::string",
           "\"hybrid_shard\"", "full_shard, hybrid_shard or no_shard">,
    Option<"dispatcher", "dispatcher", "std::string", "\"all_to_all\"",
           "moe_all_to_all_dispatcher: all_to_all, or all_gather for false">,
    Option<"globalTokenShuffle", "global-token-shuffle", "bool", "false",
           "permute tokens across the expert group before routing">,
    Option<"seed", "seed", "int64_t", "0",
           "random_seed of the token shuffle">
  ];
  let statistics = [
    Statistic<"numDispatches", "num-dispatches",
              "moe.dispatch ops inserted">,
    Statistic<"numExpertParams", "num-expert-params",
              "expert parameters made local">
  ];
}

#endif // MOEC_CONVERSION_MOETOSHARD_PASSES_TD
