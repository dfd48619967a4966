//===- ModelLoading.cpp - Load a model for a moec subcommand --------------===//
//
// See ModelLoading.h.
//
//===----------------------------------------------------------------------===//

#include "ModelLoading.h"

#include "dialects/Moe/IR/MoeDialect.h"
#include "moec/Import/Onnx.h"
#include "moec/InitAll.h"
#include "moec/Pipelines/Pipelines.h"
#include "moec/Reference/Kernels.h"

#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/SourceMgr.h"

using namespace mlir;

namespace {

/// The innermost file position of a location, if it has one.
std::optional<FileLineColLoc> filePosition(Location loc) {
  if (auto file = dyn_cast<FileLineColLoc>(loc))
    return file;
  if (auto name = dyn_cast<NameLoc>(loc))
    return filePosition(name.getChildLoc());
  if (auto call = dyn_cast<CallSiteLoc>(loc))
    return filePosition(call.getCallee());
  if (auto fused = dyn_cast<FusedLoc>(loc))
    for (Location inner : fused.getLocations())
      if (auto file = filePosition(inner))
        return file;
  return std::nullopt;
}

void printDiagnostic(Diagnostic &diag, llvm::raw_ostream &os) {
  if (std::optional<FileLineColLoc> file = filePosition(diag.getLocation()))
    os << file->getFilename().getValue() << ":" << file->getLine() << ":"
       << file->getColumn() << ": ";
  switch (diag.getSeverity()) {
  case DiagnosticSeverity::Error: os << "error: "; break;
  case DiagnosticSeverity::Warning: os << "warning: "; break;
  case DiagnosticSeverity::Note: os << "note: "; break;
  case DiagnosticSeverity::Remark: os << "remark: "; break;
  }
  os << diag << "\n";
  for (Diagnostic &note : diag.getNotes())
    printDiagnostic(note, os);
}

/// Upstream's verifier reads a reshape's reassociation indices as 32-bit
/// affine dimensions, so [[4294967296], ...] verifies as [[0], ...] and the
/// passes, which read the 64-bit indices, index out of bounds. A
/// hand-written .mlir is checked here: every index below the expanded rank.
LogicalResult checkReassociations(ModuleOp module) {
  WalkResult result = module.walk([](Operation *op) {
    ArrayAttr reassociation;
    int64_t rank = 0;
    if (auto expand = dyn_cast<tensor::ExpandShapeOp>(op)) {
      reassociation = expand.getReassociation();
      rank = expand.getResultType().getRank();
    } else if (auto collapse = dyn_cast<tensor::CollapseShapeOp>(op)) {
      reassociation = collapse.getReassociation();
      rank = collapse.getSrcType().getRank();
    } else {
      return WalkResult::advance();
    }
    for (Attribute group : reassociation)
      for (Attribute index : cast<ArrayAttr>(group)) {
        int64_t value = cast<IntegerAttr>(index).getInt();
        if (value < 0 || value >= rank) {
          op->emitOpError() << "reassociation index " << value
                            << " is not a dimension of the rank-" << rank
                            << " shape";
          return WalkResult::interrupt();
        }
      }
    return WalkResult::advance();
  });
  return failure(result.wasInterrupted());
}

} // namespace

moec::cli::DiagnosticPrinter::DiagnosticPrinter(MLIRContext &context)
    : context(context) {
  // The IR of the failing op is for compiler developers (moec-opt shows
  // it); users get the message and the place.
  context.printOpOnDiagnostic(false);
  id = context.getDiagEngine().registerHandler([](Diagnostic &diag) {
    printDiagnostic(diag, llvm::errs());
    return success();
  });
}

moec::cli::DiagnosticPrinter::~DiagnosticPrinter() {
  context.getDiagEngine().eraseHandler(id);
}

moec::cli::ImportFlags::ImportFlags(
    llvm::ArrayRef<llvm::cl::SubCommand *> subcommands) {
  customOps = std::make_unique<llvm::cl::list<std::string>>(
      "custom-op",
      llvm::cl::desc("import ONNX nodes DOMAIN::NAME as KIND (grouped_matmul: "
                     "moec::GroupedMatMul's semantics); repeatable; merges "
                     "with a config's custom_ops"),
      llvm::cl::value_desc("DOMAIN::NAME=KIND"));
  for (llvm::cl::SubCommand *sub : subcommands)
    customOps->addSubCommand(*sub);
}

