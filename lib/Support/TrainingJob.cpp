//===- TrainingJob.cpp - Reading and checking a training job --------------===//
//
// One table lists every key of a TrainingJob: its spelling, its field, its
// type and its range. The config reader, the flags and the pipeline options
// all set keys through setTrainingJobValue, so a key is checked the same way
// wherever it is written.
//
//===----------------------------------------------------------------------===//

#include "moec/Support/TrainingJob.h"
#include "moert/JsonKeys.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/StringSwitch.h"
#include "llvm/Support/MemoryBuffer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

using namespace moec;
using llvm::StringRef;
namespace json = llvm::json;

llvm::StringRef moec::stringifyShardingStrategy(ShardingStrategy strategy) {
  switch (strategy) {
  case ShardingStrategy::FullShard: return "full_shard";
  case ShardingStrategy::HybridShard: return "hybrid_shard";
  case ShardingStrategy::NoShard: return "no_shard";
  }
  llvm_unreachable("unknown sharding strategy");
}

std::optional<ShardingStrategy>
moec::symbolizeShardingStrategy(llvm::StringRef name) {
  return llvm::StringSwitch<std::optional<ShardingStrategy>>(name)
      .Case("full_shard", ShardingStrategy::FullShard)
      .Case("hybrid_shard", ShardingStrategy::HybridShard)
      .Case("no_shard", ShardingStrategy::NoShard)
      .Default(std::nullopt);
}

llvm::StringRef moec::stringifyParamDtype(ParamDtype dtype) {
  return dtype == ParamDtype::Bf16 ? "bf16" : "fp32";
}

std::optional<ParamDtype> moec::symbolizeParamDtype(llvm::StringRef name) {
  return llvm::StringSwitch<std::optional<ParamDtype>>(name)
      .Case("fp32", ParamDtype::Fp32)
      .Case("bf16", ParamDtype::Bf16)
      .Default(std::nullopt);
}

