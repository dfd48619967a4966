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

    The optional second result `stats` is `[batch, q_heads, seq]` fp32: per
    query row the natural log of the sum of `exp(score)` over the visible
    keys (the softmax's log-normaliser). A training step keeps it, with the
    result, for moe.attention_grad (moe-save-attention-stats), as flash
    attention kernels do.

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
  let results = (outs Moe_FloatTensor:$result,
                      Optional<Moe_FloatTensor>:$stats);
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
    `balanced` gives every expert the same number of token slots. With
    `training = false` (evaluation) sinkhorn and balanced route by plain
    top-k of the softmax: sinkhorn keeps its unnormalised gates, balanced its
    renormalised ones. The auxiliary losses are built by the training step,
    not here.

    Sinkhorn and balanced routing couple the tokens they route together; with
    `tokens_per_group` (0: all tokens), they route each run of that many
    consecutive tokens on its own. A partitioned step routes each rank's
    micro-batch alone, so the unpartitioned step it is checked against
    routes in groups of one micro-batch's tokens.

    ```mlir
    %gates, %experts = moe.router %logits {k = 2 : i64,
        load_balancing = #moe.load_balancing<aux_loss>}
        : (tensor<16x4xf32>) -> (tensor<16x2xf32>, tensor<16x2xi64>)
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$logits,
                       ConfinedAttr<I64Attr, [IntPositive]>:$k,
                       Moe_LoadBalancingAttr:$load_balancing,
                       DefaultValuedAttr<BoolAttr, "true">:$training,
                       DefaultValuedAttr<ConfinedAttr<I64Attr, [IntNonNegative]>,
                                         "0">:$tokens_per_group);
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

    The optional second result `saved` keeps the gate and up projections for
    moe.experts_grad (moe-save-expert-activations), so the backward need not
    recompute them: `[N · k, 2 · intermediate]` for the N tokens, one row
    per (token, choice) pair, the rows ordered by expert and, within an
    expert, by token and choice (a stable sort by expert); a row holds
    `gate_up[e] · input[t]` in gate_up's row layout.

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
  let results = (outs Moe_FloatTensor:$result,
                      Optional<Moe_FloatTensor>:$saved);
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
// Parameter initialisation
//===----------------------------------------------------------------------===//

def Moe_ParamInitOp : Moe_Op<"param_init", [Pure]> {
  let summary = "creates a parameter (or a shard of it) from the seed alone";
  let description = [{
    `delayed_param`: element `i` of the result is a pure function of the
    seed, the parameter's `name` and the element's row-major index in the
    full parameter of shape `global_shape` (the result's shape unless given);
    `offsets` place a shard in it. With `kind = normal`, `std · N(0, 1)` from
    the counter-based generator of docs/training.md; with `kind = ones`, 1.
    Any rank can thus create any shard alone, and the global parameter is
    the same for every partitioning.

    In a partitioned program, `grid` and `split_axes` (one entry per
    dimension: the axis of `grid` that splits it, or -1) make the result
    each rank's own block: along a split dimension its offset is the
    rank's coordinate on that axis times the result's size there (plus
    `offsets`). Elements past the global extent are padding and are 0.

    ```mlir
    %w = moe.param_init %seed {name = "model.layers.0.mlp.gate.weight",
        kind = #moe.param_init<normal>, std = 2.0e-02 : f64}
        : (tensor<i64>) -> tensor<8x4096xf32>
    ```
  }];
  let arguments = (ins 0DTensorOf<[I64]>:$seed, StrAttr:$name,
                       Moe_ParamInitKindAttr:$kind,
                       DefaultValuedAttr<F64Attr, "0.0">:$std,
                       OptionalAttr<DenseI64ArrayAttr>:$global_shape,
                       OptionalAttr<DenseI64ArrayAttr>:$offsets,
                       OptionalAttr<FlatSymbolRefAttr>:$grid,
                       OptionalAttr<DenseI64ArrayAttr>:$split_axes);
  let results = (outs Moe_FloatTensor:$result);
  let assemblyFormat = [{
    $seed attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Training: losses
//===----------------------------------------------------------------------===//

def Moe_ScalarF32 : 0DTensorOf<[F32]>;

def Moe_LmHeadCrossEntropyOp : Moe_Op<"lm_head_cross_entropy", [Pure]> {
  let summary = "next-token cross-entropy of the lm-head's logits";
  let description = [{
    The mean over targets of `logsumexp(l) - l[target]` with
    `l = input[b, t] · weightᵀ`, where position `t` predicts
    `labels[b, t + 1]` (Hugging Face's label shift) and labels equal to
    `ignore_index` do not count. Fused so that the `[batch, seq, vocab]`
    logits never exist. The result is an fp32 scalar (0 with no targets).

    With `target_count`, the sum is divided by that count instead of the
    number of targets in `labels`: moe-hybrid-shard passes the global
    batch's count, so that a rank's loss is its share of the global mean
    and its gradients are, token for token, the unpartitioned step's.

    ```mlir
    %loss = moe.lm_head_cross_entropy %h, %w, %labels {ignore_index = -100 : i64}
        : (tensor<2x8x32xf32>, tensor<256x32xf32>, tensor<2x8xi64>) -> tensor<f32>
    %share = moe.lm_head_cross_entropy %h, %w, %labels, %count {ignore_index = -100 : i64}
        : (tensor<2x8x32xf32>, tensor<256x32xf32>, tensor<2x8xi64>, tensor<f32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$input, Moe_FloatTensor:$weight,
                       Moe_IndexTensor:$labels,
                       Optional<Moe_ScalarF32>:$target_count,
                       DefaultValuedAttr<I64Attr, "-100">:$ignore_index);
  let results = (outs Moe_ScalarF32:$loss);
  let assemblyFormat = [{
    $input `,` $weight `,` $labels (`,` $target_count^)? attr-dict `:` functional-type(operands, results)
  }];
}

def Moe_LoadBalancingLossOp : Moe_Op<"load_balancing_loss", [Pure]> {
  let summary = "Hugging Face's Mixtral load-balancing loss over all layers";
  let description = [{
    With `p = softmax(logits)` per token and every layer's tokens
    concatenated (N rows): `E · Σ_j Σ_e f_j[e] · P[e]`, where `f_j[e]` is the
    fraction of rows whose j-th top-k choice is `e` and `P[e]` the mean of
    `p[e]` (`load_balancing_loss_func` of transformers). Only `P` carries a
    gradient.

    ```mlir
    %aux = moe.load_balancing_loss %l0, %l1 {k = 2 : i64}
        : (tensor<2x8x4xf32>, tensor<2x8x4xf32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins Variadic<Moe_FloatTensor>:$logits,
                       ConfinedAttr<I64Attr, [IntPositive]>:$k);
  let results = (outs Moe_ScalarF32:$loss);
  let assemblyFormat = [{
    $logits attr-dict `:` functional-type(operands, results)
  }];
}

def Moe_RouterZLossOp : Moe_Op<"router_z_loss", [Pure]> {
  let summary = "mean squared log-partition of the router logits";
  let description = [{
    The mean over all tokens of all layers of `logsumexp(logits)²` (ST-MoE's
    router z-loss).

    ```mlir
    %z = moe.router_z_loss %l0, %l1 : (tensor<2x8x4xf32>, tensor<2x8x4xf32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins Variadic<Moe_FloatTensor>:$logits);
  let results = (outs Moe_ScalarF32:$loss);
  let assemblyFormat = [{
    $logits attr-dict `:` functional-type(operands, results)
  }];
}

def Moe_ExpertCountsOp : Moe_Op<"expert_counts", [Pure]> {
  let summary = "token slots each expert received, per layer";
  let description = [{
    Row `l` of the `[layers, num_experts]` result counts how often each
    expert appears in the l-th operand (a router's expert choices).

    ```mlir
    %counts = moe.expert_counts %e0, %e1
        : (tensor<2x8x2xi64>, tensor<2x8x2xi64>) -> tensor<2x4xi64>
    ```
  }];
  let arguments = (ins Variadic<Moe_IndexTensor>:$experts);
  let results = (outs RankedTensorOf<[I64]>:$counts);
  let assemblyFormat = [{
    $experts attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Training: gradients
//===----------------------------------------------------------------------===//

// Ops that compute gradients: the backward of a training step is what
// depends on their results (moe-checkpoint-activations).
def Moe_ComputesGradient : NativeOpTrait<"ComputesGradient"> {
  let cppNamespace = "::mlir::moe";
}

// Gradient ops. A weight's gradient has the weight's shape; its element
// type may be wider than the weight's (fp32 for a bf16 compute copy, after
// moe-widen-weight-grads), so the kernel accumulates and stores it in fp32.
class Moe_GradOp<string mnemonic, list<Trait> traits = []>
    : Moe_Op<mnemonic, !listconcat([Pure, Moe_ComputesGradient], traits)> {
  let assemblyFormat = [{
    operands attr-dict `:` functional-type(operands, results)
  }];
}

def Moe_EmbeddingGradOp : Moe_GradOp<"embedding_grad"> {
  let summary = "gradient of moe.embedding with respect to its table";
  let description = [{
    Scatter-adds `d_result` rows into a zero `[vocab, hidden]` table at
    `indices`; the vocabulary comes from the result type.
  }];
  let arguments = (ins Moe_IndexTensor:$indices, Moe_FloatTensor:$d_result);
  let results = (outs Moe_FloatTensor:$d_table);
}

def Moe_RmsNormGradOp : Moe_GradOp<"rms_norm_grad", [
    AllTypesMatch<["input", "d_result", "d_input"]>,
    AllShapesMatch<["weight", "d_weight"]>]> {
  let summary = "gradients of moe.rms_norm";
  let description = [{
    With `r = (mean(x²) + ε)^(-1/2)` and `g = d_result · weight`:
    `d_input = r·g − r³·x·mean(g·x)` and `d_weight = Σ_rows d_result·x·r`.
  }];
  let arguments = (ins Moe_FloatTensor:$input, Moe_FloatTensor:$weight,
                       Moe_FloatTensor:$d_result, F64Attr:$epsilon);
  let results = (outs Moe_FloatTensor:$d_input, Moe_FloatTensor:$d_weight);
}

def Moe_RotaryGradOp : Moe_GradOp<"rotary_grad", [
    AllTypesMatch<["d_result", "d_input"]>]> {
  let summary = "gradient of moe.rotary: the rotation by the negated angles";
  let arguments = (ins Moe_FloatTensor:$d_result,
                       Optional<Moe_IndexTensor>:$positions, F64Attr:$theta);
  let results = (outs Moe_FloatTensor:$d_input);
}

def Moe_AttentionGradOp : Moe_GradOp<"attention_grad", [
    AllTypesMatch<["query", "d_result", "d_query"]>,
    AllTypesMatch<["key", "d_key"]>, AllTypesMatch<["value", "d_value"]>]> {
  let summary = "gradients of moe.attention";
  let description = [{
    Recomputes the probabilities `P` from the inputs and returns
    `d_value = Pᵀ·dO`, `d_query = scale·dS·K`, `d_key = scale·dSᵀ·Q` with
    `dS = P ⊙ (dO·Vᵀ − rowsum(P ⊙ dO·Vᵀ))`, summing over the query heads that
    share a key/value head.

    `saved`, when given, is the forward's result and `stats` (moe.attention
    on the same operands): an implementation may take `P` from them instead
    of recomputing the forward; the gradients are the same.
  }];
  let arguments = (ins Moe_FloatTensor:$query, Moe_FloatTensor:$key,
                       Moe_FloatTensor:$value, Moe_FloatTensor:$d_result,
                       Variadic<Moe_FloatTensor>:$saved,
                       DefaultValuedAttr<BoolAttr, "true">:$causal,
                       F64Attr:$scale, OptionalAttr<I64Attr>:$sliding_window);
  let results = (outs Moe_FloatTensor:$d_query, Moe_FloatTensor:$d_key,
                      Moe_FloatTensor:$d_value);
  let hasVerifier = 1;
}

def Moe_LinearGradOp : Moe_GradOp<"linear_grad", [
    AllTypesMatch<["input", "d_input"]>, AllShapesMatch<["weight", "d_weight"]>]> {
  let summary = "gradients of moe.linear (without bias)";
  let description = [{
    `d_input = d_result · weight`, `d_weight = Σ_rows d_resultᵀ · input`.
  }];
  let arguments = (ins Moe_FloatTensor:$input, Moe_FloatTensor:$weight,
                       Moe_FloatTensor:$d_result);
  let results = (outs Moe_FloatTensor:$d_input, Moe_FloatTensor:$d_weight);
}

def Moe_RouterGradOp : Moe_GradOp<"router_grad", [
    AllTypesMatch<["logits", "d_logits"]>]> {
  let summary = "gradient of moe.router's gates with respect to its logits";
  let description = [{
    The choice of experts is not differentiated; the gates are (renormalised
    softmax for aux_loss, none and balanced; softmax, or sigmoid for k = 1,
    for sinkhorn).
  }];
  let arguments = (ins Moe_FloatTensor:$logits, Moe_IndexTensor:$experts,
                       Moe_FloatTensor:$d_gates,
                       Moe_LoadBalancingAttr:$load_balancing);
  let results = (outs Moe_FloatTensor:$d_logits);
}

def Moe_ExpertsGradOp : Moe_GradOp<"experts_grad", [
    AllTypesMatch<["input", "d_result", "d_input"]>,
    AllTypesMatch<["gates", "d_gates"]>,
    AllShapesMatch<["gate_up", "d_gate_up"]>, AllShapesMatch<["down", "d_down"]>]> {
  let summary = "gradients of moe.experts";
  let description = [{
    With `saved` (the forward's second result) the gate and up projections
    are read from it instead of being recomputed.
  }];
  let arguments = (ins Moe_FloatTensor:$input, Moe_FloatTensor:$gates,
                       Moe_IndexTensor:$experts, Moe_FloatTensor:$gate_up,
                       Moe_FloatTensor:$down, Moe_FloatTensor:$d_result,
                       Optional<Moe_FloatTensor>:$saved,
                       Moe_GateUpLayoutAttr:$gate_up_layout);
  let results = (outs Moe_FloatTensor:$d_input, Moe_FloatTensor:$d_gates,
                      Moe_FloatTensor:$d_gate_up, Moe_FloatTensor:$d_down);
}

def Moe_LmHeadCrossEntropyGradOp : Moe_GradOp<"lm_head_cross_entropy_grad", [
    AllTypesMatch<["input", "d_input"]>, AllShapesMatch<["weight", "d_weight"]>]> {
  let summary = "gradients of `scale` times moe.lm_head_cross_entropy";
  let arguments = (ins Moe_FloatTensor:$input, Moe_FloatTensor:$weight,
                       Moe_IndexTensor:$labels,
                       Optional<Moe_ScalarF32>:$target_count,
                       DefaultValuedAttr<I64Attr, "-100">:$ignore_index,
                       F64Attr:$scale);
  let results = (outs Moe_FloatTensor:$d_input, Moe_FloatTensor:$d_weight);
}

def Moe_LmHeadCrossEntropyWithGradOp : Moe_Op<"lm_head_cross_entropy_with_grad", [
    Pure, Moe_ComputesGradient, AllTypesMatch<["input", "d_input"]>,
    AllShapesMatch<["weight", "d_weight"]>]> {
  let summary = "moe.lm_head_cross_entropy and its gradients in one pass";
  let description = [{
    `loss` is moe.lm_head_cross_entropy of the operands; `d_input` and
    `d_weight` are moe.lm_head_cross_entropy_grad's with the same `scale`
    and `target_count`.
    One op, so that the logits are computed once for both (see
    moe-fuse-loss-grad). `d_weight` may be wider than `weight` (fp32 for
    bf16 weights), as for moe.lm_head_cross_entropy_grad.

    ```mlir
    %loss, %dh, %dw = moe.lm_head_cross_entropy_with_grad %h, %w, %labels
        {ignore_index = -100 : i64, scale = 1.0 : f64}
        : (tensor<2x8x32xf32>, tensor<256x32xf32>, tensor<2x8xi64>)
        -> (tensor<f32>, tensor<2x8x32xf32>, tensor<256x32xf32>)
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$input, Moe_FloatTensor:$weight,
                       Moe_IndexTensor:$labels,
                       Optional<Moe_ScalarF32>:$target_count,
                       DefaultValuedAttr<I64Attr, "-100">:$ignore_index,
                       F64Attr:$scale);
  let results = (outs Moe_ScalarF32:$loss, Moe_FloatTensor:$d_input,
                      Moe_FloatTensor:$d_weight);
  let assemblyFormat = [{
    $input `,` $weight `,` $labels (`,` $target_count^)? attr-dict `:` functional-type(operands, results)
  }];
}

def Moe_LoadBalancingLossGradOp : Moe_GradOp<"load_balancing_loss_grad"> {
  let summary = "gradients of `scale` times moe.load_balancing_loss";
  let arguments = (ins Variadic<Moe_FloatTensor>:$logits,
                       ConfinedAttr<I64Attr, [IntPositive]>:$k, F64Attr:$scale);
  let results = (outs Variadic<Moe_FloatTensor>:$d_logits);
}

def Moe_RouterZLossGradOp : Moe_GradOp<"router_z_loss_grad"> {
  let summary = "gradients of `scale` times moe.router_z_loss";
  let arguments = (ins Variadic<Moe_FloatTensor>:$logits, F64Attr:$scale);
  let results = (outs Variadic<Moe_FloatTensor>:$d_logits);
}

//===----------------------------------------------------------------------===//
// Training: optimizer
//===----------------------------------------------------------------------===//

def Moe_GlobalNormOp : Moe_Op<"global_norm", [Pure]> {
  let summary = "L2 norm of all gradients together";
  let description = [{
    `sqrt(Σ_tensors Σ_elements x²)`, an fp32 scalar; the clipping
    coefficient of moe.adamw is computed from it.

    ```mlir
    %norm = moe.global_norm %g0, %g1 : (tensor<32xf32>, tensor<4x32xf32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins Variadic<Moe_FloatTensor>:$gradients);
  let results = (outs Moe_ScalarF32:$norm);
  let assemblyFormat = [{
    $gradients attr-dict `:` functional-type(operands, results)
  }];
}

def Moe_AdamWOp : Moe_Op<"adamw", [Pure,
    AllTypesMatch<["param", "exp_avg", "exp_avg_sq", "new_param",
                   "new_exp_avg", "new_exp_avg_sq"]>,
    AllTypesMatch<["lr", "grad_norm"]>]> {
  let summary = "one AdamW update of a parameter and its moments";
  let description = [{
    torch.optim.AdamW's update on the clipped gradient
    `g = grad · min(1, max_grad_norm / (grad_norm + 1e-6))` (no clipping when
    `max_grad_norm` is 0), with `t = step` (1-based) and learning rate `lr`:

        p  = param · (1 − lr · weight_decay)
        m  = β1 · exp_avg + (1 − β1) · g
        v  = β2 · exp_avg_sq + (1 − β2) · g²
        p -= lr / (1 − β1^t) · m / (sqrt(v) / sqrt(1 − β2^t) + ε)

    Parameter, gradient and moments share one type: fp32 master weights, or
    bf16 for a model kept in bf16; the update is computed in fp32 either way
    and rounded once when stored. Under fp32 masters the gradient may be
    bf16 instead (moe-widen-weight-grads with `into-readers`), widened
    where it is read; its type
    is then printed after the parameter's (`grad tensor<4x32xbf16>`).

    With `skip_nonfinite`, a `grad_norm` that is not finite (an inf or NaN
    in some gradient it was taken over) makes the update the identity: the
    results are `param`, `exp_avg` and `exp_avg_sq` unchanged, so that a
    step whose gradients are unusable leaves the optimizer state as it was
    and the host may skip it (docs/reliability.md). Without it, the update
    is torch's whatever the norm.

    ```mlir
    %p, %m, %v = moe.adamw %param, %grad, %m0, %v0, %step, %lr, %norm
        {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64,
         weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64}
        : tensor<4x32xf32>, tensor<i64>, tensor<f32>
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$param, Moe_FloatTensor:$grad,
                       Moe_FloatTensor:$exp_avg, Moe_FloatTensor:$exp_avg_sq,
                       0DTensorOf<[I64]>:$step, Moe_ScalarF32:$lr,
                       Moe_ScalarF32:$grad_norm, F64Attr:$beta1,
                       F64Attr:$beta2, F64Attr:$epsilon, F64Attr:$weight_decay,
                       F64Attr:$max_grad_norm, UnitAttr:$skip_nonfinite);
  let results = (outs Moe_FloatTensor:$new_param, Moe_FloatTensor:$new_exp_avg,
                      Moe_FloatTensor:$new_exp_avg_sq);
  let assemblyFormat = [{
    $param `,` $grad `,` $exp_avg `,` $exp_avg_sq `,` $step `,` $lr `,`
    $grad_norm attr-dict `:` type($param) ``
    custom<GradType>(type($grad), ref(type($param))) `,` type($step) `,`
    type($lr)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Fusion
//===----------------------------------------------------------------------===//

def Moe_FusionOp : Moe_Op<"fusion", [Pure, IsolatedFromAbove]> {
  let summary = "element-wise ops computed by one kernel";
  let description = [{
    A tree of element-wise `arith` ops on tensors of one element count
    (addf, subf, mulf, divf, negf, truncf, extf, and splat constants),
    outlined by moe-fuse-elementwise so that a backend computes it in one
    pass over memory: the region's arguments are `inputs`, the value it
    yields is the result. The region is isolated from above; constants it
    needs are inside it.

    The result equals running the body's ops one by one, each intermediate
    rounded to its own element type (a backend that fuses must round a bf16
    intermediate as storing it would).

    ```mlir
    %sum = moe.fusion (%a, %b, %c)
        : (tensor<4x32xf32>, tensor<4x32xf32>, tensor<4x32xf32>)
        -> tensor<4x32xf32> {
    ^bb0(%x: tensor<4x32xf32>, %y: tensor<4x32xf32>, %z: tensor<4x32xf32>):
      %0 = arith.addf %x, %y : tensor<4x32xf32>
      %1 = arith.addf %0, %z : tensor<4x32xf32>
      moe.yield %1 : tensor<4x32xf32>
    }
    ```
  }];
  let arguments = (ins Variadic<Moe_FloatTensor>:$inputs);
  let results = (outs Moe_FloatTensor:$result);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = [{
    `(` $inputs `)` attr-dict `:` functional-type($inputs, $result) $body
  }];
  let hasRegionVerifier = 1;
  let extraClassDeclaration = [{
    /// Whether `op` may be in a fusion's body: an element-wise arith op on
    /// tensors, or a splat tensor constant.
    static bool isFusible(::mlir::Operation *op);
  }];
}

def Moe_AddRmsNormOp : Moe_Op<"add_rms_norm", [Pure,
    AllTypesMatch<["lhs", "rhs", "sum", "result"]>]> {
  let summary = "a residual add and the RMSNorm of its sum";
  let description = [{
    `sum = lhs + rhs` (`arith.addf`, rounded to the element type) and
    `result = moe.rms_norm(sum, weight, epsilon)`: a residual connection and
    the norm that reads it, created by moe-fuse-add-rms-norm so that a
    backend computes both in one pass over memory. Both results are kept
    (the sum is the next residual).

    ```mlir
    %sum, %y = moe.add_rms_norm %h, %d, %w {epsilon = 1.0e-05 : f64}
        : (tensor<2x8x32xf32>, tensor<2x8x32xf32>, tensor<32xf32>)
        -> (tensor<2x8x32xf32>, tensor<2x8x32xf32>)
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$lhs, Moe_FloatTensor:$rhs,
                       Moe_FloatTensor:$weight, F64Attr:$epsilon);
  let results = (outs Moe_FloatTensor:$sum, Moe_FloatTensor:$result);
  let assemblyFormat = [{
    $lhs `,` $rhs `,` $weight attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Moe_YieldOp : Moe_Op<"yield", [Pure, Terminator,
    HasParent<"FusionOp">]> {
  let summary = "the value a moe.fusion computes";
  let arguments = (ins Moe_FloatTensor:$value);
  let assemblyFormat = "$value attr-dict `:` type($value)";
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

//===----------------------------------------------------------------------===//
// Expert parallelism
//===----------------------------------------------------------------------===//

// The collectives below move tokens between the ranks of an expert group:
// the ranks along `grid_axes` of the `shard.grid` named `grid` (the P axis of
// docs/partitioning.md). Their sizes depend on the routing, so they are not
// upstream `shard` collectives, whose sizes follow from the types; see
// docs/partitioning.md for why.

def Moe_Dispatcher : I32EnumAttr<"Dispatcher",
    "how routed tokens travel between the ranks of an expert group", [
      I32EnumAttrCase<"all_to_all", 0>,
      I32EnumAttrCase<"all_gather", 1>
    ]> {
  let cppNamespace = "::mlir::moe";
  let genSpecializedAttr = 0;
}
def Moe_DispatcherAttr : EnumAttr<Moe_Dialect, Moe_Dispatcher, "dispatcher"> {
  let assemblyFormat = "`<` $value `>`";
}

def Moe_DispatchOp : Moe_Op<"dispatch", [Pure]> {
  let summary = "sends each token slot to the rank that owns its expert";
  let description = [{
    SPMD over the P ranks of an expert group, each with its own `input`
    (`[tokens, hidden]`) and `experts` (`[tokens, k]`, global expert
    indices). Expert `e` lives on group rank `e / L` as its local expert
    `e mod L`, with `L` = num_experts / P; `counts` (`[P, L]`) states P and L.

    Every slot `(t, j)` sends `input[t]` (and `gates[t, j]`, when given) to
    the owner of `experts[t, j]`. On each rank the received slots become the
    rows of `rows` (`[R, hidden]`), ordered by local expert, then by source
    group rank, then by slot index `t·k + j` at the source; `row_experts`
    (`[R, 1]`) holds each row's local expert, `row_gates` (`[R, 1]`) its
    gate, and `counts[s, l]` the number of rows from group rank `s` for local
    expert `l`. The layout is the input of a grouped GEMM over the local
    experts (moe.experts with k = 1), and of moe.combine, which sends the
    rows back.

    The number of rows R depends on the routing of the whole group; nothing
    is dropped. Its bound, for the receive buffers of the memory plan, is
    every slot of the group on one rank: `P · tokens · k`
    (`getReceiveRowBound()`).

    `dispatcher` chooses the communication, not the result:
    `all_to_all` exchanges the per-(rank, local expert) counts first, then
    the rows with one all-to-all of variable sizes; `all_gather` gathers the
    group's tokens and expert choices (`P · tokens` rows) and keeps the
    slots of the local experts.

    ```mlir
    %rows, %row_experts, %counts, %row_gates = moe.dispatch %x, %experts
        gates(%gates) on @mesh grid_axes = [2]
        {dispatcher = #moe.dispatcher<all_to_all>}
        : (tensor<16x32xf32>, tensor<16x2xi64>, tensor<16x2xf32>)
        -> (tensor<?x32xf32>, tensor<?x1xi64>, tensor<2x2xi64>, tensor<?x1xf32>)
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$input, Moe_IndexTensor:$experts,
                       Optional<Moe_FloatTensor>:$gates,
                       FlatSymbolRefAttr:$grid, DenseI16ArrayAttr:$grid_axes,
                       Moe_DispatcherAttr:$dispatcher);
  let results = (outs Moe_FloatTensor:$rows,
                      RankedTensorOf<[I64]>:$row_experts,
                      RankedTensorOf<[I64]>:$counts,
                      Optional<Moe_FloatTensor>:$row_gates);
  let assemblyFormat = [{
    $input `,` $experts (`gates` `(` $gates^ `)`)? `on` $grid
    `grid_axes` `=` $grid_axes attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    /// The ranks of the expert group (P) and the experts each holds (L).
    int64_t getGroupSize() { return getCounts().getType().getDimSize(0); }
    int64_t getNumLocalExperts() { return getCounts().getType().getDimSize(1); }
    /// The most rows a rank can receive, `P · tokens · k` (every slot of
    /// the group routed to this rank), for sizing the receive buffers; none
    /// when `tokens` or `k` is dynamic.
    std::optional<int64_t> getReceiveRowBound();
  }];
}

def Moe_CombineOp : Moe_Op<"combine", [Pure]> {
  let summary = "returns expert outputs to their tokens and sums each token's slots";
  let description = [{
    The reverse of moe.dispatch with the same `experts` (`[tokens, k]`, the
    source side) and `counts` (`[P, L]`, the receiving side): row `i` of
    `rows` (`[R, d]`, in moe.dispatch's row order) goes back to the slot it
    came from, and `result[t] = Σ_j row(t, j)` (`[tokens, d]`).

    With `dispatcher = all_to_all` the rows travel back by one all-to-all of
    variable sizes; with `all_gather` each rank scatters its rows into a
    zero `[P · tokens, d]` buffer (summing a token's local slots) and the
    group reduce-scatters it. Gates are applied by the experts (their
    `gates` operand), so combine only sums.

    The gradient of moe.dispatch's `gates` is a combine with one choice per
    slot: `experts` collapsed to `[tokens · k, 1]`.

    ```mlir
    %y = moe.combine %rows, %experts, %counts on @mesh grid_axes = [2]
        {dispatcher = #moe.dispatcher<all_to_all>}
        : (tensor<?x32xf32>, tensor<16x2xi64>, tensor<2x2xi64>) -> tensor<16x32xf32>
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$rows, Moe_IndexTensor:$experts,
                       RankedTensorOf<[I64]>:$counts,
                       FlatSymbolRefAttr:$grid, DenseI16ArrayAttr:$grid_axes,
                       Moe_DispatcherAttr:$dispatcher);
  let results = (outs Moe_FloatTensor:$result);
  let assemblyFormat = [{
    $rows `,` $experts `,` $counts `on` $grid `grid_axes` `=` $grid_axes
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Moe_TokenShuffleOp : Moe_Op<"token_shuffle", [Pure]> {
  let summary = "permutes tokens across the ranks of an expert group";
  let description = [{
    `global_token_shuffle`. The group's tokens, concatenated in group-rank
    order (`N = P · tokens` rows of `input`, `[tokens, hidden]` per rank),
    are permuted by `π`, a permutation of `[0, N)` that depends only on
    `seed`, `step` and `N` (docs/partitioning.md gives the generator): group
    rank `g` gets rows `π(g · tokens + i)`, `i < tokens`. With `inverse`
    the rows go back: row `g · tokens + i` of the input lands at position
    `π(g · tokens + i)`. A shuffle and its inverse with the same step leave
    every token where it was.

    ```mlir
    %s = moe.token_shuffle %x, %step on @mesh grid_axes = [2] {seed = 0 : i64}
        : (tensor<16x32xf32>, tensor<i64>) -> tensor<16x32xf32>
    ```
  }];
  let arguments = (ins Moe_FloatTensor:$input, 0DTensorOf<[I64]>:$step,
                       FlatSymbolRefAttr:$grid, DenseI16ArrayAttr:$grid_axes,
                       I64Attr:$seed, UnitAttr:$inverse);
  let results = (outs Moe_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $step `on` $grid `grid_axes` `=` $grid_axes attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Moe_LoadBalancingStatsOp : Moe_Op<"load_balancing_stats", [Pure]> {
  let summary = "per-expert sums behind the load-balancing loss";
  let description = [{
    Over every layer's router logits (`[..., num_experts]`, all rows
    together, as moe.load_balancing_loss): row 0 of the `[2, num_experts]`
    result counts the rows whose top-k choices include each expert, row 1
    sums each expert's softmax probability. Sums, not means, so that a
    data-parallel step all-reduces them into the global batch's statistics
    (docs/Dialects/Moe.md, routing under data parallelism).

    ```mlir
    %stats = moe.load_balancing_stats %l0, %l1 {k = 2 : i64}
        : (tensor<16x4xf32>, tensor<16x4xf32>) -> tensor<2x4xf32>
    ```
  }];
  let arguments = (ins Variadic<Moe_FloatTensor>:$logits,
                       ConfinedAttr<I64Attr, [IntPositive]>:$k);
  let results = (outs RankedTensorOf<[F32]>:$stats);
  let assemblyFormat = [{
    $logits attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Moe_LoadBalancingLossFromStatsOp
    : Moe_Op<"load_balancing_loss_from_stats", [Pure]> {
  let summary = "Hugging Face's load-balancing loss from moe.load_balancing_stats";
  let description = [{
    With `N = Σ_e stats[0, e] / k` rows: `E · Σ_e (stats[0, e] / N) ·
    (stats[1, e] / N)`, which is moe.load_balancing_loss of the rows the
    statistics were summed over.

    ```mlir
    %aux = moe.load_balancing_loss_from_stats %stats {k = 2 : i64}
        : (tensor<2x4xf32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins RankedTensorOf<[F32]>:$stats,
                       ConfinedAttr<I64Attr, [IntPositive]>:$k);
  let results = (outs Moe_ScalarF32:$loss);
  let assemblyFormat = [{
    $stats attr-dict `:` functional-type(operands, results)
  }];
}

def Moe_LoadBalancingStatsGradOp : Moe_GradOp<"load_balancing_stats_grad"> {
  let summary = "this rank's share of the load-balancing loss gradient";
  let description = [{
    `scale` times the gradient of moe.load_balancing_loss_from_stats of
    `stats` with respect to `logits`, the rows that contributed to row 1 of
    `stats` here (the top-k fractions are not differentiated). With global
    statistics each rank gets the gradient of the global loss with respect
    to its own tokens; summed over ranks, it is the unpartitioned gradient.
  }];
  let arguments = (ins Variadic<Moe_FloatTensor>:$logits,
                       RankedTensorOf<[F32]>:$stats,
                       ConfinedAttr<I64Attr, [IntPositive]>:$k, F64Attr:$scale);
  let results = (outs Variadic<Moe_FloatTensor>:$d_logits);
}

//===----------------------------------------------------------------------===//
// Partitioning (moe-hybrid-shard)
//===----------------------------------------------------------------------===//

def Moe_TargetCountOp : Moe_Op<"target_count", [Pure]> {
  let summary = "the number of targets a next-token cross-entropy averages over";
  let description = [{
    The number of `labels[b, t + 1]` (`t + 1 < seq`) that differ from
    `ignore_index`: the denominator of `moe.lm_head_cross_entropy` on the
    same labels, as an fp32 scalar (exact below 2^24). A partitioned step
    all-reduces it to weight each rank's mean by its share of the global
    batch's targets.

    ```mlir
    %n = moe.target_count %labels {ignore_index = -100 : i64}
        : (tensor<2x8xi64>) -> tensor<f32>
    ```
  }];
  let arguments = (ins 2DTensorOf<[AnySignlessInteger]>:$labels,
                       DefaultValuedAttr<I64Attr, "-100">:$ignore_index);
  let results = (outs Moe_ScalarF32:$count);
  let assemblyFormat = [{
    $labels attr-dict `:` functional-type(operands, results)
  }];
}

//===----------------------------------------------------------------------===//
// Activation offloading (moe-offload-activations)
//===----------------------------------------------------------------------===//

def Moe_OffloadOp : Moe_Op<"offload", [Pure]> {
  let summary = "moves a saved activation to host memory";
  let description = [{
    The same values as `input`, held in the rank's pinned host memory
    (encoding `#moe.host`) until a moe.fetch brings them back: the device
    buffer of `input` is free once the copy has ended. `layer` is the
    decoder layer whose backward reads the value first.

    ```mlir
    %h = moe.offload %x layer 1 : tensor<2x64x32xf32> -> tensor<2x64x32xf32, #moe.host>
    ```
  }];
  let arguments = (ins AnyRankedTensor:$input,
                       ConfinedAttr<I64Attr, [IntNonNegative]>:$layer);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = [{
    $input `layer` $layer attr-dict `:` type($input) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Moe_OffloadJoinOp : Moe_Op<"offload_join"> {
  let summary = "the end of a moe.offload's copy";
  let description = [{
    Where the compute stream waits for the copy of the moe.offload that
    made `input`: until here the copy may still read the offloaded device
    value, so its device bytes are not reused before this op
    (moe-plan-memory). moe-offload-activations places it at the start of
    the forward of the (horizon + 1)th decoder layer after the offload (so
    that the copy overlaps the forward of `horizon` layers), or at the
    start of the backward; the CUDA printer prints the wait here. It has no result and
    no value: the reference executor does nothing.

    ```mlir
    moe.offload_join %h : tensor<2x64x32xf32, #moe.host>
    ```
  }];
  let arguments = (ins AnyRankedTensor:$input);
  let assemblyFormat = [{
    $input attr-dict `:` type($input)
  }];
  let hasVerifier = 1;
}

def Moe_FetchOp : Moe_Op<"fetch", [Pure]> {
  let summary = "brings an offloaded activation back to the device";
  let description = [{
    The device copy of the host value a moe.offload made, for the backward
    of decoder layer `layer` (the offload's layer); moe-offload-activations
    places it `activation_loading_horizon` layers ahead of that backward.

    ```mlir
    %y = moe.fetch %h layer 1 : tensor<2x64x32xf32, #moe.host> -> tensor<2x64x32xf32>
    ```
  }];
  let arguments = (ins AnyRankedTensor:$input,
                       ConfinedAttr<I64Attr, [IntNonNegative]>:$layer);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = [{
    $input `layer` $layer attr-dict `:` type($input) `->` type($result)
  }];
  let hasVerifier = 1;
}

#endif // MOE_OPS_TD
