//===- TrainStepEmitter.cpp - Print @train_step as a CUDA program ---------===//
//
// See moec/Target/Cuda.h. The printer walks the specialised, memory-planned
// @train_step once, in program order, and prints for every op a launch of
// the moert kernel library (runtime/include/moert/kernels) or a kernel it
// generates itself (element-wise arith ops), with every buffer a fixed
// offset into one of three device regions:
//
//   state   parameters, exp_avg, exp_avg_sq, fp32 (master weights) or bf16
//           (a bf16 model), one type per parameter (function arguments that
//           moe.adamw updates in place; moe-plan-memory gives them no arena
//           bytes);
//   inputs  input_ids, labels, step, lr (written by the host before a step);
//   arena   every other value, at the offset moe-plan-memory chose;
//   host    the offloaded activations (moe.offload's results), pinned host
//           memory at the offsets moe-plan-memory chose (moe.host_offsets).
//
// Activation offloading: moe.offload copies to the host on the offload
// stream, moe.fetch back on the fetch stream (moert/kernels/Offload.h),
// outside the captured segments. The compute stream waits for an offload's
// copy at its moe.offload_join (the memory plan holds the copied value's
// bytes until there; without a join, before the first op that writes
// them), and for a fetch right before
// the first op that reads the fetched value; a fetch waits for its offload
// and for any unfinished offload of the bytes it writes.
//
// Views (expand/collapse_shape) print as their source's pointer. The printer
// only prints: what it fuses or groups, passes made explicit in the IR
// before it (moe.add_rms_norm from moe-fuse-add-rms-norm, moe.adamw_group
// from moe-group-adamw), and the model FLOPs come from
// moec/Analysis/ModelFlops.h. It checks everything it relies on and fails
// with a diagnostic at the op.
//
// CUDA graphs: the step is cut into segments at the ops whose launches
// depend on values the host reads back during the step (the experts' group
// sizes: moe.experts and moe.experts_grad). Every segment between them has
// fixed launches on fixed buffers, so the program captures each one into a
// CUDA graph once and replays it (moert/StepGraphs.h); the experts ops run
// as they are between the replays.
//
//===----------------------------------------------------------------------===//

#include "moec/Target/Cuda.h"

#include "Printers.h"

#include "dialects/Moe/IR/MoeOps.h"
#include "dialects/Moe/Transforms/CollectiveSchedule.h"
#include "dialects/Moe/Transforms/StepScratch.h"
#include "moec/Support/Routing.h"
#include "moec/Analysis/ModelFlops.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/ADT/TypeSwitch.h"

#include <fmt/format.h>

#include <map>
#include <optional>

using namespace mlir;
using mlir::moe::MoeDialect;
using moec::detail::joined;
using moec::detail::quoted;

namespace {

constexpr int64_t kAlignment = 256;

int64_t alignUp(int64_t x) { return (x + kAlignment - 1) / kAlignment * kAlignment; }

/// The C++ element type of a tensor the printer can hold.
FailureOr<std::string> cType(Type type) {
  Type element = cast<ShapedType>(type).getElementType();
  if (element.isF32())
    return std::string("float");
  if (element.isBF16())
    return std::string("moert::kernels::bf16");
  if (element.isInteger(64))
    return std::string("int64_t");
  return failure();
}

int64_t leadingCount(RankedTensorType type) {
  int64_t n = 1;
  for (int64_t d : type.getShape().drop_back())
    n *= d;
  return n;
}

RankedTensorType typeOf(Value v) { return cast<RankedTensorType>(v.getType()); }

int64_t elementBytes(Value v) { return typeOf(v).getElementTypeBitWidth() / 8; }

int64_t byteSize(RankedTensorType t) {
  return t.getNumElements() * t.getElementTypeBitWidth() / 8;
}

std::string floatLiteral(double v) { return fmt::format("{:#.9g}f", v); }

/// The arguments after the buffers that the attention kernels (GEMM and
/// cuDNN) share: B, S, N, KV, D, scale, causal, window.
template <class AttentionLikeOp>
std::string attentionShape(AttentionLikeOp a) {
  auto q = typeOf(a.getQuery()).getShape(), k = typeOf(a.getKey()).getShape();
  int64_t window = a.getSlidingWindow() ? *a.getSlidingWindow() : -1;
  return fmt::format("{}, {}, {}, {}, {}, {}, {}, {}", q[0], q[1], q[2], k[2],
                     q[3], floatLiteral(a.getScale().convertToDouble()),
                     a.getCausal() ? "true" : "false", window);
}

/// The value of a splat float constant, if `c` is one.
std::optional<double> splatValue(arith::ConstantOp c) {
  auto dense = dyn_cast<DenseFPElementsAttr>(c.getValue());
  if (!dense || !dense.isSplat())
    return std::nullopt;
  return dense.getSplatValue<APFloat>().convertToDouble();
}

/// The printed mask of the mesh axes `axes` (moert::meshAxes).
std::string axesMask(ArrayRef<int16_t> axes) {
  std::string list;
  for (int16_t a : axes)
    list += (list.empty() ? "" : ", ") + std::to_string(a);
  return "moert::meshAxes({" + list + "})";
}

/// Whether `op` runs outside the captured segments: it reads values back
/// to the host in the middle of the step (the experts' group sizes, the
/// dispatch's counts) or is a collective, which the in-process communicator
/// of simulated ranks cannot run inside a graph (docs/cuda-backend.md,
/// Partitioned steps).
bool runsUncaptured(Operation &op) {
  return isa<moe::ExpertsOp, moe::ExpertsGradOp, moe::DispatchOp,
             moe::CombineOp, moe::TokenShuffleOp, shard::AllGatherOp,
             shard::ReduceScatterOp, shard::AllReduceOp>(op);
}

/// The multi-tensor update `a` belongs to (moe-group-adamw).
int64_t groupOf(moe::AdamWOp a) {
  return a->getAttrOfType<IntegerAttr>(MoeDialect::getAdamWGroupAttrName())
      .getInt();
}

class TrainStepPrinter {
public:
  TrainStepPrinter(func::FuncOp step, func::FuncOp init,
                   shard::GridOp grid,
                   const moec::CudaTrainProgramOptions &options)
      : step(step), init(init), grid(grid), options(options) {}

  LogicalResult print(llvm::raw_ostream &os,
                      moec::CudaTrainProgramSummary &summary);

private:
  LogicalResult layoutArguments();
  LogicalResult printOp(Operation &op);
  LogicalResult setResultPointers(Operation &op);
  LogicalResult printElementwise(Operation &op);
  LogicalResult printTranspose(linalg::TransposeOp op);
  LogicalResult printAdamWGroup(ArrayRef<moe::AdamWOp> group);
  FailureOr<std::string> pointer(Operation &at, Value v);
  std::string typed(Value v);
  std::string pointerList(Operation &at, ValueRange values, bool &ok);
  /// Whether an attention op on `query` runs on cuDNN (and notes that the
  /// program then needs it).
  bool onCudnn(Value query) {
    bool cudnn = options.cudnnAttention &&
                 typeOf(query).getElementType().isBF16();
    usesCudnn |= cudnn;
    return cudnn;
  }
  /// Ends the segment `body` holds: it becomes a captured segment of the
  /// step when `capture`, else it runs as printed.
  void endSegment(bool capture);
  /// The storage class of the program's per-rank objects: a partitioned
  /// program's ranks may run as threads of one process.
  const char *perRank() const { return grid ? "thread_local" : "static"; }
  /// The group size of `axes` on the mesh, after checking that `gridName`
  /// is the program's mesh.
  FailureOr<int64_t> groupSize(Operation &op, StringRef gridName,
                               ArrayRef<int16_t> axes);
  /// The number of rows of `v`'s leading dimension: a literal, or the host
  /// variable that holds a dispatch's received row count.
  std::string rowsOf(Value v);
  /// The most rows `v` can have (its static extent, or its dispatch's
  /// receive bound).
  int64_t rowBoundOf(Value v);
  LogicalResult printCollective(Operation &op);
  /// Takes the collectives' streams and joins from moe::scheduleCollectives
  /// (the schedule moe-plan-memory planned the buffers for).
  void scheduleCollectives();
  /// Prints the fork of collective `op` onto its stream and returns the
  /// name of the context its calls take.
  std::string forkCollective(Operation &op);
  /// Prints the end of collective `op` and, unless it is overlapped, the
  /// compute stream's join right after it.
  void endCollective(Operation &op);
  LogicalResult printExpertParallel(Operation &op);
  /// Numbers the offloads and fetches and chooses where the compute stream
  /// waits for each, and which offloads each fetch waits for.
  LogicalResult scheduleTransfers();
  /// Prints moe.offload or moe.fetch `op`.
  LogicalResult printTransfer(Operation &op);
  /// The arena bytes [begin, end) that `v` (or its view's source) occupies,
  /// a value with dynamic rows up to the arena's end; none outside it.
  std::optional<std::pair<int64_t, int64_t>> arenaRangeOf(Value v);
  /// Prints a --check-numerics count (moert/kernels/Numerics.cuh) of the
  /// `count` elements of `v` and its row of the checks table, `what` naming
  /// it.
  void printNumericsCheck(const std::string &what, Value v,
                          const std::string &count);
  /// The same of the buffer at `pointer`, of type `typeText` as the table
  /// names it (a split master's copy).
  void printNumericsCheck(const std::string &what, const std::string &pointer,
                          const std::string &typeText,
                          const std::string &count);
  /// The checks of each floating-point result of `op`, which launched on
  /// the step's stream.
  void printNumericsChecks(Operation &op);

