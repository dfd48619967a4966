//===- CanonicalizeParameters.cpp - Parameters named and laid out by role -===//
//
// Implements moe-canonicalize-parameters (see Passes.td). An exporter's
// optimiser may rename weights (`val_67`), store them transposed and merge
// initializers of equal values; raising keeps what it finds. This pass
// reads every parameter use's role off the raised structure (which decoder
// layer, which module), then replaces the parameter arguments by one
// argument per role: named as in the Hugging Face state_dict, in its order,
// in the layout its op reads (transposes folded), each merged initializer
// split into separate parameters. The arguments remember the initializer
// their value comes from (moe.initializer, moe.initializer_permutation), so
// a driver that reads weights from the model file still finds them.
//
//===----------------------------------------------------------------------===//

#include "dialects/Moe/Transforms/Passes.h"

#include "dialects/Moe/IR/MoeOps.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/SetVector.h"

#include <string>

namespace mlir::moe {
#define GEN_PASS_DEF_CANONICALIZEPARAMETERS
#include "dialects/Moe/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

/// A decoder layer's modules in the order of the Hugging Face state_dict.
enum class LayerRole {
  QProj,
  KProj,
  VProj,
  OProj,
  Gate,
  GateUp,
  Down,
  InputNorm,
  PostAttentionNorm,
};

std::string layerParameterName(int64_t layer, LayerRole role) {
  std::string prefix = "model.layers." + std::to_string(layer) + ".";
  switch (role) {
  case LayerRole::QProj:
    return prefix + "self_attn.q_proj.weight";
  case LayerRole::KProj:
    return prefix + "self_attn.k_proj.weight";
  case LayerRole::VProj:
    return prefix + "self_attn.v_proj.weight";
  case LayerRole::OProj:
    return prefix + "self_attn.o_proj.weight";
  case LayerRole::Gate:
    return prefix + "mlp.gate.weight";
  case LayerRole::GateUp:
    return prefix + "mlp.experts.gate_up_proj";
  case LayerRole::Down:
    return prefix + "mlp.experts.down_proj";
  case LayerRole::InputNorm:
    return prefix + "input_layernorm.weight";
  case LayerRole::PostAttentionNorm:
    return prefix + "post_attention_layernorm.weight";
  }
  llvm_unreachable("every layer role has a name");
}

/// One role a parameter plays: its name, its place in the state_dict, and
/// the operands that read it in that role.
struct Role {
  std::string name;
  int64_t order = 0;
  SmallVector<OpOperand *> operands;
  /// Set when the operands read the parameter through this transpose.
  linalg::TransposeOp transpose;
  /// Set when the operands read the parameter converted to another element
  /// type (arith.extf or arith.truncf, before the transpose).
  Operation *conversion = nullptr;
};

/// The element-type conversion of a parameter that raising makes for a
/// weight stored in another type (arith.extf, arith.truncf), or null.
Operation *asConversion(Operation *op) {
  return isa_and_nonnull<arith::ExtFOp, arith::TruncFOp>(op) ? op : nullptr;
}

class RoleFinder {
public:
  explicit RoleFinder(func::FuncOp func) : func(func) {}

  /// Walks the raised structure and records the role of every parameter
  /// operand it recognises.
  void run();

  /// The roles found, per parameter argument, in argument order.
  llvm::MapVector<BlockArgument, SmallVector<Role>> roles;
  /// Operands (of a parameter, directly or through a transpose) given a role.
  llvm::DenseSet<OpOperand *> claimed;

private:
  void claim(OpOperand &operand, std::string name, int64_t order);
  void claimNormOf(Value normalised, std::string name, int64_t order);
  /// The moe.linear whose result reaches `v` through rotary and reshapes.
  LinearOp projectionOf(Value v);
  bool isParameter(Value v);

