//===- Passes.td - ONNX to moe conversion passes ----------*- tablegen -*-===//
//
// The passes that turn an imported ONNX graph (`moe.onnx_node`s) into `moe`
// ops. They live outside dialects/ because they prove their rewrites with
// the CPU reference kernels (lib/Reference), which the dialect must not
// depend on.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_CONVERSION_ONNXTOMOE_PASSES_TD
#define MOEC_CONVERSION_ONNXTOMOE_PASSES_TD

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

    Attention and the decomposed sparse-MoE blocks are matched by their
    boundary and proved before they are rewritten: the ONNX subgraph is
    evaluated on random inputs at sample shapes and compared with the `moe`
    ops it would become, computed by the CPU reference kernels; a block that
    differs by more than 1e-4 relative L2 stays as it is.

    The proofs bind every model input to ones: an attention-mask input is
    proved for the unpadded blocks moec trains on, its subgraph becomes
    `moe.attention`'s causal mask, and the argument, no longer read, is
    tagged `moe.all_ones` for whoever binds it to check. Weights that the
    graph rearranges from a parameter (onnxruntime MoE's fc1 and fc3 in any
    `swiglu_fusion`, computed from Hugging Face's `gate_up_proj` by
    Transpose, reshapes, Slice/Split, Concat and one Cast to another float
    type) are read structurally, never evaluated, so weights-free models
    raise too; the experts read the parameter, through a `linalg.transpose`
    and an `arith.extf`/`arith.truncf` where it is stored transposed or in
    another type.

    A weight that the graph stacks from several parameters (per-expert
    tensors Unsqueezed and Concatenated, separate gate and up tensors side
    by side), each filling one block of it as a whole tensor (transposed
    or cast as above), becomes one new parameter in the layout the experts
    read, named after the node (`<node>.gate_up_proj`, `<node>.down_proj`;
    moe-canonicalize-parameters gives it the Hugging Face name) and tagged
    `moe.initializer_pieces`: each source initializer and the block it
    fills, for the drivers that read the model file's weights. The stacked
    parameters leave the function. Pieces that overlap, leave gaps, straddle
    blocks or are read elsewhere too are refused with the reason.

    With `require-complete`, a node that is still `moe.onnx_node` afterwards
    is an error naming it, so a driver can refuse a model it cannot train;
    for an onnxruntime MoE the error says why it was not raised (the
    attribute, or the weight, its shape and the parameters it comes from),
    and the nodes that only compute its weights are not reported apart.
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

#endif // MOEC_CONVERSION_ONNXTOMOE_PASSES_TD