namespace {

llvm::Error error(const std::string &message) {
  return llvm::createStringError(message);
}

/// How a number is bounded.
enum class Bound {
  /// >= 0.
  NonNegative,
  /// > 0.
  Positive,
  /// In [0, 1).
  UnitInterval,
};

/// The names of an enum's values, in order, and its field's accessors.
struct EnumField {
  std::vector<StringRef> (*names)();
  /// Sets the field to the value named `name`; false if there is none.
  bool (*set)(TrainingJob &, StringRef name);
  StringRef (*get)(const TrainingJob &);
  /// The values a boolean stands for, where the key has a boolean spelling
  /// too (SMP's `activation_checkpointing`); empty otherwise.
  StringRef whenTrue = {}, whenFalse = {};
};

enum class Kind { Int, Number, Bool, Enum, String, CustomOps };

/// One key: where its value goes and what it may be.
struct KeyInfo {
  StringRef name;
  Kind kind;
  StringRef help;
  int64_t TrainingJob::*intField = nullptr;
  /// Int: the smallest and the largest value allowed.
  int64_t intMin = 0, intMax = std::numeric_limits<int64_t>::max();
  double TrainingJob::*numberField = nullptr;
  Bound bound = Bound::NonNegative;
  /// Number: the largest value allowed (a quantity converted to bytes or
  /// seconds must stay far from int64's limit).
  double numberMax = std::numeric_limits<double>::infinity();
  bool TrainingJob::*boolField = nullptr;
  std::string TrainingJob::*stringField = nullptr;
  EnumField enumField{};
  /// Another spelling of this canonical key.
  StringRef aliasOf = {};
  /// Spelt only in configs: no flag, no pipeline option.
  bool configOnly = false;
};

KeyInfo intKey(StringRef name, int64_t TrainingJob::*field, int64_t min,
               StringRef help,
               int64_t max = std::numeric_limits<int64_t>::max()) {
  KeyInfo k{name, Kind::Int, help};
  k.intField = field;
  k.intMin = min;
  k.intMax = max;
  return k;
}

KeyInfo numberKey(StringRef name, double TrainingJob::*field, Bound bound,
                  StringRef help,
                  double max = std::numeric_limits<double>::infinity()) {
  KeyInfo k{name, Kind::Number, help};
  k.numberField = field;
  k.bound = bound;
  k.numberMax = max;
  return k;
}

KeyInfo boolKey(StringRef name, bool TrainingJob::*field, StringRef help) {
  KeyInfo k{name, Kind::Bool, help};
  k.boolField = field;
  return k;
}

KeyInfo stringKey(StringRef name, std::string TrainingJob::*field,
                  StringRef help) {
  KeyInfo k{name, Kind::String, help};
  k.stringField = field;
  return k;
}

KeyInfo enumKey(StringRef name, EnumField field, StringRef help) {
  KeyInfo k{name, Kind::Enum, help};
  k.enumField = field;
  return k;
}

/// `custom_ops`, the only key of its kind; its flag is `--custom-op`.
KeyInfo customOpsKey() {
  KeyInfo k{"custom_ops", Kind::CustomOps,
            "what ops of ONNX domains moec does not know stand for, "
            "{\"DOMAIN::NAME\": \"grouped_matmul\"}, in the model the "
            "command reads (a config key; the flag is --custom-op "
            "DOMAIN::NAME=KIND, and the two merge)"};
  k.configOnly = true;
  return k;
}

KeyInfo alias(KeyInfo canonical, StringRef name) {
  canonical.aliasOf = canonical.name;
  canonical.name = name;
  return canonical;
}

/// An EnumField over `stringify`/`symbolize` of an enum with values 0..max.
template <typename E, StringRef (*stringify)(E),
          std::optional<E> (*symbolize)(StringRef), E TrainingJob::*field,
          unsigned numValues>
EnumField enumField() {
  return EnumField{
      [] {
        std::vector<StringRef> names;
        for (unsigned i = 0; i < numValues; ++i)
          names.push_back(stringify(static_cast<E>(i)));
        return names;
      },
      [](TrainingJob &job, StringRef name) {
        std::optional<E> value = symbolize(name);
        if (value)
          job.*field = *value;
        return value.has_value();
      },
      [](const TrainingJob &job) { return stringify(job.*field); }};
}

/// `field`, also spelt true (`whenTrue`) and false (`whenFalse`).
EnumField withBooleans(EnumField field, StringRef whenTrue,
                       StringRef whenFalse) {
  field.whenTrue = whenTrue;
  field.whenFalse = whenFalse;
  return field;
}

const std::vector<KeyInfo> &keyTable() {
  using J = TrainingJob;
  namespace moe = mlir::moe;
  static const std::vector<KeyInfo> table = [] {
    constexpr unsigned checkpointingPolicies =
        moe::getMaxEnumValForActivationCheckpointing() + 1;
    KeyInfo randomSeed = intKey(
        "random_seed", &J::randomSeed, 0,
        "seed of the initialisation (the same global parameters for any "
        "parallel layout)");
    return std::vector<KeyInfo>{
        intKey("micro_batch_size", &J::microBatchSize, 1,
               "sequences per rank and step", kMaxTokensPerRank),
        intKey("seq_length", &J::seqLength, 2, "tokens per sequence",
               kMaxTokensPerRank),
        intKey("global_batch_size", &J::globalBatchSize, 0,
               "sequences per optimizer step over all ranks (0: world_size "
               "times micro_batch_size; more means gradient accumulation)"),
        boolKey("bf16", &J::bf16, "forward and backward in bf16"),
        enumKey("param_dtype",
                enumField<ParamDtype, stringifyParamDtype, symbolizeParamDtype,
                          &J::paramDtype, 2>(),
                "parameters, gradients and AdamW moments: fp32 (master "
                "weights) or bf16 (needs bf16)"),
        enumKey("grad_dtype",
                enumField<ParamDtype, stringifyParamDtype, symbolizeParamDtype,
                          &J::gradDtype, 2>(),
                "weight gradients under fp32 master weights: fp32, or bf16 "
                "as autograd gives them for bf16 compute copies, widened "
                "where the norm and AdamW read them (needs bf16; one rank)"),
        boolKey("fp8", &J::fp8, "fp8 GEMMs"),
        enumKey("moe_load_balancing",
                enumField<moe::LoadBalancing, moe::stringifyLoadBalancing,
                          moe::symbolizeLoadBalancing, &J::loadBalancing,
                          moe::getMaxEnumValForLoadBalancing() + 1>(),
                "how the router balances tokens across experts"),
        numberKey("router_aux_loss_coef", &J::routerAuxLossCoef,
                  Bound::NonNegative, "weight of the load-balancing loss"),
        numberKey("router_z_loss_coef", &J::routerZLossCoef, Bound::NonNegative,
                  "weight of the router z-loss (0: off)"),
        boolKey("moe_all_to_all_dispatcher", &J::moeAllToAllDispatcher,
                "dispatch tokens by all-to-all (false: all-gather and "
                "reduce-scatter)"),
        boolKey("global_token_shuffle", &J::globalTokenShuffle,
                "permute tokens across an expert group before routing"),
        numberKey("weight_decay", &J::weightDecay, Bound::NonNegative,
                  "AdamW decoupled weight decay"),
        numberKey("beta1", &J::beta1, Bound::UnitInterval, "AdamW beta1"),
        numberKey("beta2", &J::beta2, Bound::UnitInterval, "AdamW beta2"),
        numberKey("adam_epsilon", &J::adamEpsilon, Bound::Positive,
                  "AdamW epsilon"),
        numberKey("max_grad_norm", &J::maxGradNorm, Bound::NonNegative,
                  "clip gradients to this global norm (0: off)"),
        intKey("skip_nonfinite_steps", &J::skipNonfiniteSteps, 0,
               "steps with a non-finite gradient norm skipped (the optimizer "
               "state left as it was) before the run stops"),
        numberKey("initializer_range", &J::initializerRange, Bound::Positive,
                  "std of the normal initialisers"),
        randomSeed,
        alias(randomSeed, "seed"),
        boolKey("delayed_param", &J::delayedParam,
                "create parameters from the seed where they live (false: "
                "start from the model file's weights)"),
        boolKey("recompute_experts", &J::recomputeExperts,
                "the experts' backward recomputes gate/up instead of saving "
                "them"),
        boolKey("keep_param_copies", &J::keepParamCopies,
                "keep bf16 copies of fp32 masters across steps"),
        boolKey("store_param_remainders", &J::storeParamRemainders,
                "compiled programs keep each fp32 master as its bf16 copy "
                "and the low 16 bits (lossless; AdamW moves 4 bytes of it "
                "instead of 6; one rank)"),
        enumKey(
            "activation_checkpointing",
            withBooleans(
                enumField<ActivationCheckpointing,
                          stringifyActivationCheckpointing,
                          symbolizeActivationCheckpointing,
                          &J::activationCheckpointing, checkpointingPolicies>(),
                "full", "none"),
            "what the backward recomputes: none, selective (norms, "
            "rotary, element-wise work, the router), full (each decoder "
            "layer from its input), auto (per layer, the least time "
            "that fits memory_budget_gib); true means full, false none"),
        numberKey("memory_budget_gib", &J::memoryBudgetGib, Bound::NonNegative,
                  "per-rank memory activation_checkpointing auto fits the "
                  "step into, GiB (0: the GPU's memory less 10%)", 1e6),
        boolKey("sm_activation_offloading", &J::smActivationOffloading,
                "keep saved activations in host memory"),
        intKey("activation_loading_horizon", &J::activationLoadingHorizon, 1,
               "layers prefetched ahead when offloading", kMaxRanks),
        numberKey("host_link_gb_per_s", &J::hostLinkGbPerS, Bound::NonNegative,
                  "host <-> device copy rate, GB/s each way, that "
                  "activation_checkpointing auto weighs offloading with (0: "
                  "the H200's measured 55)", 1e6),
        intKey("world_size", &J::worldSize, 1, "number of ranks (GPUs)",
               kMaxRanks),
        intKey("expert_parallel_degree", &J::expertParallelDegree, 1,
               "ranks that split the experts", kMaxRanks),
        intKey("hybrid_shard_degree", &J::hybridShardDegree, 0,
               "ranks that shard model states (0: automatic)", kMaxRanks),
        enumKey("sharding_strategy",
                enumField<ShardingStrategy, stringifyShardingStrategy,
                          symbolizeShardingStrategy, &J::shardingStrategy,
                          kNumShardingStrategies>(),
                "how model states are sharded"),
        boolKey("keep_one_rank_collectives", &J::keepOneRankCollectives,
                "partition the step even for one rank and keep the "
                "collectives of one-rank groups (to verify the collective "
                "path: at world_size 1 they run on a one-rank NCCL "
                "communicator)"),
        stringKey("checkpoint_dir", &J::checkpointDir,
                  "save checkpoints here (and resume from here)"),
        stringKey("init_from", &J::initFrom,
                  "start from this Hugging Face Mixtral checkpoint folder"),
        customOpsKey(),
    };
  }();
  return table;
}

/// `micro_batch_size` -> `micro-batch-size`.
std::string flagSpelling(StringRef key) {
  return llvm::join(llvm::split(key, '_'), "-");
}

const KeyInfo *lookupKey(StringRef name) {
  for (const KeyInfo &key : keyTable())
    if (key.name == name)
      return &key;
  return nullptr;
}

StringRef canonicalName(const KeyInfo &key) {
  return key.aliasOf.empty() ? key.name : key.aliasOf;
}

/// A JSON value as the user wrote it, for messages.
std::string show(const json::Value &value) {
  if (std::optional<StringRef> s = value.getAsString())
    return "\"" + s->str() + "\"";
  if (std::optional<double> d = value.getAsNumber())
    return fmt::format("{}", *d);
  std::string text;
  llvm::raw_string_ostream os(text);
  os << value;
  return text;
}

std::string describeEnum(const EnumField &field) {
  return llvm::join(field.names(), ", ");
}

std::string valueDescription(const KeyInfo &key) {
  switch (key.kind) {
  case Kind::Int: return "int";
  case Kind::Number: return "number";
  case Kind::Bool: return "true|false";
  case Kind::String: return "string";
  case Kind::CustomOps:
    return "{\"DOMAIN::NAME\": \"grouped_matmul\", ...}";
  case Kind::Enum:
    return llvm::join(key.enumField.names(), "|") +
           (key.enumField.whenTrue.empty() ? "" : "|true|false");
  }
  llvm_unreachable("unknown key kind");
}

/// Sets `key` to `value`; errors call the key `name` (as the user spelt it).
llvm::Error setValue(TrainingJob &job, const KeyInfo &key,
                     const json::Value &value, StringRef name) {
  switch (key.kind) {
  case Kind::Int: {
    std::optional<double> number = value.getAsNumber();
    if (!number)
      return error(fmt::format("{} must be an integer, not {}", name.str(),
                               show(value)));
    std::optional<int64_t> integer = value.getAsInteger();
    if (!integer)
      return error(fmt::format("{} {} must be an integer", name.str(),
                               show(value)));
    if (*integer < 0 && key.intMin == 0)
      return error(
          fmt::format("{} {} must not be negative", name.str(), *integer));
    if (*integer < key.intMin)
      return error(fmt::format("{} {} must be at least {}", name.str(),
                               *integer, key.intMin));
    if (*integer > key.intMax)
      return error(fmt::format("{} {} is more than moec's limit of {}",
                               name.str(), *integer, key.intMax));
    job.*key.intField = *integer;
    return llvm::Error::success();
  }
  case Kind::Number: {
    std::optional<double> number = value.getAsNumber();
    if (!number || !std::isfinite(*number))
      return error(fmt::format("{} must be a number, not {}", name.str(),
                               show(value)));
    double v = *number;
    switch (key.bound) {
    case Bound::NonNegative:
      if (v < 0)
        return error(
            fmt::format("{} {} must not be negative", name.str(), v));
      break;
    case Bound::Positive:
      if (v <= 0)
        return error(fmt::format("{} {} must be positive", name.str(), v));
      break;
    case Bound::UnitInterval:
      if (v < 0 || v >= 1)
        return error(fmt::format("{} {} must be in [0, 1)", name.str(), v));
      break;
    }
    if (v > key.numberMax)
      return error(fmt::format("{} {} is more than moec's limit of {}",
                               name.str(), v, key.numberMax));
    job.*key.numberField = v;
    return llvm::Error::success();
  }
  case Kind::Bool: {
    std::optional<bool> b = value.getAsBoolean();
    if (!b)
      return error(fmt::format("{} must be true or false, not {}", name.str(),
                               show(value)));
    job.*key.boolField = *b;
    return llvm::Error::success();
  }
  case Kind::String: {
    std::optional<StringRef> s = value.getAsString();
    if (!s)
      return error(fmt::format("{} must be a string, not {}", name.str(),
                               show(value)));
    job.*key.stringField = s->str();
    return llvm::Error::success();
  }
  case Kind::CustomOps: {
    const json::Object *object = value.getAsObject();
    if (!object)
      return error(fmt::format("{} must be an object of \"DOMAIN::NAME\": "
                               "\"KIND\" members, not {}",
                               name.str(), show(value)));
    // In name order, so that the first error is always the same one.
    std::vector<StringRef> ops;
    for (const auto &member : *object)
      ops.push_back(member.first);
    llvm::sort(ops);
    std::vector<CustomOpMapping> mappings;
    for (StringRef op : ops) {
      const json::Value &kind = *object->get(op);
      std::optional<StringRef> text = kind.getAsString();
      if (!text)
        return error(fmt::format("{} \"{}\" must be a kind (grouped_matmul), "
                                 "not {}",
                                 name.str(), op.str(), show(kind)));
      llvm::Expected<CustomOpMapping> mapping = makeCustomOpMapping(op, *text);
      if (!mapping)
        return error(fmt::format("{} \"{}\": \"{}\": {}", name.str(), op.str(),
                                 text->str(),
                                 llvm::toString(mapping.takeError())));
      mapping->origin =
          fmt::format("custom_ops {{\"{}\": \"{}\"}}", op.str(), text->str());
      mappings.push_back(std::move(*mapping));
    }
    job.customOps = std::move(mappings);
    return llvm::Error::success();
  }
  case Kind::Enum: {
    std::optional<StringRef> s = value.getAsString();
    // A boolean, written as JSON or as the text of a flag, where the key
    // has a boolean spelling.
    std::optional<bool> b = value.getAsBoolean();
    if (!b && s && (*s == "true" || *s == "false"))
      b = *s == "true";
    if (b && !key.enumField.whenTrue.empty())
      s = *b ? key.enumField.whenTrue : key.enumField.whenFalse;
    if (!s)
      return error(fmt::format("{} must be one of {}, not {}", name.str(),
                               describeEnum(key.enumField), show(value)));
    if (!key.enumField.set(job, *s))
      return error(fmt::format("{} '{}' is not one of {}", name.str(),
                               s->str(), describeEnum(key.enumField)));
    return llvm::Error::success();
  }
  }
  llvm_unreachable("unknown key kind");
}

std::string knownKeys() {
  std::vector<StringRef> names;
  for (const KeyInfo &key : keyTable())
    names.push_back(key.name);
  return llvm::join(names, ", ");
}

/// Records that `canonical` was set explicitly.
void markExplicit(TrainingJob &job, StringRef canonical) {
  if (!job.isExplicit(canonical))
    job.explicitKeys.push_back(canonical.str());
}

} // namespace

