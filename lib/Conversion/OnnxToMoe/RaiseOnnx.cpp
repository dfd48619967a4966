//===- RaiseOnnx.cpp - Raise imported ONNX nodes to moe ops ---------------===//
//
// Implements moe-raise-onnx (see moec/Conversion/OnnxToMoe/Passes.td). The
// pass works in phases, each a
// walk over the function that rewrites one kind of subgraph:
//
//   1. local patterns, matched by structure: embedding (Gather of a table),
//      linear layers (MatMul/Gemm with a parameter), RMSNorm (the
//      Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul chain), same-type Cast and
//      Identity;
//   2. blocks, matched by their boundary and proved by evaluation:
//      attention (everything between the q/k/v projections and the output
//      projection: head split, rotary tables, GQA repeat, mask, softmax) and
//      sparse-MoE blocks in the batched_mm and GroupedMatMul forms
//      (everything between the normalised hidden state and the residual
//      add). The candidate subgraph is evaluated with OnnxEvaluator on random
//      inputs at sample shapes and compared with the moe ops it is to become
//      (computed by the reference kernels); only a match is rewritten.
//      onnxruntime's com.microsoft.MoE node is one node and is raised from
//      its attributes, its weights traced to parameters structurally
//      (ParameterLayout.h). The proofs bind every model input to ones; an
//      attention mask they leave unread is tagged moe.all_ones at the end;
//   3. residual adds (Add of two equal-typed activations) to arith.addf and
//      the returned projection to the vocabulary to moe.lm_head.
//
// What no phase matches stays as moe.onnx_node; nodes that become unused are
// erased by the canonicalizer that follows in the import pipeline.
//
//===----------------------------------------------------------------------===//

#include "moec/Conversion/OnnxToMoe/Passes.h"

#include "OnnxEvaluator.h"
#include "ParameterLayout.h"
#include "dialects/Moe/IR/MoeOps.h"
#include "moec/Reference/Executor.h"
#include "moec/Reference/Kernels.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/TypeUtilities.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/ADT/StringSet.h"

#include <cmath>
#include <random>
#include <sstream>

namespace moec {
#define GEN_PASS_DEF_RAISEONNX
#include "moec/Conversion/OnnxToMoe/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace mlir::moe;
using moec::HostTensor;
using moec::OnnxEvaluator;

namespace {

/// Largest relative L2 error between a block and its moe ops, evaluated in
/// fp32 on random inputs, for the block to be raised.
constexpr double kEquivalenceTolerance = 1e-4;

/// The largest expert weights (elements of gate_up plus down) for which a
/// decomposed sparse-MoE block is proved by evaluation: 2^24, 64 MiB of fp32.
/// Bigger models import from onnxruntime's MoE form, which needs no proof.
constexpr int64_t kMaxProvedExpertElements = int64_t{1} << 24;

//===----------------------------------------------------------------------===//
// Small matchers
//===----------------------------------------------------------------------===//

/// The ONNX node of `opType` defining `v`, or null.
OnnxNodeOp producer(Value v, StringRef opType) {
  auto node = v.getDefiningOp<OnnxNodeOp>();
  return node && node.getOpType() == opType && node.getDomain().empty()
             ? node
             : OnnxNodeOp();
}

bool isParameter(Value v) {
  auto arg = dyn_cast<BlockArgument>(v);
  if (!arg)
    return false;
  auto func = dyn_cast<func::FuncOp>(arg.getOwner()->getParentOp());
  return func && func.getArgAttr(arg.getArgNumber(),
                                 moe::MoeDialect::getParameterAttrName());
}

bool isModelInput(Value v) {
  auto arg = dyn_cast<BlockArgument>(v);
  if (!arg)
    return false;
  auto func = dyn_cast<func::FuncOp>(arg.getOwner()->getParentOp());
  return func && func.getArgAttr(arg.getArgNumber(),
                                 moe::MoeDialect::getInputAttrName());
}

int64_t rankOf(Value v) {
  auto t = dyn_cast<RankedTensorType>(v.getType());
  return t ? t.getRank() : -1;
}

RankedTensorType tensorType(Value v) {
  return dyn_cast<RankedTensorType>(v.getType());
}

/// The single value of a constant with one element.
std::optional<double> scalarConstant(Value v) {
  auto constant = v.getDefiningOp<arith::ConstantOp>();
  if (!constant)
    return std::nullopt;
  auto dense = dyn_cast<DenseElementsAttr>(constant.getValue());
  if (!dense || dense.getNumElements() != 1)
    return std::nullopt;
  if (isa<FloatType>(dense.getElementType()))
    return (*dense.getValues<APFloat>().begin()).convertToDouble();
  return static_cast<double>((*dense.getValues<APInt>().begin()).getSExtValue());
}

/// The other operand of a binary node, given one of them.
Value otherOperand(OnnxNodeOp node, Value one) {
  if (node.getInputs().size() != 2)
    return {};
  if (node.getInputs()[0] == one)
    return node.getInputs()[1];
  if (node.getInputs()[1] == one)
    return node.getInputs()[0];
  return {};
}

//===----------------------------------------------------------------------===//
// The raiser
//===----------------------------------------------------------------------===//

class Raiser {
public:
  Raiser(func::FuncOp func, int64_t &numRaised)
      : func(func), builder(func.getContext()), numRaised(numRaised) {}

  /// Why nodes that a pattern is written for were not raised (a
  /// com.microsoft.MoE whose attributes or weights moe.experts cannot
  /// take), for the error that names them.
  llvm::DenseMap<Operation *, std::string> notRaised;

  /// Nodes whose input or output counts do not fit their operator, and
  /// why; when there are any, nothing is raised.
  llvm::MapVector<Operation *, std::string> malformed;

  void run() {
    // The patterns and the evaluator read nodes' operands and results by
    // position, and the importer does not check a node's counts against its
    // operator: a node short of them (a mutated model's one-input Mul, and
    // a one-input Reshape around an onnxruntime MoE node, were read past
    // their ends) or with more (a three-input Add, a Max of three, whose
    // third was ignored) is refused, and the function left as imported.
    func.walk([&](OnnxNodeOp node) {
      if (node.getOutputs().empty()) {
        malformed[node] = "it has no outputs";
        return;
      }
      if (std::optional<std::string> problem = OnnxEvaluator::countProblem(
              node.getDomain(), node.getOpType(), node.getInputs().size(),
              node.getOutputs().size()))
        malformed[node] = *problem;
    });
    if (!malformed.empty())
      return;
    SmallVector<BlockArgument> usedInputs;
    for (BlockArgument arg : func.getArguments())
      if (isModelInput(arg) && !arg.use_empty())
        usedInputs.push_back(arg);
    raiseLocalPatterns();
    eraseDeadOps();
    raiseAttentionBlocks();
    raiseOrtMoeNodes();
    eraseDeadOps();
    raiseSparseMoeBlocks();
    eraseDeadOps();
    raiseResidualAddsAndHead();
    eraseDeadOps();
    eraseUnusedStackedParameters();
    markInputsAssumedOnes(usedInputs);
  }

  /// Erases the ONNX nodes, constants and helper ops the raising left
  /// unused, users before producers, so that later matchers see only live
  /// uses.
  void eraseDeadOps() {
    bool changed = true;
    while (changed) {
      SmallVector<Operation *> dead;
      func.walk([&](Operation *op) {
        if (isa<OnnxNodeOp, arith::ConstantOp, tensor::DimOp, tensor::EmptyOp,
                LinearOp>(op) &&
            op->use_empty())
          dead.push_back(op);
      });
      for (Operation *op : dead)
        op->erase();
      changed = !dead.empty();
    }
    dataCache.clear();
  }

private:
  // --- Phase 1 ------------------------------------------------------------
  void raiseLocalPatterns();
  bool raiseEmbedding(OnnxNodeOp node);
  bool raiseLinear(OnnxNodeOp node);
  bool raiseRmsNorm(OnnxNodeOp node);

  // --- Phase 2 ------------------------------------------------------------
  void raiseAttentionBlocks();
  bool raiseAttention(OnnxNodeOp softmax);
  void raiseOrtMoeNodes();
  Value materialize(const moec::ParameterLayout &layout, RankedTensorType type,
                    OnnxNodeOp node, StringRef role, std::string &why);
  Value stack(const moec::ParameterLayout &layout, RankedTensorType type,
              OnnxNodeOp node, StringRef role, std::string &why);
  /// Erases the parameters that stack() stacked and the raising left
  /// unused, and stacked parameters left unused by a node not raised.
  void eraseUnusedStackedParameters();
  Value gateUpWeight(OnnxNodeOp node, int64_t fusion, GateUpLayout &layout,
                     std::string &why);
  Value downWeight(OnnxNodeOp node, std::string &why);
  void raiseSparseMoeBlocks();
  bool raiseSparseMoe(OnnxNodeOp topK);

  // --- Phase 3 ------------------------------------------------------------
  void raiseResidualAddsAndHead();

