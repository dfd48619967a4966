//===- ExpertParallel.cpp - Experts split over the expert axis ------------===//
//
// Implements moe-expert-parallel (see Passes.td).
//
//===----------------------------------------------------------------------===//

#include "moec/Conversion/MoeToShard/Passes.h"

namespace moec {
#define GEN_PASS_DEF_EXPERTPARALLEL
#include "lib/Conversion/MoeToShard/Passes.h.inc"
} // namespace moec

using namespace mlir;

namespace {

struct ExpertParallelPass
    : public moec::impl::ExpertParallelBase<ExpertParallelPass> {
  using ExpertParallelBase::ExpertParallelBase;
  void runOnOperation() override {
    getOperation().emitError() << "moe-expert-parallel is not implemented yet";
    signalPassFailure();
  }
};

} // namespace