bool TrainingJob::isExplicit(llvm::StringRef key) const {
  return llvm::is_contained(explicitKeys, key);
}

llvm::Error TrainingJob::validate() const {
  if (paramDtype == ParamDtype::Bf16 && !bf16)
    return error("param_dtype bf16 needs bf16 true (a bf16 model computes "
                 "in bf16)");
  if (gradDtype == ParamDtype::Bf16 && !bf16)
    return error("grad_dtype bf16 needs bf16 true (the gradients of bf16 "
                 "compute copies)");
  if (gradDtype == ParamDtype::Bf16 &&
      (worldSize > 1 || keepOneRankCollectives))
    return error(fmt::format(
        "grad_dtype bf16 is for one-rank steps: a partitioned step reduces "
        "its gradients in fp32 (world_size {}, keep_one_rank_collectives {})",
        worldSize, keepOneRankCollectives));
  if (storeParamRemainders &&
      (!bf16 || paramDtype != ParamDtype::Fp32 || !keepParamCopies))
    return error(fmt::format(
        "store_param_remainders splits fp32 masters with kept bf16 copies: "
        "it needs bf16 true, param_dtype fp32 and keep_param_copies true "
        "(they are {}, {} and {})",
        bf16, stringifyParamDtype(paramDtype).str(), keepParamCopies));
  if (storeParamRemainders && (worldSize > 1 || keepOneRankCollectives))
    return error(fmt::format(
        "store_param_remainders is for one-rank steps (world_size {}, "
        "keep_one_rank_collectives {})",
        worldSize, keepOneRankCollectives));
  if (memoryBudgetGib != 0 &&
      activationCheckpointing != ActivationCheckpointing::Auto)
    return error(fmt::format(
        "memory_budget_gib {} needs activation_checkpointing auto (it is {})",
        memoryBudgetGib,
        stringifyActivationCheckpointing(activationCheckpointing).str()));
  if (hostLinkGbPerS != 0 &&
      (activationCheckpointing != ActivationCheckpointing::Auto ||
       !smActivationOffloading))
    return error(fmt::format(
        "host_link_gb_per_s {} needs activation_checkpointing auto and "
        "sm_activation_offloading true (they are {} and {})",
        hostLinkGbPerS,
        stringifyActivationCheckpointing(activationCheckpointing).str(),
        smActivationOffloading));
  return llvm::Error::success();
}