  // --- Analysis helpers ---------------------------------------------------
  /// True when `v`'s value depends on a parameter, a moe op or an input's
  /// elements (not merely on an input's shape).
  bool dependsOnData(Value v);
  /// The moe.linear results and moe op results a value is computed from,
  /// looking through ONNX nodes only (model inputs are not among them).
  void boundaryProducers(Value v, llvm::SetVector<Value> &out);
  /// Sample [batch, seq] shapes for the model inputs: the static shape when
  /// static (none when it is not of rank 2), else two small shapes.
  SmallVector<SmallVector<int64_t>> sampleInputShapes();
  /// Binds every model input to all ones at `shape`: token ids only reach
  /// the (already raised) embedding, and an attention mask is proved for
  /// the unpadded, packed batches moec trains on.
  void bindInputs(OnnxEvaluator &eval, ArrayRef<int64_t> shape);
  /// Tags the model inputs in `used` that the raising left unused (an
  /// attention mask whose subgraph became moe.attention's causal mask) with
  /// moe.all_ones: the raised function equals the ONNX graph only when they
  /// are all ones, so whoever binds them must check that.
  void markInputsAssumedOnes(ArrayRef<BlockArgument> used);
  HostTensor randomTensor(ArrayRef<int64_t> shape);
  Value reshapeTo(Location loc, Value v, ArrayRef<int64_t> trailing);
  Value collapseTrailing(Location loc, Value v, int64_t keep);

