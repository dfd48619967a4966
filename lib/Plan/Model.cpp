//===- Model.cpp - A model's parameters as the planner sees them ----------===//
//
// See moec/Plan/Model.h. The presets mirror python/moec/presets.py; a lit
// test checks that the JSON files written from there describe the same
// models.
//
//===----------------------------------------------------------------------===//

#include "moec/Plan/Model.h"
#include "moert/JsonKeys.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"

#include <numeric>

using namespace moec;
using namespace moec::plan;

llvm::StringRef moec::plan::stringifyParameterKind(ParameterKind kind) {
  switch (kind) {
  case ParameterKind::Embedding: return "embedding";
  case ParameterKind::Dense: return "dense";
  case ParameterKind::Expert: return "expert";
  }
  llvm_unreachable("unknown parameter kind");
}

int64_t Parameter::numElements() const {
  return std::accumulate(shape.begin(), shape.end(), int64_t(1),
                         std::multiplies<int64_t>());
}

int64_t ModelDescription::numParameters() const {
  int64_t n = 0;
  for (const Parameter &p : parameters)
    n += p.numElements();
  return n;
}

int64_t ModelDescription::numParameters(ParameterKind kind) const {
  int64_t n = 0;
  for (const Parameter &p : parameters)
    if (p.kind == kind)
      n += p.numElements();
  return n;
}

int64_t ModelDescription::numActiveParameters() const {
  return numParameters(ParameterKind::Dense) +
         numParameters(ParameterKind::Expert) / config.numExperts *
             config.topK;
}

std::vector<int64_t> ModelDescription::units() const {
  std::vector<int64_t> result;
  for (int64_t u = -1; u <= config.numLayers; ++u)
    result.push_back(u);
  return result;
}

