//===- PlanFormats.cpp - Printing a training plan -------------------------===//
//
// See PlanFormats.h. Sizes print in GiB (2^30 bytes) with exact byte or
// element counts beside them where a test or a hand calculation needs them.
//
//===----------------------------------------------------------------------===//

#include "PlanFormats.h"

#include "llvm/ADT/StringExtras.h"

#include <fmt/format.h>

#include <algorithm>

using namespace moec::plan;
namespace json = llvm::json;

namespace {

constexpr double GiB = double(int64_t(1) << 30);

/// 46702792704 -> "46,702,792,704".
std::string commas(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0)
      out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

std::string gib(int64_t bytes) {
  return fmt::format("{:.2f} GiB", double(bytes) / GiB);
}

std::string shape(llvm::ArrayRef<int64_t> dims) {
  std::vector<std::string> parts;
  for (int64_t d : dims)
    parts.push_back(std::to_string(d));
  return "[" + llvm::join(parts, ", ") + "]";
}

std::string ranks(llvm::ArrayRef<int64_t> list) {
  std::vector<std::string> parts;
  for (int64_t r : list)
    parts.push_back(std::to_string(r));
  return "[" + llvm::join(parts, " ") + "]";
}

std::string experts(const TrainingPlan &plan, int64_t rank) {
  ExpertRange range =
      expertsOf(plan.mesh, plan.model.config.numExperts, rank);
  if (range.count == 1)
    return std::to_string(range.first);
  return fmt::format("{}-{}", range.first, range.first + range.count - 1);
}

std::string groupTitle(GroupKind kind) {
  switch (kind) {
  case GroupKind::Expert: return "expert groups (token dispatch/combine)";
  case GroupKind::Shard:
    return "shard groups (parameter all-gather, gradient reduce-scatter)";
  case GroupKind::Replica:
    return "replica groups (expert gradient all-reduce)";
  case GroupKind::DenseReplica:
    return "dense replica groups (dense gradient all-reduce)";
  case GroupKind::World: return "world";
  }
  return "";
}

std::string splitOf(const TrainingPlan &plan, const Parameter &param,
                    const ParameterLayout &layout) {
  std::vector<std::string> parts;
  if (layout.expertDim >= 0)
    parts.push_back(fmt::format("dim {} / P={}", layout.expertDim,
                                plan.mesh.expertParallelDegree()));
  if (layout.shardDim >= 0) {
    int64_t n = layout.localShape[layout.shardDim];
    int64_t h = plan.mesh.shardDegree();
    parts.push_back(fmt::format("dim {} / H={}{}", layout.shardDim, h,
                                n % h ? " (uneven)" : ""));
  }
  if (parts.empty())
    return "replicated";
  return llvm::join(parts, ", ");
}

const GroupKind kGroupKinds[] = {GroupKind::Expert, GroupKind::Shard,
                                 GroupKind::Replica, GroupKind::DenseReplica};

/// The partitioned program's state bytes and collectives against the
/// analytic model's: per kind and group, the calls and the bytes summed
/// over them.
void printProgramComparison(const TrainingPlan &plan, llvm::raw_ostream &os) {
  const ProgramFootprint &program = *plan.program;
  os << fmt::format(
      "\nthe partitioned program (moe-train-pipeline for this job, one "
      "micro-step; every rank runs it) against the analytic model (per "
      "optimizer step, gradient accumulation {}):\n",
      plan.step.gradientAccumulation);
  os << fmt::format("  per rank: parameters {} B, gradients {} B, AdamW "
                    "states {} B (the memory table's)\n",
                    commas(program.state.parameters),
                    commas(program.state.gradients),
                    commas(program.state.optimizerStates));
  os << fmt::format("  {:<14} {:<18} {:>6} {:>18} {:>6} {:>18}  {}\n",
                    "collective", "group", "calls", "program bytes", "calls",
                    "analytic bytes", "the plan's");
  std::vector<std::pair<CollectiveKind, GroupKind>> keys;
  auto note = [&](CollectiveKind kind, GroupKind group) {
    if (!llvm::is_contained(keys, std::pair(kind, group)))
      keys.push_back({kind, group});
  };
  for (const ProgramCollective &c : program.collectives)
    note(c.kind, c.group);
  for (const Collective &c : plan.analyticCollectives)
    note(c.kind, c.group);
  llvm::sort(keys);
  for (auto [kind, group] : keys) {
    int64_t programCalls = 0, analyticCalls = 0, analyticBytes = 0;
    for (const ProgramCollective &c : program.collectives)
      if (c.kind == kind && c.group == group)
        programCalls += c.calls;
    for (const Collective &c : plan.analyticCollectives)
      if (c.kind == kind && c.group == group) {
        analyticCalls += c.count;
        analyticBytes += c.bytes * c.count;
      }
    bool fromProgram = llvm::any_of(plan.collectives, [&](const Collective &c) {
      return c.kind == kind && c.group == group && c.fromProgram;
    });
    os << fmt::format("  {:<14} {:<18} {:>6} {:>18} {:>6} {:>18}  {}\n",
                      stringifyCollectiveKind(kind).str(),
                      fmt::format("{} ({})", stringifyGroupKind(group).str(),
                                  plan.mesh.groupSize(group)),
                      programCalls, commas(program.totalBytes(kind, group)),
                      analyticCalls, commas(analyticBytes),
                      fromProgram ? "program" : "analytic");
  }
}

} // namespace