int64_t moec::defaultMemoryBudgetBytes() {
  const int64_t h200Bytes = int64_t(143771) << 20;
  return h200Bytes / 10 * 9;
}

int64_t moec::getMemoryBudgetBytes(const TrainingJob &job) {
  if (job.memoryBudgetGib == 0)
    return defaultMemoryBudgetBytes();
  return static_cast<int64_t>(job.memoryBudgetGib * double(int64_t(1) << 30));
}

llvm::json::Object TrainingJob::toJson() const {
  json::Object object;
  for (const KeyInfo &key : keyTable()) {
    if (!key.aliasOf.empty())
      continue;
    switch (key.kind) {
    case Kind::Int: object[key.name] = this->*key.intField; break;
    case Kind::Number: object[key.name] = this->*key.numberField; break;
    case Kind::Bool: object[key.name] = this->*key.boolField; break;
    case Kind::String: object[key.name] = this->*key.stringField; break;
    case Kind::Enum: object[key.name] = key.enumField.get(*this).str(); break;
    case Kind::CustomOps: {
      json::Object ops;
      for (const CustomOpMapping &mapping : customOps)
        ops[mapping.name()] = stringifyCustomOpKind(mapping.kind).str();
      object[key.name] = std::move(ops);
      break;
    }
    }
  }
  return object;
}