  func::FuncOp step, init;
  shard::GridOp grid; ///< the mesh of a partitioned program, else null
  const moec::CudaTrainProgramOptions &options;

  llvm::DenseMap<Value, std::string> pointers; ///< C++ pointer expressions
  llvm::DenseMap<Value, double> constants;     ///< splat scalar constants
  /// Values whose leading dimension is a dispatch's received rows: the
  /// host variable that holds it and its bound.
  llvm::DenseMap<Value, std::pair<std::string, int64_t>> dynamicRows;
  /// Every collective's number, stream and join; the overlapped ones are
  /// joined before the ops in joinsBefore.
  llvm::MapVector<Operation *, moe::ScheduledCollective> collectives;
  llvm::DenseMap<Operation *, SmallVector<int>> joinsBefore;
  /// The number of each moe.offload and of each moe.fetch; the offloads and
  /// fetches the compute stream waits for before an op; the other offloads
  /// a fetch's stream waits for.
  llvm::DenseMap<Operation *, int> transferIds;
  llvm::DenseMap<Operation *, SmallVector<int>> offloadJoinsBefore,
      fetchJoinsBefore, fetchWaitsFor;
  int64_t hostBytes = 0; ///< the pinned host region (moe.host_bytes)
  llvm::DenseMap<Value, int64_t> hostOffsets; ///< moe.offload's results
  std::string kernels, body, setup, statics;
  std::string stepBody;              ///< what step() runs, in order
  std::vector<std::string> segments; ///< bodies of the captured segments
  std::map<std::string, std::string> kernelNames; ///< source -> name
  int64_t stateBytes = 0, inputBytes = 0, groups = 0;
  int64_t derivedStateBytes = 0; ///< kept copies
  /// Parameter argument -> its persistent bf16 copy, which AdamW writes.
  llvm::DenseMap<Value, std::string> parameterCopies;
  /// store_param_remainders: parameter argument -> the low 16 bits of its
  /// fp32 master (its copy holds the rest), and the AdamW groups that
  /// update masters so (splitStepMasters, joinStepMasters).
  llvm::DenseMap<Value, std::string> masterRemainders;
  SmallVector<int64_t> splitGroups;
  llvm::DenseSet<Value> splitUpdated; ///< split masters AdamW updates
  int64_t splitMasterElements = 0;
  bool usesCudnn = false;
  /// The rows of the program's kNumericsChecks table, in program order.
  std::string numericsChecks;
  int numNumericsChecks = 0;

