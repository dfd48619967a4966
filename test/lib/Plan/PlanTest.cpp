//===- PlanTest.cpp - Tests of the mesh, placement and memory model -------===//
//
// The mesh rules of DESIGN.md §2 on every valid small mesh (W = 1, 2, 4, 8,
// 16): coordinates, groups that partition the world, shards that tile every
// parameter exactly once per replica, and the exact per-rank counts of
// Mixtral 8x7B.
//
//===----------------------------------------------------------------------===//

#include "moec/Plan/Plan.h"

#include "llvm/Support/Error.h"

#include <gtest/gtest.h>

#include <set>

using namespace moec;
using namespace moec::plan;

namespace {

ModelDescription preset(llvm::StringRef name) {
  std::optional<ModelConfig> config = getPreset(name);
  EXPECT_TRUE(config.has_value()) << name.str();
  return ModelDescription{name.str(), *config, mixtralParameters(*config)};
}

Mesh mesh(int64_t w, int64_t p, int64_t h, int64_t experts = 8,
          ShardingStrategy strategy = ShardingStrategy::HybridShard,
          int64_t gpusPerNode = 8) {
  llvm::Expected<Mesh> m =
      resolveMesh({w, p, h, strategy, gpusPerNode}, experts);
  if (!m) {
    ADD_FAILURE() << llvm::toString(m.takeError());
    return *resolveMesh({1, 1, 0}, 1);
  }
  return *m;
}

/// A job as `moec plan` plans it by default (one sequence of 4096 tokens
/// per rank, bf16 compute) on a (W, P, H) mesh.
TrainingJob planJob(int64_t w, int64_t p, int64_t h) {
  TrainingJob job;
  job.microBatchSize = 1;
  job.seqLength = 4096;
  job.bf16 = true;
  job.worldSize = w;
  job.expertParallelDegree = p;
  job.hybridShardDegree = h;
  return job;
}

std::string meshError(ParallelConfig config, int64_t experts = 8) {
  llvm::Expected<Mesh> m = resolveMesh(config, experts);
  if (m)
    return "no error";
  return llvm::toString(m.takeError());
}

/// Every (P, H) valid for W with 8 experts.
std::vector<std::pair<int64_t, int64_t>> validMeshes(int64_t w) {
  std::vector<std::pair<int64_t, int64_t>> result;
  for (int64_t p = 1; p <= 8; ++p)
    if (w % p == 0 && 8 % p == 0)
      for (int64_t h = 1; h <= w / p; ++h)
        if ((w / p) % h == 0)
          result.push_back({p, h});
  return result;
}

} // namespace

TEST(Mesh, CoordinatesFollowTheExpertAxisFastest) {
  for (int64_t w : {1, 2, 4, 8, 16}) {
    for (auto [p, h] : validMeshes(w)) {
      Mesh m = mesh(w, p, h);
      EXPECT_EQ(m.worldSize(), w);
      EXPECT_EQ(m.replicas(), w / (p * h));
      for (int64_t r = 0; r < w; ++r) {
        MeshCoord c = m.coord(r);
        EXPECT_EQ(c.p, r % p);
        EXPECT_EQ(c.h, (r / p) % h);
        EXPECT_EQ(c.q, r / (p * h));
        EXPECT_EQ(m.rank(c), r);
      }
    }
  }
}

TEST(Mesh, GroupsPartitionTheWorld) {
  for (int64_t w : {1, 2, 4, 8, 16}) {
    for (auto [p, h] : validMeshes(w)) {
      Mesh m = mesh(w, p, h);
      for (GroupKind kind :
           {GroupKind::Expert, GroupKind::Shard, GroupKind::Replica,
            GroupKind::DenseReplica, GroupKind::World}) {
        std::vector<ProcessGroup> groups = m.groups(kind);
        std::set<int64_t> seen;
        for (const ProcessGroup &g : groups) {
          EXPECT_EQ(int64_t(g.ranks.size()), m.groupSize(kind));
          for (int64_t r : g.ranks) {
            EXPECT_TRUE(seen.insert(r).second) << "rank " << r << " twice";
            // Members differ only along the group's axes.
            MeshCoord a = m.coord(g.ranks.front()), b = m.coord(r);
            switch (kind) {
            case GroupKind::Expert:
              EXPECT_TRUE(a.q == b.q && a.h == b.h);
              break;
            case GroupKind::Shard:
              EXPECT_TRUE(a.q == b.q && a.p == b.p);
              break;
            case GroupKind::Replica:
              EXPECT_TRUE(a.h == b.h && a.p == b.p);
              break;
            case GroupKind::DenseReplica:
              EXPECT_EQ(a.h, b.h);
              break;
            case GroupKind::World: // one group of every rank
              break;
            }
          }
        }
        EXPECT_EQ(int64_t(seen.size()), w);
      }
    }
  }
}