  func::FuncOp func;
};

bool RoleFinder::isParameter(Value v) {
  auto arg = dyn_cast<BlockArgument>(v);
  return arg && arg.getOwner() == &func.getBody().front() &&
         func.getArgAttr(arg.getArgNumber(), MoeDialect::getParameterAttrName());
}

void RoleFinder::claim(OpOperand &operand, std::string name, int64_t order) {
  Value v = operand.get();
  linalg::TransposeOp transpose = v.getDefiningOp<linalg::TransposeOp>();
  if (transpose)
    v = transpose.getInput();
  Operation *conversion = asConversion(v.getDefiningOp());
  if (conversion)
    v = conversion->getOperand(0);
  if (!isParameter(v))
    return;
  SmallVector<Role> &list = roles[cast<BlockArgument>(v)];
  auto it = llvm::find_if(list, [&](const Role &r) { return r.name == name; });
  if (it == list.end()) {
    list.push_back(Role{std::move(name), order, {}, transpose, conversion});
    it = std::prev(list.end());
  } else if (it->transpose != transpose || it->conversion != conversion) {
    return; // one role read in two layouts: leave the parameter alone
  }
  it->operands.push_back(&operand);
  claimed.insert(&operand);
}

void RoleFinder::claimNormOf(Value normalised, std::string name,
                             int64_t order) {
  if (auto norm = normalised.getDefiningOp<RmsNormOp>())
    claim(norm.getWeightMutable(), std::move(name), order);
}

LinearOp RoleFinder::projectionOf(Value v) {
  while (Operation *def = v.getDefiningOp()) {
    if (auto linear = dyn_cast<LinearOp>(def))
      return linear;
    if (auto rotary = dyn_cast<RotaryOp>(def))
      v = rotary.getInput();
    else if (isa<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(def))
      v = def->getOperand(0);
    else
      return LinearOp();
  }
  return LinearOp();
}

void RoleFinder::run() {
  constexpr int64_t kLayerRoles = 9;
  constexpr int64_t kEmbedding = 0, kFirstLayer = 1;
  SmallVector<AttentionOp> attentions;
  SmallVector<ExpertsOp> experts;
  func.walk([&](Operation *op) {
    if (auto a = dyn_cast<AttentionOp>(op))
      attentions.push_back(a);
    else if (auto x = dyn_cast<ExpertsOp>(op))
      experts.push_back(x);
  });
  int64_t layers = static_cast<int64_t>(attentions.size());
  auto layerOrder = [&](int64_t layer, LayerRole role) {
    return kFirstLayer + layer * kLayerRoles + static_cast<int64_t>(role);
  };
  auto claimLayer = [&](OpOperand &operand, int64_t layer, LayerRole role) {
    claim(operand, layerParameterName(layer, role), layerOrder(layer, role));
  };
  auto claimLayerNorm = [&](Value normalised, int64_t layer, LayerRole role) {
    claimNormOf(normalised, layerParameterName(layer, role),
                layerOrder(layer, role));
  };

  func.walk([&](EmbeddingOp e) {
    claim(e.getTableMutable(), "model.embed_tokens.weight", kEmbedding);
  });
  for (auto [layer, attention] : llvm::enumerate(attentions)) {
    int64_t n = static_cast<int64_t>(layer);
    std::pair<Value, LayerRole> projections[] = {
        {attention.getQuery(), LayerRole::QProj},
        {attention.getKey(), LayerRole::KProj},
        {attention.getValue(), LayerRole::VProj}};
    for (auto [value, role] : projections)
      if (LinearOp linear = projectionOf(value)) {
        claimLayer(linear.getWeightMutable(), n, role);
        if (role == LayerRole::QProj)
          claimLayerNorm(linear.getInput(), n, LayerRole::InputNorm);
      }
    for (Operation *user : attention.getResult().getUsers())
      if (auto collapse = dyn_cast<tensor::CollapseShapeOp>(user))
        for (Operation *reader : collapse.getResult().getUsers())
          if (auto linear = dyn_cast<LinearOp>(reader);
              linear && linear.getInput() == collapse.getResult())
            claimLayer(linear.getWeightMutable(), n, LayerRole::OProj);
  }
  // The experts of layer N are the N-th moe.experts; a model whose counts
  // differ is not a Mixtral decoder stack and keeps its names.
  if (static_cast<int64_t>(experts.size()) == layers) {
    for (auto [layer, x] : llvm::enumerate(experts)) {
      int64_t n = static_cast<int64_t>(layer);
      if (x.getGateUpLayout() == GateUpLayout::concatenated)
        claimLayer(x.getGateUpMutable(), n, LayerRole::GateUp);
      claimLayer(x.getDownMutable(), n, LayerRole::Down);
      claimLayerNorm(x.getInput(), n, LayerRole::PostAttentionNorm);
      if (auto router = x.getGates().getDefiningOp<RouterOp>())
        if (auto linear = router.getLogits().getDefiningOp<LinearOp>())
          claimLayer(linear.getWeightMutable(), n, LayerRole::Gate);
    }
  }
  int64_t last = kFirstLayer + layers * kLayerRoles;
  func.walk([&](LmHeadOp head) {
    claimNormOf(head.getInput(), "model.norm.weight", last);
    claim(head.getWeightMutable(), "lm_head.weight", last + 1);
  });
}

/// Whether every use of `value` (directly, or through a transpose, or
/// through a conversion when `param` is the parameter itself) was given a
/// role.
bool fullyClaimed(Value value, const llvm::DenseSet<OpOperand *> &claimed,
                  bool param = true) {
  for (OpOperand &use : value.getUses()) {
    if (claimed.contains(&use))
      continue;
    Operation *owner = use.getOwner();
    if (param && asConversion(owner)) {
      if (!fullyClaimed(owner->getResult(0), claimed, /*param=*/false))
        return false;
      continue;
    }
    auto transpose = dyn_cast<linalg::TransposeOp>(owner);
    if (!transpose || use.getOperandNumber() != 0)
      return false;
    for (OpOperand &read : transpose.getResult()[0].getUses())
      if (!claimed.contains(&read))
        return false;
  }
  return true;
}

struct CanonicalizeParametersPass
    : public moe::impl::CanonicalizeParametersBase<CanonicalizeParametersPass> {
  using CanonicalizeParametersBase::CanonicalizeParametersBase;

  void runOnOperation() override {
    func::FuncOp func = getOperation();
    if (func.isExternal())
      return;
    RoleFinder finder(func);
    finder.run();

    // The parameters rebuilt: those whose every use has a role, with no
    // role claimed by two parameters.
    llvm::StringMap<int64_t> claimants;
    for (auto &[param, roles] : finder.roles)
      for (const Role &role : roles)
        ++claimants[role.name];
    struct Rebuilt {
      BlockArgument from;
      Role *role;
    };
    SmallVector<Rebuilt> rebuilt;
    for (auto &[param, roles] : finder.roles) {
      if (!fullyClaimed(param, finder.claimed) ||
          llvm::any_of(roles, [&](const Role &r) {
            return claimants[r.name] != 1;
          }))
        continue;
      for (Role &role : roles)
        rebuilt.push_back({param, &role});
    }
    if (rebuilt.empty())
      return;
    llvm::stable_sort(rebuilt, [](const Rebuilt &a, const Rebuilt &b) {
      return a.role->order < b.role->order;
    });

    MLIRContext *context = &getContext();
    StringAttr parameterAttr =
        StringAttr::get(context, MoeDialect::getParameterAttrName());
    // Where an argument's value comes from: the initializer it stood for
    // (recorded already when the argument was rebuilt by an earlier run).
    auto initializerOf = [&](BlockArgument arg) {
      unsigned i = arg.getArgNumber();
      if (auto source = func.getArgAttrOfType<StringAttr>(
              i, MoeDialect::getInitializerAttrName()))
        return source.getValue();
      return func.getArgAttrOfType<StringAttr>(i, parameterAttr).getValue();
    };
    llvm::BitVector replaced(func.getNumArguments());
    struct StackedRemark {
      Location loc;
      size_t pieces;
      std::string name;
    };
    SmallVector<StackedRemark> stackedRemarks;
    for (const Rebuilt &r : rebuilt) {
      Role &role = *r.role;
      unsigned from = r.from.getArgNumber();
      StringRef initializer = initializerOf(r.from);
      // The type its operands read: transposed and converted as they are.
      Type type = role.operands.front()->get().getType();
      SmallVector<NamedAttribute> attrs = {
          NamedAttribute(parameterAttr, StringAttr::get(context, role.name))};
      // A parameter stacked from several initializers (moe-raise-onnx)
      // keeps its pieces: its own name names no initializer.
      Attribute pieces =
          func.getArgAttr(from, MoeDialect::getInitializerPiecesAttrName());
      if (pieces)
        attrs.push_back(NamedAttribute(
            StringAttr::get(context,
                            MoeDialect::getInitializerPiecesAttrName()),
            pieces));
      else if (initializer != role.name)
        attrs.push_back(
            NamedAttribute(StringAttr::get(context,
                                           MoeDialect::getInitializerAttrName()),
                           StringAttr::get(context, initializer)));
      if (role.conversion)
        ++numConversionsFolded;
      if (role.transpose) {
        attrs.push_back(NamedAttribute(
            StringAttr::get(context,
                            MoeDialect::getInitializerPermutationAttrName()),
            role.transpose.getPermutationAttr()));
        ++numTransposesFolded;
      }
      if (initializer != role.name)
        ++numRenamed;
      if (pieces)
        stackedRemarks.push_back(
            {r.from.getLoc(), cast<ArrayAttr>(pieces).size(), role.name});
      unsigned index = func.getNumArguments();
      if (failed(func.insertArgument(index, type,
                                     DictionaryAttr::get(context, attrs),
                                     r.from.getLoc())))
        return signalPassFailure();
      replaced.resize(func.getNumArguments());
      BlockArgument arg = func.getArgument(index);
      for (OpOperand *operand : role.operands)
        operand->set(arg);
      replaced.set(from);
    }

    // The stacked parameters, with the names they now have.
    for (const StackedRemark &r : stackedRemarks)
      emitRemark(r.loc) << r.pieces << " initializers stacked into parameter '"
                        << r.name << "'";

    // The merged initializers, named with what they became.
    for (auto &[param, roles] : finder.roles) {
      if (roles.size() < 2 || !replaced.test(param.getArgNumber()))
        continue;
      numUntied += roles.size() - 1;
      SmallVector<const Role *> made;
      for (const Role &role : roles)
        made.push_back(&role);
      llvm::sort(made, [](const Role *a, const Role *b) {
        return a->order < b->order;
      });
      std::string names;
      for (const Role *role : made)
        names += (names.empty() ? "'" : ", '") + role->name + "'";
      emitRemark(param.getLoc())
          << "initializer '" << initializerOf(param) << "' is shared by "
          << roles.size() << " parameters that Mixtral does not tie ("
          << names << "), merged by the exporter; each is a parameter of its "
          << "own";
    }

    // The folded transposes (and their unused inits), then the folded
    // conversions, and the old arguments go: every use of those was claimed
    // and moved.
    llvm::SetVector<Operation *> folded, conversions;
    for (const Rebuilt &r : rebuilt) {
      if (linalg::TransposeOp t = r.role->transpose)
        folded.insert(t);
      if (Operation *c = r.role->conversion)
        conversions.insert(c);
    }
    for (Operation *t : folded) {
      Value init = cast<linalg::TransposeOp>(t).getInit();
      t->erase();
      if (Operation *def = init.getDefiningOp();
          def && isa<tensor::EmptyOp>(def) && def->use_empty())
        def->erase();
    }
    for (Operation *c : conversions)
      if (c->use_empty())
        c->erase();
    if (failed(func.eraseArguments(replaced)))
      return signalPassFailure();
  }
};

} // namespace
