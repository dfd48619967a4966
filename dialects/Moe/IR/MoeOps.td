//===- MoeOps.td - moe dialect operations -----------------*- tablegen -*-===//
//
// The operations of the `moe` dialect. Each one is a unit the compiler routes,
// shards, differentiates and fuses as a whole; anything that is plain
// element-wise arithmetic or a reshape stays in upstream dialects.
//
//===----------------------------------------------------------------------===//

#ifndef MOE_OPS_TD
#define MOE_OPS_TD

include "dialects/Moe/IR/MoeDialect.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "mlir/IR/OpAsmInterface.td"

def Moe_FloatTensor : RankedTensorOf<[AnyFloat]>;
def Moe_IndexTensor : RankedTensorOf<[AnySignlessInteger]>;

//===----------------------------------------------------------------------===//
// Model operations
//===----------------------------------------------------------------------===//

def Moe_EmbeddingOp : Moe_Op<"embedding", [Pure]> {
  let summary = "looks up token embeddings in a table";
  let description = [{
    Gathers rows of `table` (`[vocab, hidden]`) at `indices`; the result has
    the shape of `indices` followed by `hidden`. Indices outside
    `[0, vocab)` are an error at run time.

    ```mlir
    %h = moe.embedding %table[%ids]
        : (tensor<256x32xf32>, tensor<?x?xi64>) -> tensor<?x?x32xf32>
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$table, Moe_IndexTensor:$indices);
  let results = (outs Moe_FloatTensor:$result);
  let assemblyFormat = [{
    $table `[` $indices `]` attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Moe_RmsNormOp : Moe_Op<"rms_norm", [Pure]> {
  let summary = "root-mean-square normalisation over the last dimension";
  let description = [{
    `result = input / sqrt(mean(input^2, -1) + epsilon) * weight`, with the
    mean taken over the last dimension (of size `weight`'s one dimension).
    The statistics are computed in fp32 whatever the element type, as
    Hugging Face's `MixtralRMSNorm` does.

    ```mlir
    %y = moe.rms_norm %x, %w {epsilon = 1.0e-05 : f64}
        : (tensor<2x8x32xf32>, tensor<32xf32>) -> tensor<2x8x32xf32>
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$input, Moe_FloatTensor:$weight,
                       F64Attr:$epsilon);
  let results = (outs Moe_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $weight attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Moe_RotaryOp : Moe_Op<"rotary", [Pure]> {
  let summary = "applies rotary position embedding to queries or keys";
  let description = [{
    Rotates each head vector of `input` (`[batch, seq, heads, head_dim]`) by
    position-dependent angles: for `i < head_dim/2`, with
    `f_i = theta^(-2i/head_dim)` and angle `a = position * f_i`,

        out[i]            = x[i] * cos(a) - x[i + d/2] * sin(a)
        out[i + d/2]      = x[i + d/2] * cos(a) + x[i] * sin(a)

    (the "rotate half" convention of Hugging Face Llama/Mixtral). Positions
    are `0 .. seq-1` unless `positions` (`[batch, seq]` integers) is given.

    ```mlir
    %qr = moe.rotary %q {theta = 1.0e+06 : f64}
        : (tensor<2x8x4x8xf32>) -> tensor<2x8x4x8xf32>
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$input,
                       Optional<Moe_IndexTensor>:$positions,
                       F64Attr:$theta);
  let results = (outs Moe_FloatTensor:$result);
  let assemblyFormat = [{
    $input (`positions` $positions^)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Moe_AttentionOp : Moe_Op<"attention", [Pure]> {
  let summary = "grouped-query scaled dot-product attention";
  let description = [{
    `query` is `[batch, seq, q_heads, head_dim]`, `key` and `value` are
    `[batch, seq, kv_heads, head_dim]` with `q_heads` a multiple of
    `kv_heads`; query head `h` attends with key/value head
    `h / (q_heads / kv_heads)`. Scores are `scale * q·k`, masked causally when
    `causal` is set and, with `sliding_window = W`, also to the last `W`
    positions (`i - j < W`, Mistral's convention), then soft-maxed in fp32.
    The result has the shape of `query`.

    ```mlir
    %o = moe.attention %q, %k, %v {causal = true, scale = 0.35355339059327379 : f64}
        : (tensor<2x8x4x8xf32>, tensor<2x8x2x8xf32>, tensor<2x8x2x8xf32>)
        -> tensor<2x8x4x8xf32>
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$query, Moe_FloatTensor:$key,
                       Moe_FloatTensor:$value,
                       DefaultValuedAttr<BoolAttr, "true">:$causal,
                       F64Attr:$scale,
                       OptionalAttr<I64Attr>:$sliding_window);
  let results = (outs Moe_FloatTensor:$result);
  let assemblyFormat = [{
    $query `,` $key `,` $value attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Moe_LinearOp : Moe_Op<"linear", [Pure]> {
  let summary = "multiplies by a transposed weight, with an optional bias";
  let description = [{
    `result = input · weightᵀ (+ bias)` over the last dimension, with `weight`
    in the `[out_features, in_features]` layout of `torch.nn.Linear`.
    Leading dimensions of `input` are kept.

    ```mlir
    %y = moe.linear %x, %w : (tensor<2x8x32xf32>, tensor<16x32xf32>)
        -> tensor<2x8x16xf32>
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$input, Moe_FloatTensor:$weight,
                       Optional<Moe_FloatTensor>:$bias);
  let results = (outs Moe_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $weight (`bias` $bias^)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Moe_RouterOp : Moe_Op<"router", [Pure]> {
  let summary = "chooses k experts per token from router logits";
  let description = [{
    From `logits` (`[..., num_experts]`) picks `k` experts per token and
    their gate values, as `load_balancing` says (see docs/Dialects/Moe.md):
    `aux_loss` and `none` take the top-k of the softmax and renormalise the
    k gates to sum to one (Mixtral); `sinkhorn` picks by the
    Sinkhorn-normalised scores and gates with the unnormalised softmax;
    `balanced` gives every expert the same number of token slots. The
    auxiliary losses are built by the training step, not here.

    ```mlir
    %gates, %experts = moe.router %logits {k = 2 : i64,
        load_balancing = #moe.load_balancing<aux_loss>}
        : (tensor<16x4xf32>) -> (tensor<16x2xf32>, tensor<16x2xi64>)
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$logits,
                       ConfinedAttr<I64Attr, [IntPositive]>:$k,
                       Moe_LoadBalancingAttr:$load_balancing);
  let results = (outs Moe_FloatTensor:$gates, Moe_IndexTensor:$experts);
  let assemblyFormat = [{
    $logits attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Moe_ExpertsOp : Moe_Op<"experts", [Pure]> {
  let summary = "applies the chosen SwiGLU experts to each token, weighted";
  let description = [{
    For each token `t` of `input` (`[..., hidden]`) and each of its `k`
    choices `j`, with `e = experts[t, j]`:

        g, u  = gate and up rows of gate_up[e] · input[t]
        y_e   = down[e] · (silu(g) * u)
        out[t] = sum_j gates[t, j] * y_e

    `gate_up` is `[num_experts, 2 * intermediate, hidden]`, its gate and up
    rows either `concatenated` (all gate rows, then all up rows: Hugging
    Face's `gate_up_proj`) or `interleaved` (gate, up, gate, up, ...:
    onnxruntime's `swiglu_fusion = 1`). `down` is
    `[num_experts, hidden, intermediate]`.

    ```mlir
    %y = moe.experts %x, %gates, %experts, %gate_up, %down
        {gate_up_layout = #moe.gate_up_layout<concatenated>}
        : (tensor<16x32xf32>, tensor<16x2xf32>, tensor<16x2xi64>,
           tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$input, Moe_FloatTensor:$gates,
                       Moe_IndexTensor:$experts, Moe_FloatTensor:$gate_up,
                       Moe_FloatTensor:$down,
                       Moe_GateUpLayoutAttr:$gate_up_layout);
  let results = (outs Moe_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $gates `,` $experts `,` $gate_up `,` $down attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Moe_LmHeadOp : Moe_Op<"lm_head", [Pure]> {
  let summary = "projects hidden states to vocabulary logits";
  let description = [{
    `result = input · weightᵀ` with `weight` `[vocab, hidden]`. Kept apart
    from `moe.linear` because the training step fuses it with the
    cross-entropy loss, in chunks, so that full fp32 logits never exist.

    ```mlir
    %logits = moe.lm_head %h, %w : (tensor<2x8x32xf32>, tensor<256x32xf32>)
        -> tensor<2x8x256xf32>
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$input, Moe_FloatTensor:$weight);
  let results = (outs Moe_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $weight attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Imported ONNX nodes
//===----------------------------------------------------------------------===//

def Moe_OnnxNodeOp : Moe_Op<"onnx_node", [Pure]> {
  let summary = "an ONNX node kept as imported";
  let description = [{
    One node of the imported ONNX graph that has not been raised to `moe`
    or upstream ops: `op_type` and `domain` name the ONNX operator; the
    node's ONNX attributes are the op's other attributes, under their ONNX
    names. Its location is the node's name and its 1-based position in the
    graph. The importer rejects nodes with side effects or randomness, so
    the op is pure.

    ```mlir
    %p = moe.onnx_node "Softmax"(%x) {axis = -1 : si64}
        : (tensor<2x8x4xf32>) -> tensor<2x8x4xf32>
    ```
  }];
  let arguments = (ins StrAttr:$op_type,
                       DefaultValuedStrAttr<StrAttr, "">:$domain,
                       Variadic<AnyType>:$inputs);
  let results = (outs Variadic<AnyType>:$outputs);
  let assemblyFormat = [{
    $op_type `(` $inputs `)` attr-dict `:` functional-type($inputs, results)
  }];
}

#endif // MOE_OPS_TD
