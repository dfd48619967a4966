//===- HfBinding.h - A Hugging Face checkpoint bound at compile time -*- C++ -*-//
//
// `moec compile --init-from DIR` (job key `init_from`) binds a Hugging Face
// Mixtral checkpoint folder to the compiled program: its config.json's
// hyper-parameters and every tensor's name, shape and dtype are checked
// against the model here, and the binding goes into OUT/manifest.json
// ("hf_checkpoint"), with the config.json the program writes when it
// exports (train_step --export-hf). docs/hf-checkpoints.md.
//
//===----------------------------------------------------------------------===//

#ifndef TOOLS_MOEC_HFBINDING_H
#define TOOLS_MOEC_HFBINDING_H

#include "moec/Analysis/ModelConfig.h"
#include "moec/Support/TrainingJob.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/JSON.h"

namespace moec::cli {

/// The manifest's "hf_checkpoint" object for the raised `forward` of the
/// model of geometry `config`: "config", the model's config.json as
/// transformers reads it (MixtralForCausalLM), and, when `job.initFrom` is
/// set, "init_from", that folder made absolute, after checking it against
/// the model (config.json, then every tensor; every problem is named).
llvm::Expected<llvm::json::Object> bindHfCheckpoint(mlir::func::FuncOp forward,
                                                    const ModelConfig &config,
                                                    const TrainingJob &job);

} // namespace moec::cli

#endif // TOOLS_MOEC_HFBINDING_H
