//===- TrainStepEmitter.cpp - Print @train_step as a CUDA program ---------===//
//
// See moec/Target/Cuda.h and TrainStepPrinter.h. This part lays out the
// arguments in the state and input regions, names every value's pointer,
// cuts the step into segments (CUDA graphs), prints the program around the
// step (kernels, tables, scratch, main) and is the entry point,
// moec::emitCudaTrainProgram.
//
//===----------------------------------------------------------------------===//

#include "TrainStepPrinter.h"

#include "Printers.h"

#include "dialects/Moe/Transforms/StepScratch.h"
#include "moec/Analysis/ModelFlops.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "llvm/ADT/StringSet.h"

using namespace mlir;
using mlir::moe::MoeDialect;
using moec::detail::joined;

namespace {

constexpr int64_t kAlignment = 256;

int64_t alignUp(int64_t x) { return (x + kAlignment - 1) / kAlignment * kAlignment; }

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

} // namespace

namespace moec::detail {

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

} // namespace moec::detail

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
  detail::TrainStepPrinter printer(step, init, grid, options);
  return printer.print(os, summary);
}