llvm::ArrayRef<TrainingJobKey> moec::trainingJobKeys() {
  static const std::vector<TrainingJobKey> keys = [] {
    std::vector<TrainingJobKey> keys;
    for (const KeyInfo &key : keyTable())
      keys.push_back(TrainingJobKey{
          key.name, key.configOnly ? std::string() : flagSpelling(key.name),
          valueDescription(key),
          key.aliasOf.empty() ? key.help.str()
                              : "the same as " + flagSpelling(key.aliasOf),
          key.kind == Kind::Bool, key.aliasOf});
    return keys;
  }();
  return keys;
}

/// Sets the key spelt `name` (with underscores or dashes) to `value`.
static llvm::Error setSpelledValue(TrainingJob &job, StringRef name,
                                   const json::Value &value) {
  std::string canonical = name.str();
  std::replace(canonical.begin(), canonical.end(), '-', '_');
  const KeyInfo *key = lookupKey(canonical);
  if (!key)
    return error(fmt::format("unknown key '{}' (known: {})", name.str(),
                             knownKeys()));
  if (llvm::Error err = setValue(job, *key, value, name))
    return err;
  markExplicit(job, canonicalName(*key));
  return llvm::Error::success();
}

llvm::Error moec::setTrainingJobValue(TrainingJob &job, llvm::StringRef name,
                                      const llvm::json::Value &value) {
  return setSpelledValue(job, name, value);
}

