//===- HfBinding.cpp - A Hugging Face checkpoint bound at compile time ----===//
//
// See HfBinding.h. The tensors are checked by the runtime's own reader
// (moert/HfCheckpoint.h, the code the program reads them with), so the
// compiler and the program cannot disagree about a checkpoint; config.json
// is read here with LLVM's JSON parser and compared with the geometry read
// off the raised model (moec/Analysis/ModelConfig.h).
//
//===----------------------------------------------------------------------===//

#include "HfBinding.h"

#include "dialects/Moe/IR/MoeDialect.h"
#include "moert/HfCheckpoint.h"
#include "moert/JsonKeys.h"

#include "mlir/IR/BuiltinTypes.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"

#include <fmt/format.h>

#include <cmath>
#include <memory>

using namespace mlir;

namespace {

llvm::Error failure(const std::string &message) {
  return llvm::createStringError(message);
}

/// A number printed with 7 significant digits and read back: the fp32
/// constants of the IR (epsilon 9.99999974e-06) as the config's 1e-05.
double shortest(double value) {
  return std::stod(fmt::format("{:.7g}", value));
}

/// Compares config.json's hyper-parameters with the model's; every
/// difference is a line of `problems`.
void compareConfig(const llvm::json::Object &json, const std::string &file,
                   const moec::ModelConfig &model,
                   std::vector<std::string> &problems) {
  if (std::optional<llvm::StringRef> type = json.getString("model_type");
      type && *type != "mixtral")
    problems.push_back(fmt::format("'{}': model_type is '{}', not 'mixtral'",
                                   file, type->str()));
  const std::pair<const char *, int64_t> sizes[] = {
      {"vocab_size", model.vocabSize},
      {"hidden_size", model.hiddenSize},
      {"intermediate_size", model.intermediateSize},
      {"num_hidden_layers", model.numLayers},
      {"num_attention_heads", model.numHeads},
      {"num_key_value_heads", model.numKeyValueHeads},
      {"num_local_experts", model.numExperts},
      {"num_experts_per_tok", model.topK}};
  for (auto [key, expected] : sizes) {
    std::optional<int64_t> value = json.getInteger(key);
    if (!value)
      problems.push_back(
          fmt::format("'{}': no integer {} (the model has {})", file, key,
                      expected));
    else if (*value != expected)
      problems.push_back(fmt::format("'{}': {} is {} where the model has {}",
                                     file, key, *value, expected));
  }
  if (std::optional<int64_t> headDim = json.getInteger("head_dim");
      headDim && *headDim != model.headDim)
    problems.push_back(fmt::format("'{}': head_dim is {} where the model has {}",
                                   file, *headDim, model.headDim));
  auto compareNumber = [&](const char *key, std::optional<double> value,
                           double expected) {
    if (!value)
      problems.push_back(fmt::format("'{}': no number {} (the model has {:g})",
                                     file, key, expected));
    else if (std::fabs(*value - expected) > 1e-6 * std::fabs(expected))
      problems.push_back(fmt::format("'{}': {} is {:g} where the model has {:g}",
                                     file, key, *value, expected));
  };
  compareNumber("rms_norm_eps", json.getNumber("rms_norm_eps"),
                model.rmsNormEps);
  // transformers 5 keeps θ under rope_parameters, earlier versions at the top.
  std::optional<double> theta = json.getNumber("rope_theta");
  if (const llvm::json::Object *rope = json.getObject("rope_parameters"))
    theta = rope->getNumber("rope_theta");
  compareNumber("rope_theta", theta, model.ropeTheta);
  if (std::optional<bool> tied = json.getBoolean("tie_word_embeddings");
      tied && *tied)
    problems.push_back(fmt::format(
        "'{}': tie_word_embeddings is true, but the model has its own "
        "lm_head.weight",
        file));
}

} // namespace