void moec::cli::printPlanTable(const TrainingPlan &plan, bool allPlacements,
                               llvm::raw_ostream &os) {
  const ModelConfig &c = plan.model.config;
  const Mesh &m = plan.mesh;
  const ModelPlacement placement = plan.placement();
  const moec::TrainingJob &t = plan.training;
  const StepEstimate &st = plan.step;
  const int64_t w = m.worldSize();

  os << fmt::format("plan: {} on {} x {} ({} node{} of {} GPUs)\n",
                    plan.model.source, w, plan.gpu.name, m.numNodes(),
                    m.numNodes() == 1 ? "" : "s", m.gpusPerNode());
  os << fmt::format("model: {} layers, hidden {}, intermediate {}, vocabulary "
                    "{}, {} heads ({} key/value), {} experts top-{}\n",
                    c.numLayers, c.hiddenSize, c.intermediateSize, c.vocabSize,
                    c.numHeads, c.numKeyValueHeads, c.numExperts, c.topK);
  os << fmt::format("parameters: {} ({} in experts; {} active per token "
                    "without the embedding)\n",
                    commas(plan.model.numParameters()),
                    commas(plan.model.numParameters(ParameterKind::Expert)),
                    commas(plan.model.numActiveParameters()));
  os << fmt::format(
      "job: micro_batch_size {}, seq_len {}, gradient accumulation {}, {} "
      "tokens per step; {} precision{}; activation checkpointing {}\n",
      t.microBatchSize, t.seqLength, st.gradientAccumulation, commas(st.tokens),
      getPrecisionName(t).str(),
      !t.bf16 ? ""
      : t.storeParamRemainders
          // The remainders live in the masters' fp32 slots: the same bytes.
          ? " (bf16 compute, fp32 master weights kept as their bf16 copies "
            "+ 16-bit remainders, gradients, AdamW)"
          : " (bf16 compute, fp32 master weights, gradients, AdamW)",
      plan.autoBudgetBytes
          ? fmt::format("auto: {} on every layer, the first of none, "
                        "selective and full whose plan fits {} (moec "
                        "compile chooses per layer from the IR)",
                        moec::stringifyActivationCheckpointing(
                            t.activationCheckpointing)
                            .str(),
                        gib(*plan.autoBudgetBytes))
          : moec::stringifyActivationCheckpointing(t.activationCheckpointing)
                .str());

  // Mesh and groups.
  os << fmt::format(
      "\nmesh (R, H, P) = ({}, {}, {}): expert_parallel_degree {}, "
      "hybrid_shard_degree {}{}, sharding_strategy {}, {} replica{}\n",
      m.replicas(), m.shardDegree(), m.expertParallelDegree(),
      m.expertParallelDegree(), m.shardDegree(),
      m.automaticShardDegree() ? " (automatic)" : "",
      stringifyShardingStrategy(m.strategy()).str(), m.replicas(),
      m.replicas() == 1 ? "" : "s");
  for (GroupKind kind : kGroupKinds) {
    std::vector<ProcessGroup> groups = m.groups(kind);
    int64_t crossing = llvm::count_if(
        groups, [](const ProcessGroup &g) { return g.crossesNodes; });
    os << fmt::format("  {}: {} of {} rank{}", groupTitle(kind), groups.size(),
                      m.groupSize(kind), m.groupSize(kind) == 1 ? "" : "s");
    if (m.groupSize(kind) == 1) {
      os << ", nothing to communicate\n";
      continue;
    }
    os << fmt::format(", {}\n    ", crossing == 0 ? "all inside a node"
                                    : crossing == int64_t(groups.size())
                                        ? "all cross nodes"
                                        : fmt::format("{} cross nodes",
                                                      crossing));
    for (size_t i = 0; i < groups.size(); ++i)
      os << ranks(groups[i].ranks) << (groups[i].crossesNodes ? "*" : "")
         << (i + 1 < groups.size() ? " " : "\n");
  }
  os << "  (* crosses a node boundary)\n";

  // Ranks.
  os << "\nranks:\n";
  os << fmt::format("  {:>5} {:>4} {:>3} {:>3} {:>3}  {:<8} {:>16} {:>16} "
                    "{:>11}\n",
                    "rank", "node", "q", "h", "p", "experts",
                    "param elements", "of them experts", "memory");
  for (int64_t r = 0; r < w; ++r) {
    MeshCoord co = m.coord(r);
    os << fmt::format(
        "  {:>5} {:>4} {:>3} {:>3} {:>3}  {:<8} {:>16} {:>16} {:>11}\n", r,
        m.node(r), co.q, co.h, co.p, experts(plan, r),
        commas(placement.shardElements(r)),
        commas(placement.shardElements(r, ParameterKind::Expert)),
        gib(plan.memory[r].total()));
  }

  // Parameter placement.
  os << (allPlacements
             ? "\nparameter placement (every parameter, every rank):\n"
             : "\nparameter placement (embedding, layer 0 and head; every "
               "layer is alike; --placement lists all):\n");
  const auto &params = plan.model.parameters;
  for (size_t i = 0; i < params.size(); ++i) {
    const Parameter &param = params[i];
    if (!allPlacements && param.unit > 0 && param.unit < c.numLayers)
      continue;
    const ParameterLayout &layout = placement.layouts()[i];
    os << fmt::format("  {} {} {}: {}\n", param.name, shape(param.shape),
                      stringifyParameterKind(param.kind).str(),
                      splitOf(plan, param, layout));
    if (allPlacements) {
      for (int64_t r = 0; r < w; ++r) {
        Shard s = placement.shard(i, r);
        os << fmt::format("    rank {}: {} at {}\n", r, shape(s.shape),
                          shape(s.offsets));
      }
      continue;
    }
    // One line per distinct shard: ranks holding it are a replica set.
    std::vector<int64_t> shown;
    for (int64_t r = 0; r < w && shown.size() < 4; ++r) {
      MeshCoord co = m.coord(r);
      if (co.q != 0 || (layout.expertDim < 0 && co.p != 0))
        continue;
      shown.push_back(r);
      Shard s = placement.shard(i, r);
      os << fmt::format("    rank {}: {} at {}\n", r, shape(s.shape),
                        shape(s.offsets));
    }
    int64_t distinct = (layout.expertDim >= 0 ? m.expertParallelDegree() : 1) *
                       (layout.shardDim >= 0 ? m.shardDegree() : 1);
    if (distinct > int64_t(shown.size()))
      os << fmt::format("    ... {} distinct shards in all\n", distinct);
  }

  // Memory.
  const MemoryBreakdown &mem = plan.peakMemory();
  os << fmt::format("\nmemory per rank (rank {}, the largest):\n",
                    plan.peakRank);
  auto row = [&](const char *what, int64_t bytes, const std::string &note) {
    os << fmt::format("  {:<28} {:>11}  {}\n", what, gib(bytes), note);
  };
  const int64_t shard = placement.shardElements(plan.peakRank);
  // Where the persistent states' bytes come from.
  const std::string source =
      plan.program ? "the partitioned program's" : "analytic";
  row("bf16 compute params", mem.computeParams + mem.gatheredParams,
      fmt::format("{} shard + {} gathered (current and prefetched unit)",
                  gib(mem.computeParams), gib(mem.gatheredParams)));
  row("fp32 master params", mem.masterParams,
      fmt::format("{} elements x 4 B; {} B, {}", commas(shard),
                  commas(mem.masterParams), source));
  row("gradients", mem.gradients + mem.unshardedGradients,
      fmt::format("{} fp32 shard + {} one unit before reduce-scatter; shard "
                  "{} B, {}",
                  gib(mem.gradients), gib(mem.unshardedGradients),
                  commas(mem.gradients), source));
  row("AdamW states", mem.optimizerStates,
      fmt::format("fp32 first and second moments; {} B, {}",
                  commas(mem.optimizerStates), source));
  row("activations", mem.activations,
      fmt::format("peak, checkpointing {}, {} tokens{}",
                  moec::stringifyActivationCheckpointing(t.activationCheckpointing).str(),
                  t.microBatchSize * t.seqLength,
                  t.smActivationOffloading
                      ? fmt::format("; offloaded: {} layers on the device "
                                    "(horizon {}), {} in pinned host memory",
                                    std::min(plan.model.config.numLayers,
                                             t.activationLoadingHorizon + 1),
                                    t.activationLoadingHorizon,
                                    gib(mem.hostActivations))
                      : std::string()));
  row("communication buffers", mem.communicationBuffers,
      "all-to-all worst case (dropless) + fp32 reduce-scatter input");
  row("workspace", mem.workspace,
      fmt::format("one layer's activation gradients + {} reserved",
                  gib(plan.efficiency.reservedBytes)));
  if (!plan.programMemory) {
    os << fmt::format("  {:<28} {:>11}  of {}: {}\n", "total",
                      gib(mem.total()), gib(plan.gpu.memoryBytes),
                      plan.fits ? fmt::format("fits, {} free",
                                              gib(plan.gpu.memoryBytes -
                                                  mem.total()))
                                : fmt::format("DOES NOT FIT, {} over",
                                              gib(mem.total() -
                                                  plan.gpu.memoryBytes)));
  } else {
    // The compiled program's memory plan decides; the analytic total is
    // its estimate.
    const ProgramMemory &pm = *plan.programMemory;
    os << fmt::format("  {:<28} {:>11}  the analytic model's estimate of the "
                      "program below\n",
                      "total (analytic)", gib(mem.total()));
    os << fmt::format(
        "the compiled program's memory per rank (moec compile's memory plan; "
        "every rank runs it):\n"
        "  state {} + arena {} + inputs {} + kernel scratch {} = {} ({} B) "
        "of the budget {} (90% of the gpu's {}, or memory_budget_gib): {}\n"
        "  with {} reserved for the CUDA context, NCCL and libraries: {} "
        "expected in use on each GPU\n",
        gib(pm.state), gib(pm.arena), gib(pm.inputs), gib(pm.scratch),
        gib(pm.total()), commas(pm.total()), gib(plan.programBudget),
        gib(plan.gpu.memoryBytes),
        plan.fits
            ? fmt::format("fits, {} free", gib(plan.programBudget - pm.total()))
            : fmt::format("DOES NOT FIT, {} over",
                          gib(pm.total() - plan.programBudget)),
        gib(plan.efficiency.reservedBytes),
        gib(pm.total() + plan.efficiency.reservedBytes));
  }

  // Communication.
  os << "\ncommunication per step:\n";
  os << fmt::format("  {:<14} {:<18} {:<6} {:>11} {:>11} {:>6} {:>9}  {}\n",
                    "collective", "group", "link", "bytes/call", "sent/rank",
                    "calls", "time", "what");
  for (const Collective &coll : plan.collectives)
    os << fmt::format(
        "  {:<14} {:<18} {:<6} {:>11} {:>11} {:>6} {:>6.1f} ms  {}{}\n",
        stringifyCollectiveKind(coll.kind).str(),
        fmt::format("{} ({})", stringifyGroupKind(coll.group).str(),
                    coll.groupSize),
        coll.crossesNodes ? "inter" : "intra", gib(coll.bytes),
        gib(coll.bytesSent), coll.count, coll.seconds * 1e3, coll.what,
        coll.overlapped ? "" : " [not overlapped]");
  if (plan.collectives.empty())
    os << "  none (one rank)\n";
  if (plan.program)
    printProgramComparison(plan, os);
  else
    os << "  (every number analytic: a preset or a JSON config has no "
          "program; give the ONNX export or raised .mlir to read the state "
          "bytes and gradient reductions from the partitioned program)\n";

  // Time.
  os << fmt::format(
      "\nstep estimate: {:.3f} s = compute {:.1f} ms{} + all-to-all {:.1f} ms "
      "+ unhidden sharding traffic {:.1f} ms (of {:.1f} ms) + optimizer "
      "{:.1f} ms\n",
      st.stepSeconds, st.computeSeconds * 1e3,
      t.activationCheckpointing == moec::ActivationCheckpointing::Full ? " (with recompute)" : "",
      st.dispatchSeconds * 1e3, st.exposedShardingSeconds * 1e3,
      st.shardingSeconds * 1e3, st.optimizerSeconds * 1e3);
  os << fmt::format(
      "  model FLOPs per rank and step {:.1f} TFLOP{} at {:.0f} TFLOP/s x "
      "{:.2f}\n",
      st.modelFlopsPerRank / 1e12,
      st.hardwareFlopsPerRank > st.modelFlopsPerRank
          ? fmt::format(" ({:.1f} with recompute)",
                        st.hardwareFlopsPerRank / 1e12)
          : std::string(),
      plan.gpu.peakFlops / 1e12, plan.efficiency.compute);
  os << fmt::format("  {} tokens/s, {:.1f} model TFLOP/s per GPU\n",
                    commas(int64_t(st.tokensPerSecond)), st.modelTflopsPerGpu);
}