  func::FuncOp func;
  OpBuilder builder;
  int64_t &numRaised;
  /// The parameters stack() made, and those it stacked into them.
  llvm::SetVector<Value> stacked, stackedSources;
  llvm::DenseMap<Value, bool> dataCache;
  std::mt19937 random{20261128};
};

bool Raiser::dependsOnData(Value v) {
  auto it = dataCache.find(v);
  if (it != dataCache.end())
    return it->second;
  bool result = false;
  if (isa<BlockArgument>(v)) {
    result = true;
  } else if (auto node = v.getDefiningOp<OnnxNodeOp>()) {
    if (node.getOpType() != "Shape")
      result = llvm::any_of(node.getInputs(),
                            [&](Value in) { return dependsOnData(in); });
  } else if (!v.getDefiningOp<arith::ConstantOp>()) {
    result = true; // moe ops, tensor ops: activations
  }
  dataCache[v] = result;
  return result;
}

void Raiser::boundaryProducers(Value v, llvm::SetVector<Value> &out) {
  llvm::SmallPtrSet<Operation *, 32> seen;
  SmallVector<Value> work{v};
  while (!work.empty()) {
    Value cur = work.pop_back_val();
    // Model inputs are no boundary: the proofs bind them (bindInputs).
    if (!dependsOnData(cur) || isModelInput(cur))
      continue;
    auto node = cur.getDefiningOp<OnnxNodeOp>();
    if (!node) {
      out.insert(cur);
      continue;
    }
    if (!seen.insert(node).second)
      continue;
    for (Value in : node.getInputs())
      work.push_back(in);
  }
}

SmallVector<SmallVector<int64_t>> Raiser::sampleInputShapes() {
  for (BlockArgument arg : func.getArguments()) {
    if (!isModelInput(arg))
      continue;
    RankedTensorType t = tensorType(arg);
    // The proofs read a sample as [batch, seq]: a static input of another
    // rank gives none (a mutated model's rank-1 input was read past its
    // one dimension, and the garbage taken for a sequence length).
    if (t && t.hasStaticShape())
      return t.getRank() == 2
                 ? SmallVector<SmallVector<int64_t>>{
                       SmallVector<int64_t>(t.getShape())}
                 : SmallVector<SmallVector<int64_t>>{};
    if (t && t.getRank() == 2)
      return {{2, 5}, {1, 7}};
  }
  return {{2, 5}, {1, 7}};
}

void Raiser::bindInputs(OnnxEvaluator &eval, ArrayRef<int64_t> shape) {
  HostTensor ones = HostTensor::ints(std::vector<int64_t>(shape.begin(),
                                                          shape.end()));
  std::fill(ones.i64.begin(), ones.i64.end(), 1);
  for (BlockArgument arg : func.getArguments())
    if (isModelInput(arg))
      eval.bind(arg, ones);
}

void Raiser::markInputsAssumedOnes(ArrayRef<BlockArgument> used) {
  for (BlockArgument arg : used)
    if (arg.use_empty())
      func.setArgAttr(arg.getArgNumber(), MoeDialect::getAllOnesAttrName(),
                      UnitAttr::get(func.getContext()));
}

HostTensor Raiser::randomTensor(ArrayRef<int64_t> shape) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  HostTensor t = HostTensor::floats(std::vector<int64_t>(shape.begin(),
                                                         shape.end()));
  for (float &x : t.f32)
    x = normal(random);
  return t;
}

/// Splits the last dimension of `v` ([..., N*D]) into `trailing` ([N, D]),
/// keeping the leading (possibly dynamic) dimensions.
Value Raiser::reshapeTo(Location loc, Value v, ArrayRef<int64_t> trailing) {
  RankedTensorType type = tensorType(v);
  int64_t rank = type.getRank();
  if (type.isDynamicDim(rank - 1)) {
    // A width the model leaves dynamic: the caller proved it is N*D.
    SmallVector<int64_t> staticShape(type.getShape());
    staticShape.back() = 1;
    for (int64_t d : trailing)
      staticShape.back() *= d;
    type = RankedTensorType::get(staticShape, type.getElementType());
    v = tensor::CastOp::create(builder, loc, type, v);
  }
  SmallVector<int64_t> shape(type.getShape().drop_back());
  shape.append(trailing.begin(), trailing.end());
  SmallVector<ReassociationIndices> groups;
  for (int64_t i = 0; i + 1 < rank; ++i)
    groups.push_back({i});
  ReassociationIndices last;
  for (size_t i = 0; i < trailing.size(); ++i)
    last.push_back(rank - 1 + static_cast<int64_t>(i));
  groups.push_back(last);
  SmallVector<OpFoldResult> outputShape;
  for (int64_t i = 0; i + 1 < rank; ++i) {
    if (type.isDynamicDim(i))
      outputShape.push_back(
          tensor::DimOp::create(builder, loc, v, i).getResult());
    else
      outputShape.push_back(builder.getIndexAttr(type.getDimSize(i)));
  }
  for (int64_t d : trailing)
    outputShape.push_back(builder.getIndexAttr(d));
  auto resultType = RankedTensorType::get(shape, type.getElementType());
  return tensor::ExpandShapeOp::create(builder, loc, resultType, v, groups,
                                               outputShape);
}

/// Merges the dimensions of `v` after the first `keep` into one.
Value Raiser::collapseTrailing(Location loc, Value v, int64_t keep) {
  RankedTensorType type = tensorType(v);
  SmallVector<ReassociationIndices> groups;
  for (int64_t i = 0; i < keep; ++i)
    groups.push_back({i});
  ReassociationIndices last;
  for (int64_t i = keep; i < type.getRank(); ++i)
    last.push_back(i);
  groups.push_back(last);
  return tensor::CollapseShapeOp::create(builder, loc, v, groups);
}

//===----------------------------------------------------------------------===//
// Phase 1: local patterns
//===----------------------------------------------------------------------===//

bool Raiser::raiseEmbedding(OnnxNodeOp node) {
  if (node.getInputs().size() != 2)
    return false;
  Value table = node.getInputs()[0], ids = node.getInputs()[1];
  auto axis = node->getAttrOfType<IntegerAttr>("axis");
  if ((axis && axis.getInt() != 0) || !isParameter(table) ||
      rankOf(table) != 2 ||
      !tensorType(ids).getElementType().isSignlessInteger())
    return false;
  // The result the model declares must be what moe.embedding gives:
  // [ids..., hidden] of the table's element type (the importer does not
  // infer a Gather's result; a model may declare another rank).
  RankedTensorType tableType = tensorType(table),
                   resultType = tensorType(node.getOutputs()[0]);
  SmallVector<int64_t> expected(tensorType(ids).getShape());
  expected.push_back(tableType.getDimSize(1));
  if (!resultType ||
      resultType.getElementType() != tableType.getElementType() ||
      failed(verifyCompatibleShape(resultType.getShape(), expected)))
    return false;
  builder.setInsertionPoint(node);
  auto embedding = EmbeddingOp::create(builder, 
      node.getLoc(), node.getOutputs()[0].getType(), table, ids);
  node.getOutputs()[0].replaceAllUsesWith(embedding.getResult());
  ++numRaised;
  return true;
}

bool Raiser::raiseLinear(OnnxNodeOp node) {
  if (node.getInputs().size() < 2 || node.getOutputs().size() != 1)
    return false;
  Value input = node.getInputs()[0], weight = node.getInputs()[1];
  Value bias;
  bool transposed = false; // true when `weight` is [out, in] already
  if (node.getOpType() == "Gemm") {
    auto transA = node->getAttrOfType<IntegerAttr>("transA");
    if (node->hasAttr("absent_inputs") || (transA && transA.getInt() != 0))
      return false;
    for (StringRef scale : {"alpha", "beta"})
      if (auto a = node->getAttrOfType<FloatAttr>(scale))
        if (a.getValueAsDouble() != 1.0)
          return false;
    auto transB = node->getAttrOfType<IntegerAttr>("transB");
    transposed = transB && transB.getInt() != 0;
    if (node.getInputs().size() == 3) {
      bias = node.getInputs()[2];
      if (!isParameter(bias) || rankOf(bias) != 1)
        return false;
    }
  } else if (node.getInputs().size() != 2) {
    return false;
  }
  if (OnnxNodeOp transpose = producer(weight, "Transpose")) {
    auto perm = transpose->getAttrOfType<DenseI64ArrayAttr>("perm");
    if (!transposed && (!perm || perm.asArrayRef() == ArrayRef<int64_t>{1, 0}))
      weight = transpose.getInputs()[0], transposed = true;
  }
  if (!isParameter(weight) || rankOf(weight) != 2 || rankOf(input) < 2)
    return false;
  // The types must be what moe.linear's verifier accepts: the weight's
  // input features those of `input`, and the result the node declares
  // `input`'s shape with the output features last (the importer checks
  // MatMul's and Gemm's ranks, not every declared size: a mutated model
  // declaring 108 output features of a [4, 32] weight was raised to
  // invalid IR).
  RankedTensorType inputType = tensorType(input),
                   weightType = tensorType(weight),
                   resultType = tensorType(node.getOutputs()[0]);
  int64_t outFeatures = weightType.getDimSize(transposed ? 0 : 1),
          inFeatures = weightType.getDimSize(transposed ? 1 : 0);
  SmallVector<int64_t> expected(inputType.getShape());
  expected.back() = outFeatures;
  if (!resultType ||
      failed(verifyCompatibleDims({inFeatures, inputType.getShape().back()})) ||
      failed(verifyCompatibleShape(resultType.getShape(), expected)) ||
      resultType.getElementType() != inputType.getElementType() ||
      !isa<FloatType>(inputType.getElementType()) ||
      weightType.getElementType() != inputType.getElementType() ||
      (bias && failed(verifyCompatibleShape(tensorType(bias).getShape(),
                                            ArrayRef<int64_t>{outFeatures}))))
    return false;
  builder.setInsertionPoint(node);
  Location loc = node.getLoc();
  if (!transposed) {
    // A weight stored [in, out] (an exporter folded the transpose): make
    // the [out, in] view moe.linear reads.
    RankedTensorType type = tensorType(weight);
    auto init = tensor::EmptyOp::create(builder, 
        loc, ArrayRef<int64_t>{type.getDimSize(1), type.getDimSize(0)},
        type.getElementType());
    weight = linalg::TransposeOp::create(builder, loc, weight, init,
                                              ArrayRef<int64_t>{1, 0})
                 .getResult()[0];
  }
  auto linear = LinearOp::create(builder, 
      loc, node.getOutputs()[0].getType(), input, weight, bias);
  node.getOutputs()[0].replaceAllUsesWith(linear.getResult());
  ++numRaised;
  return true;
}

/// Matches `weight * (x * 1/sqrt(mean(x^2) + eps))` in the forms exporters
/// produce (Reciprocal of Sqrt, or Div by Sqrt; operands in either order).
bool Raiser::raiseRmsNorm(OnnxNodeOp outer) {
  if (outer.getInputs().size() != 2)
    return false;
  Value weight, normalised;
  for (int i = 0; i < 2; ++i)
    if (isParameter(outer.getInputs()[i]) && rankOf(outer.getInputs()[i]) == 1)
      weight = outer.getInputs()[i], normalised = outer.getInputs()[1 - i];
  if (!weight)
    return false;
  // normalised = x * rsqrt  |  x / sqrt
  Value x, root;
  if (OnnxNodeOp mul = producer(normalised, "Mul")) {
    for (int i = 0; i < 2 && !x; ++i)
      if (OnnxNodeOp r = producer(mul.getInputs()[i], "Reciprocal"))
        if (OnnxNodeOp s = producer(r.getInputs()[0], "Sqrt"))
          x = mul.getInputs()[1 - i], root = s.getInputs()[0];
  } else if (OnnxNodeOp div = producer(normalised, "Div")) {
    if (OnnxNodeOp s = producer(div.getInputs()[1], "Sqrt"))
      x = div.getInputs()[0], root = s.getInputs()[0];
  }
  if (!x)
    return false;
  OnnxNodeOp add = producer(root, "Add");
  if (!add)
    return false;
  std::optional<double> epsilon;
  OnnxNodeOp mean;
  for (int i = 0; i < 2 && !mean; ++i)
    if ((mean = producer(add.getInputs()[i], "ReduceMean")))
      epsilon = scalarConstant(add.getInputs()[1 - i]);
  if (!mean || !epsilon)
    return false;
  // mean over the last axis, kept, of x^2.
  auto keep = mean->getAttrOfType<IntegerAttr>("keepdims");
  if (keep && keep.getInt() != 1)
    return false;
  int64_t rank = rankOf(x);
  std::optional<SmallVector<int64_t>> axes;
  if (mean.getInputs().size() == 2)
    axes = moec::constantInts(mean.getInputs()[1]);
  else if (auto a = mean->getAttrOfType<DenseI64ArrayAttr>("axes"))
    axes = SmallVector<int64_t>(a.asArrayRef());
  if (!axes || axes->size() != 1 ||
      ((*axes)[0] != -1 && (*axes)[0] != rank - 1))
    return false;
  OnnxNodeOp pow = producer(mean.getInputs()[0], "Pow");
  Value squared = mean.getInputs()[0];
  if (pow) {
    if (pow.getInputs()[0] != x || scalarConstant(pow.getInputs()[1]) != 2.0)
      return false;
  } else if (OnnxNodeOp sq = producer(squared, "Mul")) {
    if (sq.getInputs()[0] != x || sq.getInputs()[1] != x)
      return false;
  } else {
    return false;
  }
  if (tensorType(x) != tensorType(outer.getOutputs()[0]))
    return false;
  // What moe.rms_norm's verifier asks: an epsilon >= 0 (a mutated model's
  // -1 was raised to IR it refuses) and a weight of x's last dimension.
  RankedTensorType xType = tensorType(x);
  if (!(*epsilon >= 0.0) || !xType || xType.getRank() < 1 ||
      failed(verifyCompatibleDims({tensorType(weight).getDimSize(0),
                                   xType.getShape().back()})))
    return false;
  builder.setInsertionPoint(outer);
  auto norm = RmsNormOp::create(builder, outer.getLoc(), tensorType(x), x,
                                        weight,
                                        builder.getF64FloatAttr(*epsilon));
  outer.getOutputs()[0].replaceAllUsesWith(norm.getResult());
  ++numRaised;
  return true;
}

void Raiser::raiseLocalPatterns() {
  SmallVector<OnnxNodeOp> nodes;
  func.walk([&](OnnxNodeOp node) { nodes.push_back(node); });
  for (OnnxNodeOp node : nodes) {
    if (!node.getDomain().empty())
      continue;
    StringRef type = node.getOpType();
    if (type == "Gather")
      raiseEmbedding(node);
    else if (type == "MatMul" || type == "Gemm")
      raiseLinear(node);
    else if ((type == "Cast" || type == "Identity") &&
             node.getInputs().size() == 1 &&
             node.getInputs()[0].getType() == node.getOutputs()[0].getType())
      node.getOutputs()[0].replaceAllUsesWith(node.getInputs()[0]);
  }
  // Norms after linears: their weight Mul must not be mistaken for anything
  // else, and their inputs may be Casts folded just above.
  for (OnnxNodeOp node : nodes)
    if (node.getOpType() == "Mul" && node.getDomain().empty() &&
        !node.getOutputs()[0].use_empty())
      raiseRmsNorm(node);
}

//===----------------------------------------------------------------------===//
// Phase 2: attention
//===----------------------------------------------------------------------===//

/// Finds the attention block around `softmax`, proves it equal to
/// expand_shape + rotary + attention + collapse_shape by evaluation, and
/// rewrites it.
bool Raiser::raiseAttention(OnnxNodeOp softmax) {
  std::string error;
  // The probabilities' matmul: the first MatMul downstream of the softmax
  // (exporters insert a NaN guard, Where(IsNaN(p), 0, p), in between).
  OnnxNodeOp probsMatmul;
  {
    SmallVector<Value> work{softmax.getOutputs()[0]};
    llvm::SmallPtrSet<Operation *, 16> seen;
    while (!work.empty() && !probsMatmul) {
      Value cur = work.pop_back_val();
      for (Operation *user : cur.getUsers()) {
        auto node = dyn_cast<OnnxNodeOp>(user);
        if (!node || !seen.insert(node).second || seen.size() > 8)
          continue;
        if (node.getOpType() == "MatMul" && node.getInputs()[0] == cur) {
          probsMatmul = node;
          break;
        }
        for (Value result : node.getOutputs())
          work.push_back(result);
      }
    }
  }
  if (!probsMatmul)
    return false;
  // The block's output: downstream of that matmul, the input of the output
  // projection.
  Value output;
  for (Value cur = probsMatmul.getOutputs()[0];;) {
    if (!cur.hasOneUse())
      return false;
    Operation *user = *cur.getUsers().begin();
    if (isa<LinearOp>(user)) {
      output = cur;
      break;
    }
    auto node = dyn_cast<OnnxNodeOp>(user);
    if (!node || node.getOutputs().size() != 1)
      return false;
    cur = node.getOutputs()[0];
  }
  // The block's inputs: exactly three linear projections of one tensor.
  llvm::SetVector<Value> producers;
  boundaryProducers(output, producers);
  SmallVector<LinearOp> projections;
  for (Value p : producers) {
    auto linear = p.getDefiningOp<LinearOp>();
    if (!linear)
      return false;
    projections.push_back(linear);
  }
  if (projections.size() != 3 ||
      projections[0].getInput() != projections[1].getInput() ||
      projections[0].getInput() != projections[2].getInput())
    return false;
  // Which is which: q is in the cone of the scores' left operand, v in the
  // cone of the second matmul's right operand.
  OnnxNodeOp scoresMatmul;
  {
    SmallVector<Value> work{softmax.getInputs()[0]};
    llvm::SmallPtrSet<Operation *, 16> seen;
    while (!work.empty() && !scoresMatmul) {
      Value cur = work.pop_back_val();
      auto node = cur.getDefiningOp<OnnxNodeOp>();
      if (!node || !seen.insert(node).second || !dependsOnData(cur))
        continue;
      if (node.getOpType() == "MatMul")
        scoresMatmul = node;
      for (Value in : node.getInputs())
        work.push_back(in);
    }
  }
  if (!scoresMatmul)
    return false;
  llvm::SetVector<Value> qSet, kSet, vSet;
  boundaryProducers(scoresMatmul.getInputs()[0], qSet);
  boundaryProducers(scoresMatmul.getInputs()[1], kSet);
  boundaryProducers(probsMatmul.getInputs()[1], vSet);
  if (qSet.size() != 1 || kSet.size() != 1 || vSet.size() != 1)
    return false;
  auto q = qSet[0].getDefiningOp<LinearOp>(), k = kSet[0].getDefiningOp<LinearOp>(),
       v = vSet[0].getDefiningOp<LinearOp>();
  if (!q || !k || !v)
    return false;

  // Head counts from the rank-4 reshapes of the projections.
  auto headsOf = [](LinearOp proj) -> std::pair<int64_t, int64_t> {
    for (Operation *user : proj.getResult().getUsers())
      if (auto node = dyn_cast<OnnxNodeOp>(user))
        if (node.getOpType() == "Reshape" && rankOf(node.getOutputs()[0]) == 4) {
          RankedTensorType t = tensorType(node.getOutputs()[0]);
          if (!t.isDynamicDim(2) && !t.isDynamicDim(3))
            return {t.getDimSize(2), t.getDimSize(3)};
        }
    return {0, 0};
  };
  auto [qHeads, headDim] = headsOf(q);
  auto [kvHeads, kvDim] = headsOf(k);
  if (qHeads == 0 || kvHeads == 0 || headDim != kvDim || headDim % 2 != 0 ||
      headDim < 4)
    return false;

  // Theta from the cos and sin tables in the query's cone: tables are
  // operands of Mul nodes that depend on no data.
  std::optional<double> theta;
  SmallVector<SmallVector<int64_t>> samples = sampleInputShapes();
  if (samples.empty())
    return false;
  {
    SmallVector<Value> tables;
    llvm::SmallPtrSet<Operation *, 32> seen;
    SmallVector<Value> work{scoresMatmul.getInputs()[0]};
    while (!work.empty()) {
      Value cur = work.pop_back_val();
      auto node = cur.getDefiningOp<OnnxNodeOp>();
      if (!node || !seen.insert(node).second || !dependsOnData(cur))
        continue;
      if (node.getOpType() == "Mul")
        for (Value in : node.getInputs())
          if (!dependsOnData(in))
            tables.push_back(in);
      for (Value in : node.getInputs())
        work.push_back(in);
    }
    OnnxEvaluator eval;
    bindInputs(eval, samples.front());
    const HostTensor *cosTable = nullptr, *sinTable = nullptr;
    for (Value table : tables) {
      const HostTensor *t = eval.evaluate(table, error);
      if (!t || !t->isFloat() || t->shape.empty() ||
          t->shape.back() != headDim || t->numElements() < 2 * headDim)
        continue;
      bool ones = true, zeros = true;
      for (int64_t i = 0; i < headDim; ++i)
        ones &= t->f32[i] == 1.0f, zeros &= t->f32[i] == 0.0f;
      if (ones)
        cosTable = t;
      if (zeros)
        sinTable = t;
    }
    if (!cosTable || !sinTable)
      return false;
    // Row 1 (position 1): angle_i = f_i = theta^(-2i/d); use i = 1.
    double angle =
        std::atan2(sinTable->f32[headDim + 1], cosTable->f32[headDim + 1]);
    if (!(angle > 0.0 && angle < 1.0))
      return false;
    double estimate = std::pow(angle, -static_cast<double>(headDim) / 2.0);
    // The tables are fp32: keep 5 significant digits.
    double magnitude = std::pow(10.0, std::floor(std::log10(estimate)) - 4);
    theta = std::round(estimate / magnitude) * magnitude;
    // A mutated table's angle near 0 gives an estimate past the double
    // range: inf / inf is NaN, not a theta moe.rotary accepts.
    if (!std::isfinite(*theta) || *theta <= 0.0)
      return false;
  }
  double scale = 1.0 / std::sqrt(static_cast<double>(headDim));

  // The projections' declared widths must be the heads' (the proof below
  // binds values of those widths, whatever the model declares).
  auto declaredWidthIs = [&](Value projection, int64_t width) {
    RankedTensorType type = tensorType(projection);
    return type.getRank() == 3 &&
           (type.isDynamicDim(2) || type.getDimSize(2) == width);
  };
  if (!declaredWidthIs(q.getResult(), qHeads * headDim) ||
      !declaredWidthIs(k.getResult(), kvHeads * headDim) ||
      !declaredWidthIs(v.getResult(), kvHeads * headDim))
    return false;

  // Prove: evaluate the block on random projections at each sample shape
  // and compare with the moe ops it becomes.
  for (ArrayRef<int64_t> sample : samples) {
    int64_t batch = sample[0], seq = sample[1];
    OnnxEvaluator eval;
    bindInputs(eval, sample);
    HostTensor qv = randomTensor({batch, seq, qHeads * headDim});
    HostTensor kv = randomTensor({batch, seq, kvHeads * headDim});
    HostTensor vv = randomTensor({batch, seq, kvHeads * headDim});
    eval.bind(q.getResult(), qv);
    eval.bind(k.getResult(), kv);
    eval.bind(v.getResult(), vv);
    const HostTensor *actual = eval.evaluate(output, error);
    if (!actual)
      return false;
    HostTensor q4 = qv, k4 = kv, v4 = vv, qr, kr, o;
    q4.shape = {batch, seq, qHeads, headDim};
    k4.shape = v4.shape = {batch, seq, kvHeads, headDim};
    if (!moec::reference::rotary(q4, nullptr, *theta, qr, error) ||
        !moec::reference::rotary(k4, nullptr, *theta, kr, error) ||
        !moec::reference::attention(qr, kr, v4, true, scale, std::nullopt, o,
                                    error))
      return false;
    o.shape = {batch, seq, qHeads * headDim};
    if (actual->shape != o.shape ||
        moec::reference::compare(*actual, o).relativeL2 >
            kEquivalenceTolerance)
      return false;
  }

  // Rewrite.
  Operation *outputOp = output.getDefiningOp();
  builder.setInsertionPointAfter(outputOp);
  Location loc = softmax.getLoc();
  RankedTensorType qType = tensorType(q.getResult());
  Value q4 = reshapeTo(loc, q.getResult(), {qHeads, headDim});
  Value k4 = reshapeTo(loc, k.getResult(), {kvHeads, headDim});
  Value v4 = reshapeTo(loc, v.getResult(), {kvHeads, headDim});
  FloatAttr thetaAttr = builder.getF64FloatAttr(*theta);
  Value qr = RotaryOp::create(builder, loc, q4.getType(), q4, Value(), thetaAttr);
  Value kr = RotaryOp::create(builder, loc, k4.getType(), k4, Value(), thetaAttr);
  Value attn = AttentionOp::create(builder, loc, q4.getType(), Type(), qr, kr,
                                   v4, builder.getBoolAttr(true),
                                   builder.getF64FloatAttr(scale),
                                   IntegerAttr())
                   .getResult();
  Value merged = collapseTrailing(loc, attn, qType.getRank() - 1);
  if (merged.getType() != output.getType())
    return false;
  output.replaceAllUsesWith(merged);
  numRaised += 3;
  return true;
}

void Raiser::raiseAttentionBlocks() {
  SmallVector<OnnxNodeOp> softmaxes;
  func.walk([&](OnnxNodeOp node) {
    if (node.getOpType() == "Softmax" && node.getDomain().empty() &&
        rankOf(node.getOutputs()[0]) == 4)
      softmaxes.push_back(node);
  });
  for (OnnxNodeOp softmax : softmaxes)
    raiseAttention(softmax);
}

//===----------------------------------------------------------------------===//
// Phase 2: sparse MoE blocks
//===----------------------------------------------------------------------===//

/// `type`'s shape as `[4, 64, 16]`, for messages.
std::string shapeString(ShapedType type) {
  std::string s = "[";
  for (auto [i, size] : llvm::enumerate(type.getShape()))
    s += (i ? ", " : "") + (ShapedType::isDynamic(size) ? std::string("?")
                                                        : std::to_string(size));
  return s + "]";
}

/// A parameter argument as `'name' [4, 64, 16] bf16`, for messages.
std::string describeParameter(Value param) {
  auto arg = cast<BlockArgument>(param);
  auto func = cast<func::FuncOp>(arg.getOwner()->getParentOp());
  std::string s = "'";
  if (auto name = func.getArgAttrOfType<StringAttr>(
          arg.getArgNumber(), moe::MoeDialect::getParameterAttrName()))
    s += name.getValue().str();
  s += "' " + shapeString(tensorType(param));
  llvm::raw_string_ostream os(s);
  os << " " << tensorType(param).getElementType();
  return s;
}

/// The parameters a layout reads, for messages: `parameter 'w' [...] f32`
/// or `8 parameters ('w1' [...] f32, ...)` (the first four).
std::string describeSources(const moec::ParameterLayout &layout) {
  if (layout.parameters.size() == 1)
    return "parameter " + describeParameter(layout.parameter());
  std::string list;
  for (auto [i, p] : llvm::enumerate(layout.parameters)) {
    if (i == 4) {
      list += ", ...";
      break;
    }
    list += (i ? ", " : "") + describeParameter(p);
  }
  return std::to_string(layout.parameters.size()) + " parameters (" + list +
         ")";
}

/// The ONNX node name of `op` as `'name' ` (with a space), or nothing.
std::string nodeName(Operation *op) {
  if (auto loc = dyn_cast<NameLoc>(op->getLoc()))
    return "'" + loc.getName().getValue().str() + "' ";
  return "";
}

/// The first operation that reads `source` (directly or through ONNX
/// nodes) other than the nodes computing `roots` from it, or null when only
/// those do: what reads `roots` themselves does not count.
Operation *readElsewhere(Value source, ArrayRef<Value> roots) {
  llvm::SmallPtrSet<Operation *, 32> slice;
  SmallVector<Value> work(roots);
  while (!work.empty()) {
    auto node = work.pop_back_val().getDefiningOp<OnnxNodeOp>();
    if (node && slice.insert(node).second)
      llvm::append_range(work, node.getInputs());
  }
  SmallVector<Value> reached{source};
  llvm::SmallPtrSet<Operation *, 32> seen;
  while (!reached.empty()) {
    Value v = reached.pop_back_val();
    if (llvm::is_contained(roots, v))
      continue;
    for (Operation *user : v.getUsers()) {
      if (!slice.contains(user))
        return user;
      if (seen.insert(user).second)
        llvm::append_range(reached, user->getResults());
    }
  }
  return nullptr;
}

/// Why `weight` (input `what` of a com.microsoft.MoE) is not a
/// rearrangement of one parameter: the first node on its way that computes
/// rather than moves elements, or the parameters it is put together from.
std::string describeUntraced(Value weight, StringRef what) {
  static const llvm::StringSet<> moving = {
      "Identity", "Cast",  "Reshape", "Unsqueeze", "Squeeze",
      "Flatten",  "Slice", "Split",   "Concat",    "Transpose"};
  std::string head = (what + " " + shapeString(tensorType(weight))).str();
  llvm::SetVector<Value> params;
  llvm::SmallPtrSet<Operation *, 16> seen;
  SmallVector<Value> stack{weight};
  while (!stack.empty()) {
    Value v = stack.pop_back_val();
    if (isParameter(v)) {
      params.insert(v);
      continue;
    }
    auto node = v.getDefiningOp<OnnxNodeOp>();
    if (!node || !seen.insert(node).second)
      continue;
    if (!node.getDomain().empty() || !moving.contains(node.getOpType())) {
      std::string name;
      if (auto loc = dyn_cast<NameLoc>(node.getLoc()))
        name = "'" + loc.getName().getValue().str() + "' ";
      return head + " is computed by ONNX node " + name + "(" +
             node.getOpType().str() + "), which does not only move a " +
             "parameter's elements";
    }
    // Data inputs: every input of a Concat, the first of the others; the
    // first is visited first.
    for (Value in : llvm::reverse(node.getOpType() == "Concat"
                                      ? node.getInputs()
                                      : node.getInputs().take_front()))
      stack.push_back(in);
  }
  if (params.size() > 1) {
    std::string list;
    for (auto [i, p] : llvm::enumerate(params)) {
      if (i == 4) {
        list += ", ...";
        break;
      }
      list += (i ? ", " : "") + describeParameter(p);
    }
    return head + " is put together from " + std::to_string(params.size()) +
           " parameters (" + list +
           ") in a way that is not a strided view of them; moec stacks " +
           "several parameters into one expert weight only when they have " +
           "one element count and type and are moved as whole tensors";
  }
  if (params.size() == 1)
    return head + " is rearranged from parameter " +
           describeParameter(params.front()) +
           " in a way that is not a strided view of it (a dynamic shape, a "
           "second type conversion, or a Slice or Reshape whose sizes do "
           "not divide)";
  return head + " is not computed from a parameter";
}

/// `layout` as a value of `type`: its parameter with its axes permuted (a
/// linalg.transpose) and converted to `type`'s element type (arith.extf or
/// arith.truncf) when the layout only permutes the parameter's axes;
/// moe-canonicalize-parameters folds both into the parameter. Null, with
/// `why`, otherwise.
Value Raiser::materialize(const moec::ParameterLayout &layout,
                          RankedTensorType type, OnnxNodeOp node,
                          StringRef role, std::string &why) {
  if (layout.parameters.size() > 1)
    return stack(layout, type, node, role, why);
  Location loc = node.getLoc();
  std::optional<SmallVector<int64_t>> perm = layout.permutation();
  if (!perm) {
    why = "it is not the parameter with its axes permuted";
    return {};
  }
  Value v = layout.parameter();
  ArrayRef<int64_t> shape = tensorType(v).getShape();
  SmallVector<int64_t> permuted;
  for (int64_t p : *perm)
    permuted.push_back(shape[p]);
  if (ArrayRef<int64_t>(permuted) != type.getShape()) {
    why = "its shape differs";
    return {};
  }
  auto from = dyn_cast<FloatType>(tensorType(v).getElementType());
  auto to = dyn_cast<FloatType>(type.getElementType());
  if (!from || !to) {
    why = "it is not a floating-point parameter read as floating point";
    return {};
  }
  if (from != to && from.getWidth() == to.getWidth()) {
    why = "a Cast between two types of one width cannot be read exactly";
    return {};
  }
  builder.setInsertionPointAfterValue(v);
  if (from != to) {
    auto converted = RankedTensorType::get(shape, to);
    v = from.getWidth() < to.getWidth()
            ? arith::ExtFOp::create(builder, loc, converted, v).getResult()
            : arith::TruncFOp::create(builder, loc, converted, v).getResult();
  }
  if (!llvm::equal(*perm, llvm::seq<int64_t>(0, perm->size()))) {
    auto init = tensor::EmptyOp::create(builder, loc, type.getShape(), to);
    v = linalg::TransposeOp::create(builder, loc, v, init, *perm)
            .getResult()[0];
  }
  return v;
}

/// `layout`, over several parameters, as one new parameter of `type`
/// (named after `node` and `role`) whose initial value is those
/// parameters stacked: moe.initializer_pieces records, for each, its
/// initializer and the box of the new parameter it fills, for the drivers
/// that read the model file's weights. Null, with `why`, when the
/// parameters do not each fill one box, when their type cannot be read
/// exactly as `type`'s, or when something else reads one of them too (the
/// stack would be a second copy of it).
Value Raiser::stack(const moec::ParameterLayout &layout, RankedTensorType type,
                    OnnxNodeOp node, StringRef role, std::string &why) {
  std::optional<SmallVector<moec::LayoutPiece>> pieces = layout.pieces();
  if (!pieces) {
    why = "they do not each fill one block of it (a piece is split, "
          "overlaps another or leaves a gap)";
    return {};
  }
  // pieces() tiles the layout's own shape, which must be the weight the
  // node reads (a fuzzed model declared 2048 elements over pieces of 1536).
  SmallVector<int64_t> shape;
  for (const auto &digits : layout.axes) {
    int64_t size = 1;
    for (const moec::LayoutDigit &digit : digits)
      size *= digit.size;
    shape.push_back(size);
  }
  if (ArrayRef<int64_t>(shape) != type.getShape()) {
    why = "its shape differs";
    return {};
  }
  auto from = dyn_cast<FloatType>(getElementTypeOrSelf(layout.parameter()));
  auto to = dyn_cast<FloatType>(type.getElementType());
  if (!from || !to) {
    why = "they are not floating-point parameters read as floating point";
    return {};
  }
  if (from != to && from.getWidth() == to.getWidth()) {
    why = "a Cast between two types of one width cannot be read exactly";
    return {};
  }
  SmallVector<Value> roots;
  if (role == "down_proj")
    roots.push_back(node.getInputs()[3]);
  else
    for (unsigned i : {2u, 4u})
      if (i < node.getInputs().size())
        roots.push_back(node.getInputs()[i]);
  for (Value source : layout.parameters)
    if (Operation *other = readElsewhere(source, roots)) {
      std::string what = other->getName().getStringRef().str();
      if (auto onnx = dyn_cast<OnnxNodeOp>(other))
        what =
            "ONNX node " + nodeName(other) + "(" + onnx.getOpType().str() + ")";
      why = describeParameter(source) + " is also read by " + what +
            ", so stacking it into one parameter would make a second copy "
            "of it";
      return {};
    }
  MLIRContext *context = func.getContext();
  SmallVector<Attribute> records;
  for (const moec::LayoutPiece &piece : *pieces) {
    auto arg = cast<BlockArgument>(piece.parameter);
    auto initializer = func.getArgAttrOfType<StringAttr>(
        arg.getArgNumber(), MoeDialect::getParameterAttrName());
    NamedAttribute fields[] = {
        builder.getNamedAttr("initializer", initializer),
        builder.getNamedAttr("offsets",
                             builder.getDenseI64ArrayAttr(piece.offsets)),
        builder.getNamedAttr("sizes",
                             builder.getDenseI64ArrayAttr(piece.sizes)),
        builder.getNamedAttr("permutation",
                             builder.getDenseI64ArrayAttr(piece.permutation))};
    records.push_back(DictionaryAttr::get(context, fields));
  }
  std::string name = nodeName(node);
  name = (name.empty() ? std::string("moe") : name.substr(1, name.size() - 3)) +
         "." + role.str();
  NamedAttribute attrs[] = {
      builder.getNamedAttr(MoeDialect::getParameterAttrName(),
                           builder.getStringAttr(name)),
      builder.getNamedAttr(MoeDialect::getInitializerPiecesAttrName(),
                           builder.getArrayAttr(records))};
  unsigned index = func.getNumArguments();
  if (failed(func.insertArgument(
          index, type, DictionaryAttr::get(context, attrs), node.getLoc()))) {
    why = "its stacked parameter cannot be added to the function";
    return {};
  }
  Value arg = func.getArgument(index);
  stacked.insert(arg);
  stackedSources.insert(layout.parameters.begin(), layout.parameters.end());
  return arg;
}

void Raiser::eraseUnusedStackedParameters() {
  llvm::BitVector erased(func.getNumArguments());
  for (const llvm::SetVector<Value> *set : {&stacked, &stackedSources})
    for (Value v : *set)
      if (v.use_empty())
        erased.set(cast<BlockArgument>(v).getArgNumber());
  stacked.clear();
  stackedSources.clear();
  if (erased.any())
    (void)func.eraseArguments(erased);
}

/// `weight`'s type when it is a static rank-3 tensor; else null, with `why`
/// naming it (`name`) and the shape it should have (`dims`).
static RankedTensorType staticExpertsWeight(Value weight, StringRef name,
                                            StringRef dims, std::string &why) {
  RankedTensorType type = tensorType(weight);
  if (type && type.hasStaticShape() && type.getRank() == 3)
    return type;
  why = (name + " " + (type ? shapeString(type) : std::string("?")) +
         " is not a static " + dims + " tensor")
            .str();
  return {};
}

/// The gate/up weight moe.experts reads for a com.microsoft.MoE whose
/// swiglu_fusion is `fusion` (0: fc1 the gate rows and fc3 the up rows; 1:
/// fc1 the two interleaved; 2: fc1 the gate rows, then the up rows), with
/// its layout. However the graph computes them from the parameters
/// (Transpose, reshapes, Slice/Split, Concat, a Cast), their layout is read
/// structurally: an evaluation would touch every expert weight, and a
/// weights-free model has none. Hugging Face's concatenated layout is
/// preferred, so that the parameter is its `gate_up_proj`. Null, with
/// `why`, when it is not the rows of one parameter in a layout moe.experts
/// reads.
Value Raiser::gateUpWeight(OnnxNodeOp node, int64_t fusion,
                           GateUpLayout &layout, std::string &why) {
  Value fc1 = node.getInputs()[2];
  RankedTensorType fc1Type =
      staticExpertsWeight(fc1, "fc1", "[experts, rows, hidden]", why);
  if (!fc1Type)
    return {};
  int64_t e = fc1Type.getDimSize(0), rows = fc1Type.getDimSize(1),
          h = fc1Type.getDimSize(2);
  std::optional<moec::ParameterLayout> traced = moec::traceParameterLayout(fc1);
  if (!traced) {
    why = describeUntraced(fc1, "fc1");
    return {};
  }
  RankedTensorType type = fc1Type;
  std::optional<moec::ParameterLayout> concatenated = traced;
  if (fusion == 0) {
    Value fc3 = node.getInputs()[4];
    std::optional<moec::ParameterLayout> up = moec::traceParameterLayout(fc3);
    if (!up) {
      why = describeUntraced(fc3, "fc3");
      return {};
    }
    if (tensorType(fc3) != fc1Type) {
      why = "fc3 " + shapeString(tensorType(fc3)) + " differs from fc1 " +
            shapeString(fc1Type);
      return {};
    }
    concatenated = moec::ParameterLayout::concat({*traced, *up}, 1);
    type = RankedTensorType::get({e, 2 * rows, h}, fc1Type.getElementType());
    if (!concatenated) {
      why = "fc1 and fc3 " + shapeString(fc1Type) +
            " are not the gate and up rows of one parameter or one stack "
            "of them (fc1 from " +
            describeSources(*traced) + ", fc3 from " + describeSources(*up) +
            ")";
      return {};
    }
  } else if (fusion == 1) {
    if (rows % 2 != 0) {
      why = "fc1 " + shapeString(fc1Type) + " has an odd number of rows";
      return {};
    }
    // Row 2j + c of fc1 is row c·I + j of the concatenated layout.
    concatenated.reset();
    if (auto split = traced->reshaped({e, rows / 2, 2, h}))
      concatenated = split->transposed({0, 2, 1, 3}).reshaped({e, rows, h});
  }
  std::string how;
  if (concatenated)
    if (Value v = materialize(*concatenated, type, node, "gate_up_proj", how)) {
      layout = GateUpLayout::concatenated;
      return v;
    }
  // A stack that is refused (say, read elsewhere too) stays refused; one
  // parameter may still be stored interleaved.
  bool stackRefused =
      concatenated && concatenated->parameters.size() > 1 && !how.empty();
  if (fusion == 1 && !stackRefused)
    if (Value v = materialize(*traced, type, node, "gate_up_proj", how)) {
      layout = GateUpLayout::interleaved;
      return v;
    }
  const char *expected =
      fusion == 1 ? "onnxruntime's interleave of Hugging Face's gate and up "
                    "rows (swiglu_fusion 1), or those rows stored "
                    "interleaved"
                  : "Hugging Face's gate rows, then up rows";
  std::string head = (fusion == 0 ? "fc1 and fc3 " : "fc1 ") +
                     shapeString(fc1Type) +
                     (fusion == 0 ? " rearrange " : " rearranges ");
  // A stack of several parameters that is in Hugging Face's layout but
  // cannot be stacked says why; anything else says what it is not.
  if (stackRefused)
    why = head + describeSources(*concatenated) + ", but " + how;
  else
    why = head + describeSources(*traced) + " into something other than " +
          expected;
  return {};
}

/// The down weight moe.experts reads for fc2 [E, H, I], or null with `why`.
Value Raiser::downWeight(OnnxNodeOp node, std::string &why) {
  Value fc2 = node.getInputs()[3];
  RankedTensorType type =
      staticExpertsWeight(fc2, "fc2", "[experts, hidden, rows]", why);
  if (!type)
    return {};
  std::optional<moec::ParameterLayout> traced = moec::traceParameterLayout(fc2);
  if (!traced) {
    why = describeUntraced(fc2, "fc2");
    return {};
  }
  std::string how;
  if (Value v = materialize(*traced, type, node, "down_proj", how))
    return v;
  why = "fc2 " + shapeString(type) + " rearranges " + describeSources(*traced) +
        ", but " + how;
  return {};
}

/// onnxruntime's com.microsoft.MoE with router logits from a linear layer:
/// one node, so its attributes say everything. When its input is a
/// flattening of a [batch, seq, hidden] tensor and its output is reshaped
/// back, the moe ops take the unflattened tensor. A node that is not
/// raised gets the reason in `notRaised`.
void Raiser::raiseOrtMoeNodes() {
  SmallVector<OnnxNodeOp> nodes;
  func.walk([&](OnnxNodeOp node) {
    if (node.getOpType() == "MoE" && node.getDomain() == "com.microsoft")
      nodes.push_back(node);
  });
  for (OnnxNodeOp node : nodes) {
    auto strAttr = [&](StringRef name) {
      auto a = node->getAttrOfType<StringAttr>(name);
      return a ? a.getValue() : StringRef();
    };
    auto intAttr = [&](StringRef name, int64_t fallback) {
      auto a = node->getAttrOfType<IntegerAttr>(name);
      return a ? a.getInt() : fallback;
    };
    auto floatAttr = [&](StringRef name, double fallback) {
      auto a = node->getAttrOfType<FloatAttr>(name);
      return a ? a.getValueAsDouble() : fallback;
    };
    auto refuse = [&](const std::string &why) { notRaised[node] = why; };
    // Plain SwiGLU: silu(gate) * up, renormalised top-k, no biases, no
    // activation scaling or clamping.
    int64_t fusion = intAttr("swiglu_fusion", 0);
    double alpha = floatAttr("activation_alpha", 1.0),
           beta = floatAttr("activation_beta", 0.0);
    if (strAttr("activation_type") != "swiglu") {
      refuse("activation_type '" + strAttr("activation_type").str() +
             "' is not swiglu (moe.experts computes Mixtral's SwiGLU)");
      continue;
    }
    if (fusion < 0 || fusion > 2) {
      refuse("swiglu_fusion " + std::to_string(fusion) + " is not 0, 1 or 2");
      continue;
    }
    if (intAttr("normalize_routing_weights", 0) != 1) {
      refuse("normalize_routing_weights " +
             std::to_string(intAttr("normalize_routing_weights", 0)) +
             " is not 1 (Mixtral renormalises its top-k routing weights)");
      continue;
    }
    if (alpha != 1.0 || beta != 0.0 || node->hasAttr("swiglu_limit")) {
      std::ostringstream os;
      os << "activation_alpha " << alpha << ", activation_beta " << beta
         << (node->hasAttr("swiglu_limit") ? ", swiglu_limit" : "")
         << ": Mixtral's SwiGLU is silu(gate) * up (alpha 1, beta 0, no "
            "swiglu_limit)";
      refuse(os.str());
      continue;
    }
    // Inputs: input, router_probs, fc1, (no fc1 bias), fc2, and with
    // swiglu_fusion 0 (no fc2 bias), fc3; no fc3 bias.
    auto absent = node->getAttrOfType<DenseI64ArrayAttr>("absent_inputs");
    bool separateUp = fusion == 0;
    SmallVector<int64_t> wantAbsent = {3};
    if (separateUp)
      wantAbsent.push_back(5);
    if (!absent || absent.asArrayRef() != ArrayRef<int64_t>(wantAbsent) ||
        node.getInputs().size() != (separateUp ? 5u : 4u)) {
      refuse(separateUp ? "with swiglu_fusion 0, moe.experts takes input, "
                          "router_probs, fc1, fc2 and fc3, no biases"
                        : "moe.experts takes input, router_probs, fc1 and "
                          "fc2, no biases");
      continue;
    }
    Value input = node.getInputs()[0], logits = node.getInputs()[1];
    auto routerLinear = logits.getDefiningOp<LinearOp>();
    if (!routerLinear || routerLinear.getInput() != input) {
      refuse("router_probs are not a linear layer of the input");
      continue;
    }
    int64_t k = intAttr("k", 1);
    GateUpLayout layout;
    std::string why;
    Value gateUp = gateUpWeight(node, fusion, layout, why);
    Value down = gateUp ? downWeight(node, why) : Value();
    if (!gateUp || !down) {
      refuse(why);
      continue;
    }
    // Look through Reshape([-1, H]) ... Reshape(Shape(x)).
    Value replaced = node.getOutputs()[0];
    OnnxNodeOp flatten = producer(input, "Reshape");
    if (flatten && replaced.hasOneUse()) {
      auto unflatten = dyn_cast<OnnxNodeOp>(*replaced.getUsers().begin());
      if (unflatten && unflatten.getOpType() != "Reshape")
        unflatten = OnnxNodeOp();
      Value x = flatten.getInputs()[0];
      OnnxNodeOp shape = unflatten ? producer(unflatten.getInputs()[1], "Shape")
                                   : OnnxNodeOp();
      // The output is reshaped back by Shape(x) (all of it) or, for static
      // shapes, by a constant.
      auto start = shape ? shape->getAttrOfType<IntegerAttr>("start")
                         : IntegerAttr();
      bool wholeShape = shape && shape.getInputs()[0] == x &&
                        !shape->hasAttr("end") &&
                        (!shape->hasAttr("start") ||
                         (start && start.getInt() == 0));
      bool restoresShape = wholeShape || tensorType(x).hasStaticShape();
      if (unflatten && restoresShape &&
          tensorType(x) == tensorType(unflatten.getOutputs()[0])) {
        input = x;
        replaced = unflatten.getOutputs()[0];
      }
    }
    RankedTensorType inputType = tensorType(input);
    // What moe.router's and moe.experts' verifiers ask, which this
    // structural raising does not prove by evaluation (a mutated model's
    // down weight of another width than the input's was raised to IR the
    // verifier refuses): k within the experts, gate_up [E, 2I, H] and down
    // [E, H, I] of the input's H.
    RankedTensorType gateUpType = tensorType(gateUp),
                     downType = tensorType(down);
    int64_t numExperts = tensorType(logits).getShape().back(),
            hidden = inputType.getShape().back();
    if (k < 1 || (!ShapedType::isDynamic(numExperts) && k > numExperts)) {
      refuse("k " + std::to_string(k) + " is not between 1 and the " +
             std::to_string(numExperts) + " experts");
      continue;
    }
    int64_t twoInter = gateUpType.getRank() == 3 ? gateUpType.getDimSize(1) : 0;
    int64_t inter =
        ShapedType::isDynamic(twoInter) ? ShapedType::kDynamic : twoInter / 2;
    if (gateUpType.getRank() != 3 || downType.getRank() != 3 ||
        (!ShapedType::isDynamic(twoInter) && twoInter % 2 != 0) ||
        failed(verifyCompatibleDims({gateUpType.getDimSize(2), hidden})) ||
        failed(verifyCompatibleShape(
            downType.getShape(), {gateUpType.getDimSize(0), hidden, inter}))) {
      refuse("its expert weights do not fit its input's hidden size");
      continue;
    }
    SmallVector<int64_t> logitShape(inputType.getShape().drop_back());
    logitShape.push_back(tensorType(logits).getShape().back());
    SmallVector<int64_t> choiceShape(inputType.getShape().drop_back());
    choiceShape.push_back(k);
    Type elementType = inputType.getElementType();
    builder.setInsertionPointAfterValue(replaced);
    Location loc = node.getLoc();
    auto newLogits = LinearOp::create(
        builder, loc, RankedTensorType::get(logitShape, elementType), input,
        routerLinear.getWeight(), routerLinear.getBias());
    auto router = RouterOp::create(
        builder, loc, RankedTensorType::get(choiceShape, elementType),
        RankedTensorType::get(choiceShape, builder.getI64Type()), newLogits,
        builder.getI64IntegerAttr(k),
        LoadBalancingAttr::get(builder.getContext(), LoadBalancing::aux_loss));
    auto experts = ExpertsOp::create(
        builder, loc, inputType, /*saved=*/Type(), input, router.getGates(),
        router.getExperts(),
        gateUp, down, GateUpLayoutAttr::get(builder.getContext(), layout));
    replaced.replaceAllUsesWith(experts.getResult());
    numRaised += 3;
  }
}

/// A sparse MoE block in any decomposed form, found from its TopK: the
/// router logits come from a linear layer over the block's input; the
/// block's output is the operand of the residual add that depends on the
/// TopK. Proved by evaluation against router + experts.
bool Raiser::raiseSparseMoe(OnnxNodeOp topK) {
  // Router: TopK(Softmax(linear(x_flat, W_router))).
  OnnxNodeOp softmax = producer(topK.getInputs()[0], "Softmax");
  if (!softmax || topK.getInputs().size() != 2)
    return false;
  auto routerLinear = softmax.getInputs()[0].getDefiningOp<LinearOp>();
  std::optional<double> k = scalarConstant(topK.getInputs()[1]);
  if (!routerLinear || !k)
    return false;
  // The block input: the router's input, seen through reshapes.
  Value input = routerLinear.getInput();
  while (OnnxNodeOp reshape = producer(input, "Reshape"))
    input = reshape.getInputs()[0];
  RankedTensorType inputType = tensorType(input);
  // A mutated model's block input may be a scalar reshaped into the
  // router's [T, H]: no hidden size to match, not a block.
  if (!inputType || inputType.getRank() == 0)
    return false;
  int64_t hidden = inputType.getShape().back();
  // The block output: of the Adds downstream of the TopK, the first (in
  // program order) whose other operand does not depend on the TopK: the
  // residual stream. The operand from the TopK's side is the output.
  auto dependsOnTopK = [&](Value v) {
    llvm::SmallPtrSet<Operation *, 32> seen;
    SmallVector<Value> stack{v};
    while (!stack.empty()) {
      Operation *def = stack.pop_back_val().getDefiningOp();
      if (!def || def->isBeforeInBlock(topK) || !seen.insert(def).second)
        continue;
      if (def == topK.getOperation())
        return true;
      for (Value in : def->getOperands())
        stack.push_back(in);
    }
    return false;
  };
  Value output;
  {
    llvm::SmallPtrSet<Operation *, 32> seen;
    SmallVector<Value> work{topK.getOutputs()[0], topK.getOutputs()[1]};
    OnnxNodeOp best;
    Value bestOperand;
    while (!work.empty()) {
      Value cur = work.pop_back_val();
      for (Operation *user : cur.getUsers()) {
        if (!seen.insert(user).second || seen.size() > 256)
          continue;
        auto add = dyn_cast<OnnxNodeOp>(user);
        if (add && add.getOpType() == "Add" && add.getInputs().size() == 2 &&
            tensorType(add.getOutputs()[0]) == inputType) {
          Value other = otherOperand(add, cur);
          if (other && tensorType(cur) == inputType && !dependsOnTopK(other) &&
              (!best || add->isBeforeInBlock(best))) {
            best = add;
            bestOperand = cur;
          }
          continue;
        }
        for (Value result : user->getResults())
          work.push_back(result);
      }
    }
    output = bestOperand;
  }
  if (!output)
    return false;
  // The experts' weights: the two [E, ., .] parameters the block reads
  // with the hidden size in one of their last two dimensions: gate_up
  // [E, 2I, H] and down [E, H, I] as in the checkpoint, or stored
  // transposed ([E, H, 2I], [E, I, H]) where the exporter folded a
  // Transpose into a new initializer. The orientation is a guess the proof
  // below checks.
  Value gateUp, down;
  bool gateUpTransposed = false, downTransposed = false;
  int64_t numExperts = tensorType(routerLinear.getResult()).getShape().back();
  {
    llvm::SetVector<Value> candidates;
    llvm::SmallPtrSet<Operation *, 32> seen;
    SmallVector<Value> stack{output};
    while (!stack.empty()) {
      Value cur = stack.pop_back_val();
      if (isParameter(cur) && rankOf(cur) == 3) {
        RankedTensorType t = tensorType(cur);
        if (t.getDimSize(0) == numExperts &&
            (t.getDimSize(1) == hidden || t.getDimSize(2) == hidden))
          candidates.insert(cur);
      }
      Operation *def = cur.getDefiningOp();
      if (!def || isa<LinearOp>(def) || !seen.insert(def).second ||
          cur == input)
        continue;
      for (Value in : def->getOperands())
        stack.push_back(in);
    }
    // The dimension that is not the hidden size (the last one when both
    // are).
    auto innerSize = [&](Value p) {
      RankedTensorType t = tensorType(p);
      return t.getDimSize(2) == hidden ? t.getDimSize(1) : t.getDimSize(2);
    };
    if (candidates.size() == 2) {
      for (int first = 0; first < 2 && !gateUp; ++first)
        if (innerSize(candidates[first]) ==
            2 * innerSize(candidates[1 - first]))
          gateUp = candidates[first], down = candidates[1 - first];
    }
    if (gateUp) {
      gateUpTransposed = tensorType(gateUp).getDimSize(2) != hidden;
      downTransposed = tensorType(down).getDimSize(1) != hidden;
    }
  }
  if (!gateUp || !down)
    return false;
  // The weights as moe.experts reads them: [E, 2I, H] and [E, H, I].
  auto swapLast = [](ArrayRef<int64_t> shape) {
    return SmallVector<int64_t>{shape[0], shape[2], shape[1]};
  };
  RankedTensorType gateUpType = tensorType(gateUp), downType = tensorType(down);
  if (!gateUpType.hasStaticShape() || !downType.hasStaticShape())
    return false;
  if (gateUpTransposed)
    gateUpType = gateUpType.clone(swapLast(gateUpType.getShape()));
  if (downTransposed)
    downType = downType.clone(swapLast(downType.getShape()));
  // A [E, a, b] tensor as [E, b, a].
  auto transposed = [](const HostTensor &t) {
    HostTensor out = HostTensor::floats({t.shape[0], t.shape[2], t.shape[1]});
    for (int64_t e = 0; e < t.shape[0]; ++e)
      for (int64_t i = 0; i < t.shape[1]; ++i)
        for (int64_t j = 0; j < t.shape[2]; ++j)
          out.f32[(e * t.shape[2] + j) * t.shape[1] + i] =
              t.f32[(e * t.shape[1] + i) * t.shape[2] + j];
    return out;
  };
  // The proof evaluates the block with expert weights of their real size
  // (the batched_mm form gathers a copy per token); past this budget the
  // block is left unraised rather than spending minutes and gigabytes.
  if (gateUpType.getNumElements() + downType.getNumElements() >
      kMaxProvedExpertElements)
    return false;

  // Prove at each sample shape: random input, router weight and experts.
  SmallVector<SmallVector<int64_t>> samples = sampleInputShapes();
  if (samples.empty())
    return false;
  for (ArrayRef<int64_t> sample : samples) {
    OnnxEvaluator eval;
    bindInputs(eval, sample);
    SmallVector<int64_t> shape(sample);
    shape.push_back(hidden);
    if (inputType.getRank() != 3)
      return false;
    HostTensor x = randomTensor(shape);
    HostTensor wr = randomTensor(tensorType(routerLinear.getWeight()).getShape());
    HostTensor w1 = randomTensor(gateUpType.getShape());
    HostTensor w2 = randomTensor(downType.getShape());
    eval.bind(input, x);
    std::string error;
    // The router linear is already raised: compute its value here.
    HostTensor flat = x;
    flat.shape = {sample[0] * sample[1], hidden};
    HostTensor logits, gates, experts, expected;
    if (!moec::reference::linear(flat, wr, nullptr, logits, error))
      return false;
    logits.shape = tensorType(routerLinear.getResult()).getRank() == 3
                       ? std::vector<int64_t>{sample[0], sample[1], numExperts}
                       : std::vector<int64_t>{sample[0] * sample[1], numExperts};
    eval.bind(routerLinear.getResult(), logits);
    eval.bind(gateUp, gateUpTransposed ? transposed(w1) : w1);
    eval.bind(down, downTransposed ? transposed(w2) : w2);
    const HostTensor *actual = eval.evaluate(output, error);
    if (!actual)
      return false;
    if (!moec::reference::routeTopK(logits, static_cast<int64_t>(*k), true,
                                    gates, experts, error) ||
        !moec::reference::experts(flat, gates, experts, w1, w2, false,
                                  expected, error))
      return false;
    expected.shape.assign(shape.begin(), shape.end());
    if (actual->shape != expected.shape ||
        moec::reference::compare(*actual, expected).relativeL2 >
            kEquivalenceTolerance)
      return false;
  }

  // Rewrite on the 3-D input.
  builder.setInsertionPointAfterValue(output);
  Location loc = topK.getLoc();
  SmallVector<int64_t> logitShape(inputType.getShape().drop_back());
  logitShape.push_back(numExperts);
  SmallVector<int64_t> choiceShape(inputType.getShape().drop_back());
  choiceShape.push_back(static_cast<int64_t>(*k));
  Type elementType = inputType.getElementType();
  auto logits = LinearOp::create(builder, 
      loc, RankedTensorType::get(logitShape, elementType), input,
      routerLinear.getWeight(), Value());
  auto router = RouterOp::create(builder, 
      loc, RankedTensorType::get(choiceShape, elementType),
      RankedTensorType::get(choiceShape, builder.getI64Type()), logits,
      builder.getI64IntegerAttr(static_cast<int64_t>(*k)),
      LoadBalancingAttr::get(builder.getContext(), LoadBalancing::aux_loss));
  auto canonical = [&](Value param, RankedTensorType type,
                       bool swapped) -> Value {
    if (!swapped)
      return param;
    auto init = tensor::EmptyOp::create(builder, loc, type.getShape(),
                                        type.getElementType());
    return linalg::TransposeOp::create(builder, loc, param, init,
                                       ArrayRef<int64_t>{0, 2, 1})
        .getResult()[0];
  };
  auto experts = ExpertsOp::create(
      builder, loc, inputType, /*saved=*/Type(), input, router.getGates(),
      router.getExperts(), canonical(gateUp, gateUpType, gateUpTransposed),
      canonical(down, downType, downTransposed),
      GateUpLayoutAttr::get(builder.getContext(), GateUpLayout::concatenated));
  output.replaceAllUsesWith(experts.getResult());
  numRaised += 3;
  return true;
}

void Raiser::raiseSparseMoeBlocks() {
  SmallVector<OnnxNodeOp> topKs;
  func.walk([&](OnnxNodeOp node) {
    if (node.getOpType() == "TopK" && node.getDomain().empty())
      topKs.push_back(node);
  });
  for (OnnxNodeOp topK : topKs)
    raiseSparseMoe(topK);
}

//===----------------------------------------------------------------------===//
// Phase 3: residual adds and the lm-head
//===----------------------------------------------------------------------===//

void Raiser::raiseResidualAddsAndHead() {
  // In program order, so that an add whose operand was an add is seen after
  // that one is raised.
  SmallVector<OnnxNodeOp> nodes;
  func.walk([&](OnnxNodeOp node) { nodes.push_back(node); });
  for (OnnxNodeOp add : nodes) {
    if (add.getOpType() != "Add" || !add.getDomain().empty() ||
        add.getInputs().size() != 2)
      continue;
    Type type = add.getOutputs()[0].getType();
    Value lhs = add.getInputs()[0], rhs = add.getInputs()[1];
    if (lhs.getType() != type || rhs.getType() != type ||
        !isa<FloatType>(tensorType(add.getOutputs()[0]).getElementType()) ||
        lhs.getDefiningOp<OnnxNodeOp>() || rhs.getDefiningOp<OnnxNodeOp>() ||
        !dependsOnData(lhs) || !dependsOnData(rhs))
      continue;
    builder.setInsertionPoint(add);
    auto sum = arith::AddFOp::create(builder, add.getLoc(), lhs, rhs);
    add.getOutputs()[0].replaceAllUsesWith(sum.getResult());
    add.erase();
    ++numRaised;
  }
  // The lm-head: a returned projection of the hidden state to the embedding
  // table's vocabulary.
  int64_t vocab = 0;
  func.walk([&](EmbeddingOp e) { vocab = e.getTable().getType().getDimSize(0); });
  auto ret = cast<func::ReturnOp>(func.getBody().front().getTerminator());
  for (OpOperand &operand : ret->getOpOperands()) {
    auto linear = operand.get().getDefiningOp<LinearOp>();
    if (!linear || linear.getBias() ||
        linear.getType().getShape().back() != vocab)
      continue;
    Value weight = linear.getWeight();
    if (auto transpose = weight.getDefiningOp<linalg::TransposeOp>())
      weight = transpose.getInput();
    if (!isParameter(weight))
      continue;
    builder.setInsertionPoint(linear);
    auto head = LmHeadOp::create(builder, linear.getLoc(), linear.getType(),
                                         linear.getInput(), linear.getWeight());
    operand.set(head.getResult());
  }
}

//===----------------------------------------------------------------------===//
// The pass
//===----------------------------------------------------------------------===//

struct RaiseOnnxPass : public moec::impl::RaiseOnnxBase<RaiseOnnxPass> {
  using RaiseOnnxBase::RaiseOnnxBase;