namespace {

/// Mixtral geometry with Hugging Face MixtralConfig's defaults.
ModelConfig mixtralDefaults() {
  ModelConfig c;
  c.vocabSize = 32000;
  c.hiddenSize = 4096;
  c.intermediateSize = 14336;
  c.numLayers = 32;
  c.numHeads = 32;
  c.numKeyValueHeads = 8;
  c.headDim = 128;
  c.numExperts = 8;
  c.topK = 2;
  c.ropeTheta = 1e6;
  c.rmsNormEps = 1e-5;
  return c;
}

/// Fills the parameter counts of a config built from numbers.
ModelConfig withCounts(ModelConfig c) {
  c.numParameters = c.numExpertParameters = 0;
  for (const Parameter &p : mixtralParameters(c)) {
    c.numParameters += p.numElements();
    if (p.kind == ParameterKind::Expert)
      c.numExpertParameters += p.numElements();
  }
  return c;
}

ModelConfig tinyConfig(int64_t experts) {
  ModelConfig c = mixtralDefaults();
  c.vocabSize = 256;
  c.hiddenSize = 32;
  c.intermediateSize = 64;
  c.numLayers = 2;
  c.numHeads = 4;
  c.numKeyValueHeads = 2;
  c.headDim = 8;
  c.numExperts = experts;
  return withCounts(c);
}

llvm::Error fail(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

} // namespace

llvm::ArrayRef<llvm::StringRef> moec::plan::presetNames() {
  static const llvm::StringRef names[] = {"tiny", "tiny-e8", "mixtral-8x7b",
                                          "mixtral-8x7b-2l"};
  return names;
}

std::optional<ModelConfig> moec::plan::getPreset(llvm::StringRef name) {
  if (name == "tiny")
    return tinyConfig(4);
  if (name == "tiny-e8")
    return tinyConfig(8);
  if (name == "mixtral-8x7b")
    return withCounts(mixtralDefaults());
  if (name == "mixtral-8x7b-2l") {
    ModelConfig c = mixtralDefaults();
    c.numLayers = 2;
    return withCounts(c);
  }
  return std::nullopt;
}

llvm::Expected<ModelConfig>
moec::plan::parseMixtralConfigJson(llvm::StringRef text) {
  if (std::optional<std::string> deep = moert::checkJsonNesting(text))
    return fail("not a model's config: " + *deep);
  llvm::Expected<llvm::json::Value> value = llvm::json::parse(text);
  if (!value)
    return fail("invalid JSON: " + llvm::toString(value.takeError()));
  const llvm::json::Object *object = value->getAsObject();
  if (!object)
    return fail("expected a JSON object of MixtralConfig fields");
  if (std::optional<moert::DuplicateJsonKey> twice =
          moert::findDuplicateJsonKey(text))
    return fail(twice->describe());
  ModelConfig c = mixtralDefaults();
  if (std::optional<llvm::StringRef> type = object->getString("model_type"))
    if (*type != "mixtral")
      return fail("model_type '" + *type + "' is not 'mixtral'");
  struct Field {
    const char *name;
    int64_t *slot;
  } fields[] = {{"vocab_size", &c.vocabSize},
                {"hidden_size", &c.hiddenSize},
                {"intermediate_size", &c.intermediateSize},
                {"num_hidden_layers", &c.numLayers},
                {"num_attention_heads", &c.numHeads},
                {"num_key_value_heads", &c.numKeyValueHeads},
                {"num_local_experts", &c.numExperts},
                {"num_experts_per_tok", &c.topK}};
  for (const Field &field : fields) {
    const llvm::json::Value *v = object->get(field.name);
    if (!v)
      continue;
    std::optional<int64_t> n = v->getAsInteger();
    if (!n || *n <= 0)
      return fail(llvm::formatv("{0} must be a positive integer", field.name));
    *field.slot = *n;
  }
  c.headDim = c.hiddenSize / c.numHeads;
  if (const llvm::json::Value *v = object->get("head_dim"))
    if (std::optional<int64_t> n = v->getAsInteger())
      c.headDim = *n;
  if (std::optional<double> theta = object->getNumber("rope_theta"))
    c.ropeTheta = *theta;
  if (std::optional<double> eps = object->getNumber("rms_norm_eps"))
    c.rmsNormEps = *eps;
  if (std::optional<int64_t> window = object->getInteger("sliding_window"))
    c.slidingWindow = *window;
  if (std::optional<bool> tied = object->getBoolean("tie_word_embeddings"))
    if (*tied)
      return fail("tie_word_embeddings true is not supported");
  if (c.numHeads % c.numKeyValueHeads != 0)
    return fail(llvm::formatv(
        "num_key_value_heads {0} does not divide num_attention_heads {1}",
        c.numKeyValueHeads, c.numHeads));
  if (c.topK > c.numExperts)
    return fail(llvm::formatv(
        "num_experts_per_tok {0} exceeds num_local_experts {1}", c.topK,
        c.numExperts));
  return withCounts(c);
}

std::vector<Parameter> moec::plan::mixtralParameters(const ModelConfig &c) {
  const int64_t h = c.hiddenSize, kv = c.numKeyValueHeads * c.headDim,
                q = c.numHeads * c.headDim, e = c.numExperts,
                i = c.intermediateSize;
  std::vector<Parameter> params;
  auto add = [&](std::string name, llvm::SmallVector<int64_t, 3> shape,
                 ParameterKind kind, int64_t unit) {
    params.push_back({std::move(name), std::move(shape), kind, unit});
  };
  add("model.embed_tokens.weight", {c.vocabSize, h}, ParameterKind::Embedding,
      -1);
  for (int64_t l = 0; l < c.numLayers; ++l) {
    std::string prefix = llvm::formatv("model.layers.{0}.", l).str();
    add(prefix + "self_attn.q_proj.weight", {q, h}, ParameterKind::Dense, l);
    add(prefix + "self_attn.k_proj.weight", {kv, h}, ParameterKind::Dense, l);
    add(prefix + "self_attn.v_proj.weight", {kv, h}, ParameterKind::Dense, l);
    add(prefix + "self_attn.o_proj.weight", {h, q}, ParameterKind::Dense, l);
    add(prefix + "mlp.gate.weight", {e, h}, ParameterKind::Dense, l);
    add(prefix + "mlp.experts.gate_up_proj", {e, 2 * i, h},
        ParameterKind::Expert, l);
    add(prefix + "mlp.experts.down_proj", {e, h, i}, ParameterKind::Expert, l);
    add(prefix + "input_layernorm.weight", {h}, ParameterKind::Dense, l);
    add(prefix + "post_attention_layernorm.weight", {h}, ParameterKind::Dense,
        l);
  }
  add("model.norm.weight", {h}, ParameterKind::Dense, c.numLayers);
  add("lm_head.weight", {c.vocabSize, h}, ParameterKind::Dense, c.numLayers);
  return params;
}

std::optional<int64_t> moec::plan::decoderLayerOf(llvm::StringRef name) {
  size_t at = name.find("layers.");
  if (at == llvm::StringRef::npos)
    return std::nullopt;
  llvm::StringRef rest = name.substr(at + 7);
  int64_t layer;
  if (rest.consumeInteger(10, layer) || layer < 0)
    return std::nullopt;
  return layer;
}

mlir::FailureOr<ModelDescription>
moec::plan::describeForward(mlir::func::FuncOp forward) {
  mlir::FailureOr<ModelConfig> config = inferModelConfig(forward);
  if (mlir::failed(config))
    return mlir::failure();
  ModelDescription model;
  model.config = *config;
  for (auto [index, arg] : llvm::enumerate(forward.getArguments())) {
    auto name = forward.getArgAttrOfType<mlir::StringAttr>(
        index, mlir::moe::MoeDialect::getParameterAttrName());
    if (!name)
      continue;
    auto type = llvm::dyn_cast<mlir::RankedTensorType>(arg.getType());
    if (!type || !type.hasStaticShape())
      return forward.emitOpError()
             << "parameter '" << name.getValue()
             << "' must have a static shape to be planned, but has type "
             << arg.getType();
    Parameter param;
    param.name = name.getValue().str();
    param.shape.assign(type.getShape().begin(), type.getShape().end());
    for (mlir::Operation *user : arg.getUsers()) {
      if (auto x = llvm::dyn_cast<mlir::moe::ExpertsOp>(user))
        if (x.getGateUp() == arg || x.getDown() == arg)
          param.kind = ParameterKind::Expert;
      if (auto e = llvm::dyn_cast<mlir::moe::EmbeddingOp>(user))
        if (e.getTable() == arg)
          param.kind = ParameterKind::Embedding;
    }
    // The unit: the embedding first, decoder layers by the number after
    // "layers.", everything else (final norm, lm_head) in the head.
    param.unit = config->numLayers;
    if (param.kind == ParameterKind::Embedding)
      param.unit = -1;
    if (std::optional<int64_t> layer = decoderLayerOf(param.name);
        layer && *layer < config->numLayers)
      param.unit = *layer;
    model.parameters.push_back(std::move(param));
  }
  if (model.parameters.empty())
    return forward.emitOpError()
           << "has no arguments marked moe.parameter: nothing to plan";
  return model;
}
