//===- MoeDialect.td - The moe dialect ---------------------*- tablegen -*-===//
//
// The `moe` dialect describes a Mixture-of-Experts language model (Mixtral
// first) at the level of its building blocks: embedding, RMSNorm, rotary
// embedding, attention, router, experts and lm-head. Element-wise arithmetic,
// reshapes and function structure use upstream dialects (arith, tensor, func).
//
//===----------------------------------------------------------------------===//

#ifndef MOE_DIALECT_TD
#define MOE_DIALECT_TD

include "mlir/IR/OpBase.td"
include "mlir/IR/AttrTypeBase.td"
include "mlir/IR/EnumAttr.td"

def Moe_Dialect : Dialect {
  let name = "moe";
  let cppNamespace = "::mlir::moe";
  let summary = "Mixture-of-Experts model and training-step operations";
  let description = [{
    The `moe` dialect holds the operations that a Mixtral-style model is made
    of, at the granularity a training compiler reasons about: each op is one
    unit of routing, sharding, differentiation and kernel fusion. Tensors are
    laid out batch-major, `[batch, sequence, ...]`; weights follow the Hugging
    Face checkpoint layout (`[out_features, in_features]`), so parameters bind
    to checkpoint tensors by name.

    Operations that an ONNX model contains and that the raising step has not
    (yet) turned into `moe` ops are kept faithfully as `moe.onnx_node`.
  }];
  let useDefaultAttributePrinterParser = 1;
  // The discardable attributes below are the IR's contract between the
  // passes, the drivers and the CUDA printer; the dialect verifies each
  // where it may appear (MoeDialect.cpp).
  let hasOperationAttrVerify = 1;
  let hasRegionArgAttrVerify = 1;
  let hasRegionResultAttrVerify = 1;
  let extraClassDeclaration = [{
    /// `moe.parameter = "<name>"` on a function argument or result: the
    /// model parameter it holds, by its checkpoint name.
    static ::llvm::StringRef getParameterAttrName() { return "moe.parameter"; }
    /// `moe.initializer = "<name>"` on a parameter argument: the model
    /// file's initializer its value comes from, where that is not the
    /// parameter's name (moe-canonicalize-parameters).
    static ::llvm::StringRef getInitializerAttrName() {
      return "moe.initializer";
    }
    /// `moe.initializer_permutation = array<i64: ...>` on a parameter
    /// argument: the parameter is its initializer transposed by this
    /// permutation (dimension d of the parameter is dimension perm[d] of
    /// the initializer, as linalg.transpose).
    static ::llvm::StringRef getInitializerPermutationAttrName() {
      return "moe.initializer_permutation";
    }
    /// `moe.initializer_pieces = [{initializer = "<name>", offsets =
    /// array<i64: ...>, sizes = array<i64: ...>, permutation = array<i64:
    /// ...>}, ...]` on a parameter argument: the parameter's value is
    /// stacked from several initializers (per-expert tensors, separate gate
    /// and up tensors; moe-raise-onnx): each, transposed by its permutation
    /// and reshaped row-major to `sizes`, fills the box at `offsets`; the
    /// boxes cover the parameter exactly once.
    static ::llvm::StringRef getInitializerPiecesAttrName() {
      return "moe.initializer_pieces";
    }
    /// `moe.exp_avg = "<name>"` on a function argument or result: AdamW's
    /// first moment of the named parameter.
    static ::llvm::StringRef getExpAvgAttrName() { return "moe.exp_avg"; }
    /// `moe.exp_avg_sq = "<name>"`: AdamW's second moment of the named
    /// parameter, on a function argument or result.
    static ::llvm::StringRef getExpAvgSqAttrName() { return "moe.exp_avg_sq"; }
    /// `moe.input = "<name>"` on a function argument: a model or step input
    /// (input_ids, labels, step, lr, seed, or an exported graph input).
    static ::llvm::StringRef getInputAttrName() { return "moe.input"; }
    /// `moe.all_ones` (unit) on a function argument with `moe.input`: the
    /// function equals the model it was raised from only when this input
    /// is all ones (an attention mask: moec trains on packed blocks without
    /// padding), and no longer reads it; whoever binds it checks that it is
    /// (the reference executor does) or binds ones.
    static ::llvm::StringRef getAllOnesAttrName() { return "moe.all_ones"; }
    /// `moe.output = "<name>"` on a function result: a named output (a
    /// loss, a metric, or an exported graph output).
    static ::llvm::StringRef getOutputAttrName() { return "moe.output"; }
    /// `moe.gradient = "<name>"` on a function result: the gradient of the
    /// named parameter.
    static ::llvm::StringRef getGradientAttrName() { return "moe.gradient"; }
    /// `moe.expert_local` (unit) on a function argument that holds a
    /// parameter or an AdamW moment: moe-expert-parallel split its leading
    /// expert dimension over the expert axis, so the argument is this
    /// rank's [E/P, ...] block; moe-hybrid-shard reduces its gradient over
    /// the replica axis only, never across the expert axis.
    static ::llvm::StringRef getExpertLocalAttrName() {
      return "moe.expert_local";
    }
    /// `moe.persistent_copy` (unit) on an arith.truncf of a parameter: a
    /// copy the backend keeps across steps (moe-keep-param-copies).
    static ::llvm::StringRef getPersistentCopyAttrName() {
      return "moe.persistent_copy";
    }
    /// `moe.arena_offsets = array<i64: ...>` on an op: the arena byte
    /// offset of each result, -1 for one not in the arena (moe-plan-memory).
    static ::llvm::StringRef getArenaOffsetsAttrName() {
      return "moe.arena_offsets";
    }
    /// The arena bytes [begin, end) that `value` occupies by its producer's
    /// moe.arena_offsets (a reshape's are its source's), or nothing for a
    /// value outside the arena.
    static std::optional<std::pair<int64_t, int64_t>>
    getArenaRange(::mlir::Value value);
    /// `moe.arena_bytes = N : i64` on a function: its arena's size.
    static ::llvm::StringRef getArenaBytesAttrName() {
      return "moe.arena_bytes";
    }
    /// `moe.arena_live_bytes = N : i64` on a function: the most bytes alive
    /// at once, a lower bound on the arena's size.
    static ::llvm::StringRef getArenaLiveBytesAttrName() {
      return "moe.arena_live_bytes";
    }
    /// `moe.recompute = #moe.recompute<layer = N, policy>` on an op: a
    /// clone of decoder layer N's forward op that the backward recomputes
    /// under activation checkpointing `policy` (selective or full) instead
    /// of keeping its result (moe-checkpoint-activations).
    static ::llvm::StringRef getRecomputeAttrName() { return "moe.recompute"; }
    /// `moe.host_offsets = array<i64: ...>` on a moe.offload: the byte
    /// offset of its host copy in the pinned host region (moe-plan-memory).
    static ::llvm::StringRef getHostOffsetsAttrName() {
      return "moe.host_offsets";
    }
    /// `moe.host_bytes = N : i64` on a function: the size of its pinned host
    /// region, the offloaded activations (moe-plan-memory).
    static ::llvm::StringRef getHostBytesAttrName() {
      return "moe.host_bytes";
    }
    /// `moe.offload_layers = array<i64: ...>` on a function: the decoder
    /// layers whose kept values activation checkpointing auto chose to
    /// offload (moe-checkpoint-activations); moe-offload-activations moves
    /// only theirs.
    static ::llvm::StringRef getOffloadLayersAttrName() {
      return "moe.offload_layers";
    }
    /// `moe.adamw_group = N : i64` on a moe.adamw: the multi-tensor update
    /// it belongs to (moe-group-adamw).
    static ::llvm::StringRef getAdamWGroupAttrName() {
      return "moe.adamw_group";
    }
    /// `moe.onnx.opset = N : i64` on an imported module: the ONNX opset.
    static ::llvm::StringRef getOnnxOpsetAttrName() { return "moe.onnx.opset"; }
    /// `moe.onnx.producer = "<name version>"` on an imported module.
    static ::llvm::StringRef getOnnxProducerAttrName() {
      return "moe.onnx.producer";
    }
  }];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::func::FuncDialect",
    "::mlir::tensor::TensorDialect"
  ];
}