  void runOnOperation() override {
    func::FuncOp func = getOperation();
    int64_t raised = 0;
    Raiser raiser(func, raised);
    raiser.run();
    numRaised += raised;
    // A malformed node is an error whether or not the raising must be
    // complete: it names the node and its counts, and nothing else.
    if (!raiser.malformed.empty()) {
      for (const auto &[op, why] : raiser.malformed) {
        InFlightDiagnostic diag = op->emitOpError() << "ONNX node ";
        if (auto name = dyn_cast<NameLoc>(op->getLoc()))
          diag << "'" << name.getName().getValue() << "' ";
        diag << "(" << cast<OnnxNodeOp>(op).getOpType()
             << ") does not fit its operator: " << why;
      }
      signalPassFailure();
      return;
    }
    // The nodes that only compute the weights of a node refused with a
    // reason are reported through it.
    llvm::DenseSet<Operation *> reportedThrough;
    for (const auto &entry : raiser.notRaised) {
      Operation *refused = entry.first;
      SmallVector<Value> stack(refused->getOperands().drop_front(2));
      while (!stack.empty()) {
        auto node = stack.pop_back_val().getDefiningOp<OnnxNodeOp>();
        if (!node || reportedThrough.contains(node) ||
            !llvm::all_of(node->getUsers(), [&](Operation *user) {
              return user == refused || reportedThrough.contains(user);
            }))
          continue;
        reportedThrough.insert(node);
        llvm::append_range(stack, node.getInputs());
      }
    }
    func.walk([&](OnnxNodeOp node) {
      ++numLeft;
      if (!requireComplete || reportedThrough.contains(node))
        return;
      InFlightDiagnostic diag = node.emitOpError() << "ONNX node ";
      if (auto name = dyn_cast<NameLoc>(node.getLoc()))
        diag << "'" << name.getName().getValue() << "' ";
      diag << "(" << node.getOpType() << ")";
      auto why = raiser.notRaised.find(node);
      if (why != raiser.notRaised.end())
        diag << " is not raised: " << why->second;
      else
        diag << " is not part of any pattern moe-raise-onnx recognises";
    });
    if (requireComplete && numLeft > 0)
      signalPassFailure();
  }
};

} // namespace