llvm::Error moec::setTrainingJobText(TrainingJob &job, llvm::StringRef name,
                                     llvm::StringRef text) {
  std::string canonical = name.str();
  std::replace(canonical.begin(), canonical.end(), '-', '_');
  const KeyInfo *key = lookupKey(canonical);
  if (!key)
    return error(fmt::format("unknown key '{}' (known: {})", name.str(),
                             knownKeys()));
  switch (key->kind) {
  case Kind::Int:
  case Kind::Number:
  case Kind::CustomOps: {
    // A number or an object as JSON spells it; anything else is kept as a
    // string so that the error shows it.
    if (std::optional<std::string> deep = moert::checkJsonNesting(text))
      return error(fmt::format("{}: {}", name.str(), *deep));
    llvm::Expected<json::Value> value = json::parse(text);
    if (!value) {
      llvm::consumeError(value.takeError());
      return setSpelledValue(job, name, json::Value(text.str()));
    }
    if (std::optional<moert::DuplicateJsonKey> twice =
            moert::findDuplicateJsonKey(text))
      return error(fmt::format("{}: {}", name.str(), twice->describe()));
    return setSpelledValue(job, name, *value);
  }
  case Kind::Bool:
    if (text.empty() || text == "true")
      return setSpelledValue(job, name, true);
    if (text == "false")
      return setSpelledValue(job, name, false);
    return setSpelledValue(job, name, json::Value(text.str()));
  case Kind::Enum:
  case Kind::String:
    return setSpelledValue(job, name, json::Value(text.str()));
  }
  llvm_unreachable("unknown key kind");
}