moec::cli::ImportFlags::~ImportFlags() = default;

llvm::Expected<moec::OnnxImportOptions>
moec::cli::ImportFlags::read(const TrainingJob *job) const {
  OnnxImportOptions options;
  auto find = [&](const CustomOpMapping &mapping) {
    return llvm::find_if(options.customOps, [&](const CustomOpMapping &m) {
      return m.name() == mapping.name();
    });
  };
  for (const std::string &text : *customOps) {
    llvm::Expected<CustomOpMapping> mapping = parseCustomOpMapping(text);
    if (!mapping)
      return mapping.takeError();
    if (find(*mapping) != options.customOps.end())
      return llvm::createStringError("--custom-op '" + text + "': " +
                                     mapping->name() + " is already mapped");
    options.customOps.push_back(std::move(*mapping));
  }
  // The config's custom_ops merge with the flags: an op both name must be
  // mapped to one kind.
  if (job)
    for (const CustomOpMapping &mapping : job->customOps) {
      auto flag = find(mapping);
      if (flag == options.customOps.end())
        options.customOps.push_back(mapping);
      else if (flag->kind != mapping.kind)
        return llvm::createStringError(flag->origin + " and " + mapping.origin +
                                       " map " + mapping.name() +
                                       " to two kinds");
    }
  return options;
}

OwningOpRef<ModuleOp> moec::cli::loadModel(MLIRContext &context,
                                           llvm::StringRef path,
                                           const ImportFlags &flags, bool raise,
                                           bool requireComplete,
                                           const TrainingJob *job) {
  DialectRegistry registry;
  registerAllDialects(registry);
  context.appendDialectRegistry(registry);
  context.loadAllAvailableDialects();

  if (path.ends_with(".mlir")) {
    llvm::SourceMgr sourceMgr;
    std::string error;
    auto file = openInputFile(path, &error);
    if (!file) {
      emitError(UnknownLoc::get(&context)) << error;
      return nullptr;
    }
    sourceMgr.AddNewSourceBuffer(std::move(file), llvm::SMLoc());
    OwningOpRef<ModuleOp> module =
        parseSourceFile<ModuleOp>(sourceMgr, &context);
    if (module && failed(checkReassociations(*module)))
      return nullptr;
    return module;
  }

  llvm::Expected<OnnxImportOptions> options = flags.read(job);
  if (!options) {
    emitError(FileLineColLoc::get(&context, path, 0, 0))
        << llvm::toString(options.takeError());
    return nullptr;
  }
  OwningOpRef<ModuleOp> module = importOnnxFile(context, path, *options);
  if (!module || !raise)
    return module;
  PassManager pm(&context);
  buildImportPipeline(pm, requireComplete);
  if (failed(pm.run(*module)))
    return nullptr;
  return module;
}

func::FuncOp moec::cli::getForward(ModuleOp module) {
  auto forward = module.lookupSymbol<func::FuncOp>("forward");
  if (!forward)
    emitError(module.getLoc()) << "the module has no function 'forward'";
  return forward;
}