namespace {

json::Object memoryJson(const MemoryBreakdown &mem) {
  return json::Object{
      {"compute_params", mem.computeParams},
      {"gathered_params", mem.gatheredParams},
      {"master_params", mem.masterParams},
      {"gradients", mem.gradients},
      {"unsharded_gradients", mem.unshardedGradients},
      {"optimizer_states", mem.optimizerStates},
      {"activations", mem.activations},
      {"host_activations", mem.hostActivations},
      {"communication_buffers", mem.communicationBuffers},
      {"workspace", mem.workspace},
      {"persistent", mem.persistent()},
      {"total", mem.total()},
  };
}

/// The compiled program's memory per rank and the budget it is judged by,
/// or null when the plan did not measure it.
json::Value programMemoryJson(const TrainingPlan &plan) {
  if (!plan.programMemory)
    return nullptr;
  const ProgramMemory &pm = *plan.programMemory;
  return json::Object{{"state", pm.state},     {"arena", pm.arena},
                      {"inputs", pm.inputs},   {"scratch", pm.scratch},
                      {"total", pm.total()},   {"budget", plan.programBudget},
                      {"fits", plan.fits}};
}

json::Array toJson(llvm::ArrayRef<int64_t> values) {
  json::Array array;
  for (int64_t v : values)
    array.push_back(v);
  return array;
}

} // namespace

