//===- ModelConfig.cpp - A Mixtral model's geometry from its IR -----------===//
//
// See moec/Analysis/ModelConfig.h. Every size is read from an op's static
// types; when two layers disagree the first disagreement is reported with
// both ops' locations.
//
//===----------------------------------------------------------------------===//

#include "moec/Analysis/ModelConfig.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "mlir/Dialect/Linalg/IR/Linalg.h"

using namespace mlir;
using namespace moec;

namespace {

/// Records `value` for `field`, or fails if an earlier op recorded another.
LogicalResult record(Operation *op, llvm::StringRef field, int64_t &slot,
                     int64_t value, Operation *&firstOp) {
  if (ShapedType::isDynamic(value))
    return op->emitOpError() << field << " is dynamic; the model's geometry "
                                         "must be static";
  if (slot == 0) {
    slot = value;
    firstOp = op;
    return success();
  }
  if (slot == value)
    return success();
  InFlightDiagnostic diag = op->emitOpError()
                            << field << " is " << value << " here but "
                            << slot << " in an earlier layer";
  diag.attachNote(firstOp->getLoc()) << "see the earlier layer";
  return failure();
}

int64_t numElements(Type type) {
  auto t = dyn_cast<RankedTensorType>(type);
  return t && t.hasStaticShape() ? t.getNumElements() : 0;
}

} // namespace

FailureOr<ModelConfig> moec::inferModelConfig(func::FuncOp forward) {
  ModelConfig config;
  Operation *first[8] = {};
  bool ok = true;
  forward.walk([&](Operation *op) {
    if (op->getDialect() && op->getDialect()->getNamespace() == "moe")
      ++config.opCounts[op->getName().getStringRef().str()];
    if (auto e = dyn_cast<moe::EmbeddingOp>(op)) {
      auto t = e.getTable().getType();
      ok &= succeeded(record(op, "vocabulary size", config.vocabSize,
                             t.getDimSize(0), first[0])) &&
            succeeded(record(op, "hidden size", config.hiddenSize,
                             t.getDimSize(1), first[1]));
    } else if (auto a = dyn_cast<moe::AttentionOp>(op)) {
      ++config.numLayers;
      auto q = a.getQuery().getType(), k = a.getKey().getType();
      ok &= succeeded(record(op, "attention heads", config.numHeads,
                             q.getDimSize(2), first[2])) &&
            succeeded(record(op, "key/value heads", config.numKeyValueHeads,
                             k.getDimSize(2), first[3])) &&
            succeeded(
                record(op, "head dim", config.headDim, q.getDimSize(3),
                       first[4]));
      if (std::optional<int64_t> w = a.getSlidingWindow())
        config.slidingWindow = *w;
    } else if (auto x = dyn_cast<moe::ExpertsOp>(op)) {
      auto gu = x.getGateUp().getType();
      ok &= succeeded(record(op, "experts", config.numExperts,
                             gu.getDimSize(0), first[5])) &&
            succeeded(record(op, "intermediate size", config.intermediateSize,
                             gu.getDimSize(1) / 2, first[6]));
    } else if (auto r = dyn_cast<moe::RouterOp>(op)) {
      ok &= succeeded(record(op, "top-k", config.topK, r.getK(), first[7]));
    } else if (auto r = dyn_cast<moe::RotaryOp>(op)) {
      config.ropeTheta = r.getTheta().convertToDouble();
    } else if (auto n = dyn_cast<moe::RmsNormOp>(op)) {
      config.rmsNormEps = n.getEpsilon().convertToDouble();
    }
  });
  if (!ok)
    return failure();
  if (config.numLayers == 0 || config.numExperts == 0 || config.vocabSize == 0)
    return forward.emitOpError()
           << "is not a raised Mixtral forward: it has "
           << config.numLayers << " attention ops, "
           << config.opCounts["moe.experts"] << " experts ops and "
           << config.opCounts["moe.embedding"] << " embeddings";

  for (BlockArgument arg : forward.getArguments()) {
    if (!forward.getArgAttr(arg.getArgNumber(),
                            moe::MoeDialect::getParameterAttrName()))
      continue;
    int64_t n = numElements(arg.getType());
    config.numParameters += n;
    // An expert weight, read as it is or through the transpose that raising
    // puts in front of one an exporter stored transposed.
    auto readsAsExpertWeight = [](Operation *user, Value weight) {
      auto x = dyn_cast<moe::ExpertsOp>(user);
      return x && (x.getGateUp() == weight || x.getDown() == weight);
    };
    bool isExpert = llvm::any_of(arg.getUsers(), [&](Operation *user) {
      if (auto transpose = dyn_cast<linalg::TransposeOp>(user))
        return llvm::any_of(transpose->getUsers(), [&](Operation *next) {
          return readsAsExpertWeight(next, transpose->getResult(0));
        });
      return readsAsExpertWeight(user, arg);
    });
    if (isExpert)
      config.numExpertParameters += n;
  }
  return config;
}