  struct Param {
    std::string name;
    RankedTensorType type;
    int64_t offset[3] = {-1, -1, -1}; ///< param, exp_avg, exp_avg_sq
  };
  std::vector<Param> params;
  llvm::StringMap<size_t> paramIndex;
  int64_t inputOffset[4] = {-1, -1, -1, -1}; ///< ids, labels, step, lr
};

LogicalResult TrainStepPrinter::layoutArguments() {
  const StringRef kStateAttrs[] = {MoeDialect::getParameterAttrName(),
                                   MoeDialect::getExpAvgAttrName(),
                                   MoeDialect::getExpAvgSqAttrName()};
  static const char *kInputs[] = {"input_ids", "labels", "step", "lr"};
  for (BlockArgument arg : step.getArguments()) {
    unsigned i = arg.getArgNumber();
    auto type = dyn_cast<RankedTensorType>(arg.getType());
    if (!type || !type.hasStaticShape())
      return step.emitError() << "argument #" << i << " has type "
                              << arg.getType()
                              << "; the CUDA printer needs static tensors "
                                 "(run moe-specialize-shapes)";
    FailureOr<std::string> c = cType(type);
    if (failed(c))
      return step.emitError() << "argument #" << i << " has element type "
                              << type.getElementType()
                              << ", which the CUDA printer cannot hold";
    int64_t bytes = byteSize(type);
    bool placed = false;
    for (int s = 0; s < 3; ++s) {
      auto name = step.getArgAttrOfType<StringAttr>(i, kStateAttrs[s]);
      if (!name)
        continue;
      if (!type.getElementType().isF32() && !type.getElementType().isBF16())
        return step.emitError() << "state argument #" << i << " ("
                                << name.getValue() << ") is " << type
                                << "; optimizer state must be fp32 or bf16";
      auto [it, inserted] = paramIndex.try_emplace(name.getValue(), params.size());
      if (inserted)
        params.push_back({name.getValue().str(), type});
      if (params[it->second].type != type)
        return step.emitError() << "state argument #" << i << " ("
                                << name.getValue() << ") is " << type
                                << " but the parameter is "
                                << params[it->second].type
                                << "; a parameter and its moments share "
                                   "one type";
      params[it->second].offset[s] = stateBytes;
      pointers[arg] = fmt::format("reinterpret_cast<{} *>(state + {})", *c,
                                  stateBytes);
      stateBytes += alignUp(bytes);
      placed = true;
    }
    if (auto input = step.getArgAttrOfType<StringAttr>(
            i, MoeDialect::getInputAttrName())) {
      for (int k = 0; k < 4; ++k)
        if (input.getValue() == kInputs[k]) {
          inputOffset[k] = inputBytes;
          pointers[arg] = fmt::format("reinterpret_cast<{} *>(inputs + {})",
                                      *c, inputBytes);
          inputBytes += alignUp(bytes);
          placed = true;
        }
    }
    if (!placed)
      return step.emitError() << "argument #" << i
                              << " is neither a parameter, an optimizer "
                                 "state nor one of input_ids, labels, step, "
                                 "lr";
  }
  for (int k = 0; k < 4; ++k)
    if (inputOffset[k] < 0)
      return step.emitError() << "@train_step has no '" << kInputs[k]
                              << "' input";
  for (const Param &p : params)
    if (p.offset[1] < 0 || p.offset[2] < 0)
      return step.emitError() << "parameter '" << p.name
                              << "' has no exp_avg/exp_avg_sq state";
  // The bf16 parameter copies kept across steps (moe-keep-param-copies):
  // at the end of the state region, which checkpoints leave out.
  for (Operation &op : step.getBody().front()) {
    auto cast = dyn_cast<arith::TruncFOp>(op);
    if (!cast || !cast->hasAttr(MoeDialect::getPersistentCopyAttrName()))
      continue;
    auto param = dyn_cast<BlockArgument>(cast.getIn());
    if (!param || !step.getArgAttr(param.getArgNumber(),
                                   MoeDialect::getParameterAttrName()))
      return cast.emitOpError() << "is marked moe.persistent_copy but does "
                                   "not cast a parameter argument";
    // AdamW writes one copy per parameter (moe-keep-param-copies keeps one).
    if (parameterCopies.count(param))
      return cast.emitOpError()
             << "is a second moe.persistent_copy of parameter '"
             << step.getArgAttrOfType<StringAttr>(
                    param.getArgNumber(), MoeDialect::getParameterAttrName())
                    .getValue()
             << "'; AdamW updates one copy per parameter";
    std::string p = fmt::format(
        "reinterpret_cast<moert::kernels::bf16 *>(state + {})", stateBytes);
    pointers[cast.getResult()] = p;
    parameterCopies[param] = p;
    int64_t bytes = alignUp(byteSize(typeOf(cast.getResult())));
    stateBytes += bytes;
    derivedStateBytes += bytes;
    // The master's low half in the first half of its own fp32 slot, which
    // holds no fp32 value while the run keeps it split
    // (store_param_remainders; moert::kernels::splitMasters).
    if (options.storeParamRemainders &&
        typeOf(param).getElementType().isF32() &&
        typeOf(cast.getResult()).getElementType().isBF16()) {
      masterRemainders[param] = fmt::format(
          "reinterpret_cast<uint16_t *>({})", pointers.lookup(param));
      splitMasterElements += typeOf(param).getNumElements();
    }
  }
  return success();
}

FailureOr<std::string> TrainStepPrinter::pointer(Operation &at, Value v) {
  auto it = pointers.find(v);
  if (it != pointers.end())
    return it->second;
  at.emitOpError() << "reads a value the CUDA printer has no buffer for "
                      "(a constant that is not a scalar splat, or an "
                      "unsupported producer)";
  return failure();
}

/// `v`'s pointer, already known to exist.
std::string TrainStepPrinter::typed(Value v) { return pointers.lookup(v); }

std::string TrainStepPrinter::pointerList(Operation &at, ValueRange values,
                                          bool &ok) {
  std::string out;
  for (Value v : values) {
    FailureOr<std::string> p = pointer(at, v);
    if (failed(p)) {
      ok = false;
      return "";
    }
    out += (out.empty() ? "" : ", ") + *p;
  }
  return out;
}

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

FailureOr<int64_t> TrainStepPrinter::groupSize(Operation &op,
                                               StringRef gridName,
                                               ArrayRef<int16_t> axes) {
  if (!grid || grid.getSymName() != gridName) {
    op.emitOpError() << "runs on grid @" << gridName
                     << ", which is not the program's mesh";
    return failure();
  }
  int64_t size = 1;
  for (int16_t axis : axes)
    size *= grid.getShape()[axis];
  return size;
}

std::string TrainStepPrinter::rowsOf(Value v) {
  auto it = dynamicRows.find(v);
  if (it != dynamicRows.end())
    return it->second.first;
  return std::to_string(leadingCount(typeOf(v)));
}

int64_t TrainStepPrinter::rowBoundOf(Value v) {
  auto it = dynamicRows.find(v);
  if (it != dynamicRows.end())
    return it->second.second;
  return leadingCount(typeOf(v));
}

void TrainStepPrinter::scheduleCollectives() {
  // Every collective runs on its stream in program order, so that a group's
  // collectives are issued in one order on every rank, with a scratch of
  // the stream's own (moe::scheduleCollectives says which stream, and
  // where the compute stream joins each).
  collectives = moe::scheduleCollectives(step.getBody().front());
  for (auto &[op, c] : collectives)
    if (c.join)
      joinsBefore[c.join].push_back(c.id);
}

std::string TrainStepPrinter::forkCollective(Operation &op) {
  const moe::ScheduledCollective &c = collectives.find(&op)->second;
  body += fmt::format(
      "  const moert::kernels::Context collective{0} = "
      "moert::kernels::{1}(ctx, {0}); // joined {2}\n",
      c.id,
      c.stream == moe::CollectiveStream::Gradient ? "forkGradientReduction"
                                                  : "forkCollective",
      c.join ? "before " + c.join->getName().getStringRef().str()
             : std::string("at once"));
  return fmt::format("collective{}", c.id);
}

void TrainStepPrinter::endCollective(Operation &op) {
  const moe::ScheduledCollective &c = collectives.find(&op)->second;
  body += fmt::format("  moert::kernels::endCollective(collective{0}, {0});\n",
                      c.id);
  if (!c.join)
    body +=
        fmt::format("  moert::kernels::joinCollective(ctx, {});\n", c.id);
}

LogicalResult TrainStepPrinter::printCollective(Operation &op) {
  // A gather or scatter along `axis` of the rank's `local` block.
  auto printBlocks = [&](const char *function, Value in, Value out,
                         RankedTensorType local, int64_t axis,
                         StringRef gridName,
                         ArrayRef<int16_t> axes) -> LogicalResult {
    FailureOr<int64_t> size = groupSize(op, gridName, axes);
    FailureOr<std::string> c = cType(local);
    if (failed(size) || failed(c) || failed(pointer(op, in)))
      return failure();
    int64_t outer = 1;
    for (int64_t d : local.getShape().take_front(axis))
      outer *= d;
    int64_t inner = outer == 0 ? 0 : local.getNumElements() / outer;
    std::string context = forkCollective(op);
    body += fmt::format(
        "  moert::kernels::{}<{}>({}, {}, {}, {}, {}, {}, {});\n", function,
        *c, context, axesMask(axes), *size, typed(in), typed(out), outer,
        inner);
    endCollective(op);
    return success();
  };
  // A static unit-stride slice of `whole` as moert::kernels::Slice.
  auto sliceOf = [&](OffsetSizeAndStrideOpInterface s,
                     RankedTensorType whole) -> FailureOr<std::string> {
    if (!s.hasUnitStride() || !ShapedType::isStaticShape(s.getStaticSizes()) ||
        !ShapedType::isStaticShape(s.getStaticOffsets()) ||
        s.getStaticSizes().size() != static_cast<size_t>(whole.getRank()))
      return op.emitOpError() << "is not a static unit-stride slice of "
                              << whole
                              << " of full rank; the CUDA printer copies "
                                 "only those";
    return fmt::format("moert::kernels::Slice<{}>{{{{{}}}, {{{}}}, {{{}}}}}",
                       whole.getRank(), joined(s.getStaticSizes()),
                       joined(whole.getShape()),
                       joined(s.getStaticOffsets()));
  };
  // The shard reductions the printer lowers: sums.
  auto checkSum = [](Operation *collective,
                     shard::ReductionKind kind) -> LogicalResult {
    if (kind == shard::ReductionKind::Sum)
      return success();
    return collective->emitOpError()
           << "reduces with " << shard::stringifyReductionKind(kind)
           << "; the CUDA printer lowers sums only";
  };

  return TypeSwitch<Operation *, LogicalResult>(&op)
      .Case([&](tensor::ExtractSliceOp e) -> LogicalResult {
        FailureOr<std::string> slice = sliceOf(e, e.getSourceType());
        if (failed(slice) || failed(pointer(op, e.getSource())))
          return failure();
        body += fmt::format(
            "  moert::kernels::extractSlice(ctx, {}, {}, {});\n",
            typed(e.getSource()), *slice, typed(e.getResult()));
        return success();
      })
      .Case([&](tensor::InsertSliceOp i) -> LogicalResult {
        FailureOr<std::string> slice = sliceOf(i, i.getDestType());
        if (failed(slice) || failed(pointer(op, i.getSource())))
          return failure();
        Value result = i.getResult();
        int64_t n = typeOf(result).getNumElements();
        std::string c = *cType(result.getType());
        // The destination's values first: a splat constant is filled in,
        // a buffer copied unless the result is in place.
        if (auto splat = constants.find(i.getDest()); splat != constants.end()) {
          body += fmt::format(
              "  moert::kernels::fillValue<{}>(ctx, {}, {}, {});\n", c,
              floatLiteral(splat->second), n, typed(result));
        } else {
          FailureOr<std::string> dest = pointer(op, i.getDest());
          if (failed(dest))
            return failure();
          if (*dest != typed(result))
            body += fmt::format(
                "  MOERT_CUDA_CHECK(cudaMemcpyAsync({}, {}, {}, "
                "cudaMemcpyDeviceToDevice, ctx.stream));\n",
                typed(result), *dest, byteSize(typeOf(result)));
        }
        body += fmt::format("  moert::kernels::insertSlice(ctx, {}, {}, {});\n",
                            typed(i.getSource()), *slice, typed(result));
        return success();
      })
      .Case([&](shard::AllGatherOp g) {
        return printBlocks("allGather", g.getInput(), g.getResult(),
                           typeOf(g.getInput()),
                           g.getGatherAxis().getSExtValue(), g.getGrid(),
                           g.getGridAxes());
      })
      .Case([&](shard::ReduceScatterOp r) -> LogicalResult {
        if (failed(checkSum(r, r.getReduction())))
          return failure();
        return printBlocks("reduceScatter", r.getInput(), r.getResult(),
                           typeOf(r.getResult()),
                           r.getScatterAxis().getSExtValue(), r.getGrid(),
                           r.getGridAxes());
      })
      .Case([&](shard::AllReduceOp r) -> LogicalResult {
        if (failed(checkSum(r, r.getReduction())))
          return failure();
        FailureOr<int64_t> size = groupSize(op, r.getGrid(), r.getGridAxes());
        FailureOr<std::string> c = cType(r.getResult().getType());
        if (failed(size) || failed(c) || failed(pointer(op, r.getInput())))
          return failure();
        std::string context = forkCollective(op);
        body += fmt::format(
            "  moert::kernels::allReduceSum<{}>({}, {}, {}, {}, {}, {});\n",
            *c, context, axesMask(r.getGridAxes()), *size,
            typed(r.getInput()), typed(r.getResult()),
            typeOf(r.getResult()).getNumElements());
        endCollective(op);
        return success();
      })
      .Case([&](linalg::BroadcastOp b) -> LogicalResult {
        if (typeOf(b.getInput()).getRank() != 0)
          return b.emitOpError() << "broadcasts " << b.getInput().getType()
                                 << "; the CUDA printer broadcasts scalars "
                                    "only";
        Value result = b->getResult(0);
        FailureOr<std::string> c = cType(result.getType());
        if (failed(c) || failed(pointer(op, b.getInput())))
          return failure();
        body += fmt::format("  moert::kernels::fill<{}>(ctx, {}, {}, {});\n",
                            *c, typed(b.getInput()),
                            typeOf(result).getNumElements(), typed(result));
        return success();
      });
}

LogicalResult TrainStepPrinter::printExpertParallel(Operation &op) {
  auto shape = [](Value v) { return typeOf(v).getShape(); };
  auto elementType = [](Value v) { return *cType(v.getType()); };
  // The routed ops: their group must be the counts' P.
  auto routedGroup = [&](StringRef gridName, ArrayRef<int16_t> axes,
                         Value counts) -> FailureOr<int64_t> {
    FailureOr<int64_t> size = groupSize(op, gridName, axes);
    if (failed(size))
      return failure();
    if (*size != shape(counts)[0]) {
      op.emitOpError() << "runs on a group of " << *size
                       << " ranks but its counts are "
                       << counts.getType();
      return failure();
    }
    return size;
  };
  auto dispatcherName = [](moe::Dispatcher d) {
    return d == moe::Dispatcher::all_to_all ? "AllToAll" : "AllGather";
  };
  // Layers' logits as a host array named `name` (the router losses' form).
  auto logitList = [&](ValueRange logits, StringRef name,
                       bool &ok) -> std::string {
    RankedTensorType t = typeOf(logits[0]);
    for (Value v : logits)
      if (typeOf(v) != t) {
        op.emitOpError() << "takes logits of types " << t << " and "
                         << typeOf(v) << "; the CUDA kernels need one shape";
        ok = false;
        return "";
      }
    std::string list = pointerList(op, logits, ok);
    return fmt::format("    const {} *{}[] = {{{}}};\n", *cType(t),
                       name.str(), list);
  };
  return TypeSwitch<Operation *, LogicalResult>(&op)
      .Case([&](moe::DispatchOp d) -> LogicalResult {
        FailureOr<int64_t> size =
            routedGroup(d.getGrid(), d.getGridAxes(), d.getCounts());
        bool ok = true;
        std::string args = pointerList(op, {d.getInput(), d.getExperts()}, ok);
        if (failed(size) || !ok ||
            (d.getGates() && failed(pointer(op, d.getGates()))))
          return failure();
        int64_t tokens = leadingCount(typeOf(d.getExperts()));
        int64_t k = shape(d.getExperts()).back();
        int64_t hidden = shape(d.getInput()).back();
        int64_t local = shape(d.getCounts())[1];
        int64_t bound = *d.getReceiveRowBound(); // static experts: verified
        std::string rows = fmt::format("received{}", dynamicRows.size());
        std::string t = elementType(d.getInput());
        std::string context = forkCollective(op);
        body += fmt::format(
            "  const int64_t {} = moert::kernels::dispatch{}<{}>({}, {}, {}, "
            "{}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {});\n",
            rows, dispatcherName(d.getDispatcher()), t, context,
            axesMask(d.getGridAxes()), *size, args,
            d.getGates() ? typed(d.getGates()) : "nullptr", tokens, k, hidden,
            local, bound, typed(d.getRows()), typed(d.getRowExperts()),
            typed(d.getCounts()),
            d.getRowGates() ? typed(d.getRowGates()) : "nullptr");
        endCollective(op);
        for (Value r : {d.getRows(), d.getRowExperts(), d.getRowGates()})
          if (r)
            dynamicRows[r] = {rows, bound};
        return success();
      })
      .Case([&](moe::CombineOp c) -> LogicalResult {
        FailureOr<int64_t> size =
            routedGroup(c.getGrid(), c.getGridAxes(), c.getCounts());
        bool ok = true;
        std::string args = pointerList(
            op, {c.getRows(), c.getExperts(), c.getCounts()}, ok);
        if (failed(size) || !ok)
          return failure();
        int64_t tokens = leadingCount(typeOf(c.getExperts()));
        int64_t k = shape(c.getExperts()).back();
        int64_t width = shape(c.getRows()).back();
        int64_t local = shape(c.getCounts())[1];
        int64_t bound = rowBoundOf(c.getRows());
        std::string context = forkCollective(op);
        body += fmt::format(
            "  moert::kernels::combine{}<{}>({}, {}, {}, {}, {}, {}, {}, {}, "
            "{}, {});\n",
            dispatcherName(c.getDispatcher()), elementType(c.getRows()),
            context, axesMask(c.getGridAxes()), *size, args, tokens, k, width,
            local, bound, typed(c.getResult()));
        endCollective(op);
        return success();
      })
      .Case([&](moe::TokenShuffleOp s) -> LogicalResult {
        FailureOr<int64_t> size =
            groupSize(op, s.getGrid(), s.getGridAxes());
        bool ok = true;
        std::string args = pointerList(op, {s.getInput(), s.getStep()}, ok);
        if (failed(size) || !ok)
          return failure();
        int64_t tokens = leadingCount(typeOf(s.getInput()));
        int64_t width = shape(s.getInput()).back();
        std::string context = forkCollective(op);
        body += fmt::format(
            "  moert::kernels::tokenShuffle<{}>({}, {}, {}, {}, {}ull, {}, "
            "{}, {}, {});\n",
            elementType(s.getInput()), context, axesMask(s.getGridAxes()),
            *size, args, static_cast<uint64_t>(s.getSeed()),
            s.getInverse() ? "true" : "false", tokens, width,
            typed(s.getResult()));
        endCollective(op);
        return success();
      })
      .Case([&](moe::TargetCountOp t) -> LogicalResult {
        // Labels are int64: the printer holds no other integer type.
        FailureOr<std::string> labels = pointer(op, t.getLabels());
        if (failed(labels))
          return failure();
        auto s = shape(t.getLabels());
        body += fmt::format(
            "  moert::kernels::targetCount(ctx, {}, {}, {}, {}, {});\n",
            *labels, s[0], s[1], static_cast<int64_t>(t.getIgnoreIndex()),
            typed(t.getCount()));
        return success();
      })
      .Case([&](moe::LoadBalancingStatsOp l) -> LogicalResult {
        if (l.getLogits().empty())
          return l.emitOpError() << "takes no logits; the CUDA kernels need "
                                    "one tensor per layer";
        bool ok = true;
        std::string name = fmt::format("logits{}", groups++);
        std::string list = logitList(l.getLogits(), name, ok);
        if (!ok)
          return failure();
        RankedTensorType t = typeOf(l.getLogits()[0]);
        int64_t layers = l.getLogits().size(), tokens = leadingCount(t),
                experts = t.getShape().back();
        body += fmt::format("  {{\n{}    moert::kernels::loadBalancingStats("
                            "ctx, {}, {}, {}, {}, {}, {});\n  }}\n",
                            list, name, layers, tokens, experts, l.getK(),
                            typed(l.getStats()));
        return success();
      })
      .Case([&](moe::LoadBalancingLossFromStatsOp l) -> LogicalResult {
        FailureOr<std::string> stats = pointer(op, l.getStats());
        if (failed(stats))
          return failure();
        body += fmt::format(
            "  moert::kernels::loadBalancingLossFromStats(ctx, {}, {}, {}, "
            "{});\n",
            *stats, shape(l.getStats()).back(), l.getK(), typed(l.getLoss()));
        return success();
      })
      .Case([&](moe::LoadBalancingStatsGradOp l) -> LogicalResult {
        if (l.getLogits().empty())
          return l.emitOpError() << "takes no logits; the CUDA kernels need "
                                    "one tensor per layer";
        bool ok = true;
        std::string name = fmt::format("logits{}", groups++);
        std::string list = logitList(l.getLogits(), name, ok);
        if (!ok || failed(pointer(op, l.getStats())))
          return failure();
        RankedTensorType t = typeOf(l.getLogits()[0]);
        int64_t layers = l.getLogits().size(), tokens = leadingCount(t),
                experts = t.getShape().back();
        std::string outs;
        for (Value r : l.getDLogits())
          outs += (outs.empty() ? "" : ", ") + typed(r);
        body += fmt::format(
            "  {{\n{}    {} *d{}[] = {{{}}};\n"
            "    moert::kernels::loadBalancingStatsGrad(ctx, {}, {}, {}, {}, "
            "{}, {}, {:.17g}, d{});\n  }}\n",
            list, *cType(t), name, outs, name, layers, tokens, experts,
            l.getK(), typed(l.getStats()), l.getScale().convertToDouble(),
            name);
        return success();
      });
}

std::optional<std::pair<int64_t, int64_t>>
TrainStepPrinter::arenaRangeOf(Value v) {
  while (isa_and_nonnull<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(
      v.getDefiningOp()))
    v = v.getDefiningOp()->getOperand(0);
  auto result = dyn_cast<OpResult>(v);
  auto type = dyn_cast<RankedTensorType>(v.getType());
  if (!result || !type)
    return std::nullopt;
  auto offsets = result.getOwner()->getAttrOfType<DenseI64ArrayAttr>(
      MoeDialect::getArenaOffsetsAttrName());
  if (!offsets || offsets[result.getResultNumber()] < 0)
    return std::nullopt;
  int64_t begin = offsets[result.getResultNumber()];
  int64_t end =
      type.hasStaticShape()
          ? begin + byteSize(type)
          : step->getAttrOfType<IntegerAttr>(
                     MoeDialect::getArenaBytesAttrName())
                .getInt();
  return std::make_pair(begin, end);
}

LogicalResult TrainStepPrinter::scheduleTransfers() {
  struct Pending {
    int id;
    std::pair<int64_t, int64_t> bytes;
  };
  auto overlaps = [](std::pair<int64_t, int64_t> a,
                     std::pair<int64_t, int64_t> b) {
    return a.first < b.second && b.first < a.second;
  };
  // Offloads the compute stream has not waited for, directly or through a
  // fetch it waited for; the offloads each fetch waits for.
  std::vector<Pending> pending;
  llvm::DenseMap<int, SmallVector<int>> offloadsBeforeFetch;
  int offloads = 0, fetches = 0;
  Block &block = step.getBody().front();
  for (Operation &op : block) {
    if (auto joins = fetchJoinsBefore.find(&op);
        joins != fetchJoinsBefore.end())
      for (int fetch : joins->second)
        llvm::erase_if(pending, [&](const Pending &p) {
          return llvm::is_contained(offloadsBeforeFetch[fetch], p.id);
        });
    if (auto offload = dyn_cast<moe::OffloadOp>(op)) {
      std::optional<std::pair<int64_t, int64_t>> bytes =
          arenaRangeOf(offload.getInput());
      if (!bytes)
        return offload.emitOpError()
               << "offloads a value outside the arena; the CUDA printer "
                  "offloads planned activations";
      if (!op.getAttrOfType<DenseI64ArrayAttr>(
              MoeDialect::getHostOffsetsAttrName()))
        return offload.emitOpError()
               << "has no moe.host_offsets; run moe-plan-memory before the "
                  "CUDA printer";
      transferIds[&op] = offloads;
      pending.push_back({offloads++, *bytes});
      continue;
    }
    if (auto fetch = dyn_cast<moe::FetchOp>(op)) {
      auto from = fetch.getInput().getDefiningOp<moe::OffloadOp>();
      std::optional<std::pair<int64_t, int64_t>> bytes =
          arenaRangeOf(fetch.getResult());
      int id = fetches++;
      transferIds[&op] = id;
      SmallVector<int> &waits = offloadsBeforeFetch[id];
      waits.push_back(transferIds.lookup(from));
      for (const Pending &p : pending)
        if (p.id != waits.front() && bytes && overlaps(p.bytes, *bytes)) {
          waits.push_back(p.id);
          fetchWaitsFor[&op].push_back(p.id);
        }
      // The compute stream waits right before the first reader of the
      // fetched value or of a view of it.
      llvm::DenseSet<Value> aliases = {fetch.getResult()};
      for (Operation *next = op.getNextNode(); next;
           next = next->getNextNode()) {
        bool reads = llvm::any_of(next->getOperands(), [&](Value v) {
          return aliases.contains(v);
        });
        if (reads &&
            isa<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(next)) {
          aliases.insert(next->getResult(0));
        } else if (reads) {
          fetchJoinsBefore[next].push_back(id);
          break;
        }
      }
      continue;
    }
    // The compute stream waits for an offload's copy at its join, where
    // the memory plan stops holding the value's bytes.
    if (auto join = dyn_cast<moe::OffloadJoinOp>(op)) {
      int id = transferIds.lookup(join.getInput().getDefiningOp());
      llvm::erase_if(pending, [&](const Pending &p) {
        if (p.id == id)
          offloadJoinsBefore[&op].push_back(id);
        return p.id == id;
      });
      continue;
    }
    // An op that writes bytes an unfinished offload reads waits for it
    // (the memory plan holds them until the join: a step without joins);
    // the step ends with every offload finished.
    SmallVector<std::pair<int64_t, int64_t>> written;
    for (Value result : op.getResults())
      if (std::optional<std::pair<int64_t, int64_t>> bytes =
              isa<tensor::ExpandShapeOp, tensor::CollapseShapeOp>(op)
                  ? std::nullopt
                  : arenaRangeOf(result))
        written.push_back(*bytes);
    bool end = isa<func::ReturnOp>(op);
    llvm::erase_if(pending, [&](const Pending &p) {
      bool wait = end || llvm::any_of(written, [&](auto bytes) {
                    return overlaps(p.bytes, bytes);
                  });
      if (wait)
        offloadJoinsBefore[&op].push_back(p.id);
      return wait;
    });
  }
  if (fetches > 0 || offloads > 0) {
    auto bytes =
        step->getAttrOfType<IntegerAttr>(MoeDialect::getHostBytesAttrName());
    if (!bytes)
      return step.emitError() << "offloads activations but has no "
                                 "moe.host_bytes; run moe-plan-memory before "
                                 "the CUDA printer";
    hostBytes = bytes.getInt();
  }
  return success();
}

LogicalResult TrainStepPrinter::printTransfer(Operation &op) {
  body += fmt::format("  moert::kernels::mark(ctx, \"{}\");\n",
                      op.getName().getStringRef().str());
  int id = transferIds.lookup(&op);
  // The bytes of `v`: a literal, or its received rows times a row's bytes.
  auto bytesOf = [&](Value v) {
    RankedTensorType type = typeOf(v);
    int64_t row = elementBytes(v);
    for (int64_t d : type.getShape().drop_front())
      row *= d;
    if (type.hasStaticShape())
      return std::to_string(byteSize(type));
    return fmt::format("{} * {}", rowsOf(v), row);
  };
  if (auto offload = dyn_cast<moe::OffloadOp>(op)) {
    FailureOr<std::string> from = pointer(op, offload.getInput());
    if (failed(from))
      return failure();
    int64_t host = op.getAttrOfType<DenseI64ArrayAttr>(
        MoeDialect::getHostOffsetsAttrName())[0];
    if (auto rows = dynamicRows.find(offload.getInput());
        rows != dynamicRows.end())
      dynamicRows[offload.getResult()] = rows->second;
    hostOffsets[offload.getResult()] = host;
    body += fmt::format("  moert::kernels::offloadToHost(ctx, {}, {}, {}, "
                        "{}); // layer {}\n",
                        id, *from, host, bytesOf(offload.getInput()),
                        offload.getLayer());
    return success();
  }
  auto fetch = cast<moe::FetchOp>(op);
  if (failed(setResultPointers(op)))
    return failure();
  if (auto rows = dynamicRows.find(fetch.getInput()); rows != dynamicRows.end())
    dynamicRows[fetch.getResult()] = rows->second;
  for (int offload : fetchWaitsFor.lookup(&op))
    body += fmt::format("  moert::kernels::fetchAfterOffload(ctx, {});\n",
                        offload);
  auto from = fetch.getInput().getDefiningOp<moe::OffloadOp>();
  body += fmt::format("  moert::kernels::fetchFromHost(ctx, {}, {}, {}, {}, "
                      "{}); // layer {}\n",
                      id, transferIds.lookup(from), typed(fetch.getResult()),
                      hostOffsets.lookup(fetch.getInput()),
                      bytesOf(fetch.getResult()), fetch.getLayer());
  return success();
}

void TrainStepPrinter::endSegment(bool capture) {
  if (body.empty())
    return;
  if (!capture) {
    stepBody += body;
  } else {
    stepBody += fmt::format("  moert::runSegment(ctx, segments[{0}], "
                            "segment{0}, state, arena, inputs);\n",
                            segments.size());
    segments.push_back(body);
  }
  body.clear();
}

LogicalResult TrainStepPrinter::setResultPointers(Operation &op) {
  // Constants are inlined, views alias their source, index values stay on
  // the host; the persistent copies have their pointers already.
  if (isa<arith::ConstantOp, tensor::DimOp, tensor::ExpandShapeOp,
          tensor::CollapseShapeOp, tensor::EmptyOp>(op))
    return success();
  auto offsets = op.getAttrOfType<DenseI64ArrayAttr>(
      MoeDialect::getArenaOffsetsAttrName());
  for (auto [i, result] : llvm::enumerate(op.getResults())) {
    auto type = dyn_cast<RankedTensorType>(result.getType());
    if (!type || pointers.count(result))
      continue;
    // Received rows (moe.dispatch), what the local experts compute on
    // them and their fetched copies have a dynamic leading dimension,
    // bounded by the dispatch's receive bound, which the memory plan
    // reserves.
    bool receivedRows =
        isa<moe::DispatchOp, moe::ExpertsOp, moe::ExpertsGradOp,
            moe::FetchOp>(op) &&
        type.getRank() >= 1 &&
        llvm::all_of(type.getShape().drop_front(),
                     [](int64_t d) { return !ShapedType::isDynamic(d); });
    if (!type.hasStaticShape() && !receivedRows)
      return op.emitOpError() << "result #" << i << " has type " << type
                              << "; the CUDA printer needs static tensors "
                                 "(run moe-specialize-shapes)";
    if (!offsets || offsets[i] < 0)
      return op.emitOpError() << "result #" << i
                              << " has no arena offset; run moe-plan-memory "
                                 "before the CUDA printer";
    FailureOr<std::string> c = cType(type);
    if (failed(c))
      return op.emitOpError() << "result #" << i << " is " << type
                              << ", which the CUDA printer cannot hold";
    pointers[result] =
        fmt::format("reinterpret_cast<{} *>(arena + {})", *c, offsets[i]);
  }
  return success();
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

LogicalResult TrainStepPrinter::print(llvm::raw_ostream &os,
                                      moec::CudaTrainProgramSummary &summary) {
  if (grid && options.storeParamRemainders)
    return step.emitError() << "is partitioned on @" << grid.getSymName()
                            << "; the printer splits the masters of "
                               "one-rank programs only "
                               "(store_param_remainders)";
  if (failed(layoutArguments()))
    return failure();
  auto arenaBytes =
      step->getAttrOfType<IntegerAttr>(MoeDialect::getArenaBytesAttrName());
  if (!arenaBytes)
    return step.emitError() << "has no memory plan; run moe-plan-memory "
                               "before the CUDA printer";

  scheduleCollectives();
  if (failed(scheduleTransfers()))
    return failure();
  // Ops in order; each moe.adamw_group (consecutive ops) is one
  // multi-tensor launch.
  Block &block = step.getBody().front();
  // store_param_remainders: a run's first step splits the masters (their
  // copies and remainders are current after any step).
  if (!masterRemainders.empty())
    body += "  if (ctx.refreshParameterCopies)\n"
            "    splitStepMasters(ctx);\n";
  // --check-numerics: the parameters the step starts from first (a split
  // master's copy, non-finite exactly where the master is).
  if (options.checkNumerics)
    for (BlockArgument arg : step.getArguments())
      if (auto name = step.getArgAttrOfType<StringAttr>(
              arg.getArgNumber(), MoeDialect::getParameterAttrName())) {
        std::string what = "parameter '" + name.str() + "'";
        std::string count = std::to_string(typeOf(arg).getNumElements());
        if (!masterRemainders.count(arg)) {
          printNumericsCheck(what, arg, count);
          continue;
        }
        std::string typeText;
        llvm::raw_string_ostream typeOs(typeText);
        typeOs << RankedTensorType::get(typeOf(arg).getShape(),
                                        Builder(arg.getContext()).getBF16Type())
               << " (its bf16 copy; store_param_remainders)";
        printNumericsCheck(what, parameterCopies.lookup(arg), typeText, count);
      }
  SmallVector<moe::AdamWOp> adamGroup;
  llvm::DenseSet<int64_t> printedGroups;
  // The compute stream waits for the overlapped collectives `ids`, between
  // the captured segments.
  auto printJoins = [&](ArrayRef<int> ids) {
    if (ids.empty())
      return;
    endSegment(/*capture=*/true);
    for (int id : ids)
      body += fmt::format("  moert::kernels::joinCollective(ctx, {});\n", id);
    endSegment(/*capture=*/false);
  };
  // A group's one launch waits for what any of its updates reads (a
  // gradient reduction joined before its update: no clipping norm).
  auto printGroup = [&]() -> LogicalResult {
    if (adamGroup.empty())
      return success();
    SmallVector<int> joins;
    for (moe::AdamWOp a : adamGroup)
      joins.append(joinsBefore.lookup(a.getOperation()));
    printJoins(joins);
    // Split masters apart from the rest (store_param_remainders).
    SmallVector<moe::AdamWOp> splitPart, plainPart;
    for (moe::AdamWOp a : adamGroup)
      (masterRemainders.count(a.getParam()) ? splitPart : plainPart)
          .push_back(a);
    for (ArrayRef<moe::AdamWOp> part : {ArrayRef(splitPart),
                                        ArrayRef(plainPart)}) {
      if (part.empty())
        continue;
      body += "  moert::kernels::mark(ctx, \"moe.adamw\");\n";
      if (failed(printAdamWGroup(part)))
        return failure();
    }
    printedGroups.insert(groupOf(adamGroup.front()));
    adamGroup.clear();
    return success();
  };
  for (Operation &op : block) {
    if (auto a = dyn_cast<moe::AdamWOp>(op)) {
      if (!a->hasAttr(MoeDialect::getAdamWGroupAttrName()))
        return a.emitOpError() << "has no moe.adamw_group; run "
                                  "moe-group-adamw before the CUDA printer";
      if (!adamGroup.empty() && groupOf(a) != groupOf(adamGroup.front()) &&
          failed(printGroup()))
        return failure();
      if (printedGroups.contains(groupOf(a)))
        return a.emitOpError() << "is in moe.adamw_group " << groupOf(a)
                               << " but not next to the group's other "
                                  "updates; the CUDA printer updates a group "
                                  "of consecutive ops in one launch";
      adamGroup.push_back(a);
      continue;
    }
    if (failed(printGroup()))
      return failure();
    // The compute stream waits for the overlapped collectives `op` reads.
    printJoins(joinsBefore.lookup(&op));
    // The compute stream waits for the fetches `op` reads and the offloads
    // of the bytes it writes, between the captured segments; the
    // transfers themselves run there too.
    SmallVector<int> offloadJoins = offloadJoinsBefore.lookup(&op),
                     fetchJoins = fetchJoinsBefore.lookup(&op);
    if (!offloadJoins.empty() || !fetchJoins.empty()) {
      endSegment(/*capture=*/true);
      for (int id : offloadJoins)
        body += fmt::format("  moert::kernels::joinOffload(ctx, {});\n", id);
      for (int id : fetchJoins)
        body += fmt::format("  moert::kernels::joinFetch(ctx, {});\n", id);
      endSegment(/*capture=*/false);
    }
    if (isa<moe::OffloadJoinOp>(op))
      continue;
    if (isa<moe::OffloadOp, moe::FetchOp>(op)) {
      endSegment(/*capture=*/true);
      if (failed(printTransfer(op)))
        return failure();
      endSegment(/*capture=*/false);
      continue;
    }
    bool hostSync = runsUncaptured(op);
    if (hostSync)
      endSegment(/*capture=*/true);
    bool printingCollective = collectives.contains(&op);
    size_t launchesBefore = body.size();
    if (failed(printOp(op)))
      return failure();
    // An op that printed a launch on the step's stream (not a view, not a
    // collective on a collective stream) has its results checked.
    if (options.checkNumerics && !printingCollective &&
        body.size() != launchesBefore)
      printNumericsChecks(op);
    if (hostSync)
      endSegment(/*capture=*/false);
  }
  if (failed(printGroup()))
    return failure();
  endSegment(/*capture=*/true);
  body += "  moert::kernels::mark(ctx, \"end\");\n";
  endSegment(/*capture=*/false);

  // Metrics: the step's named outputs.
  auto ret = cast<func::ReturnOp>(block.getTerminator());
  std::map<std::string, std::string> metric;
  Value counts;
  for (auto [i, v] : llvm::enumerate(ret.getOperands())) {
    auto name = step.getResultAttrOfType<StringAttr>(
        i, MoeDialect::getOutputAttrName());
    if (!name)
      continue;
    if (name.getValue() == "expert_counts")
      counts = v;
    auto c = constants.find(v);
    if (c != constants.end()) {
      metric[name.str()] = fmt::format("{{-1, {}}}", floatLiteral(c->second));
      continue;
    }
    auto range = MoeDialect::getArenaRange(v);
    if (!range)
      return ret.emitOpError() << "returns output '" << name.getValue()
                               << "' that is not in the arena";
    int64_t offset = range->first;
    metric[name.str()] = fmt::format("{{{}, 0.0f}}", offset);
  }
  for (const char *required : {"loss", "ce_loss", "aux_loss", "z_loss",
                               "grad_norm", "expert_counts"})
    if (!metric.count(required))
      return ret.emitOpError() << "has no output named '" << required << "'";
  auto countShape = typeOf(counts).getShape();

  // The initialisation: @init_params' launches into the state region.
  std::string initBody;
  llvm::raw_string_ostream initOs(initBody);
  auto initRet = cast<func::ReturnOp>(init.getBody().front().getTerminator());
  llvm::StringSet<> initialised;
  llvm::StringMap<moe::ParamInitOp> initOps;
  for (Value v : initRet.getOperands()) {
    auto p = v.getDefiningOp<moe::ParamInitOp>();
    if (!p)
      return initRet.emitOpError() << "returns a value not made by "
                                      "moe.param_init";
    auto it = paramIndex.find(p.getName());
    if (it == paramIndex.end())
      continue;
    const Param &param = params[it->second];
    // A bf16 model starts from the fp32 initial values rounded once, as
    // model.to(torch.bfloat16) does.
    if (p.getType().getShape() != param.type.getShape() ||
        !p.getType().getElementType().isF32())
      return p.emitOpError() << "creates " << p.getType() << " for '"
                             << p.getName() << "' but @train_step takes "
                             << param.type;
    if (p.getGrid() && (!grid || p.getGridAttr().getValue() !=
                                     grid.getSymName()))
      return p.emitOpError() << "creates a block on grid @"
                             << p.getGridAttr().getValue()
                             << ", which is not the program's mesh";
    moec::detail::printParamInitLaunch(
        p,
        fmt::format("reinterpret_cast<{} *>(state + {})", *cType(param.type),
                    param.offset[0]),
        "stream", "mesh", initOs);
    initialised.insert(p.getName());
    initOps[p.getName()] = p;
  }
  for (const Param &p : params)
    if (!initialised.contains(p.name))
      return init.emitError() << "does not initialise parameter '" << p.name
                              << "'";

  // The program's geometry: the lm-head loss's tokens and vocabulary.
  FailureOr<moec::ModelFlops> modelFlops = moec::trainStepModelFlops(step);
  if (failed(modelFlops))
    return failure();
  int64_t batch = 0, seq = 0, vocab = 0;
  for (Operation &op : block)
    if (isa<moe::LmHeadCrossEntropyOp, moe::LmHeadCrossEntropyWithGradOp>(
            op)) {
      batch = typeOf(op.getOperand(0)).getShape()[0];
      seq = typeOf(op.getOperand(0)).getShape()[1];
      vocab = typeOf(op.getOperand(1)).getShape()[0];
    }

  // The program.
  os << "// Generated by moec from @train_step. Do not edit.\n";
  os << "// Model: " << options.modelName << "\n";
  os << R"cuda(#include "moert/StepGraphs.h"
#include "moert/TrainDriver.h"
#include "moert/kernels/Attention.cuh"
#include "moert/kernels/CrossEntropy.cuh"
#include "moert/kernels/Embedding.cuh"
#include "moert/kernels/ExpertCounts.cuh"
#include "moert/kernels/Experts.cuh"
#include "moert/kernels/Init.cuh"
#include "moert/kernels/Linear.cuh"
#include "moert/kernels/Norm.cuh"
#include "moert/kernels/Numerics.cuh"
#include "moert/kernels/Optimizer.cuh"
#include "moert/kernels/Rotary.cuh"
#include "moert/kernels/Router.cuh"
#include "moert/kernels/RouterLosses.cuh"
)cuda";
  if (grid)
    os << "#include \"moert/NcclCommunicator.h\"\n"
          "#include \"moert/kernels/Collectives.cuh\"\n"
          "#include \"moert/kernels/ExpertParallel.cuh\"\n";
  if (usesCudnn)
    os << "#include \"moert/kernels/AttentionCudnn.cuh\"\n";
  if (hostBytes > 0)
    os << "#include \"moert/kernels/Offload.h\"\n";
  os << R"cuda(
#include <algorithm>

namespace {

)cuda";
  os << "// Generated element-wise kernels.\n" << kernels << "\n";
  os << statics << "\n";
  os << "const moert::ParameterInfo kParameters[] = {\n";
  for (const Param &p : params) {
    os << fmt::format("    {{{}, {{{}}}, {}, {}, {}, {}, {}", quoted(p.name),
                      joined(p.type.getShape()), p.offset[0], p.offset[1],
                      p.offset[2], p.type.getNumElements(),
                      p.type.getElementTypeBitWidth() / 8);
    // A partitioned program's block of the global parameter
    // (docs/partitioning.md, Layout), as its moe.param_init places it.
    if (grid) {
      moe::ParamInitOp p0 = initOps.lookup(p.name);
      ArrayRef<int64_t> shape = p.type.getShape();
      SmallVector<int64_t> global(p0.getGlobalShape() ? *p0.getGlobalShape()
                                                      : shape);
      int chunkDim = -1;
      bool expertLocal = false;
      if (std::optional<ArrayRef<int64_t>> axes = p0.getSplitAxes())
        for (auto [d, axis] : llvm::enumerate(*axes)) {
          chunkDim = axis == 1 ? static_cast<int>(d) : chunkDim;
          expertLocal |= axis == 2;
        }
      os << fmt::format(", {{{}}}, {}, {}", joined(global), chunkDim,
                        expertLocal ? "true" : "false");
    }
    os << "},\n";
  }
  os << "};\n\n";
  if (numNumericsChecks > 0)
    os << "const moert::NumericsCheck kNumericsChecks[] = {\n"
       << numericsChecks << "};\n\n";
  if (grid)
    os << "void initRankParams(char *state, uint64_t seed, "
          "const moert::MeshGroups &mesh, cudaStream_t stream) {\n"
       << initBody << "}\n\n";
  else
    os << "void initParams(char *state, uint64_t seed, cudaStream_t stream) "
          "{\n"
       << initBody << "}\n\n";
  os << "void setup(char *state, char *arena, char *inputs) {\n"
     << setup << "}\n\n";
  if (usesCudnn)
    os << "void openLibraries(moert::kernels::Context &ctx) {\n"
          "  ctx.cudnn = moert::createCudnn(ctx.stream, ctx.deterministic);\n}"
          "\n\n";
  // The scratch buffers: the largest need of the ops (moe::stepScratchNeeds,
  // moert/kernels/ScratchBytes.h's formulas), and of the collectives for
  // the collective stream's. A need the compiler counts whole is checked
  // at start-up against the bytes it counted.
  FailureOr<SmallVector<moe::ScratchNeed>> needs =
      moe::stepScratchNeeds(step, options.cudnnAttention);
  if (failed(needs))
    return failure();
  // Which needs a buffer serves: every op's (the compute stream), the
  // collectives' (the collective stream), those of the collectives the
  // schedule puts on the gradient stream (moe::scheduleCollectives).
  enum class Buffer { Compute, Collective, Gradient };
  auto onGradientStream = [&](Operation *op) {
    auto it = collectives.find(op);
    return it != collectives.end() &&
           it->second.stream == moe::CollectiveStream::Gradient;
  };
  auto printNeeds = [&](Buffer buffer) {
    for (const moe::ScratchNeed &n : *needs) {
      if ((buffer == Buffer::Collective && !n.collective) ||
          (buffer == Buffer::Gradient && !onGradientStream(n.op)))
        continue;
      std::string call;
      bool cudnn = n.uncounted == moe::ScratchUncounted::CudnnWorkspace;
      if (auto a = dyn_cast<moe::AttentionOp>(n.op); a && cudnn)
        call = "attentionCudnnScratchBytes(ctx, " + attentionShape(a) + ")";
      else if (auto a = dyn_cast<moe::AttentionGradOp>(n.op); a && cudnn)
        call = "attentionCudnnScratchBytes(ctx, " + attentionShape(a) + ")";
      else
        call = fmt::format("{}({})", n.formula.str(), joined(n.arguments));
      call = "moert::kernels::" + call;
      if (n.uncounted == moe::ScratchUncounted::Nothing)
        call = fmt::format("moert::kernels::plannedScratchBytes({}, {}, {})",
                           call, n.bytes,
                           quoted(n.op->getName().getStringRef().str()));
      os << "  bytes = std::max<int64_t>(bytes, " << call << ");\n";
    }
  };
  moe::StepScratchBytes scratch =
      moe::stepScratchBytes(*needs, /*collectiveStream=*/bool(grid));
  os << "int64_t scratchBytes(const moert::kernels::Context &ctx) {\n"
        "  int64_t bytes = 256;\n";
  printNeeds(Buffer::Compute);
  os << "  return bytes;\n}\n\n";
  if (grid) {
    os << "int64_t collectiveScratchBytes(const moert::kernels::Context &ctx) "
          "{\n  int64_t bytes = 256;\n";
    printNeeds(Buffer::Collective);
    os << "  return bytes;\n}\n\n";
    os << "int64_t gradientScratchBytes(const moert::kernels::Context &ctx) "
          "{\n  int64_t bytes = 256;\n";
    printNeeds(Buffer::Gradient);
    os << "  return bytes;\n}\n\n";
  }
  // splitStepMasters makes the copies of the split masters its groups
  // update (moe-keep-param-copies keeps copies of updated parameters only).
  for (auto &[param, remainder] : masterRemainders)
    if (!splitUpdated.contains(param))
      return step.emitError()
             << "keeps a bf16 copy of parameter '"
             << step.getArgAttrOfType<StringAttr>(
                    cast<BlockArgument>(param).getArgNumber(),
                    MoeDialect::getParameterAttrName())
                    .getValue()
             << "' that no moe.adamw updates; the printer splits updated "
                "masters only (store_param_remainders)";
  if (!masterRemainders.empty()) {
    // store_param_remainders: the masters' fp32 slots -> copies and
    // remainders (a run's first step), and back (before the driver saves).
    std::string split, join;
    for (int64_t g : splitGroups) {
      split += fmt::format("  moert::kernels::splitMasters(ctx, group{});\n", g);
      join += fmt::format("  moert::kernels::joinMasters(ctx, group{});\n", g);
    }
    os << "void splitStepMasters(const moert::kernels::Context &ctx) {\n"
       << split << "}\n\n"
       << "void joinStepMasters(const moert::kernels::Context &ctx) {\n"
       << join << "}\n\n";
  }
  os << fmt::format("{}moert::Segment segments[{}];\n\n",
                    grid ? "thread_local " : "",
                    std::max<size_t>(segments.size(), 1));
  for (auto [i, segment] : llvm::enumerate(segments))
    os << "void segment" << i
       << "(const moert::kernels::Context &ctx, char *state, char *arena, "
          "char *inputs) {\n"
       << segment << "}\n\n";
  os << "void step(const moert::kernels::Context &ctx, char *state, "
        "char *arena, char *inputs) {\n"
     << stepBody << "}\n\n} // namespace\n\n";
  os << fmt::format(
      "int main(int argc, char **argv) {{\n"
      "  moert::TrainProgram program;\n"
      "  program.model = {};\n"
      "  program.batch = {};\n  program.seq = {};\n  program.vocab = {};\n"
      "  program.stateBytes = {};\n  program.derivedStateBytes = {};\n"
      "  program.arenaBytes = {};\n"
      "  program.inputBytes = {};\n"
      "  program.inputIdsOffset = {};\n  program.labelsOffset = {};\n"
      "  program.stepOffset = {};\n  program.lrOffset = {};\n"
      "  program.parameters = kParameters;\n"
      "  program.numParameters = sizeof(kParameters) / "
      "sizeof(kParameters[0]);\n"
      "  program.loss = {};\n  program.ceLoss = {};\n"
      "  program.auxLoss = {};\n  program.zLoss = {};\n"
      "  program.gradNorm = {};\n  program.expertCounts = {};\n"
      "  program.countLayers = {};\n  program.countExperts = {};\n"
      "  program.modelFlops = {:.17g};\n"
      "  program.scratchBytes = scratchBytes;\n  program.setup = setup;\n"
      "{}  program.step = step;\n"
      "{}"
      "  return moert::runTrainProgram(program, argc, argv);\n}}\n",
      quoted(options.modelName), batch, seq, vocab, stateBytes,
      derivedStateBytes, arenaBytes.getInt(), inputBytes, inputOffset[0],
      inputOffset[1], inputOffset[2], inputOffset[3], metric["loss"],
      metric["ce_loss"], metric["aux_loss"], metric["z_loss"],
      metric["grad_norm"], metric["expert_counts"],
      countShape.size() == 2 ? countShape[0] : 1, countShape.back(),
      modelFlops->total(),
      grid ? fmt::format("  program.initRankParams = initRankParams;\n"
                         "  program.mesh = {{{}}};\n"
                         "  program.createWorld = "
                         "moert::createWorldCommunicator;\n"
                         "  program.collectiveScratchBytes = "
                         "collectiveScratchBytes;\n"
                         "  program.gradientScratchBytes = "
                         "gradientScratchBytes;\n",
                         joined(grid.getShape()))
           : std::string("  program.initParams = initParams;\n"),
      (usesCudnn ? "  program.openLibraries = openLibraries;\n" : "") +
          (hostBytes > 0
               ? fmt::format("  program.hostActivationBytes = {};\n",
                             hostBytes)
               : std::string()) +
          (numNumericsChecks > 0
               ? fmt::format("  program.numericsChecks = kNumericsChecks;\n"
                             "  program.numNumericsChecks = {};\n",
                             numNumericsChecks)
               : std::string()) +
          (masterRemainders.empty()
               ? std::string()
               : std::string("  program.syncMasters = joinStepMasters;\n")));

  summary.stateBytes = stateBytes;
  summary.derivedStateBytes = derivedStateBytes;
  summary.splitMasterElements = splitMasterElements;
  summary.arenaBytes = arenaBytes.getInt();
  summary.inputBytes = inputBytes;
  summary.hostActivationBytes = hostBytes;
  summary.scratchBytes = scratch.bytes;
  // The gradient stream's buffer, beside the collective stream's.
  int64_t gradientBytes = grid ? 256 : 0;
  for (const moe::ScratchNeed &n : *needs)
    if (onGradientStream(n.op))
      gradientBytes = std::max(gradientBytes, n.bytes);
  summary.collectiveScratchBytes = scratch.collectiveBytes + gradientBytes;
  summary.uncountedCudnnWorkspace = scratch.uncountedCudnnWorkspace;
  summary.uncountedSortStorage = scratch.uncountedSortStorage;
  summary.modelFlops = modelFlops->total();
  summary.usesCudnn = usesCudnn;
  return success();
}

} // namespace