llvm::Error moec::readTrainingJobConfig(llvm::StringRef path,
                                        TrainingJob &job) {
  auto buffer = llvm::MemoryBuffer::getFile(path);
  if (!buffer)
    return error(fmt::format("cannot read config '{}': {}", path.str(),
                             buffer.getError().message()));
  return readTrainingJobConfigText((*buffer)->getBuffer(), path, job);
}

llvm::Error moec::readTrainingJobConfigText(llvm::StringRef text,
                                            llvm::StringRef path,
                                            TrainingJob &job) {
  if (std::optional<std::string> deep = moert::checkJsonNesting(text))
    return error(fmt::format("config '{}' is not a job config: {}",
                             path.str(), *deep));
  llvm::Expected<json::Value> parsed = json::parse(text);
  if (!parsed)
    return error(fmt::format("config '{}' is not JSON: {}", path.str(),
                             llvm::toString(parsed.takeError())));
  const json::Object *object = parsed->getAsObject();
  if (!object)
    return error(
        fmt::format("config '{}' must be a JSON object", path.str()));
  if (std::optional<moert::DuplicateJsonKey> twice =
          moert::findDuplicateJsonKey(text))
    return error(
        fmt::format("config '{}': {}", path.str(), twice->describe()));
  // In the table's order, so that the first error is always the same one.
  std::vector<StringRef> names;
  for (const auto &entry : *object)
    names.push_back(entry.first);
  llvm::sort(names);
  for (StringRef name : names)
    if (!lookupKey(name))
      return error(fmt::format("config '{}': unknown key '{}' (known: {})",
                               path.str(), name.str(), knownKeys()));
  for (const KeyInfo &key : keyTable()) {
    const json::Value *value = object->get(key.name);
    if (!value)
      continue;
    if (!key.aliasOf.empty()) {
      const json::Value *canonical = object->get(key.aliasOf);
      if (canonical && *canonical != *value)
        return error(fmt::format(
            "config '{}': {} {} and {} {} are one option with two values",
            path.str(), key.aliasOf.str(), show(*canonical), key.name.str(),
            show(*value)));
    }
    if (llvm::Error err = setTrainingJobValue(job, key.name, *value))
      return error(fmt::format("config '{}': {}", path.str(),
                               llvm::toString(std::move(err))));
  }
  if (llvm::Error err = job.validate())
    return error(fmt::format("config '{}': {}", path.str(),
                             llvm::toString(std::move(err))));
  return llvm::Error::success();
}

llvm::Error moec::checkImplemented(const TrainingJob &job,
                                   JobConsumer consumer) {
  StringRef who = consumer == JobConsumer::Plan    ? "moec plan"
                  : consumer == JobConsumer::Train ? "moec train"
                                                   : "moec compile";
  if (job.seqLength > kMaxTokensPerRank / job.microBatchSize)
    return error(fmt::format("micro_batch_size {} times seq_length {} is more "
                             "than moec's limit of {} tokens per rank",
                             job.microBatchSize, job.seqLength,
                             kMaxTokensPerRank));
  auto refuse = [&](StringRef key, const std::string &value,
                    StringRef why) {
    return error(fmt::format("{} {} is not implemented yet by {} ({})",
                             key.str(), value, who.str(), why.str()));
  };
  // A key of the program's run, which `moec compile` cannot bake in.
  auto atRunTime = [&](StringRef key, const std::string &value,
                       StringRef programFlag) {
    return error(fmt::format(
        "{} {} is a setting of the program's run, not of its compilation: "
        "give it to train_step when it runs ({} {})",
        key.str(), value, programFlag.str(), value));
  };
  auto flag = [](bool b) { return std::string(b ? "true" : "false"); };
  // Options no consumer implements yet.
  if (job.fp8)
    return refuse("fp8", "true", "bf16 and fp32 only");
  // The CPU reference and the compiled programs run any layout, with either
  // dispatcher and the token shuffle (docs/partitioning.md); the planner
  // models the all-to-all dispatcher without a shuffle.
  if (consumer == JobConsumer::Plan) {
    if (job.keepOneRankCollectives)
      return error("keep_one_rank_collectives true does not apply to moec "
                   "plan: a one-rank group's collective moves nothing, so a "
                   "plan is the same without it (moec compile and moec train "
                   "take it)");
    if (!job.moeAllToAllDispatcher)
      return refuse("moe_all_to_all_dispatcher", "false",
                    "tokens are dispatched by all-to-all");
    if (job.globalTokenShuffle)
      return refuse("global_token_shuffle", "true", "tokens are not shuffled");
    if (job.paramDtype == ParamDtype::Bf16)
      return refuse("param_dtype", "bf16", "plans assume fp32 master weights");
    if (job.gradDtype == ParamDtype::Bf16)
      return refuse("grad_dtype", "bf16", "plans assume fp32 gradients");
    return llvm::Error::success();
  }
  if (job.globalBatchSize != 0 &&
      job.globalBatchSize != job.worldSize * job.microBatchSize)
    return refuse("global_batch_size", std::to_string(job.globalBatchSize),
                  "no gradient accumulation: it must be 0 or world_size "
                  "times micro_batch_size");
  if (consumer == JobConsumer::Train) {
    if (job.paramDtype == ParamDtype::Bf16)
      return refuse("param_dtype", "bf16",
                    "the reference keeps fp32 master weights");
    if (job.storeParamRemainders)
      return refuse("store_param_remainders", "true",
                    "a storage choice of the compiled programs; the "
                    "reference keeps fp32 master weights and rounds its "
                    "copies to even");
    if (!job.checkpointDir.empty())
      return refuse("checkpoint_dir", "'" + job.checkpointDir + "'",
                    "it does not save checkpoints");
    return llvm::Error::success();
  }
  if (!job.delayedParam)
    return refuse("delayed_param", flag(false),
                  "programs create their parameters from the seed");
  // The compiled programs take these when they run.
  if (job.randomSeed != TrainingJob().randomSeed)
    return atRunTime("random_seed", std::to_string(job.randomSeed), "--seed");
  if (!job.checkpointDir.empty())
    return atRunTime("checkpoint_dir", "'" + job.checkpointDir + "'",
                     "--checkpoint-dir");
  if (job.skipNonfiniteSteps != 0)
    return atRunTime("skip_nonfinite_steps",
                     std::to_string(job.skipNonfiniteSteps),
                     "--skip-nonfinite-steps");
  return llvm::Error::success();
}