llvm::Expected<llvm::json::Object>
moec::cli::bindHfCheckpoint(func::FuncOp forward, const ModelConfig &config,
                            const TrainingJob &job) {
  llvm::json::Object hfConfig{
      {"architectures", llvm::json::Array{"MixtralForCausalLM"}},
      {"model_type", "mixtral"},
      {"vocab_size", config.vocabSize},
      {"hidden_size", config.hiddenSize},
      {"intermediate_size", config.intermediateSize},
      {"num_hidden_layers", config.numLayers},
      {"num_attention_heads", config.numHeads},
      {"num_key_value_heads", config.numKeyValueHeads},
      {"head_dim", config.headDim},
      {"num_local_experts", config.numExperts},
      {"num_experts_per_tok", config.topK},
      {"hidden_act", "silu"},
      {"rms_norm_eps", shortest(config.rmsNormEps)},
      {"rope_parameters",
       llvm::json::Object{{"rope_theta", shortest(config.ropeTheta)},
                          {"rope_type", "default"}}},
      {"sliding_window", config.slidingWindow
                             ? llvm::json::Value(*config.slidingWindow)
                             : llvm::json::Value(nullptr)},
      {"max_position_embeddings", 4096 * 32},
      {"router_aux_loss_coef", job.routerAuxLossCoef},
      {"tie_word_embeddings", false}};
  llvm::json::Object binding{{"config", std::move(hfConfig)}};
  if (job.initFrom.empty())
    return binding;

  llvm::SmallString<256> dir(job.initFrom);
  if (std::error_code ec = llvm::sys::fs::make_absolute(dir))
    return failure(fmt::format("init_from '{}': {}", job.initFrom,
                               ec.message()));
  std::vector<std::string> problems;
  llvm::SmallString<256> configPath(dir);
  llvm::sys::path::append(configPath, "config.json");
  auto text = llvm::MemoryBuffer::getFile(configPath);
  if (!text)
    return failure(fmt::format("init_from: cannot read '{}': {}",
                               configPath.str().str(),
                               text.getError().message()));
  if (std::optional<std::string> deep =
          moert::checkJsonNesting((*text)->getBuffer()))
    return failure(fmt::format("init_from: '{}' is not a model's config: {}",
                               configPath.str().str(), *deep));
  llvm::Expected<llvm::json::Value> json =
      llvm::json::parse((*text)->getBuffer());
  if (!json)
    return failure(fmt::format("init_from: '{}' is not JSON: {}",
                               configPath.str().str(),
                               llvm::toString(json.takeError())));
  if (!json->getAsObject())
    return failure(fmt::format("init_from: '{}' is not a JSON object",
                               configPath.str().str()));
  compareConfig(*json->getAsObject(), configPath.str().str(), config,
                problems);

  std::vector<moert::ModelParameter> parameters;
  for (BlockArgument arg : forward.getArguments()) {
    auto name = forward.getArgAttrOfType<StringAttr>(
        arg.getArgNumber(), moe::MoeDialect::getParameterAttrName());
    if (!name)
      continue;
    auto type = cast<RankedTensorType>(arg.getType());
    parameters.push_back({name.str(), std::vector<int64_t>(
                                          type.getShape().begin(),
                                          type.getShape().end())});
  }
  std::unique_ptr<moert::HfCheckpoint> checkpoint;
  if (moert::Status s = moert::HfCheckpoint::open(dir.str().str(), checkpoint);
      !s.ok())
    problems.push_back(s.message());
  else if (moert::Status s = checkpoint->check(parameters); !s.ok())
    problems.push_back(s.message());
  if (!problems.empty()) {
    std::string message = fmt::format(
        "init_from '{}' does not fit the model:", job.initFrom);
    for (std::string p : problems) {
      for (size_t at = p.find('\n'); at != std::string::npos;
           at = p.find('\n', at + 3))
        p.replace(at, 1, "\n  ");
      message += "\n  " + p;
    }
    return failure(message);
  }
  binding["init_from"] = dir.str().str();
  return binding;
}
