//===- Plan.cpp - Memory, communication and time of a training step -------===//
//
// See moec/Plan/Plan.h; docs/plan.md derives every formula here and checks
// them by hand for Mixtral 8x7B. Byte counts are exact integers; times are
// estimates from the GpuSpec and Efficiency numbers.
//
//===----------------------------------------------------------------------===//

#include "moec/Plan/Plan.h"

#include "moec/Analysis/ModelFlops.h"

#include "llvm/Support/FormatVariadic.h"

#include <algorithm>
#include <cmath>

using namespace moec;
using namespace moec::plan;

llvm::StringRef moec::plan::getPrecisionName(const TrainingJob &job) {
  return job.bf16 ? "bf16" : "fp32";
}

llvm::ArrayRef<llvm::StringRef> moec::plan::gpuNames() {
  static const llvm::StringRef names[] = {"h100-80gb", "h200-141gb",
                                          "a100-80gb", "a100-40gb"};
  return names;
}

std::optional<GpuSpec> moec::plan::getGpu(llvm::StringRef name) {
  // Sources and assumptions: docs/plan.md, "GPUs". Memory is what nvidia-smi
  // reports; bandwidths are per GPU and direction.
  constexpr int64_t MiB = int64_t(1) << 20;
  constexpr double T = 1e12, G = 1e9;
  if (name == "h100-80gb")
    return GpuSpec{"h100-80gb", 81559 * MiB, 989 * T, 3350 * G, 450 * G,
                   50 * G};
  if (name == "h200-141gb")
    return GpuSpec{"h200-141gb", 143771 * MiB, 989 * T, 4800 * G, 450 * G,
                   50 * G};
  if (name == "a100-80gb")
    return GpuSpec{"a100-80gb", 81920 * MiB, 312 * T, 2039 * G, 300 * G,
                   25 * G};
  if (name == "a100-40gb")
    return GpuSpec{"a100-40gb", 40960 * MiB, 312 * T, 1555 * G, 300 * G,
                   25 * G};
  return std::nullopt;
}

int64_t moec::plan::programBudgetBytes(const TrainingJob &job,
                                       const GpuSpec &gpu) {
  if (job.memoryBudgetGib != 0)
    return getMemoryBudgetBytes(job);
  return gpu.memoryBytes / 10 * 9;
}

int64_t MemoryBreakdown::persistent() const {
  return computeParams + masterParams + gradients + optimizerStates;
}

int64_t MemoryBreakdown::total() const {
  return computeParams + gatheredParams + masterParams + gradients +
         unshardedGradients + optimizerStates + activations +
         communicationBuffers + workspace;
}