TEST(Mesh, NodeBoundaries) {
  // W = 16, P = 2, H = 8 on two nodes of 8: expert groups stay inside a
  // node, shard groups (stride 2, 8 ranks) cross.
  Mesh m = mesh(16, 2, 8);
  EXPECT_FALSE(m.anyGroupCrossesNodes(GroupKind::Expert));
  EXPECT_TRUE(m.anyGroupCrossesNodes(GroupKind::Shard));
  EXPECT_EQ(m.groupOf(GroupKind::Shard, 3).ranks,
            (std::vector<int64_t>{1, 3, 5, 7, 9, 11, 13, 15}));
  // W = 16, P = 2, H = 4: shard groups fit a node, replica groups cross.
  Mesh hybrid = mesh(16, 2, 4);
  EXPECT_FALSE(hybrid.anyGroupCrossesNodes(GroupKind::Shard));
  EXPECT_TRUE(hybrid.anyGroupCrossesNodes(GroupKind::Replica));
  EXPECT_EQ(hybrid.groupOf(GroupKind::Replica, 5).ranks,
            (std::vector<int64_t>{5, 13}));
  // With 4 GPUs per node an expert group of 8 crosses.
  Mesh wide = mesh(16, 8, 0, 8, ShardingStrategy::HybridShard, 4);
  EXPECT_TRUE(wide.anyGroupCrossesNodes(GroupKind::Expert));
}

TEST(Mesh, AutomaticShardDegree) {
  // hybrid_shard: one node's GPUs, capped by W/P.
  EXPECT_EQ(mesh(16, 2, 0).shardDegree(), 8);
  EXPECT_EQ(mesh(32, 1, 0).shardDegree(), 8);
  EXPECT_EQ(mesh(4, 2, 0).shardDegree(), 2);
  // full_shard: all W/P; no_shard: 1.
  EXPECT_EQ(mesh(32, 2, 0, 8, ShardingStrategy::FullShard).shardDegree(), 16);
  EXPECT_EQ(mesh(32, 2, 0, 8, ShardingStrategy::NoShard).shardDegree(), 1);
  EXPECT_TRUE(mesh(16, 2, 0).automaticShardDegree());
  EXPECT_FALSE(mesh(16, 2, 8).automaticShardDegree());
}

TEST(Mesh, EveryRuleNamesItsNumbers) {
  EXPECT_EQ(meshError({16, 3, 0}),
            "expert_parallel_degree 3 does not divide num_local_experts 8");
  EXPECT_EQ(meshError({12, 8, 0}),
            "expert_parallel_degree 8 does not divide world_size 12");
  EXPECT_EQ(meshError({16, 2, 16}),
            "hybrid_shard_degree 16 times expert_parallel_degree 2 is 32, "
            "more than world_size 16");
  EXPECT_EQ(meshError({16, 2, 3}), "hybrid_shard_degree 3 does not divide "
                                   "world_size / expert_parallel_degree = 8");
  EXPECT_EQ(meshError({24, 2, 0}),
            "automatic hybrid_shard_degree 8 (one node's gpus_per_node 8) "
            "does not divide world_size / expert_parallel_degree = 12");
  EXPECT_EQ(meshError({16, 2, 4, ShardingStrategy::FullShard}),
            "sharding_strategy full_shard shards over all world_size / "
            "expert_parallel_degree = 8 ranks, but hybrid_shard_degree is 4");
  EXPECT_EQ(meshError({16, 2, 4, ShardingStrategy::NoShard}),
            "sharding_strategy no_shard needs hybrid_shard_degree 1 (or 0), "
            "not 4");
  EXPECT_EQ(meshError({16, 2, -1}),
            "hybrid_shard_degree -1 must not be negative");
  EXPECT_EQ(meshError({0, 1, 0}), "world_size 0 must be at least 1");
  EXPECT_EQ(meshError({8, 0, 0}), "expert_parallel_degree 0 must be at least 1");
  EXPECT_EQ(meshError({8, 1, 0, ShardingStrategy::HybridShard, 0}),
            "gpus_per_node 0 must be at least 1");
}