json::Value moec::cli::planToJson(const TrainingPlan &plan) {
  const ModelConfig &c = plan.model.config;
  const Mesh &m = plan.mesh;
  const ModelPlacement placement = plan.placement();
  const moec::TrainingJob &t = plan.training;
  const StepEstimate &st = plan.step;

  json::Object groups;
  for (GroupKind kind : kGroupKinds) {
    json::Array list;
    for (const ProcessGroup &g : m.groups(kind))
      list.push_back(json::Object{{"ranks", toJson(g.ranks)},
                                  {"crosses_nodes", g.crossesNodes}});
    groups[stringifyGroupKind(kind)] = std::move(list);
  }

  json::Array params;
  for (auto [i, p] : llvm::enumerate(plan.model.parameters)) {
    const ParameterLayout &layout = placement.layouts()[i];
    params.push_back(json::Object{
        {"name", p.name},
        {"shape", toJson(p.shape)},
        {"kind", stringifyParameterKind(p.kind)},
        {"unit", p.unit},
        {"expert_dim", layout.expertDim},
        {"shard_dim", layout.shardDim},
        {"local_shape", toJson(layout.localShape)},
    });
  }

  json::Array ranks;
  for (int64_t r = 0; r < m.worldSize(); ++r) {
    MeshCoord co = m.coord(r);
    ExpertRange ex = expertsOf(m, c.numExperts, r);
    json::Array shards;
    for (size_t i = 0; i < plan.model.parameters.size(); ++i) {
      Shard s = placement.shard(i, r);
      shards.push_back(json::Object{{"offset", toJson(s.offsets)},
                                    {"shape", toJson(s.shape)}});
    }
    json::Array expertList;
    for (int64_t e = ex.first; e < ex.first + ex.count; ++e)
      expertList.push_back(e);
    ranks.push_back(json::Object{
        {"rank", r},
        {"node", m.node(r)},
        {"q", co.q},
        {"h", co.h},
        {"p", co.p},
        {"experts", std::move(expertList)},
        {"parameter_elements", placement.shardElements(r)},
        {"expert_parameter_elements",
         placement.shardElements(r, ParameterKind::Expert)},
        {"memory", memoryJson(plan.memory[r])},
        {"shards", std::move(shards)},
    });
  }

  json::Array collectives;
  for (const Collective &coll : plan.collectives)
    collectives.push_back(json::Object{
        {"kind", stringifyCollectiveKind(coll.kind)},
        {"group", stringifyGroupKind(coll.group)},
        {"group_size", coll.groupSize},
        {"crosses_nodes", coll.crossesNodes},
        {"what", coll.what},
        {"bytes", coll.bytes},
        {"bytes_sent", coll.bytesSent},
        {"count", coll.count},
        {"overlapped", coll.overlapped},
        {"seconds", coll.seconds},
        {"from_program", coll.fromProgram},
    });

  // The partitioned program's footprint, when the plan read one.
  json::Value program = nullptr;
  if (plan.program) {
    json::Array programCollectives;
    for (const ProgramCollective &c : plan.program->collectives)
      programCollectives.push_back(json::Object{
          {"kind", stringifyCollectiveKind(c.kind)},
          {"group", stringifyGroupKind(c.group)},
          {"bytes", c.bytes},
          {"calls", c.calls},
      });
    program = json::Object{
        {"parameters", plan.program->state.parameters},
        {"gradients", plan.program->state.gradients},
        {"optimizer_states", plan.program->state.optimizerStates},
        {"collectives", std::move(programCollectives)},
    };
  }

  return json::Object{
      {"schema", "moec-plan/1"},
      {"program", std::move(program)},
      {"model",
       json::Object{
           {"source", plan.model.source},
           {"vocab_size", c.vocabSize},
           {"hidden_size", c.hiddenSize},
           {"intermediate_size", c.intermediateSize},
           {"num_hidden_layers", c.numLayers},
           {"num_attention_heads", c.numHeads},
           {"num_key_value_heads", c.numKeyValueHeads},
           {"head_dim", c.headDim},
           {"num_local_experts", c.numExperts},
           {"num_experts_per_tok", c.topK},
           {"parameters", plan.model.numParameters()},
           {"expert_parameters",
            plan.model.numParameters(ParameterKind::Expert)},
           {"active_parameters", plan.model.numActiveParameters()},
       }},
      {"job",
       json::Object{
           {"world_size", m.worldSize()},
           {"expert_parallel_degree", m.expertParallelDegree()},
           {"hybrid_shard_degree", m.shardDegree()},
           {"hybrid_shard_degree_automatic", m.automaticShardDegree()},
           {"replicas", m.replicas()},
           {"sharding_strategy", stringifyShardingStrategy(m.strategy())},
           {"gpus_per_node", m.gpusPerNode()},
           {"nodes", m.numNodes()},
           {"micro_batch_size", t.microBatchSize},
           {"seq_len", t.seqLength},
           {"gradient_accumulation", st.gradientAccumulation},
           {"tokens_per_step", st.tokens},
           {"activation_checkpointing",
            moec::stringifyActivationCheckpointing(t.activationCheckpointing)},
           {"precision", getPrecisionName(t)},
           {"store_param_remainders", t.storeParamRemainders},
       }},
      {"gpu",
       json::Object{
           {"name", plan.gpu.name},
           {"memory_bytes", plan.gpu.memoryBytes},
           {"peak_flops", plan.gpu.peakFlops},
           {"memory_bandwidth", plan.gpu.memoryBandwidth},
           {"intra_node_bandwidth", plan.gpu.intraNodeBandwidth},
           {"inter_node_bandwidth", plan.gpu.interNodeBandwidth},
           {"compute_efficiency", plan.efficiency.compute},
           {"communication_efficiency", plan.efficiency.communication},
           {"reserved_bytes", plan.efficiency.reservedBytes},
       }},
      {"mesh",
       json::Object{
           {"axes", json::Array{"replica", "shard", "expert"}},
           {"shape", json::Array{m.replicas(), m.shardDegree(),
                                 m.expertParallelDegree()}},
           {"groups", std::move(groups)},
       }},
      {"parameters", std::move(params)},
      {"ranks", std::move(ranks)},
      {"memory", json::Object{{"peak_rank", plan.peakRank},
                              {"gpu_bytes", plan.gpu.memoryBytes},
                              {"fits", plan.fits},
                              {"peak", memoryJson(plan.peakMemory())}}},
      {"program_memory", programMemoryJson(plan)},
      {"collectives", std::move(collectives)},
      {"step",
       json::Object{
           {"model_flops_per_rank", st.modelFlopsPerRank},
           {"hardware_flops_per_rank", st.hardwareFlopsPerRank},
           {"compute_seconds", st.computeSeconds},
           {"dispatch_seconds", st.dispatchSeconds},
           {"sharding_seconds", st.shardingSeconds},
           {"exposed_sharding_seconds", st.exposedShardingSeconds},
           {"optimizer_seconds", st.optimizerSeconds},
           {"step_seconds", st.stepSeconds},
           {"tokens_per_second", st.tokensPerSecond},
           {"model_tflops_per_gpu", st.modelTflopsPerGpu},
       }},
  };
}

