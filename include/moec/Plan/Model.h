//===- Model.h - A model's parameters as the planner sees them --*- C++ -*-===//
//
// The planner needs two things from a model: its geometry (moec::ModelConfig)
// and the list of its parameters with their global shapes, each marked as an
// expert parameter (split along the expert axis) or not, and assigned to the
// sharding unit it is gathered with (a decoder layer, the embedding, or the
// head). Both come from one of three sources, which must agree:
//  - the built-in presets (tiny, tiny-e8, mixtral-8x7b, mixtral-8x7b-2l), so
//    an 8x7B plan needs no export;
//  - a JSON file of Hugging Face MixtralConfig fields (python/moec/configs);
//  - a raised forward function (ONNX or .mlir), read through
//    inferModelConfig and the `moe.parameter` argument attributes.
// Parameter names and order are those of the Hugging Face checkpoint and the
// ONNX export (model.layers.N.mlp.experts.gate_up_proj, ...).
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PLAN_MODEL_H
#define MOEC_PLAN_MODEL_H

#include "moec/Analysis/ModelConfig.h"

#include "llvm/ADT/SmallVector.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moec::plan {

enum class ParameterKind {
  /// The token embedding table: a lookup, no FLOPs per token.
  Embedding,
  /// Any other non-expert parameter: replicated along P.
  Dense,
  /// An expert weight [E, ...]: split along P on dim 0.
  Expert,
};

llvm::StringRef stringifyParameterKind(ParameterKind kind);

/// One parameter tensor of the model.
struct Parameter {
  std::string name;
  llvm::SmallVector<int64_t, 3> shape;
  ParameterKind kind = ParameterKind::Dense;
  /// The sharding unit: -1 the embedding, 0..L-1 a decoder layer, L the head
  /// (final norm and lm_head). Units are gathered and reduced as one.
  int64_t unit = 0;

  int64_t numElements() const;
};

/// A model as the planner sees it.
struct ModelDescription {
  /// Where it came from: a preset name or a file.
  std::string source;
  ModelConfig config;
  std::vector<Parameter> parameters;

  int64_t numParameters() const;
  int64_t numParameters(ParameterKind kind) const;
  /// Parameters one token's FLOPs go through: every non-embedding dense
  /// parameter and top_k of the E experts' (DESIGN.md §5's N_active).
  int64_t numActiveParameters() const;
  /// The sharding units in execution order: -1, 0, ..., L.
  std::vector<int64_t> units() const;
};

/// The names of the built-in presets.
llvm::ArrayRef<llvm::StringRef> presetNames();

/// The geometry of a built-in preset, or nothing if `name` is not one.
std::optional<ModelConfig> getPreset(llvm::StringRef name);

/// Reads Hugging Face MixtralConfig fields (the JSON of python/moec/configs or
/// a checkpoint's config.json).
llvm::Expected<ModelConfig> parseMixtralConfigJson(llvm::StringRef text);

/// The parameters of a Mixtral of geometry `config`, named and ordered as in
/// the Hugging Face checkpoint.
std::vector<Parameter> mixtralParameters(const ModelConfig &config);

/// The decoder layer of the parameter named `name`: the number after
/// "layers." (Hugging Face's `model.layers.N.`), if the name has one.
std::optional<int64_t> decoderLayerOf(llvm::StringRef name);

/// The model of a raised forward function: its geometry from
/// inferModelConfig, its parameters from the arguments marked
/// `moe.parameter` (expert parameters are those feeding moe.experts' weights,
/// the embedding the table of moe.embedding; units from the
/// `layers.N.` part of the name).
mlir::FailureOr<ModelDescription> describeForward(mlir::func::FuncOp forward);

} // namespace moec::plan

#endif // MOEC_PLAN_MODEL_H