namespace {

/// Assembles parameter `name` of `type` from the initializers its
/// moe.initializer_pieces lists (the dialect verified their form): each
/// loaded, transposed by its permutation and copied into its box. Fails
/// naming the piece when an initializer's element count is not its box's,
/// or when two boxes overlap.
bool stackPieces(const moec::OnnxWeights &weights, llvm::StringRef name,
                 RankedTensorType type, ArrayAttr pieces, moec::HostTensor &out,
                 std::string &error) {
  out = moec::HostTensor::floats(
      std::vector<int64_t>(type.getShape().begin(), type.getShape().end()));
  std::vector<bool> filled(out.f32.size());
  llvm::ArrayRef<int64_t> shape = type.getShape();
  int64_t rank = type.getRank();
  for (Attribute entry : pieces) {
    auto piece = cast<DictionaryAttr>(entry);
    StringRef initializer = piece.getAs<StringAttr>("initializer").getValue();
    llvm::ArrayRef<int64_t> offsets =
        piece.getAs<DenseI64ArrayAttr>("offsets").asArrayRef();
    llvm::ArrayRef<int64_t> sizes =
        piece.getAs<DenseI64ArrayAttr>("sizes").asArrayRef();
    llvm::ArrayRef<int64_t> perm =
        piece.getAs<DenseI64ArrayAttr>("permutation").asArrayRef();
    moec::HostTensor value;
    if (!weights.load(initializer, value, error))
      return false;
    int64_t elements = 1;
    for (int64_t s : sizes)
      elements *= s;
    if (value.shape.size() != perm.size() ||
        static_cast<int64_t>(value.f32.size()) != elements) {
      error = "parameter '" + name.str() + "': initializer '" +
              initializer.str() + "' has " + std::to_string(value.f32.size()) +
              " elements in " + std::to_string(value.shape.size()) +
              " dimensions, but its piece is a box of " +
              std::to_string(elements) + " with a permutation of " +
              std::to_string(perm.size()) + " dimensions";
      return false;
    }
    value = moec::reference::transpose(value, perm);
    // Element k of the piece (row-major in `sizes`) goes to the box's k-th.
    for (int64_t k = 0; k < elements; ++k) {
      int64_t rest = k, flat = 0, stride = 1;
      for (int64_t d = rank - 1; d >= 0; --d) {
        flat += (offsets[d] + rest % sizes[d]) * stride;
        rest /= sizes[d];
        stride *= shape[d];
      }
      if (filled[flat]) {
        error = "parameter '" + name.str() + "': initializer '" +
                initializer.str() +
                "' overlaps another piece of moe.initializer_pieces";
        return false;
      }
      filled[flat] = true;
      out.f32[flat] = value.f32[k];
    }
  }
  return true;
}

} // namespace

bool moec::cli::loadParameter(const OnnxWeights &weights, func::FuncOp forward,
                              llvm::StringRef name, HostTensor &out,
                              std::string &error) {
  using moe::MoeDialect;
  for (unsigned i = 0; i < forward.getNumArguments(); ++i) {
    auto parameter =
        forward.getArgAttrOfType<StringAttr>(i, MoeDialect::getParameterAttrName());
    if (!parameter || parameter.getValue() != name)
      continue;
    StringRef initializer = name;
    if (auto source = forward.getArgAttrOfType<StringAttr>(
            i, MoeDialect::getInitializerAttrName()))
      initializer = source.getValue();
    if (auto pieces = forward.getArgAttrOfType<ArrayAttr>(
            i, MoeDialect::getInitializerPiecesAttrName())) {
      if (!stackPieces(weights, name,
                       cast<RankedTensorType>(forward.getArgument(i).getType()),
                       pieces, out, error))
        return false;
    } else if (!weights.load(initializer, out, error)) {
      return false;
    }
    if (auto perm = forward.getArgAttrOfType<DenseI64ArrayAttr>(
            i, MoeDialect::getInitializerPermutationAttrName())) {
      // The pass took the permutation from a transpose of this initializer.
      assert(out.shape.size() == perm.asArrayRef().size() &&
             "a permutation of the initializer's dimensions");
      out = reference::transpose(out, perm.asArrayRef());
    }
    // An initializer stored in a wider type than the parameter's (fp32 in
    // the file, cast to bf16 in the graph: moe-canonicalize-parameters made
    // the parameter bf16) is rounded to it, as the graph's Cast does.
    auto element = dyn_cast<FloatType>(
        cast<ShapedType>(forward.getArgument(i).getType()).getElementType());
    if (element && !element.isF32())
      for (float &x : out.f32) {
        llvm::APFloat value(x);
        bool lost;
        value.convert(element.getFloatSemantics(),
                      llvm::APFloat::rmNearestTiesToEven, &lost);
        value.convert(llvm::APFloat::IEEEsingle(),
                      llvm::APFloat::rmNearestTiesToEven, &lost);
        x = value.convertToFloat();
      }
    return true;
  }
  return weights.load(name, out, error);
}

llvm::Error moec::cli::checkNotAnInput(llvm::StringRef flag,
                                       llvm::StringRef output,
                                       llvm::ArrayRef<std::string> inputs) {
  for (const std::string &input : inputs) {
    bool same = false;
    if (!input.empty() && !llvm::sys::fs::equivalent(output, input, same) &&
        same)
      return llvm::createStringError(
          flag + " '" + output + "' is the input '" + input +
          "': writing it would destroy what this command reads; write "
          "elsewhere");
  }
  return llvm::Error::success();
}