void moec::cli::printRecommendationsTable(
    llvm::ArrayRef<Recommendation> list, llvm::raw_ostream &os) {
  if (list.empty()) {
    os << "no valid (expert_parallel_degree, hybrid_shard_degree) exists\n";
    return;
  }
  const TrainingPlan &first = list.front().plan;
  int64_t fitting = llvm::count_if(
      list, [](const Recommendation &r) { return r.plan.fits; });
  os << fmt::format(
      "recommend: {} on {} x {} ({} GPUs per node), micro_batch_size {}, "
      "seq_len {}, {} precision\n",
      first.model.source, first.mesh.worldSize(), first.gpu.name,
      first.mesh.gpusPerNode(), first.training.microBatchSize,
      first.training.seqLength, getPrecisionName(first.training).str());
  const bool measured = llvm::any_of(
      list, [](const Recommendation &r) { return r.plan.programMemory; });
  os << fmt::format(
      "{} valid configurations, {} fit in {}; fastest first:\n", list.size(),
      fitting,
      measured
          ? fmt::format("{} (the compiled program's memory plan; 90% of the "
                        "gpu's {}, or memory_budget_gib)",
                        gib(programBudgetBytes(first.training, first.gpu)),
                        gib(first.gpu.memoryBytes))
          : gib(first.gpu.memoryBytes));
  os << fmt::format("  {:>3} {:>2} {:>3} {:<13} {:<10} {:>11} {:>8} {:>10} "
                    "{:>7}  {}\n",
                    "#", "P", "H", "strategy", "ckpt", "memory", "step s",
                    "tokens/s", "TFLOP/s", "why");
  int64_t index = 0;
  for (const Recommendation &r : list) {
    if (index == fitting)
      os << "does not fit, smallest first:\n";
    const TrainingPlan &p = r.plan;
    os << fmt::format(
        "  {:>3} {:>2} {:>3} {:<13} {:<10} {:>11} {:>8.3f} {:>10} {:>7.1f}  "
        "{}\n",
        ++index, p.mesh.expertParallelDegree(), p.mesh.shardDegree(),
        stringifyShardingStrategy(p.mesh.strategy()).str(),
        moec::stringifyActivationCheckpointing(p.training.activationCheckpointing).str(),
        gib(p.programMemory ? p.programMemory->total()
                            : p.peakMemory().total()),
        p.step.stepSeconds,
        commas(int64_t(p.step.tokensPerSecond)), p.step.modelTflopsPerGpu,
        r.reason);
  }
  if (fitting > 0) {
    const TrainingPlan &best = list.front().plan;
    os << fmt::format(
        "best: --expert-parallel-degree {} --hybrid-shard-degree {} "
        "--sharding-strategy {} --activation-checkpointing {}\n",
        best.mesh.expertParallelDegree(), best.mesh.shardDegree(),
        stringifyShardingStrategy(best.mesh.strategy()).str(),
        moec::stringifyActivationCheckpointing(best.training.activationCheckpointing).str());
  } else {
    os << "nothing fits: add GPUs, shorten seq_len or micro_batch_size\n";
  }
}