TEST(Placement, ShardsTileEveryParameterOncePerReplica) {
  ModelDescription model = preset("tiny-e8");
  for (int64_t w : {1, 2, 4, 8, 16}) {
    for (auto [p, h] : validMeshes(w)) {
      Mesh m = mesh(w, p, h);
      ModelPlacement placement(model, m);
      for (size_t i = 0; i < model.parameters.size(); ++i) {
        const Parameter &param = model.parameters[i];
        const int64_t n = param.numElements();
        // Mark every element each replica's ranks hold; dense parameters are
        // held once per (q, p), expert parameters once per q.
        for (int64_t q = 0; q < m.replicas(); ++q) {
          const int64_t copies =
              param.kind == ParameterKind::Expert ? 1 : m.expertParallelDegree();
          std::vector<int64_t> count(n, 0);
          for (int64_t hh = 0; hh < m.shardDegree(); ++hh) {
            for (int64_t pp = 0; pp < m.expertParallelDegree(); ++pp) {
              Shard s = placement.shard(i, m.rank({q, hh, pp}));
              ASSERT_EQ(s.shape.size(), param.shape.size());
              // Walk the shard's elements in row-major order.
              std::vector<int64_t> idx(s.shape.size(), 0);
              for (int64_t e = 0; e < s.numElements(); ++e) {
                int64_t flat = 0;
                for (size_t d = 0; d < idx.size(); ++d)
                  flat = flat * param.shape[d] + s.offsets[d] + idx[d];
                ASSERT_LT(flat, n);
                ++count[flat];
                for (int64_t d = int64_t(idx.size()) - 1; d >= 0; --d) {
                  if (++idx[d] < s.shape[d])
                    break;
                  idx[d] = 0;
                }
              }
            }
          }
          for (int64_t c : count)
            ASSERT_EQ(c, copies) << param.name << " W=" << w << " P=" << p
                                 << " H=" << h;
        }
      }
    }
  }
}

TEST(Placement, ExpertsSplitAlongPThenRowsAlongH) {
  ModelDescription model = preset("tiny-e8");
  Mesh m = mesh(16, 4, 2);
  ModelPlacement placement(model, m);
  // model.layers.0.mlp.experts.gate_up_proj [8, 128, 32] is parameter 6.
  ASSERT_EQ(model.parameters[6].name, "model.layers.0.mlp.experts.gate_up_proj");
  const ParameterLayout &layout = placement.layouts()[6];
  EXPECT_EQ(layout.expertDim, 0);
  EXPECT_EQ(layout.shardDim, 1);
  EXPECT_EQ(layout.localShape, (llvm::SmallVector<int64_t, 3>{2, 128, 32}));
  // Rank 7: p = 3, h = 1, q = 0: experts 6-7, rows 64-127.
  Shard s = placement.shard(6, 7);
  EXPECT_EQ(s.offsets, (llvm::SmallVector<int64_t, 3>{6, 64, 0}));
  EXPECT_EQ(s.shape, (llvm::SmallVector<int64_t, 3>{2, 64, 32}));
  ExpertRange experts = expertsOf(m, 8, 7);
  EXPECT_EQ(experts.first, 6);
  EXPECT_EQ(experts.count, 2);
  // Rank 15 (q = 1) holds the same shard: replicated along R.
  EXPECT_EQ(placement.shard(6, 15).offsets, s.offsets);
}

TEST(Placement, UnevenDimensionsChunkLikeTorch) {
  Mesh m = mesh(16, 1, 16);
  // [5, 3]: neither dimension divides by 16, so dim 0 is chunked in ones.
  Parameter odd{"odd", {5, 3}, ParameterKind::Dense, 0};
  ParameterLayout layout = layoutParameter(odd, m);
  EXPECT_EQ(layout.shardDim, 0);
  EXPECT_EQ(shardOf(odd, layout, m, 4).shape[0], 1);
  EXPECT_EQ(shardOf(odd, layout, m, 5).shape[0], 0);
  EXPECT_EQ(shardOf(odd, layout, m, 5).offsets[0], 5);
  // The router gate [8, 32] skips dim 0 (8 rows over 16) for dim 1.
  Parameter gate{"gate", {8, 32}, ParameterKind::Dense, 0};
  EXPECT_EQ(layoutParameter(gate, m).shardDim, 1);
  // H = 3 over [10]: chunks 4, 4, 2.
  Mesh three = mesh(3, 1, 3, 8, ShardingStrategy::FullShard, 8);
  Parameter ten{"ten", {10}, ParameterKind::Dense, 0};
  ParameterLayout l3 = layoutParameter(ten, three);
  EXPECT_EQ(shardOf(ten, l3, three, 0).shape[0], 4);
  EXPECT_EQ(shardOf(ten, l3, three, 2).shape[0], 2);
  EXPECT_EQ(shardOf(ten, l3, three, 2).offsets[0], 8);
}