LogicalResult moec::emitCudaTrainProgram(ModuleOp module,
                                         const CudaTrainProgramOptions &options,
                                         llvm::raw_ostream &os,
                                         CudaTrainProgramSummary &summary) {
  auto step = module.lookupSymbol<func::FuncOp>("train_step");
  auto init = module.lookupSymbol<func::FuncOp>("init_params");
  if (!step || !init)
    return module.emitError() << "the module needs @train_step and "
                                 "@init_params; run moe-build-init-params "
                                 "and moe-build-train-step first";
  for (func::FuncOp f : {step, init})
    if (f.getBody().getBlocks().size() != 1)
      return f.emitError() << "has " << f.getBody().getBlocks().size()
                           << " blocks; the CUDA printer emits one";
  // A partitioned program (docs/partitioning.md) runs on the one mesh of
  // the module, `shard.grid` of shape R x H x P.
  shard::GridOp grid;
  for (auto g : module.getOps<shard::GridOp>()) {
    if (grid)
      return g.emitOpError() << "is a second mesh; the CUDA printer runs a "
                                "program on one";
    grid = g;
  }
  if (grid && (grid.getRank() != 3 ||
               llvm::any_of(grid.getShape(), ShapedType::isDynamic)))
    return grid.emitOpError() << "has shape "
                              << joined(grid.getShape())
                              << "; the CUDA printer runs on a static "
                                 "replica x shard x expert mesh";
  TrainStepPrinter printer(step, init, grid, options);
  return printer.print(os, summary);
}