json::Value
moec::cli::recommendationsToJson(llvm::ArrayRef<Recommendation> list) {
  json::Array candidates;
  for (const Recommendation &r : list) {
    const TrainingPlan &p = r.plan;
    candidates.push_back(json::Object{
        {"expert_parallel_degree", p.mesh.expertParallelDegree()},
        {"hybrid_shard_degree", p.mesh.shardDegree()},
        {"sharding_strategy", stringifyShardingStrategy(p.mesh.strategy())},
        {"activation_checkpointing",
         moec::stringifyActivationCheckpointing(p.training.activationCheckpointing)},
        {"fits", p.fits},
        {"memory_bytes", p.programMemory ? p.programMemory->total()
                                         : p.peakMemory().total()},
        {"memory_from", p.programMemory ? "program" : "analytic"},
        {"program_memory", programMemoryJson(p)},
        {"step_seconds", p.step.stepSeconds},
        {"tokens_per_second", p.step.tokensPerSecond},
        {"model_tflops_per_gpu", p.step.modelTflopsPerGpu},
        {"reason", r.reason},
    });
  }
  json::Object result{{"schema", "moec-plan-recommend/1"},
                      {"candidates", std::move(candidates)}};
  if (!list.empty()) {
    const TrainingPlan &p = list.front().plan;
    result["world_size"] = p.mesh.worldSize();
    result["gpu"] = p.gpu.name;
    result["gpu_memory_bytes"] = p.gpu.memoryBytes;
  }
  return result;
}