TEST(Placement, Mixtral8x7bCountsPerRank) {
  ModelDescription model = preset("mixtral-8x7b");
  EXPECT_EQ(model.numParameters(), 46702792704);
  EXPECT_EQ(model.numParameters(ParameterKind::Expert), 45097156608);
  EXPECT_EQ(model.numParameters(ParameterKind::Embedding), 131072000);
  EXPECT_EQ(model.numActiveParameters(), 12748853248);
  // The blog's cluster: W = 16, P = 2, H = 8.
  Mesh blog = mesh(16, 2, 8);
  ModelPlacement onBlog(model, blog);
  for (int64_t r = 0; r < 16; ++r) {
    EXPECT_EQ(onBlog.shardElements(r), 3019276800);
    EXPECT_EQ(onBlog.shardElements(r, ParameterKind::Expert), 2818572288);
  }
  // 8 H200s, P = 2, H = 4 (full_shard) and P = 8, H = 1.
  ModelPlacement onH200(model, mesh(8, 2, 4));
  EXPECT_EQ(onH200.shardElements(5), 6038553600);
  ModelPlacement wide(model, mesh(8, 8, 1));
  EXPECT_EQ(wide.shardElements(3), 1605636096 + 5637144576);
}

TEST(Plan, PersistentBytesAreEighteenPerShardElement) {
  ModelDescription model = preset("mixtral-8x7b");
  GpuSpec gpu = *getGpu("a100-80gb");
  TrainingJob training = planJob(16, 2, 8);
  training.activationCheckpointing = ActivationCheckpointing::Full;
  llvm::Expected<TrainingPlan> plan =
      makePlan(model, training, 8, gpu, Efficiency());
  ASSERT_TRUE(bool(plan)) << llvm::toString(plan.takeError());
  const MemoryBreakdown &mem = plan->peakMemory();
  EXPECT_EQ(mem.computeParams, 2 * 3019276800);
  EXPECT_EQ(mem.masterParams, 4 * 3019276800);
  EXPECT_EQ(mem.gradients, 4 * 3019276800);
  EXPECT_EQ(mem.optimizerStates, 8 * 3019276800);
  // Two decoder layers gathered: (41,943,040 + 8,192 + 32,768 dense +
  // 4 experts x 176,160,768) x 2 bytes each.
  EXPECT_EQ(mem.gatheredParams, 2 * 2 * int64_t(746627072));
  EXPECT_TRUE(plan->fits);
  // fp32: no compute copy, 16 bytes per element.
  training.bf16 = false;
  llvm::Expected<TrainingPlan> fp32 =
      makePlan(model, training, 8, gpu, Efficiency());
  ASSERT_TRUE(bool(fp32));
  EXPECT_EQ(fp32->peakMemory().persistent(), 16 * int64_t(3019276800));
}

TEST(Plan, JsonConfigMatchesPreset) {
  llvm::Expected<ModelConfig> parsed = parseMixtralConfigJson(R"({
    "model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 2,
    "num_attention_heads": 32, "num_key_value_heads": 8,
    "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": null,
    "tie_word_embeddings": false})");
  ASSERT_TRUE(bool(parsed)) << llvm::toString(parsed.takeError());
  std::optional<ModelConfig> preset = getPreset("mixtral-8x7b-2l");
  EXPECT_EQ(parsed->numParameters, preset->numParameters);
  EXPECT_EQ(parsed->numParameters, 3164688384);
  EXPECT_EQ(parsed->numExpertParameters, preset->numExpertParameters);
  llvm::Expected<ModelConfig> bad =
      parseMixtralConfigJson(R"({"num_local_experts": 2, "num_experts_per_tok": 3})");
  ASSERT_FALSE(bool(bad));
  EXPECT_EQ(llvm::toString(bad.takeError()),
            "num_experts_per_tok 3 exceeds num_local_experts 2");
}

TEST(Plan, DesignBenchmarkFlops) {
  // DESIGN.md §5: mixtral-8x7b-2l, seq 2048, micro-batch 4: 46.0 TFLOP.
  ModelDescription model = preset("mixtral-8x7b-2l");
  TrainingJob training = planJob(1, 1, 0);
  training.seqLength = 2048;
  training.microBatchSize = 4;
  llvm::Expected<TrainingPlan> plan =
      makePlan(model, training, 8, *getGpu("h200-141gb"), Efficiency());
  ASSERT_TRUE(bool(plan));
  EXPECT_NEAR(plan->step.modelFlopsPerRank / 1e12, 46.03, 0.01);
  EXPECT_TRUE(plan->collectives.empty());
}
