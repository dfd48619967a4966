//===- HybridShard.cpp - Model states sharded over the shard groups -------===//
//
// Implements moe-hybrid-shard (see Passes.td).
//
//===----------------------------------------------------------------------===//

#include "moec/Conversion/MoeToShard/Passes.h"

namespace moec {
#define GEN_PASS_DEF_HYBRIDSHARD
#include "lib/Conversion/MoeToShard/Passes.h.inc"
} // namespace moec

using namespace mlir;

namespace {

struct HybridShardPass : public moec::impl::HybridShardBase<HybridShardPass> {
  using HybridShardBase::HybridShardBase;
  void runOnOperation() override {
    getOperation().emitError() << "moe-hybrid-shard is not implemented yet";
    signalPassFailure();
  }
};

} // namespace
