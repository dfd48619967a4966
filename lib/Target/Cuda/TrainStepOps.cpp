//===- TrainStepOps.cpp - Each op of @train_step as CUDA launches ---------===//
//
// See TrainStepPrinter.h. This part prints one op of the step (printOp):
// a launch of a moert kernel, a kernel it generates (element-wise arith
// ops, linalg.transpose), a group of AdamW updates, and the counts of
// --check-numerics after it.
//
//===----------------------------------------------------------------------===//

#include "TrainStepPrinter.h"

#include "Printers.h"

#include "moec/Support/Routing.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;
using mlir::moe::MoeDialect;

namespace {

/// The value of a splat float constant, if `c` is one.
std::optional<double> splatValue(arith::ConstantOp c) {
  auto dense = dyn_cast<DenseFPElementsAttr>(c.getValue());
  if (!dense || !dense.isSplat())
    return std::nullopt;
  return dense.getSplatValue<APFloat>().convertToDouble();
}

} // namespace

namespace moec::detail {

/// The C++ expression of one element-wise op over its operands' terms
/// (each a float expression); empty for an op that is not element-wise.
static std::string elementwiseExpression(Operation &op,
                                         ArrayRef<std::string> terms) {
  return TypeSwitch<Operation *, std::string>(&op)
      .Case([&](arith::AddFOp) { return terms[0] + " + " + terms[1]; })
      .Case([&](arith::SubFOp) { return terms[0] + " - " + terms[1]; })
      .Case([&](arith::MulFOp) { return terms[0] + " * " + terms[1]; })
      .Case([&](arith::DivFOp) { return terms[0] + " / " + terms[1]; })
      .Case([&](arith::NegFOp) { return "-" + terms[0]; })
      .Case([&](arith::MaximumFOp) {
        return "moert::kernels::maximumf(" + terms[0] + ", " + terms[1] + ")";
      })
      .Case([&](arith::TruncFOp) { return terms[0]; })
      .Case([&](arith::ExtFOp) { return terms[0]; })
      .Default([&](Operation *) { return std::string(); });
}

LogicalResult TrainStepPrinter::printElementwise(Operation &op) {
  // On tensors: a scalar operand would come from an argument or a constant,
  // and the printer takes tensors only from both.
  Value result = op.getResult(0);
  RankedTensorType type = typeOf(result);
  int64_t n = type.getNumElements();
  FailureOr<std::string> outType = cType(type); // setResultPointers checked
  // The kernel's inputs: the op's operands, or a fusion's inputs. Each is a
  // parameter and a term of the scalar loop (element i) and of the vector
  // loop (lane c of four); splat constants are literals.
  auto fusion = dyn_cast<moe::FusionOp>(op);
  std::string params, args, loads;
  std::vector<std::string> scalarTerms, vectorTerms;
  for (auto [index, operand] : llvm::enumerate(op.getOperands())) {
    auto c = constants.find(operand);
    if (c != constants.end()) {
      scalarTerms.push_back(floatLiteral(c->second));
      vectorTerms.push_back(floatLiteral(c->second));
      continue;
    }
    RankedTensorType t = typeOf(operand);
    if (t.getNumElements() != n)
      return op.emitOpError() << "operand #" << index << " has "
                              << t.getNumElements() << " elements but the "
                              << "result has " << n
                              << "; the CUDA printer fuses equal shapes only";
    FailureOr<std::string> p = pointer(op, operand);
    FailureOr<std::string> c2 = cType(t);
    if (failed(p) || failed(c2))
      return failure();
    params += fmt::format("const {} *__restrict__ in{}, ", *c2, index);
    args += *p + ", ";
    loads += fmt::format(
        "    moert::kernels::Vec4 a{0} = moert::kernels::load4(in{0} + 4 * j);\n",
        index);
    scalarTerms.push_back(fmt::format("moert::kernels::toFloat(in{}[i])", index));
    vectorTerms.push_back(fmt::format("a{}.v[c]", index));
  }
  // The result's expression. A fusion's body is printed as one expression
  // tree: each op's value becomes a term of its users; a bf16 intermediate
  // is rounded as storing it would (moe.fusion's semantics).
  auto expression = [&](std::vector<std::string> terms) -> std::string {
    if (!fusion)
      return elementwiseExpression(op, terms);
    Block &body = fusion.getBody().front();
    llvm::DenseMap<Value, std::string> term;
    for (auto [arg, t] : llvm::zip(body.getArguments(), terms))
      term[arg] = t;
    for (Operation &inner : body.without_terminator()) {
      if (auto c = dyn_cast<arith::ConstantOp>(inner)) {
        term[c.getResult()] = floatLiteral(*splatValue(c)); // a splat: verified
        continue;
      }
      std::vector<std::string> operands;
      for (Value v : inner.getOperands())
        operands.push_back(term.lookup(v));
      std::string e = elementwiseExpression(inner, operands);
      Value v = inner.getResult(0);
      bool last = v == body.getTerminator()->getOperand(0);
      term[v] = !last && typeOf(v).getElementType().isBF16()
                    ? "moert::kernels::toFloat(moert::kernels::fromFloat<"
                      "moert::kernels::bf16>(" + e + "))"
                    : "(" + e + ")";
    }
    return term.lookup(body.getTerminator()->getOperand(0));
  };
  // printOp sends only the ops elementwiseExpression prints, and
  // moe.fusion's verifier admits only those in a body.
  std::string e = expression(scalarTerms);
  assert(!e.empty() && "an element-wise op without a C++ expression");
  // Four elements per thread through 8/16-byte accesses (every buffer is
  // 256-byte aligned), then the remainder one by one.
  std::string source = fmt::format(
      "({0}{1} *__restrict__ out, int64_t n) {{\n"
      "  int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;\n"
      "  int64_t stride = int64_t(gridDim.x) * blockDim.x, vectors = n / 4;\n"
      "  for (int64_t j = first; j < vectors; j += stride) {{\n{2}"
      "    moert::kernels::Vec4 r;\n"
      "#pragma unroll\n"
      "    for (int c = 0; c < 4; ++c)\n"
      "      r.v[c] = {3};\n"
      "    moert::kernels::store4(out + 4 * j, r);\n"
      "  }}\n"
      "  for (int64_t i = 4 * vectors + first; i < n; i += stride)\n"
      "    out[i] = moert::kernels::fromFloat<{1}>({4});\n}}\n",
      params, *outType, loads, expression(vectorTerms), e);
  std::string what = op.getName().getStringRef().str();
  if (fusion) {
    what += " of";
    for (Operation &inner : fusion.getBody().front().without_terminator())
      if (!isa<arith::ConstantOp>(inner))
        what += " " + inner.getName().getStringRef().str();
  }
  auto [it, inserted] = kernelNames.try_emplace(
      source, fmt::format("elementwise{}", kernelNames.size()));
  if (inserted)
    kernels += fmt::format("/// {}\n__global__ void {}{}\n", what,
                           it->second, source);
  // A kept parameter copy is current after any step: only a run's first
  // step computes it.
  if (op.hasAttr(MoeDialect::getPersistentCopyAttrName()))
    body += "  if (ctx.refreshParameterCopies)\n  ";
  body += fmt::format(
      "  {}<<<moert::kernels::blocksFor({}), 256, 0, ctx.stream>>>({}{}, "
      "{});\n",
      it->second, (n + 3) / 4, args, typed(result), n);
  return success();
}

/// A copy kernel generated for the op's shape and permutation: thread i
/// writes result element i, reading the input element whose index is i's
/// multi-index permuted (the strides baked in as constants).
LogicalResult TrainStepPrinter::printTranspose(linalg::TransposeOp op) {
  Value input = op.getInput(), result = op.getResult()[0];
  FailureOr<std::string> p = pointer(*op, input);
  if (failed(p))
    return failure();
  RankedTensorType inType = typeOf(input), outType = typeOf(result);
  ArrayRef<int64_t> perm = op.getPermutation();
  SmallVector<int64_t> inStrides(inType.getRank(), 1);
  for (int64_t d = inType.getRank() - 2; d >= 0; --d)
    inStrides[d] = inStrides[d + 1] * inType.getDimSize(d + 1);
  std::string index;
  for (int64_t d = outType.getRank() - 1; d >= 0; --d)
    index += fmt::format("    src += rest % {0} * {1};\n    rest /= {0};\n",
                         outType.getDimSize(d), inStrides[perm[d]]);
  std::string c = *cType(outType); // setResultPointers checked
  std::string source = fmt::format(
      "(const {0} *__restrict__ in, {0} *__restrict__ out, int64_t n) {{\n"
      "  int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;\n"
      "  for (int64_t i = first; i < n; i += int64_t(gridDim.x) * blockDim.x) "
      "{{\n"
      "    int64_t rest = i, src = 0;\n{1}"
      "    out[i] = in[src];\n"
      "  }}\n}}\n",
      c, index);
  auto [it, inserted] = kernelNames.try_emplace(
      source, fmt::format("transpose{}", kernelNames.size()));
  if (inserted) {
    std::string what;
    llvm::raw_string_ostream os(what);
    os << "linalg.transpose of " << inType << " by [";
    llvm::interleaveComma(perm, os);
    os << "]";
    kernels += fmt::format("/// {}\n__global__ void {}{}\n", what,
                           it->second, source);
  }
  int64_t n = outType.getNumElements();
  body += fmt::format("  {}<<<moert::kernels::blocksFor({}), 256, 0, "
                      "ctx.stream>>>({}, {}, {});\n",
                      it->second, n, *p, typed(result), n);
  return success();
}

LogicalResult TrainStepPrinter::printAdamWGroup(ArrayRef<moe::AdamWOp> group) {
  moe::AdamWOp first = group.front();
  // Split masters (store_param_remainders) update in a launch of their own.
  const bool split = masterRemainders.count(first.getParam());
  std::string entries;
  for (moe::AdamWOp a : group) {
    if (masterRemainders.count(a.getParam()) != split)
      return a.emitOpError() << "is in a launch with an update whose master "
                             << (split ? "is" : "is not")
                             << " split into copy and remainder; the "
                                "printer launches the two apart";
    if (a.getBeta1() != first.getBeta1() || a.getBeta2() != first.getBeta2() ||
        a.getEpsilon() != first.getEpsilon() ||
        a.getMaxGradNorm() != first.getMaxGradNorm() ||
        a.getSkipNonfinite() != first.getSkipNonfinite() ||
        a.getStep() != first.getStep() || a.getLr() != first.getLr() ||
        a.getGradNorm() != first.getGradNorm())
      return a.emitOpError() << "differs from the first moe.adamw of its "
                                "group in a hyperparameter or a scalar "
                                "operand; the CUDA printer updates one group "
                                "in one launch";
    bool ok = true;
    std::string p = pointerList(*a, {a.getParam(), a.getExpAvg(),
                                     a.getExpAvgSq(), a.getGrad()},
                                ok);
    if (!ok)
      return failure();
    if (typeOf(a.getParam()).getElementType() !=
            typeOf(first.getParam()).getElementType() ||
        typeOf(a.getGrad()).getElementType() !=
            typeOf(first.getGrad()).getElementType())
      return a.emitOpError() << "updates " << typeOf(a.getParam())
                             << " from " << typeOf(a.getGrad())
                             << " but the first moe.adamw of its group "
                             << typeOf(first.getParam()) << " from "
                             << typeOf(first.getGrad())
                             << "; one launch updates one element type "
                             << "from one gradient type";
    SmallVector<std::string> ps;
    for (Value v : {a.getParam(), a.getExpAvg(), a.getExpAvgSq(), a.getGrad()})
      ps.push_back(typed(v));
    auto copy = parameterCopies.find(a.getParam());
    entries += fmt::format(
        "      {{{}, {}, {}, {}, {}, {}, {}{}}},\n", ps[0], ps[1], ps[2], ps[3],
        typeOf(a.getParam()).getNumElements(),
        floatLiteral(a.getWeightDecay().convertToDouble()),
        copy == parameterCopies.end() ? "nullptr" : copy->second,
        split ? ", " + masterRemainders.lookup(a.getParam()) : "");
    if (split)
      splitUpdated.insert(a.getParam());
    // The results are the updated state, in place.
    pointers[a.getNewParam()] = typed(a.getParam());
    pointers[a.getNewExpAvg()] = typed(a.getExpAvg());
    pointers[a.getNewExpAvgSq()] = typed(a.getExpAvgSq());
  }
  // The state's type, and the gradient's (the state's, or bf16 under fp32
  // state: moe.adamw's verifier).
  std::string c = *cType(first.getParam().getType());
  std::string cg = *cType(first.getGrad().getType());
  int64_t g = groups++;
  statics += fmt::format("{} moert::kernels::TensorGroup group{};\n",
                         perRank(), g);
  // Chunked for AdamW over this state type (moert::kernels::kAdamWChunk).
  setup += fmt::format(
      "  group{}.init({{\n{}  }}, moert::kernels::kAdamWChunk<{}>);\n", g,
      entries, c);
  bool ok = true;
  std::string scalars = pointerList(
      *first, {first.getStep(), first.getLr(), first.getGradNorm()}, ok);
  if (!ok)
    return failure();
  if (split)
    splitGroups.push_back(g);
  body += fmt::format(
      "  moert::kernels::{}(ctx, group{}, {}, {}, {}, {}, {}{});\n",
      split ? fmt::format("adamwRemainders<{}>", cg)
            : fmt::format("adamw<{}, {}>", c, cg),
      g, scalars, floatLiteral(first.getBeta1().convertToDouble()),
      floatLiteral(first.getBeta2().convertToDouble()),
      floatLiteral(first.getEpsilon().convertToDouble()),
      floatLiteral(first.getMaxGradNorm().convertToDouble()),
      first.getSkipNonfinite() ? ", /*skipNonfinite=*/true" : "");
  return success();
}

void TrainStepPrinter::printNumericsCheck(const std::string &what, Value v,
                                          const std::string &count) {
  std::string typeText;
  llvm::raw_string_ostream typeOs(typeText);
  typeOs << v.getType();
  printNumericsCheck(what, typed(v), typeText, count);
}

void TrainStepPrinter::printNumericsCheck(const std::string &what,
                                          const std::string &pointer,
                                          const std::string &typeText,
                                          const std::string &count) {
  body += fmt::format("  moert::kernels::countNonfinite(ctx, {}, {}, {});\n",
                      numNumericsChecks++, pointer, count);
  numericsChecks +=
      fmt::format("    {{{}, {}}},\n", quoted(what), quoted(typeText));
}

void TrainStepPrinter::printNumericsChecks(Operation &op) {
  // The node's name and file:line:col, as the importer located the op and
  // a diagnostic names the place; another location as the IR prints it.
  std::string location;
  llvm::raw_string_ostream locationOs(location);
  Location loc = op.getLoc();
  auto name = dyn_cast<NameLoc>(loc);
  if (name)
    loc = name.getChildLoc();
  if (auto place = dyn_cast<FileLineColLoc>(loc)) {
    if (name)
      locationOs << name.getName().getValue() << " (";
    locationOs << place.getFilename().getValue() << ":" << place.getLine()
               << ":" << place.getColumn() << (name ? ")" : "");
  } else {
    op.getLoc().print(locationOs);
  }
  for (auto [i, result] : llvm::enumerate(op.getResults())) {
    auto type = dyn_cast<RankedTensorType>(result.getType());
    std::string p = typed(result);
    if (!type || !isa<FloatType>(type.getElementType()) || p.empty())
      continue;
    int64_t rowElements = 1;
    for (int64_t d : type.getShape().drop_front(type.getRank() > 0 ? 1 : 0))
      rowElements *= d;
    std::string count =
        type.hasStaticShape()
            ? std::to_string(type.getNumElements())
            : fmt::format("({}) * {}", rowsOf(result), rowElements);
    printNumericsCheck(fmt::format("'{}' at {}: result {}",
                                   op.getName().getStringRef().str(),
                                   location, i),
                       result, count);
  }
}

LogicalResult TrainStepPrinter::printOp(Operation &op) {
  // The kept copy of a split master is not cast: splitStepMasters makes it
  // (its buffer was laid out with the state).
  if (op.hasAttr(MoeDialect::getPersistentCopyAttrName()) &&
      masterRemainders.count(op.getOperand(0)))
    return success();
  if (!isa<arith::ConstantOp, tensor::DimOp, tensor::ExpandShapeOp,
           tensor::CollapseShapeOp, tensor::EmptyOp, func::ReturnOp>(op))
    body += fmt::format("  moert::kernels::mark(ctx, \"{}\");\n",
                        op.getName().getStringRef().str());
  if (failed(setResultPointers(op)))
    return failure();
  auto ptr = [&](Value v) { return pointer(op, v); };
  auto shape = [](Value v) { return typeOf(v).getShape(); };
  // The cross-entropy kernels' optional trailing arguments: the loss (of
  // _with_grad) and the global target count a partitioned step divides by.
  auto trailing = [&](Value loss, Value targetCount) {
    if (!targetCount)
      return loss ? ", " + typed(loss) : std::string();
    return fmt::format(", {}, {}", loss ? typed(loss) : "nullptr",
                       typed(targetCount));
  };
  // moe.lm_head_cross_entropy_grad, or _with_grad with its `loss` too.
  auto printLossGrad = [&](auto l, Value loss) -> LogicalResult {
    auto s = shape(l.getInput());
    int64_t vocab = shape(l.getWeight())[0];
    bool ok = true;
    std::string args =
        pointerList(op, {l.getInput(), l.getWeight(), l.getLabels()}, ok);
    if (!ok)
      return failure();
    body += fmt::format(
        "  moert::kernels::lmHeadCrossEntropyGrad(ctx, {}, {}, {}, {}, {}, "
        "{}, {}, {}, {}{});\n",
        args, s[0], s[1], s[2], vocab,
        static_cast<int64_t>(l.getIgnoreIndex()),
        floatLiteral(l.getScale().convertToDouble()), typed(l.getDInput()),
        typed(l.getDWeight()), trailing(loss, l.getTargetCount()));
    return success();
  };

  return TypeSwitch<Operation *, LogicalResult>(&op)
      .Case([&](arith::ConstantOp c) -> LogicalResult {
        if (c.getType().isIndex())
          return success();
        std::optional<double> value = splatValue(c);
        if (!value)
          return c.emitOpError() << "is not a splat float constant; the CUDA "
                                    "printer inlines only those";
        constants[c.getResult()] = *value;
        return success();
      })
      .Case([&](tensor::DimOp) { return success(); })
      .Case<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(
          [&](Operation *view) -> LogicalResult {
            FailureOr<std::string> p = ptr(view->getOperand(0));
            if (failed(p))
              return failure();
            pointers[view->getResult(0)] = *p;
            return success();
          })
      .Case<arith::AddFOp, arith::SubFOp, arith::MulFOp, arith::DivFOp,
            arith::NegFOp, arith::MaximumFOp, arith::TruncFOp, arith::ExtFOp,
            moe::FusionOp>(
          [&](Operation *e) { return printElementwise(*e); })
      .Case([&](linalg::TransposeOp t) { return printTranspose(t); })
      .Case([&](moe::EmbeddingOp e) -> LogicalResult {
        auto table = shape(e.getTable());
        bool ok = true;
        std::string args = pointerList(op, {e.getTable(), e.getIndices()}, ok);
        if (!ok)
          return failure();
        body += fmt::format("  moert::kernels::embedding(ctx, {}, {}, {}, {}, "
                            "{});\n",
                            args, typeOf(e.getIndices()).getNumElements(),
                            table[1], table[0], typed(e.getResult()));
        return success();
      })
      .Case([&](moe::EmbeddingGradOp e) -> LogicalResult {
        auto table = shape(e.getDTable());
        bool ok = true;
        std::string args =
            pointerList(op, {e.getIndices(), e.getDResult()}, ok);
        if (!ok)
          return failure();
        body += fmt::format("  moert::kernels::embeddingGrad(ctx, {}, {}, {}, "
                            "{}, {});\n",
                            args, typeOf(e.getIndices()).getNumElements(),
                            table[1], table[0], typed(e.getDTable()));
        return success();
      })
      .Case([&](moe::RmsNormOp n) -> LogicalResult {
        RankedTensorType t = typeOf(n.getInput());
        bool ok = true;
        std::string args = pointerList(op, {n.getInput(), n.getWeight()}, ok);
        if (!ok)
          return failure();
        body += fmt::format("  moert::kernels::rmsNorm(ctx, {}, {}, {}, {}, "
                            "{});\n",
                            args, leadingCount(t), t.getShape().back(),
                            floatLiteral(n.getEpsilon().convertToDouble()),
                            typed(n.getResult()));
        return success();
      })
      .Case([&](moe::AddRmsNormOp n) -> LogicalResult {
        RankedTensorType t = typeOf(n.getSum());
        bool ok = true;
        std::string args =
            pointerList(op, {n.getLhs(), n.getRhs(), n.getWeight()}, ok);
        if (!ok)
          return failure();
        body += fmt::format("  moert::kernels::addRmsNorm(ctx, {}, {}, {}, {}, "
                            "{}, {});\n",
                            args, leadingCount(t), t.getShape().back(),
                            floatLiteral(n.getEpsilon().convertToDouble()),
                            typed(n.getSum()), typed(n.getResult()));
        return success();
      })
      .Case([&](moe::RmsNormGradOp n) -> LogicalResult {
        RankedTensorType t = typeOf(n.getInput());
        bool ok = true;
        std::string args = pointerList(
            op, {n.getInput(), n.getWeight(), n.getDResult()}, ok);
        if (!ok)
          return failure();
        body += fmt::format("  moert::kernels::rmsNormGrad(ctx, {}, {}, {}, "
                            "{}, {}, {});\n",
                            args, leadingCount(t), t.getShape().back(),
                            floatLiteral(n.getEpsilon().convertToDouble()),
                            typed(n.getDInput()), typed(n.getDWeight()));
        return success();
      })
      .Case([&](moe::RotaryOp r) -> LogicalResult {
        if (r.getPositions())
          return r.emitOpError() << "has explicit positions; the CUDA "
                                    "printer supports positions 0..S-1";
        auto s = shape(r.getInput());
        FailureOr<std::string> in = ptr(r.getInput());
        if (failed(in))
          return failure();
        body += fmt::format("  moert::kernels::rotary(ctx, {}, {}, {}, {}, {}, "
                            "{}, {});\n",
                            *in, s[0], s[1], s[2], s[3],
                            floatLiteral(r.getTheta().convertToDouble()),
                            typed(r.getResult()));
        return success();
      })
      .Case([&](moe::RotaryGradOp r) -> LogicalResult {
        if (r.getPositions())
          return r.emitOpError() << "has explicit positions; the CUDA "
                                    "printer supports positions 0..S-1";
        auto s = shape(r.getDResult());
        FailureOr<std::string> in = ptr(r.getDResult());
        if (failed(in))
          return failure();
        body += fmt::format("  moert::kernels::rotaryGrad(ctx, {}, {}, {}, {}, "
                            "{}, {}, {});\n",
                            *in, s[0], s[1], s[2], s[3],
                            floatLiteral(r.getTheta().convertToDouble()),
                            typed(r.getDInput()));
        return success();
      })
      .Case([&](moe::AttentionOp a) -> LogicalResult {
        bool ok = true;
        std::string args = pointerList(
            op, {a.getQuery(), a.getKey(), a.getValue()}, ok);
        if (!ok)
          return failure();
        bool cudnn = onCudnn(a.getQuery());
        if (a.getStats() && !cudnn)
          return a.emitOpError()
                 << "keeps its stats, which only the cuDNN attention "
                    "kernels write (run moe-save-attention-stats only for "
                    "bf16 attention on cuDNN)";
        body += fmt::format(
            "  moert::kernels::{}(ctx, {}, {}, {}{});\n",
            cudnn ? "attentionCudnn" : "attention", args, attentionShape(a),
            typed(a.getResult()),
            a.getStats() ? ", " + typed(a.getStats()) : std::string());
        return success();
      })
      .Case([&](moe::AttentionGradOp a) -> LogicalResult {
        bool ok = true;
        std::string args = pointerList(
            op, {a.getQuery(), a.getKey(), a.getValue(), a.getDResult()}, ok);
        if (!ok)
          return failure();
        // The GEMM kernels recompute the softmax: they need no `saved`.
        bool cudnn = onCudnn(a.getQuery());
        std::string saved;
        if (cudnn && !a.getSaved().empty()) {
          saved = ", " + pointerList(op, a.getSaved(), ok);
          if (!ok)
            return failure();
        }
        body += fmt::format(
            "  moert::kernels::{}(ctx, {}, {}, {}, {}, {}{});\n",
            cudnn ? "attentionGradCudnn" : "attentionGrad", args,
            attentionShape(a), typed(a.getDQuery()), typed(a.getDKey()),
            typed(a.getDValue()), saved);
        return success();
      })
      .Case([&](moe::LinearOp l) -> LogicalResult {
        if (l.getBias())
          return l.emitOpError() << "has a bias; the CUDA printer emits "
                                    "bias-free linear layers only";
        RankedTensorType t = typeOf(l.getInput());
        bool ok = true;
        std::string args = pointerList(op, {l.getInput(), l.getWeight()}, ok);
        if (!ok)
          return failure();
        body += fmt::format("  moert::kernels::linear(ctx, {}, {}, {}, {}, "
                            "{});\n",
                            args, leadingCount(t), t.getShape().back(),
                            shape(l.getWeight())[0], typed(l.getResult()));
        return success();
      })
      .Case([&](moe::LinearGradOp l) -> LogicalResult {
        RankedTensorType t = typeOf(l.getInput());
        bool ok = true;
        std::string args = pointerList(
            op, {l.getInput(), l.getWeight(), l.getDResult()}, ok);
        if (!ok)
          return failure();
        body += fmt::format("  moert::kernels::linearGrad(ctx, {}, {}, {}, {}, "
                            "{}, {});\n",
                            args, leadingCount(t), t.getShape().back(),
                            shape(l.getWeight())[0], typed(l.getDInput()),
                            typed(l.getDWeight()));
        return success();
      })
      .Case([&](moe::RouterOp r) -> LogicalResult {
        if (r.getTokensPerGroup() != 0)
          return r.emitOpError() << "routes groups of "
                                 << r.getTokensPerGroup()
                                 << " tokens (tokens_per_group); the CUDA "
                                    "kernels route all tokens of the step "
                                    "together";
        if (!r.getTraining() && (r.getLoadBalancing() ==
                                     moe::LoadBalancing::sinkhorn ||
                                 r.getLoadBalancing() ==
                                     moe::LoadBalancing::balanced))
          return r.emitOpError() << "routes for evaluation with "
                                 << moe::stringifyLoadBalancing(
                                        r.getLoadBalancing())
                                 << "; the CUDA printer emits training "
                                    "routing only";
        RankedTensorType t = typeOf(r.getLogits());
        FailureOr<std::string> in = ptr(r.getLogits());
        if (failed(in))
          return failure();
        body += fmt::format(
            "  moert::kernels::router(ctx, {}, {}, {}, {}, {}, {}, {});\n",
            *in, leadingCount(t), t.getShape().back(), r.getK(),
            moert::routingExpression(moec::routingOf(r.getLoadBalancing())),
            typed(r.getGates()), typed(r.getExperts()));
        return success();
      })
      .Case([&](moe::RouterGradOp r) -> LogicalResult {
        RankedTensorType t = typeOf(r.getLogits());
        bool ok = true;
        std::string args = pointerList(
            op, {r.getLogits(), r.getExperts(), r.getDGates()}, ok);
        if (!ok)
          return failure();
        body += fmt::format(
            "  moert::kernels::routerGrad(ctx, {}, {}, {}, {}, {}, {});\n",
            args, leadingCount(t), t.getShape().back(),
            shape(r.getExperts()).back(),
            moert::routingExpression(moec::routingOf(r.getLoadBalancing())),
            typed(r.getDLogits()));
        return success();
      })
      .Case([&](moe::ExpertsOp e) -> LogicalResult {
        auto gu = shape(e.getGateUp());
        bool ok = true;
        std::string args =
            pointerList(op, {e.getInput(), e.getGates(), e.getExperts(),
                             e.getGateUp(), e.getDown()},
                        ok);
        if (!ok)
          return failure();
        int64_t k = shape(e.getGates()).back();
        bool interleaved =
            e.getGateUpLayout() == moe::GateUpLayout::interleaved;
        std::string saved =
            e.getSaved() ? ", " + typed(e.getSaved()) : std::string();
        for (Value r : e->getResults())
          if (dynamicRows.count(e.getInput()))
            dynamicRows[r] = dynamicRows.lookup(e.getInput());
        body += fmt::format("  moert::kernels::experts(ctx, {}, {}, {}, {}, "
                            "{}, {}, {}, {}{});\n",
                            args, rowsOf(e.getInput()), gu[2], gu[1] / 2,
                            gu[0], k,
                            interleaved ? "true" : "false",
                            typed(e.getResult()), saved);
        return success();
      })
      .Case([&](moe::ExpertsGradOp e) -> LogicalResult {
        auto gu = shape(e.getGateUp());
        bool ok = true;
        std::string args = pointerList(
            op, {e.getInput(), e.getGates(), e.getExperts(), e.getGateUp(),
                 e.getDown(), e.getDResult()},
            ok);
        if (!ok)
          return failure();
        int64_t k = shape(e.getGates()).back();
        bool interleaved =
            e.getGateUpLayout() == moe::GateUpLayout::interleaved;
        for (Value r : e->getResults())
          if (dynamicRows.count(e.getInput()))
            dynamicRows[r] = dynamicRows.lookup(e.getInput());
        std::string saved;
        if (e.getSaved()) {
          FailureOr<std::string> p = ptr(e.getSaved());
          if (failed(p))
            return failure();
          saved = ", " + *p;
        }
        body += fmt::format(
            "  moert::kernels::expertsGrad(ctx, {}, {}, {}, {}, {}, {}, {}, "
            "{}, {}, {}, {}{});\n",
            args, rowsOf(e.getInput()), gu[2], gu[1] / 2, gu[0], k,
            interleaved ? "true" : "false", typed(e.getDInput()),
            typed(e.getDGates()), typed(e.getDGateUp()), typed(e.getDDown()),
            saved);
        return success();
      })
      .Case([&](moe::LmHeadCrossEntropyOp l) -> LogicalResult {
        auto s = shape(l.getInput());
        int64_t vocab = shape(l.getWeight())[0];
        bool ok = true;
        std::string args = pointerList(
            op, {l.getInput(), l.getWeight(), l.getLabels()}, ok);
        if (!ok)
          return failure();
        Value targetCount = l.getTargetCount();
        body += fmt::format("  moert::kernels::lmHeadCrossEntropy(ctx, {}, {}, "
                            "{}, {}, {}, {}, {}{});\n",
                            args, s[0], s[1], s[2], vocab,
                            static_cast<int64_t>(l.getIgnoreIndex()),
                            typed(l.getLoss()),
                            targetCount ? ", " + typed(targetCount)
                                        : std::string());
        return success();
      })
      .Case([&](moe::LmHeadCrossEntropyGradOp l) {
        return printLossGrad(l, Value());
      })
      .Case([&](moe::LmHeadCrossEntropyWithGradOp l) {
        return printLossGrad(l, l.getLoss());
      })
      .Case<moe::LoadBalancingLossOp, moe::LoadBalancingLossGradOp,
            moe::RouterZLossOp, moe::RouterZLossGradOp>(
          [&](Operation *loss) -> LogicalResult {
            OperandRange logits = loss->getOperands();
            if (logits.empty())
              return op.emitOpError() << "takes no logits; the CUDA kernels "
                                         "need one tensor per layer";
            RankedTensorType t = typeOf(logits[0]);
            for (Value v : logits)
              if (typeOf(v) != t)
                return op.emitOpError() << "takes logits of types " << t
                                        << " and " << typeOf(v)
                                        << "; the CUDA kernels need one shape";
            bool ok = true;
            std::string list = pointerList(op, logits, ok);
            if (!ok)
              return failure();
            int64_t layers = logits.size();
            std::string c = *cType(t);
            std::string name = fmt::format("logits{}", groups++);
            body += fmt::format("  {{\n    const {} *{}[] = {{{}}};\n", c, name,
                                list);
            int64_t tokens = leadingCount(t), experts = t.getShape().back();
            if (auto l = dyn_cast<moe::LoadBalancingLossOp>(loss)) {
              body += fmt::format("    moert::kernels::loadBalancingLoss(ctx, "
                                  "{}, {}, {}, {}, {}, {});\n  }}\n",
                                  name, layers, tokens, experts, l.getK(),
                                  typed(l.getLoss()));
            } else if (auto l = dyn_cast<moe::RouterZLossOp>(loss)) {
              body += fmt::format("    moert::kernels::routerZLoss(ctx, {}, "
                                  "{}, {}, {}, {});\n  }}\n",
                                  name, layers, tokens, experts,
                                  typed(l.getLoss()));
            } else {
              std::string outs;
              for (Value r : loss->getResults())
                outs += (outs.empty() ? "" : ", ") + typed(r);
              body += fmt::format("    {} *d{}[] = {{{}}};\n", c, name, outs);
              if (auto l = dyn_cast<moe::LoadBalancingLossGradOp>(loss))
                body += fmt::format(
                    "    moert::kernels::loadBalancingLossGrad(ctx, {}, {}, "
                    "{}, {}, {}, {:.17g}, d{});\n  }}\n",
                    name, layers, tokens, experts, l.getK(),
                    l.getScale().convertToDouble(), name);
              else
                body += fmt::format(
                    "    moert::kernels::routerZLossGrad(ctx, {}, {}, {}, {}, "
                    "{:.17g}, d{});\n  }}\n",
                    name, layers, tokens, experts,
                    cast<moe::RouterZLossGradOp>(loss).getScale()
                        .convertToDouble(),
                    name);
            }
            return success();
          })
      .Case([&](moe::ExpertCountsOp e) -> LogicalResult {
        OperandRange experts = e.getExperts();
        if (experts.empty())
          return e.emitOpError() << "counts no layers; the CUDA kernel needs "
                                    "one tensor per layer";
        RankedTensorType t = typeOf(experts[0]);
        bool ok = true;
        std::string list = pointerList(op, experts, ok);
        if (!ok)
          return failure();
        std::string name = fmt::format("experts{}", groups++);
        body += fmt::format(
            "  {{\n    const int64_t *{}[] = {{{}}};\n"
            "    moert::kernels::expertCounts(ctx, {}, {}, {}, {}, {}, {});\n"
            "  }}\n",
            name, list, name, experts.size(), leadingCount(t),
            t.getShape().back(), shape(e.getCounts()).back(),
            typed(e.getCounts()));
        return success();
      })
      .Case([&](moe::GlobalNormOp n) -> LogicalResult {
        if (n.getGradients().empty())
          return n.emitOpError() << "takes no gradients; the CUDA printer "
                                    "needs at least one";
        std::string entries;
        Type element = typeOf(n.getGradients().front()).getElementType();
        for (Value g : n.getGradients()) {
          FailureOr<std::string> p = ptr(g);
          if (failed(p))
            return failure();
          if (typeOf(g).getElementType() != element)
            return n.emitOpError()
                   << "mixes " << typeOf(g) << " with " << element
                   << " gradients; the GPU norm reads one element type";
          entries += fmt::format(
              "      {{nullptr, nullptr, nullptr, {}, {}, 0.0f}},\n", *p,
              typeOf(g).getNumElements());
        }
        int64_t g = groups++;
        statics += fmt::format("{} moert::kernels::TensorGroup group{};\n",
                               perRank(), g);
        setup += fmt::format("  group{}.init({{\n{}  }});\n", g, entries);
        body += fmt::format(
            "  moert::kernels::globalNorm<{}>(ctx, group{}, {});\n",
            *cType(n.getGradients().front().getType()), g, typed(n.getNorm()));
        return success();
      })
      .Case([&](tensor::EmptyOp) { return success(); })
      .Case<shard::AllGatherOp, shard::ReduceScatterOp, shard::AllReduceOp,
            linalg::BroadcastOp, tensor::ExtractSliceOp,
            tensor::InsertSliceOp>(
          [&](Operation *c) { return printCollective(*c); })
      .Case<moe::DispatchOp, moe::CombineOp, moe::TokenShuffleOp,
            moe::TargetCountOp, moe::LoadBalancingStatsOp,
            moe::LoadBalancingLossFromStatsOp, moe::LoadBalancingStatsGradOp>(
          [&](Operation *e) { return printExpertParallel(*e); })
      .Case([&](func::ReturnOp) { return success(); })
      .Default([&](Operation *other) -> LogicalResult {
        return other->emitOpError() << "has no CUDA lowering";
      });
}

} // namespace moec::detail