namespace {

llvm::Error fail(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

llvm::Error checkRequest(const ModelDescription &model,
                         const TrainingJob &training, const GpuSpec &gpu,
                         const Efficiency &efficiency) {
  const ModelConfig &c = model.config;
  if (c.numLayers < 1 || c.hiddenSize < 1 || c.numExperts < 1 || c.topK < 1)
    return fail("the model has no layers, hidden size or experts to plan");
  if (training.microBatchSize < 1)
    return fail(llvm::formatv("micro_batch_size {0} must be at least 1",
                              training.microBatchSize));
  if (training.seqLength < 2)
    return fail(llvm::formatv("seq_length {0} must be at least 2",
                              training.seqLength));
  const int64_t w = training.worldSize;
  // The job's limits (moec/Support/TrainingJob.h), again for a job that was
  // not read through its keys: they keep every byte count inside int64.
  if (w > kMaxRanks)
    return fail(llvm::formatv(
        "world_size {0} is more than moec's limit of {1} ranks", w,
        kMaxRanks));
  if (training.seqLength > kMaxTokensPerRank / training.microBatchSize)
    return fail(llvm::formatv(
        "micro_batch_size {0} times seq_length {1} is more than moec's "
        "limit of {2} tokens per rank",
        training.microBatchSize, training.seqLength, kMaxTokensPerRank));
  if (training.globalBatchSize < 0)
    return fail(llvm::formatv("global_batch_size {0} must not be negative",
                              training.globalBatchSize));
  if (training.globalBatchSize > 0) {
    if (training.globalBatchSize < w)
      return fail(llvm::formatv(
          "global_batch_size {0} sequences is fewer than world_size {1}: "
          "every rank needs its own data",
          training.globalBatchSize, w));
    if (training.globalBatchSize % (w * training.microBatchSize) != 0)
      return fail(llvm::formatv(
          "global_batch_size {0} is not a multiple of world_size {1} times "
          "micro_batch_size {2} = {3}",
          training.globalBatchSize, w, training.microBatchSize,
          w * training.microBatchSize));
  }
  if (gpu.memoryBytes <= 0)
    return fail(llvm::formatv("gpu memory {0} bytes must be positive",
                              gpu.memoryBytes));
  if (!(gpu.peakFlops > 0))
    return fail(llvm::formatv("gpu peak {0:f1} TFLOP/s must be positive",
                              gpu.peakFlops / 1e12));
  if (!(gpu.memoryBandwidth > 0 && gpu.intraNodeBandwidth > 0 &&
        gpu.interNodeBandwidth > 0))
    return fail(llvm::formatv(
        "gpu bandwidths must be positive (memory {0:f1}, intra-node {1:f1}, "
        "inter-node {2:f1} GB/s)",
        gpu.memoryBandwidth / 1e9, gpu.intraNodeBandwidth / 1e9,
        gpu.interNodeBandwidth / 1e9));
  if (!(efficiency.compute > 0 && efficiency.compute <= 1))
    return fail(llvm::formatv("compute efficiency {0} must be in (0, 1]",
                              efficiency.compute));
  if (!(efficiency.communication > 0 && efficiency.communication <= 1))
    return fail(llvm::formatv("communication efficiency {0} must be in (0, 1]",
                              efficiency.communication));
  if (efficiency.reservedBytes < 0)
    return fail(llvm::formatv("reserved memory {0} bytes must not be negative",
                              efficiency.reservedBytes));
  return llvm::Error::success();
}

/// Per-token activation sizes of one decoder layer, bytes.
struct LayerActivations {
  /// Everything the backward reads when nothing is recomputed.
  int64_t all = 0;
  /// What selective checkpointing recomputes (RMS norm outputs and SwiGLU).
  int64_t selectiveRecomputed = 0;
  /// The layer's input (what full checkpointing keeps).
  int64_t input = 0;
  /// Activation gradients live during one layer's backward.
  int64_t gradients = 0;
};

LayerActivations layerActivations(const ModelConfig &c, int64_t a) {
  const int64_t h = c.hiddenSize, qd = c.numHeads * c.headDim,
                kvd = c.numKeyValueHeads * c.headDim, k = c.topK,
                i = c.intermediateSize;
  LayerActivations act;
  // bf16/fp32 tensors: input, norm1 output, q, k, v, attention output,
  // residual (norm2 input), norm2 output, permuted expert input (k per
  // token), gate/up output, SwiGLU output, expert output.
  act.all = a * (4 * h + 2 * qd + 2 * kvd + 2 * k * h + 3 * k * i) +
            // fp32: router probabilities, attention log-sum-exp per head,
            // two RMS-norm reciprocal RMS; top-k indices (i64) and weights.
            4 * (c.numExperts + c.numHeads + 2) + 12 * k;
  act.selectiveRecomputed = a * (2 * h + k * i);
  act.input = a * h;
  act.gradients = a * (k * (3 * i + h) + 2 * h);
  return act;
}

} // namespace

llvm::Expected<TrainingPlan>
moec::plan::makePlan(const ModelDescription &model, const TrainingJob &training,
                     int64_t gpusPerNode, const GpuSpec &gpu,
                     const Efficiency &efficiency,
                     const ProgramFootprint *program,
                     const ProgramMemory *programMemory) {
  llvm::Expected<Mesh> mesh =
      resolveMesh(getParallelConfig(training, gpusPerNode),
                  model.config.numExperts);
  if (!mesh)
    return mesh.takeError();
  if (llvm::Error err = checkRequest(model, training, gpu, efficiency))
    return std::move(err);

  // auto: the first fixed policy, in the order of the compute it adds,
  // whose plan fits the budget. The plan models one policy for every
  // layer; moec compile chooses per layer from the IR.
  if (training.activationCheckpointing == ActivationCheckpointing::Auto) {
    const int64_t budget = training.memoryBudgetGib != 0
                               ? getMemoryBudgetBytes(training)
                               : gpu.memoryBytes;
    std::optional<TrainingPlan> chosen;
    for (ActivationCheckpointing policy :
         {ActivationCheckpointing::None, ActivationCheckpointing::Selective,
          ActivationCheckpointing::Full}) {
      TrainingJob fixed = training;
      fixed.activationCheckpointing = policy;
      fixed.memoryBudgetGib = 0;
      llvm::Expected<TrainingPlan> candidate =
          makePlan(model, fixed, gpusPerNode, gpu, efficiency, program);
      if (!candidate)
        return candidate.takeError();
      bool fits = candidate->peakMemory().total() <= budget;
      chosen = std::move(*candidate);
      if (fits)
        break;
    }
    chosen->autoBudgetBytes = budget;
    if (programMemory) {
      // The program's own per-layer choice (moec compile's) decides.
      chosen->programMemory = *programMemory;
      chosen->programBudget = programBudgetBytes(training, gpu);
      chosen->fits = programMemory->total() <= chosen->programBudget;
    }
    return std::move(*chosen);
  }
  TrainingPlan plan{model, *mesh, training, gpu, efficiency};
  if (program)
    plan.program = *program;
  const ModelConfig &c = plan.model.config;
  const ModelPlacement placement = plan.placement();
  const Mesh &m = plan.mesh;
  const bool bf16 = training.bf16;
  const int64_t a = bf16 ? 2 : 4; // compute element bytes
  const int64_t w = m.worldSize(), p = m.expertParallelDegree(),
                hs = m.shardDegree();
  const int64_t tokens = training.microBatchSize * training.seqLength;
  const int64_t accumulation =
      training.globalBatchSize == 0
          ? 1
          : training.globalBatchSize / (w * training.microBatchSize);

  // Units in execution order and their local (gathered) sizes.
  std::vector<int64_t> unitElements;
  for (int64_t unit : plan.model.units())
    unitElements.push_back(placement.unitLocalElements(unit));
  int64_t maxUnit = 0, maxPair = 0;
  for (size_t u = 0; u < unitElements.size(); ++u) {
    maxUnit = std::max(maxUnit, unitElements[u]);
    int64_t next = u + 1 < unitElements.size() ? unitElements[u + 1] : 0;
    maxPair = std::max(maxPair, unitElements[u] + next);
  }

  // Activations (same on every rank: balanced routing).
  const LayerActivations layer = layerActivations(c, a);
  const int64_t headPerToken = a * 2 * c.hiddenSize + a * c.vocabSize +
                               4 * c.vocabSize;
  // Per token: what each layer keeps for the backward, and what one
  // layer's backward recomputes.
  int64_t keptPerLayer = 0, recomputedPerToken = 0;
  switch (training.activationCheckpointing) {
  case ActivationCheckpointing::None:
    keptPerLayer = layer.all;
    break;
  case ActivationCheckpointing::Selective:
    keptPerLayer = layer.all - layer.selectiveRecomputed;
    recomputedPerToken = layer.selectiveRecomputed;
    break;
  case ActivationCheckpointing::Full:
    keptPerLayer = layer.input;
    recomputedPerToken = layer.all;
    break;
  case ActivationCheckpointing::Auto:
    llvm_unreachable("auto plans a fixed policy (above)");
  }
  // Offloading keeps on the device the layer in its backward and the
  // layers fetched ahead of it; every layer's kept values but the last
  // `horizon` layers' go to the host (those would come back at the start
  // of the backward, where they are released: moe-offload-activations
  // leaves them on the device).
  const int64_t layersOnDevice =
      training.smActivationOffloading
          ? std::min(c.numLayers, training.activationLoadingHorizon + 1)
          : c.numLayers;
  const int64_t activations =
      tokens * (layersOnDevice * keptPerLayer + recomputedPerToken +
                headPerToken);
  const int64_t hostActivations =
      training.smActivationOffloading
          ? tokens *
                std::max<int64_t>(
                    0, c.numLayers - training.activationLoadingHorizon) *
                keptPerLayer
          : 0;

  // Communication buffers: all-to-all send (T·k token copies) and receive
  // (worst case: every rank of the expert group sends all its tokens here,
  // each at most min(k, E/P) times), and the fp32 reduce-scatter input.
  int64_t dispatchBuffers = 0;
  if (p > 1) {
    const int64_t perRank = std::min(c.topK, c.numExperts / p);
    dispatchBuffers =
        a * c.hiddenSize * (tokens * c.topK + p * tokens * perRank);
  }
  const int64_t reduceScatterBuffer = hs > 1 && bf16 ? 4 * maxUnit : 0;

  plan.memory.resize(w);
  for (int64_t rank = 0; rank < w; ++rank) {
    // Every rank allocates its shards padded to one shape.
    const int64_t shard = placement.heldElements();
    MemoryBreakdown &mem = plan.memory[rank];
    mem.computeParams = bf16 ? 2 * shard : 0;
    mem.gatheredParams = hs > 1 ? a * maxPair : 0;
    mem.masterParams = program ? program->state.parameters : 4 * shard;
    mem.gradients = program ? program->state.gradients : 4 * shard;
    mem.unshardedGradients = a * maxUnit;
    mem.optimizerStates = program ? program->state.optimizerStates : 8 * shard;
    mem.activations = activations;
    mem.hostActivations = hostActivations;
    mem.communicationBuffers = dispatchBuffers + reduceScatterBuffer;
    mem.workspace = tokens * layer.gradients + efficiency.reservedBytes;
    if (mem.total() > plan.memory[plan.peakRank].total())
      plan.peakRank = rank;
  }
  plan.fits = plan.peakMemory().total() <= gpu.memoryBytes;
  if (programMemory) {
    plan.programMemory = *programMemory;
    plan.programBudget = programBudgetBytes(training, gpu);
    plan.fits = programMemory->total() <= plan.programBudget;
  }

  // Collectives per optimizer step.
  auto bandwidth = [&](bool crosses) {
    return (crosses ? gpu.interNodeBandwidth : gpu.intraNodeBandwidth) *
           efficiency.communication;
  };
  // The analytic model's collectives, and the program's where it has one.
  std::vector<Collective> analytic, programCollectives;
  auto add = [&](std::string what, CollectiveKind kind, GroupKind group,
                 int64_t bytes, int64_t count, bool overlapped,
                 bool fromProgram = false) {
    const int64_t n = m.groupSize(group);
    if (n <= 1 || count == 0 || bytes == 0)
      return;
    Collective coll;
    coll.what = std::move(what);
    coll.kind = kind;
    coll.group = group;
    coll.groupSize = n;
    coll.crossesNodes = m.anyGroupCrossesNodes(group);
    coll.bytes = bytes;
    const int64_t factor = kind == CollectiveKind::AllReduce ? 2 : 1;
    coll.bytesSent = factor * bytes / n * (n - 1);
    coll.count = count;
    coll.overlapped = overlapped;
    coll.fromProgram = fromProgram;
    coll.seconds = double(coll.bytesSent) * count / bandwidth(coll.crossesNodes);
    (fromProgram ? programCollectives : analytic).push_back(std::move(coll));
  };
  const int64_t layers = c.numLayers, accum = accumulation;
  const int64_t embedding = unitElements.front(), head = unitElements.back();
  const int64_t decoder = placement.unitLocalElements(0);
  const int64_t gradBytes = bf16 ? 4 : a; // gradients are reduced in fp32
  // The embedding's gradient does not read the table: one gather.
  add("embedding parameters (forward)", CollectiveKind::AllGather,
      GroupKind::Shard, a * embedding, accum, true);
  add("decoder-layer parameters (forward)", CollectiveKind::AllGather,
      GroupKind::Shard, a * decoder, layers * accum, true);
  add("decoder-layer parameters (backward)", CollectiveKind::AllGather,
      GroupKind::Shard, a * decoder, layers * accum, true);
  add("head parameters (forward, kept for backward)",
      CollectiveKind::AllGather, GroupKind::Shard, a * head, accum, true);
  if (p > 1) {
    const int64_t sent = a * tokens * c.topK * c.hiddenSize;
    add("token dispatch and combine (forward)", CollectiveKind::AllToAll,
        GroupKind::Expert, sent, 2 * layers * accum, false);
    add("dispatch and combine gradients (backward)", CollectiveKind::AllToAll,
        GroupKind::Expert, sent, 2 * layers * accum, false);
    add("gate gradients (backward)", CollectiveKind::AllToAll,
        GroupKind::Expert, a * tokens * c.topK, layers * accum, false);
    if (training.activationCheckpointing == ActivationCheckpointing::Full)
      add("token dispatch and combine (recompute)", CollectiveKind::AllToAll,
          GroupKind::Expert, sent, 2 * layers * accum, false);
  }
  add("embedding gradients", CollectiveKind::ReduceScatter, GroupKind::Shard,
      gradBytes * embedding, accum, true);
  add("decoder-layer gradients", CollectiveKind::ReduceScatter,
      GroupKind::Shard, gradBytes * decoder, layers * accum, true);
  add("head gradients", CollectiveKind::ReduceScatter, GroupKind::Shard,
      gradBytes * head, accum, true);
  const int64_t denseShard = placement.heldElements(ParameterKind::Dense) +
                             placement.heldElements(ParameterKind::Embedding);
  const int64_t expertShard = placement.heldElements(ParameterKind::Expert);
  // With P = 1 the replica group is the dense replica group, and the
  // experts' gradient shards are reduced with the dense ones.
  add(p > 1 ? "dense gradient shards" : "gradient shards",
      CollectiveKind::AllReduce, GroupKind::DenseReplica,
      4 * (p > 1 ? denseShard : denseShard + expertShard), 1, true);
  if (p > 1)
    add("expert gradient shards", CollectiveKind::AllReduce, GroupKind::Replica,
        4 * expertShard, 1, true);
  // The clipping norm: the local norms of the dense shards gathered over
  // H, those of the expert shards over H, then P (docs/partitioning.md).
  add("gradient-norm partials of the dense shards", CollectiveKind::AllGather,
      GroupKind::Shard, 4 * hs, 1, false);
  if (p > 1) {
    add("gradient-norm partials of the expert shards",
        CollectiveKind::AllGather, GroupKind::Shard, 4 * hs, 1, false);
    add("gradient-norm partials of the expert shards",
        CollectiveKind::AllGather, GroupKind::Expert, 4 * hs * p, 1, false);
  }
  if (program) {
    // Everything but the token all-to-alls (the plan adds the recompute of
    // full checkpointing to those): parameter gathers and gradient
    // reduce-scatters per micro-step, the gradient all-reduces, the norm's
    // partials and the world's losses and statistics once per step.
    for (const ProgramCollective &c : program->collectives) {
      if (c.kind == CollectiveKind::AllToAll)
        continue;
      const bool world = c.group == GroupKind::World;
      std::string what =
          c.kind == CollectiveKind::AllGather
              ? (c.perMicroStep ? "parameters" : "gradient-norm partials")
          : c.kind == CollectiveKind::ReduceScatter ? "gradients"
          : world                                   ? "losses and statistics"
                                                    : "gradient shards";
      add(what + " (program)", c.kind, c.group, c.bytes,
          c.perMicroStep ? c.calls * accum : c.calls,
          /*overlapped=*/c.perMicroStep ||
              (c.kind == CollectiveKind::AllReduce && !world),
          /*fromProgram=*/true);
    }
  }
  // The plan's collectives: the program's, with the analytic token
  // all-to-alls (the program has no recompute); or the analytic model's.
  if (program) {
    plan.collectives = std::move(programCollectives);
    for (const Collective &coll : analytic)
      if (coll.kind == CollectiveKind::AllToAll)
        plan.collectives.push_back(coll);
    plan.analyticCollectives = std::move(analytic);
  } else {
    plan.collectives = std::move(analytic);
  }

  // Step time.
  StepEstimate &step = plan.step;
  step.gradientAccumulation = accumulation;
  step.tokens = accumulation * w * tokens;
  const int64_t active = plan.model.numActiveParameters();
  const ModelFlops flops =
      modelFlops(active, layers, c.numHeads * c.headDim,
                 training.microBatchSize, training.seqLength);
  const double perMicro = flops.total();
  double recompute = 0;
  if (training.activationCheckpointing == ActivationCheckpointing::Full)
    recompute = 2.0 * double(active) * tokens + flops.attention / 3;
  step.modelFlopsPerRank = accumulation * perMicro;
  step.hardwareFlopsPerRank = accumulation * (perMicro + recompute);
  step.computeSeconds =
      step.hardwareFlopsPerRank / (gpu.peakFlops * efficiency.compute);
  if (training.activationCheckpointing == ActivationCheckpointing::Selective) {
    // Memory-bound recompute: norms read and write h, SwiGLU reads 2kI and
    // writes kI, per token and layer.
    const double bytes = double(accumulation) * layers * tokens * a *
                         (4.0 * c.hiddenSize + 3.0 * c.topK *
                                                   c.intermediateSize);
    step.computeSeconds += bytes / gpu.memoryBandwidth;
  }
  for (const Collective &coll : plan.collectives) {
    if (coll.overlapped)
      step.shardingSeconds += coll.seconds;
    else
      step.dispatchSeconds += coll.seconds;
  }
  step.exposedShardingSeconds =
      std::max(0.0, step.shardingSeconds - step.computeSeconds);
  // AdamW reads master, gradient and both moments and writes master, moments
  // (and the bf16 copy): 30 bytes per element in bf16, 28 in fp32.
  // Every rank updates its padded shards.
  step.optimizerSeconds = double(placement.heldElements()) * (bf16 ? 30 : 28) /
                          gpu.memoryBandwidth;
  step.stepSeconds = step.computeSeconds + step.dispatchSeconds +
                     step.exposedShardingSeconds + step.optimizerSeconds;
  step.tokensPerSecond = step.tokens / step.stepSeconds;
  step.modelTflopsPerGpu = step.modelFlopsPerRank / step.stepSeconds / 1e12;
  return plan;
}

static std::string gib(int64_t bytes) {
  return llvm::formatv("{0:f1} GiB", double(bytes) / double(1 << 30)).str();
}

llvm::Expected<std::vector<Recommendation>>
moec::plan::recommend(const ModelDescription &model,
                      const TrainingJob &training, int64_t gpusPerNode,
                      const GpuSpec &gpu, const Efficiency &efficiency,
                      MeasureProgram measure) {
  const int64_t budget = programBudgetBytes(training, gpu);
  const int64_t w = training.worldSize, e = model.config.numExperts;
  if (w < 1)
    return fail(llvm::formatv("world_size {0} must be at least 1", w));
  std::vector<Recommendation> fitting, others;
  for (int64_t p = 1; p <= std::min(w, e); ++p) {
    if (w % p != 0 || e % p != 0)
      continue;
    const int64_t dp = w / p;
    for (int64_t h = 1; h <= dp; ++h) {
      if (dp % h != 0)
        continue;
      for (ActivationCheckpointing ckpt :
           {ActivationCheckpointing::None, ActivationCheckpointing::Selective,
            ActivationCheckpointing::Full}) {
        TrainingJob candidate = training;
        candidate.expertParallelDegree = p;
        candidate.hybridShardDegree = h;
        candidate.shardingStrategy = h == dp  ? ShardingStrategy::FullShard
                                     : h == 1 ? ShardingStrategy::NoShard
                                              : ShardingStrategy::HybridShard;
        candidate.activationCheckpointing = ckpt;
        llvm::Expected<TrainingPlan> plan =
            makePlan(model, candidate, gpusPerNode, gpu, efficiency);
        if (!plan)
          return plan.takeError(); // the batch or the GPU is wrong for all
        // The compiled program's memory, where its parameters and moments
        // (which it holds whatever the activations) leave room for it.
        const MemoryBreakdown &analytic = plan->peakMemory();
        const int64_t states = analytic.computeParams +
                               analytic.masterParams +
                               analytic.optimizerStates;
        bool measured = false;
        if (measure && states <= budget) {
          llvm::Expected<ProgramMemory> memory = measure(candidate);
          if (!memory)
            return memory.takeError();
          plan = makePlan(model, candidate, gpusPerNode, gpu, efficiency,
                          nullptr, &*memory);
          if (!plan)
            return plan.takeError();
          measured = true;
        }
        const MemoryBreakdown &mem = plan->peakMemory();
        const StepEstimate &st = plan->step;
        // What decides the fit: the program's total within the budget, or
        // the analytic total within the GPU's memory.
        const int64_t total =
            measured ? plan->programMemory->total() : mem.total();
        const int64_t limit = measured ? budget : gpu.memoryBytes;
        std::string reason;
        if (plan->fits) {
          reason = llvm::formatv(
              "fits with {0} free{7}; compute {1:f0} ms{2}, all-to-all {3:f0} "
              "ms {4}, sharding traffic {5:f0} ms ({6:f0} ms not hidden)",
              gib(limit - total), st.computeSeconds * 1e3,
              ckpt == ActivationCheckpointing::Full ? " (recomputes the forward)" : "",
              st.dispatchSeconds * 1e3,
              p == 1 ? "(none: P = 1)"
              : plan->mesh.anyGroupCrossesNodes(GroupKind::Expert)
                  ? "across nodes"
                  : "inside a node",
              st.shardingSeconds * 1e3, st.exposedShardingSeconds * 1e3,
              measured ? " in the compiled program's budget" : "");
          fitting.push_back({std::move(*plan), std::move(reason)});
        } else if (measured) {
          const ProgramMemory &pm = *plan->programMemory;
          reason = llvm::formatv(
              "the compiled program needs {0}, {1} more than the budget {2} "
              "(state {3}, arena {4}, scratch {5})",
              gib(total), gib(total - budget), gib(budget), gib(pm.state),
              gib(pm.arena), gib(pm.scratch));
          others.push_back({std::move(*plan), std::move(reason)});
        } else if (measure) {
          reason = llvm::formatv(
              "parameters and AdamW moments alone take {0} of the budget {1} "
              "(not compiled)",
              gib(states), gib(budget));
          others.push_back({std::move(*plan), std::move(reason)});
        } else {
          reason = llvm::formatv(
              "needs {0}, {1} more than the gpu's {2} (model states {3}, "
              "activations {4})",
              gib(mem.total()), gib(mem.total() - gpu.memoryBytes),
              gib(gpu.memoryBytes), gib(mem.persistent()),
              gib(mem.activations));
          others.push_back({std::move(*plan), std::move(reason)});
        }
      }
    }
  }
  std::stable_sort(fitting.begin(), fitting.end(),
                   [](const Recommendation &x, const Recommendation &y) {
                     return x.plan.step.stepSeconds < y.plan.step.stepSeconds;
                   });
  // The bytes a candidate was judged by: its program's when measured.
  auto judged = [](const TrainingPlan &plan) {
    return plan.programMemory ? plan.programMemory->total()
                              : plan.peakMemory().total();
  };
  std::stable_sort(others.begin(), others.end(),
                   [&](const Recommendation &x, const Recommendation &y) {
                     return judged(x.plan) < judged(y.plan);
                   });
  for (Recommendation &r : others)
    fitting.push_back(std::move(r));
  return fitting;
}
