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