class Moe_Op<string mnemonic, list<Trait> traits = []>
    : Op<Moe_Dialect, mnemonic, traits>;

class Moe_Attr<string name, string attrMnemonic, list<Trait> traits = []>
    : AttrDef<Moe_Dialect, name, traits> {
  let mnemonic = attrMnemonic;
}

//===----------------------------------------------------------------------===//
// Enums
//===----------------------------------------------------------------------===//

def Moe_LoadBalancing : I32EnumAttr<"LoadBalancing",
    "how the router balances tokens across experts", [
      I32EnumAttrCase<"aux_loss", 0>,
      I32EnumAttrCase<"sinkhorn", 1>,
      I32EnumAttrCase<"balanced", 2>,
      I32EnumAttrCase<"none", 3>
    ]> {
  let cppNamespace = "::mlir::moe";
  let genSpecializedAttr = 0;
}
def Moe_LoadBalancingAttr : EnumAttr<Moe_Dialect, Moe_LoadBalancing,
                                     "load_balancing"> {
  let assemblyFormat = "`<` $value `>`";
}

def Moe_GateUpLayout : I32EnumAttr<"GateUpLayout",
    "how the gate and up projections are stored in one expert weight", [
      I32EnumAttrCase<"concatenated", 0>,
      I32EnumAttrCase<"interleaved", 1>
    ]> {
  let cppNamespace = "::mlir::moe";
  let genSpecializedAttr = 0;
}
def Moe_GateUpLayoutAttr : EnumAttr<Moe_Dialect, Moe_GateUpLayout,
                                    "gate_up_layout"> {
  let assemblyFormat = "`<` $value `>`";
}

