//===- BuildInitParams.cpp - delayed_param as a function ------------------===//
//
// Implements moe-build-init-params (see Passes.td): the initial value of
// every parameter as a moe.param_init of the seed, so the CPU reference and
// the GPU backend create parameters from the same IR, and a partitioned
// program can create just its shards (global_shape and offsets).
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace mlir::moe {
#define GEN_PASS_DEF_BUILDINITPARAMS
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

struct BuildInitParamsPass
    : public moe::impl::BuildInitParamsBase<BuildInitParamsPass> {
  using BuildInitParamsBase::BuildInitParamsBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto forward = module.lookupSymbol<func::FuncOp>("forward");
    if (!forward) {
      module.emitError() << "moe-build-init-params needs a function 'forward'";
      return signalPassFailure();
    }
    if (module.lookupSymbol("init_params")) {
      module.emitError() << "the module already has an 'init_params'";
      return signalPassFailure();
    }
    if (!(initializerRange > 0.0)) {
      module.emitError() << "initializer-range must be positive but is "
                         << initializerRange;
      return signalPassFailure();
    }
    SmallVector<BlockArgument> params;
    for (BlockArgument arg : forward.getArguments())
      if (forward.getArgAttr(arg.getArgNumber(),
                             MoeDialect::getParameterAttrName()))
        params.push_back(arg);

    OpBuilder builder(module.getContext());
    auto seedType = RankedTensorType::get({}, builder.getI64Type());
    SmallVector<Type> resultTypes;
    for (BlockArgument p : params)
      resultTypes.push_back(p.getType());
    builder.setInsertionPointAfter(forward);
    Location loc = forward.getLoc();
    auto init = func::FuncOp::create(
        builder, loc, "init_params",
        builder.getFunctionType({seedType}, resultTypes));
    init.setArgAttr(0, MoeDialect::getInputAttrName(),
                    builder.getStringAttr("seed"));
    Block *entry = init.addEntryBlock();
    builder.setInsertionPointToStart(entry);
    SmallVector<Value> values;
    for (auto [i, p] : llvm::enumerate(params)) {
      auto name = forward.getArgAttrOfType<StringAttr>(
          p.getArgNumber(), MoeDialect::getParameterAttrName());
      init.setResultAttr(i, MoeDialect::getParameterAttrName(), name);
      bool isNormWeight = llvm::any_of(p.getUsers(), [&](Operation *user) {
        auto norm = dyn_cast<RmsNormOp>(user);
        return norm && norm.getWeight() == p;
      });
      ParamInitKind kind =
          isNormWeight ? ParamInitKind::ones : ParamInitKind::normal;
      values.push_back(ParamInitOp::create(
          builder, loc, p.getType(), entry->getArgument(0), name,
          ParamInitKindAttr::get(builder.getContext(), kind),
          builder.getF64FloatAttr(isNormWeight ? 0.0 : initializerRange.getValue()),
          /*global_shape=*/DenseI64ArrayAttr(), /*offsets=*/DenseI64ArrayAttr(),
          /*grid=*/FlatSymbolRefAttr(), /*split_axes=*/DenseI64ArrayAttr()));
    }
    func::ReturnOp::create(builder, loc, values);
  }
};

} // namespace
