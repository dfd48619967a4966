//===- Passes.td - moe dialect passes ---------------------*- tablegen -*-===//
//
// The passes that transform `moe` IR, in pipeline order.
//
//===----------------------------------------------------------------------===//

#ifndef MOE_TRANSFORMS_PASSES_TD
#define MOE_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def RaiseOnnx : Pass<"moe-raise-onnx", "::mlir::func::FuncOp"> {
  let summary = "raises imported ONNX nodes to moe, arith and tensor ops";
  let description = [{
    Recognises the subgraphs that the ONNX exports of a Mixtral model are made
    of and replaces them by `moe` ops: embedding lookups, RMSNorm, rotary
    embedding (with its cos/sin tables), grouped-query attention (with its
    mask construction), linear layers, the router and the experts (from
    onnxruntime's `com.microsoft.MoE`, from the `batched_mm` form and from the
    `GroupedMatMul` form) and the lm-head. Element-wise arithmetic on equal
    shapes becomes `arith` ops. Nodes left unused by the raising are erased;
    nodes that match no pattern are kept as `moe.onnx_node`.

    With `require-complete`, a node that is still `moe.onnx_node` afterwards
    is an error naming it, so a driver can refuse a model it cannot train.
  }];
  let dependentDialects = [
    "::mlir::moe::MoeDialect",
    "::mlir::arith::ArithDialect",
    "::mlir::tensor::TensorDialect",
    "::mlir::linalg::LinalgDialect"
  ];
  let options = [
    Option<"requireComplete", "require-complete", "bool", /*default=*/"false",
           "fail on any ONNX node that could not be raised">
  ];
  let statistics = [
    Statistic<"numRaised", "num-raised", "moe ops created by raising">,
    Statistic<"numLeft", "num-left", "ONNX nodes left unraised">
  ];
}

#endif // MOE_TRANSFORMS_PASSES_TD