def Moe_ActivationCheckpointing : I32EnumAttr<"ActivationCheckpointing",
    "what the backward recomputes instead of keeping", [
      // Keep every activation the backward reads.
      I32EnumAttrCase<"None", 0, "none">,
      // Keep GEMM, attention and collective outputs; recompute norms,
      // rotary, element-wise work and the router.
      I32EnumAttrCase<"Selective", 1, "selective">,
      // Keep each decoder layer's input; recompute the layer.
      I32EnumAttrCase<"Full", 2, "full">,
      // Per layer none, selective or full: the least added time that fits
      // a memory budget.
      I32EnumAttrCase<"Auto", 3, "auto">
    ]> {
  let cppNamespace = "::mlir::moe";
  let genSpecializedAttr = 0;
}

def Moe_RecomputeAttr : Moe_Attr<"Recompute", "recompute"> {
  let summary = "the decoder layer and policy of a recomputed forward op";
  let description = [{
    Marks an op that moe-checkpoint-activations cloned from decoder layer
    `layer`'s forward into the backward, under `policy` (`selective` or
    `full`), e.g. `#moe.recompute<layer = 3, full>`.
  }];
  let parameters = (ins "int64_t":$layer,
                        EnumParameter<Moe_ActivationCheckpointing>:$policy);
  let assemblyFormat = "`<` `layer` `=` $layer `,` $policy `>`";
}

def Moe_HostMemoryAttr : Moe_Attr<"HostMemory", "host"> {
  let summary = "the encoding of a tensor held in host memory";
  let description = [{
    As a tensor's encoding, `tensor<2x64x32xf32, #moe.host>`: the value
    lives in the rank's pinned host memory, not on the device. Only
    moe.offload makes such a value and only moe.fetch (and
    moe.offload_join, which only marks where the copy ends) reads it
    (moe-offload-activations).
  }];
}

def Moe_ParamInitKind : I32EnumAttr<"ParamInitKind",
    "how a parameter is initialised", [
      I32EnumAttrCase<"normal", 0>,
      I32EnumAttrCase<"ones", 1>
    ]> {
  let cppNamespace = "::mlir::moe";
  let genSpecializedAttr = 0;
}
def Moe_ParamInitKindAttr : EnumAttr<Moe_Dialect, Moe_ParamInitKind,
                                     "param_init"> {
  let assemblyFormat = "`<` $value `>`";
}

#endif // MOE_DIALECT_TD