namespace {
/// An llvm::cl modifier that puts an option into several subcommands and a
/// category (cl::sub takes one subcommand at a time).
struct InSubcommands {
  llvm::ArrayRef<llvm::cl::SubCommand *> subcommands;
  llvm::cl::OptionCategory &category;

  void apply(llvm::cl::Option &option) const {
    for (llvm::cl::SubCommand *sub : subcommands)
      option.addSubCommand(*sub);
    option.addCategory(category);
  }
};
} // namespace

TrainingJobFlags::TrainingJobFlags(
    llvm::ArrayRef<llvm::cl::SubCommand *> subcommands,
    llvm::cl::OptionCategory &category) {
  namespace cl = llvm::cl;
  InSubcommands placement{subcommands, category};
  config = std::make_unique<cl::opt<std::string>>(
      "config",
      cl::desc("the job as JSON: an object of the keys the flags below "
               "spell with dashes (the flags override it)"),
      cl::value_desc("train.json"), placement);
  for (const TrainingJobKey &key : trainingJobKeys())
    flags.push_back(
        key.flag.empty()
            ? nullptr
            : std::make_unique<cl::opt<std::string>>(
                  llvm::StringRef(key.flag), cl::desc(key.help),
                  cl::value_desc(key.valueDescription),
                  key.isBool ? cl::ValueOptional : cl::ValueRequired,
                  placement));
}

TrainingJobFlags::~TrainingJobFlags() = default;

llvm::Error TrainingJobFlags::read(TrainingJob &job) const {
  if (config->getNumOccurrences())
    if (llvm::Error err = readTrainingJobConfig(*config, job))
      return err;
  llvm::ArrayRef<TrainingJobKey> keys = trainingJobKeys();
  for (auto [key, flag] : llvm::zip_equal(keys, flags)) {
    if (!flag || !flag->getNumOccurrences())
      continue;
    if (!key.aliasOf.empty()) {
      // Both spellings on one command line must agree.
      for (auto [other, otherFlag] : llvm::zip_equal(keys, flags))
        if (other.name == key.aliasOf && otherFlag &&
            otherFlag->getNumOccurrences() &&
            otherFlag->getValue() != flag->getValue())
          return error(fmt::format(
              "--{} {} and --{} {} are one option with two values",
              otherFlag->ArgStr.str(), otherFlag->getValue(),
              flag->ArgStr.str(), flag->getValue()));
    }
    if (llvm::Error err = setTrainingJobText(job, flag->ArgStr, *flag))
      return error("--" + llvm::toString(std::move(err)));
  }
  return job.validate();
}