void moec::cli::printPlanSvg(const TrainingPlan &plan, llvm::raw_ostream &os) {
  const Mesh &m = plan.mesh;
  const int64_t w = m.worldSize();
  // Layout: nodes left to right, ranks as columns, one stacked memory bar
  // per rank scaled to the larger of the GPU's memory and the peak.
  const int colW = 56, barW = 36, barH = 260, top = 70, left = 20, nodeGap = 16;
  const double scale =
      double(barH) /
      double(std::max(plan.gpu.memoryBytes, plan.peakMemory().total()));
  auto x0 = [&](int64_t r) {
    return left + 10 + r * colW + m.node(r) * nodeGap;
  };
  const int width = int(x0(w - 1)) + colW + 30;
  const int height = top + barH + 150;
  struct Segment {
    const char *name;
    const char *color;
    int64_t MemoryBreakdown::*field;
  };
  const Segment segments[] = {
      {"bf16 params", "#4e79a7", &MemoryBreakdown::computeParams},
      {"gathered params", "#a0cbe8", &MemoryBreakdown::gatheredParams},
      {"fp32 master", "#f28e2b", &MemoryBreakdown::masterParams},
      {"gradients", "#e15759", &MemoryBreakdown::gradients},
      {"unsharded grads", "#ff9d9a", &MemoryBreakdown::unshardedGradients},
      {"AdamW states", "#59a14f", &MemoryBreakdown::optimizerStates},
      {"activations", "#edc948", &MemoryBreakdown::activations},
      {"comm buffers", "#b07aa1", &MemoryBreakdown::communicationBuffers},
      {"workspace", "#9c755f", &MemoryBreakdown::workspace},
  };
  os << fmt::format("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" "
                    "height=\"{}\" font-family=\"sans-serif\" "
                    "font-size=\"11\">\n",
                    width, height);
  os << fmt::format(
      "<text x=\"{}\" y=\"20\" font-size=\"14\">{} on {} x {}: mesh (R, H, "
      "P) = ({}, {}, {}), {}, checkpointing {}</text>\n",
      left, plan.model.source, w, plan.gpu.name, m.replicas(),
      m.shardDegree(), m.expertParallelDegree(),
      stringifyShardingStrategy(m.strategy()).str(),
      moec::stringifyActivationCheckpointing(plan.training.activationCheckpointing).str());
  os << fmt::format("<text x=\"{}\" y=\"38\">peak {} of {} per GPU: {}; step "
                    "{:.3f} s, {:.1f} model TFLOP/s per GPU</text>\n",
                    left, gib(plan.peakMemory().total()),
                    gib(plan.gpu.memoryBytes),
                    plan.fits ? "fits" : "does not fit",
                    plan.step.stepSeconds, plan.step.modelTflopsPerGpu);
  // Nodes.
  for (int64_t n = 0; n < m.numNodes(); ++n) {
    int64_t firstRank = n * m.gpusPerNode();
    int64_t lastRank = std::min(w, firstRank + m.gpusPerNode()) - 1;
    int x = int(x0(firstRank)) - 6;
    int x1 = int(x0(lastRank)) + colW - 8;
    os << fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" "
                      "fill=\"none\" stroke=\"#888\" rx=\"6\"/>\n",
                      x, top - 22, x1 - x, barH + 100);
    os << fmt::format("<text x=\"{}\" y=\"{}\">node {}</text>\n", x + 4,
                      top - 8, n);
  }
  // Capacity line.
  int capY = top + barH - int(double(plan.gpu.memoryBytes) * scale);
  os << fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" "
                    "stroke=\"#c00\" stroke-dasharray=\"4 3\"/>\n",
                    left, capY, width - 10, capY);
  // Bars.
  for (int64_t r = 0; r < w; ++r) {
    const MemoryBreakdown &mem = plan.memory[r];
    double y = top + barH;
    for (const Segment &s : segments) {
      double hgt = double(mem.*(s.field)) * scale;
      if (hgt <= 0)
        continue;
      y -= hgt;
      os << fmt::format("<rect x=\"{}\" y=\"{:.2f}\" width=\"{}\" "
                        "height=\"{:.2f}\" fill=\"{}\"><title>rank {}: {} "
                        "{}</title></rect>\n",
                        x0(r), y, barW, hgt, s.color, r, s.name,
                        gib(mem.*(s.field)));
    }
    MeshCoord co = m.coord(r);
    int ty = top + barH + 14;
    os << fmt::format("<text x=\"{}\" y=\"{}\">rank {}</text>\n", x0(r), ty,
                      r);
    os << fmt::format("<text x=\"{}\" y=\"{}\">q{} h{} p{}</text>\n", x0(r),
                      ty + 13, co.q, co.h, co.p);
    os << fmt::format("<text x=\"{}\" y=\"{}\">e {}</text>\n", x0(r), ty + 26,
                      experts(plan, r));
  }
  // Expert groups as brackets under their ranks.
  int gy = top + barH + 50;
  for (const ProcessGroup &g : m.groups(GroupKind::Expert)) {
    int xa = int(x0(g.ranks.front())), xb = int(x0(g.ranks.back())) + barW;
    os << fmt::format("<path d=\"M{} {} v6 H{} v-6\" fill=\"none\" "
                      "stroke=\"{}\"/>\n",
                      xa, gy, xb, g.crossesNodes ? "#c00" : "#333");
  }
  os << fmt::format("<text x=\"{}\" y=\"{}\">expert groups</text>\n", left,
                    gy + 20);
  // Legend.
  int lx = left, ly = height - 28;
  for (const Segment &s : segments) {
    os << fmt::format("<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" "
                      "fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
                      lx, ly, s.color, lx + 14, ly + 9, s.name);
    lx += 14 + 8 * int(std::string(s.name).size()) + 10;
  }
  os << "</svg>\n";
}
