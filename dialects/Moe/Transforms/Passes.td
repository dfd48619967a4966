//===- Passes.td - moe dialect passes ---------------------*- tablegen -*-===//
//
// The passes that transform `moe` IR, in pipeline order.
//
//===----------------------------------------------------------------------===//

#ifndef MOE_TRANSFORMS_PASSES_TD
#define MOE_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def BuildInitParams : Pass<"moe-build-init-params", "::mlir::ModuleOp"> {
  let summary = "builds @init_params: every parameter from the seed (delayed_param)";
  let description = [{
    Adds `func.func @init_params(%seed: tensor<i64>) -> (params...)`, one
    `moe.param_init` per parameter of `@forward` in argument order (results
    tagged `moe.parameter`): ones for RMSNorm weights, `normal(0,
    initializer-range)` for every other parameter (Hugging Face's Mixtral
    initialisers). No weight value is ever needed by the compiler; a rank
    creates only what it holds.
  }];
  let dependentDialects = ["::mlir::moe::MoeDialect"];
  let options = [
    Option<"initializerRange", "initializer-range", "double", "0.02",
           "standard deviation of the normal initialisers">
  ];
}

def CanonicalizeParameters
    : Pass<"moe-canonicalize-parameters", "::mlir::func::FuncOp"> {
  let summary = "gives raised parameters their Hugging Face names, layouts and untied copies";
  let description = [{
    On a raised forward, reads each parameter's role off the structure and
    rebuilds the parameter arguments from it, in the order of the Hugging
    Face state_dict:

    - the name: `model.embed_tokens.weight` (the embedding table),
      `model.layers.N.self_attn.{q,k,v,o}_proj.weight` (the projections into
      the N-th moe.attention's query, key and value, and out of its result),
      `model.layers.N.input_layernorm.weight` (the norm feeding them),
      `model.layers.N.mlp.gate.weight` (the linear feeding the N-th router),
      `model.layers.N.mlp.experts.{gate_up_proj,down_proj}` (the N-th
      moe.experts, gate/up concatenated),
      `model.layers.N.post_attention_layernorm.weight` (the norm feeding
      those experts), `model.norm.weight` and `lm_head.weight` (the
      lm-head and the norm feeding it);
    - the layout: a weight used through `linalg.transpose` (an exporter that
      folded the transpose stored it [in, out]) becomes the transposed
      parameter, and the transpose leaves the function;
    - the type: a weight used through `arith.extf` or `arith.truncf`
      (stored in another type than the model computes in, e.g. bf16 expert
      weights cast to fp32 in the graph) becomes a parameter of the type it
      is read in, and the conversion leaves the function: the parameter is
      the model's, trained in the job's precision like every other;
    - ties: one argument used in several roles (an exporter merged
      initializers of equal values, such as the all-ones RMSNorm weights of
      a fresh model) becomes one parameter per role, with a remark naming
      the merged initializer and the parameters made from it. Mixtral ties
      none of its weights.

    Each rebuilt argument keeps where its value comes from:
    `moe.initializer` names the model file's initializer when it differs
    from the parameter's name, and `moe.initializer_permutation` the
    transpose that turns it into the parameter, and a parameter stacked
    from several initializers (moe-raise-onnx) keeps its
    `moe.initializer_pieces`, with a remark ("N initializers stacked into
    parameter 'X'") once it has its name; an initializer of another
    type is converted by whoever reads it (to the nearest value of the
    parameter's type). A parameter with a use the pass does not recognise
    is left as it is.
  }];
  let statistics = [
    Statistic<"numRenamed", "num-renamed", "parameters given another name">,
    Statistic<"numTransposesFolded", "num-transposes-folded",
              "weight transposes folded into the parameter's layout">,
    Statistic<"numConversionsFolded", "num-conversions-folded",
              "weight type conversions folded into the parameter's type">,
    Statistic<"numUntied", "num-untied",
              "parameters made from a merged initializer's extra roles">
  ];
}

def SpecializeShapes : Pass<"moe-specialize-shapes", "::mlir::func::FuncOp"> {
  let summary = "makes every shape static for a given micro-batch and sequence";
  let description = [{
    Gives the function's token inputs (`moe.input` arguments of rank 2:
    token ids, labels) the shape `[batch, seq]` and recomputes every result
    type from its operands, op by op, so that a compiled step has fixed
    kernel sizes, GEMM descriptors and a static memory plan. A static
    dimension that disagrees with the one computed is an error at that op;
    so is an op with a dynamic result that the pass has no rule for.
  }];
  let dependentDialects = ["::mlir::tensor::TensorDialect"];
  let options = [
    Option<"batch", "batch", "int64_t", "0", "micro-batch size (sequences)">,
    Option<"seq", "seq", "int64_t", "0", "sequence length (tokens)">
  ];
}

def WidenWeightGrads : Pass<"moe-widen-weight-grads", "::mlir::func::FuncOp"> {
  let summary = "makes weight-gradient ops produce fp32 instead of casting after";
  let description = [{
    With bf16 compute, the training step computes a weight's gradient in
    bf16 and then widens it to fp32 for the optimizer (`arith.extf`). This
    pass folds the cast into the op: a weight gradient (`d_weight` of
    moe.linear_grad, moe.rms_norm_grad and moe.lm_head_cross_entropy_grad,
    `d_gate_up`/`d_down` of moe.experts_grad, `d_table` of
    moe.embedding_grad) whose only use is an `arith.extf` gets the extf's
    type, and the extf goes. The kernels then accumulate in fp32 and store
    fp32 once: one bf16 rounding fewer, no bf16 gradient buffer and no cast
    pass over every parameter.

    ```mlir
    %dx, %dw = moe.linear_grad %x, %w, %dy : (...) -> (tensor<8x4xbf16>, tensor<4x4xbf16>)
    %g = arith.extf %dw : tensor<4x4xbf16> to tensor<4x4xf32>
    // becomes
    %dx, %g = moe.linear_grad %x, %w, %dy : (...) -> (tensor<8x4xbf16>, tensor<4x4xf32>)
    ```

    With `into-readers` (job key `grad_dtype` bf16) the gradients stay bf16,
    rounded once as autograd gives them for bf16 compute copies (what the
    PyTorch recipes with fp32 masters train on), and the casts fold into
    their readers instead: moe.global_norm and moe.adamw take the bf16
    gradient and widen it as they read, so that no fp32 gradient is stored
    or read (6 bytes less per parameter). A norm folds all of its
    gradients or none (a norm reads one element type; a norm that reads
    some widened weight gradients and some other gradients is warned
    about); a cast with other users stays for them.

    ```mlir
    %g = arith.extf %dw : tensor<4x4xbf16> to tensor<4x4xf32>
    %n = moe.global_norm %g : (tensor<4x4xf32>) -> tensor<f32>
    %p, %m, %v = moe.adamw %w, %g, ... : tensor<4x4xf32>, ...
    // becomes
    %n = moe.global_norm %dw : (tensor<4x4xbf16>) -> tensor<f32>
    %p, %m, %v = moe.adamw %w, %dw, ... : tensor<4x4xf32> grad tensor<4x4xbf16>, ...
    ```
  }];
  let options = [
    Option<"intoReaders", "into-readers", "bool", "false",
           "keep the weight gradients bf16 and fold the casts into the norm "
           "and AdamW">
  ];
  let statistics = [
    Statistic<"numWidened", "num-widened", "weight gradients made fp32">,
    Statistic<"numFolded", "num-folded",
              "weight-gradient casts folded into their readers">
  ];
}

def FuseLossGrad : Pass<"moe-fuse-loss-grad", "::mlir::func::FuncOp"> {
  let summary = "computes the lm-head cross-entropy and its gradients together";
  let description = [{
    The training step computes the cross-entropy of the lm-head in the
    forward and its gradients at the start of the backward; each needs the
    logits `input · weightᵀ`, the largest GEMM of a step at a big
    vocabulary. When a moe.lm_head_cross_entropy and a
    moe.lm_head_cross_entropy_grad of one block read the same input, weight,
    labels and ignore_index, this pass replaces both with one
    moe.lm_head_cross_entropy_with_grad at the place of the first of them, so
    the logits are computed once. The gradients then live from there (their
    buffers are planned after this pass).

    ```mlir
    %loss = moe.lm_head_cross_entropy %h, %w, %labels : (...) -> tensor<f32>
    ...
    %dh, %dw = moe.lm_head_cross_entropy_grad %h, %w, %labels {scale = 1.0 : f64} : (...) -> (...)
    // becomes
    %loss, %dh, %dw = moe.lm_head_cross_entropy_with_grad %h, %w, %labels {scale = 1.0 : f64} : (...) -> (...)
    ```
  }];
  let statistics = [
    Statistic<"numFused", "num-fused", "loss and gradient pairs fused">
  ];
}

def SaveExpertActivations
    : Pass<"moe-save-expert-activations", "::mlir::func::FuncOp"> {
  let summary = "keeps the experts' gate/up projections for the backward";
  let description = [{
    moe.experts_grad recomputes the gate and up projections of every
    (token, choice) pair unless it is given the forward's (a third of the
    experts' backward GEMM work). For each moe.experts_grad of the block
    that has the operands of a moe.experts before it, this pass makes that
    moe.experts also return `saved` (`[pairs, 2 · intermediate]`, see the
    op) and passes it to the gradient: activation memory for compute, the
    opposite of recomputation (activation checkpointing). `moec compile`
    runs it unless the job sets `"recompute_experts": true`.

    ```mlir
    %y = moe.experts %x, %g, %e, %w1, %w2 {...} : (...) -> tensor<16x32xbf16>
    ...
    %dx, %dg, %dw1, %dw2 = moe.experts_grad %x, %g, %e, %w1, %w2, %dy {...}
    // becomes
    %y, %saved = moe.experts %x, %g, %e, %w1, %w2 {...}
        : (...) -> (tensor<16x32xbf16>, tensor<32x128xbf16>)
    ...
    %dx, %dg, %dw1, %dw2 = moe.experts_grad %x, %g, %e, %w1, %w2, %dy, %saved {...}
    ```
  }];
  let statistics = [
    Statistic<"numSaved", "num-saved", "experts ops that keep their projections">
  ];
}

def SaveAttentionStats
    : Pass<"moe-save-attention-stats", "::mlir::func::FuncOp"> {
  let summary = "keeps attention's output and log-sum-exp for the backward";
  let description = [{
    moe.attention_grad recomputes the softmax unless it is given the
    forward's result and per-row log-sum-exp (`stats`), which is what flash
    attention kernels keep. For each moe.attention_grad of the block without
    `saved` that has a moe.attention on the same operands and attributes
    before it, this pass makes that moe.attention also return `stats`
    (`[batch, q_heads, seq]` fp32) and passes its result and stats to the
    gradient. `moec compile` runs it where attention runs on cuDNN (its
    backward then does not rerun the forward).

    ```mlir
    %o = moe.attention %q, %k, %v {...} : (...) -> tensor<2x8x4x8xbf16>
    ...
    %dq, %dk, %dv = moe.attention_grad %q, %k, %v, %do {...}
    // becomes
    %o, %lse = moe.attention %q, %k, %v {...}
        : (...) -> (tensor<2x8x4x8xbf16>, tensor<2x4x8xf32>)
    ...
    %dq, %dk, %dv = moe.attention_grad %q, %k, %v, %do, %o, %lse {...}
    ```
  }];
  let statistics = [
    Statistic<"numSaved", "num-saved", "attention ops that keep their stats">
  ];
}

def CheckpointActivations
    : Pass<"moe-checkpoint-activations", "::mlir::func::FuncOp"> {
  let summary = "recomputes decoder layers' forward values in the backward";
  let description = [{
    Activation checkpointing on a built training step (after
    moe-build-train-step, on the one-GPU or the partitioned step): the
    backward of a decoder layer reads values recomputed from a few kept
    ones, so that the rest of the layer's forward values die in the
    forward. Recomputation is ordinary IR: clones of the forward ops, each
    placed right before its first use in the backward (and reused by later
    uses), marked `moe.recompute = #moe.recompute<layer = N, policy>`. A
    forward moe.experts or moe.attention whose saved projections or
    log-sum-exp only the backward read stops keeping them.

    Decoder layer N is the forward between its input, the activation that
    the first op reading a `layers.N.` parameter takes (Mixtral's
    input_layernorm), and the next layer's input (the last layer ends at
    the first op after it that reads another parameter, the final norm).
    The backward is every op that depends on a gradient op
    (`Moe_ComputesGradient`). Always kept: a layer's input and output,
    what a backward op reads from two or more layers at once (the router
    logits for the load-balancing loss's gradient, which runs before any
    layer's backward), ops with memory effects and values computed from
    parameters alone.

    - `none`: nothing changes.
    - `selective`: keeps the outputs of GEMMs (moe.linear, moe.experts with
      its saved projections), of moe.attention and of collectives
      (moe.dispatch, moe.combine, moe.token_shuffle, shard ops);
      recomputes norms, rotary, element-wise work, reshapes and the router.
    - `full`: keeps only the above; recomputes the whole layer, including
      its dispatch and combine: every rank runs the same program, so the
      recomputed collectives run in the same order on all ranks of a
      group, and their results equal the forward's (routing and the row
      order are deterministic).
    - `auto`: per layer none, selective or full, the least added time that
      fits `memory-budget` bytes. Candidates come from the cost model:
      from none everywhere, the layer change with the least added time per
      byte saved, until none is left. Whether one fits is measured: the
      step's arguments (with `keep-param-copies`, the bf16 parameter
      copies moe-keep-param-copies will keep too) plus the most bytes
      alive at once in a copy rewritten with it, counted as
      moe-plan-memory counts them, plus the CUDA program's kernel scratch
      (moe::stepScratchNeeds: the largest scratch need of its ops, e.g.
      the experts' gathered rows and projections, with bf16 attention on
      cuDNN when `cudnn-attention`, and of the collective and gradient
      streams' collectives; cuDNN's own workspace is not counted); the
      pass bisects the
      candidates for the first that fits. The same policy on
      every layer replaces that choice
      when it fits and adds less time. Time is a cost model: GEMMs at 650 TFLOP/s,
      attention at 500 TFLOP/s, memory-bound ops at 3.9 TB/s of the bytes
      they read and write, collectives at 330 GB/s (H200 measurements,
      docs/benchmarks.md). A remark on the function explains the choice,
      layer by layer; a step that does not fit whatever the layers
      recompute is an error.

      With `offloading` (the job's sm_activation_offloading), auto also
      weighs offloading a layer's kept values (per layer: all the values
      moe-offload-activations would move for its backward) at `horizon`:
      a layer whose fetch comes at a later layer's backward (layer + horizon
      below the number of layers) may offload, the change saving its kept
      bytes. Its time is what a timeline of the compute stream and the
      offload and fetch streams leaves unhidden: each layer's copy out
      starts when its forward ends and is waited for at the forward of
      layer + horizon + 1, its copy back starts at the backward of layer +
      horizon and is waited for at its own backward, each stream one copy
      at a time at `host-link-bytes-per-second` (55 GB/s, measured on the
      H200's host link), a layer's backward twice its forward plus its
      recomputation. The chosen layers are `moe.offload_layers` on the
      function, which moe-offload-activations obeys; an offload that frees
      nothing at the peak is dropped when the step fits without it. The
      remark adds the offloaded layers, their bytes each way, the copies'
      time and the time they add.

    ```mlir
    // full: the backward of layer 0 recomputes its norm from the kept input
    %n = moe.rms_norm %x, %w {epsilon = 1.0e-05 : f64} : (...) -> tensor<2x8x32xf32>
    ...
    %n_0 = moe.rms_norm %x, %w {epsilon = 1.0e-05 : f64,
        moe.recompute = #moe.recompute<layer = 0, full>} : (...) -> tensor<2x8x32xf32>
    %dx, %dw = moe.linear_grad %n_0, %wq, %dq : (...) -> (...)
    ```
  }];
  let dependentDialects = ["::mlir::moe::MoeDialect"];
  let options = [
    Option<"policy", "policy", "::mlir::moe::ActivationCheckpointing",
           "::mlir::moe::ActivationCheckpointing::None",
           "what the backward recomputes (none, selective, full, auto)",
           "::mlir::moe::ActivationCheckpointingNames{}">,
    Option<"memoryBudget", "memory-budget", "int64_t", "0",
           "bytes the step must fit into under auto">,
    Option<"cudnnAttention", "cudnn-attention", "bool", "false",
           "bf16 attention runs on cuDNN (sizes its kernel scratch under auto)">,
    Option<"offloading", "offloading", "bool", "false",
           "activation offloading is on: auto may offload a layer's kept "
           "values (moe.offload_layers) instead of recomputing">,
    Option<"horizon", "horizon", "int64_t", "2",
           "with offloading: the activation_loading_horizon of "
           "moe-offload-activations">,
    Option<"hostLinkBytesPerSecond", "host-link-bytes-per-second", "double",
           "55e9",
           "with offloading: the host <-> device copy rate each way (the "
           "H200's measured 55 GB/s)">,
    Option<"keepParamCopies", "keep-param-copies", "bool", "false",
           "moe-keep-param-copies runs later: auto counts the bf16 parameter "
           "copies it keeps across steps with the arguments">
  ];
  let statistics = [
    Statistic<"numLayers", "num-layers", "decoder layers found">,
    Statistic<"numRecomputed", "num-recomputed", "forward ops cloned into the backward">
  ];
}

def OffloadActivations : Pass<"moe-offload-activations", "::mlir::func::FuncOp"> {
  let summary = "moves the backward's saved activations to host memory and back";
  let description = [{
    Activation offloading (`sm_activation_offloading`) on a training step,
    after moe-checkpoint-activations: every forward value that the backward
    reads (what the checkpointing policy keeps; recomputed values are the
    backward's own and stay on the device) and that a decoder layer's
    backward reads first is moved to host memory by a `moe.offload` right
    after its last forward use, and brought back by a `moe.fetch` that the
    backward reads instead. The compute stream waits for the offload's copy
    at a `moe.offload_join` at the start of the forward of the
    (`horizon` + 1)th decoder layer after the offload (the copy overlaps
    the forward of `horizon` layers, and the forward keeps at most
    `horizon` + 1 layers' values on the device, as the backward does), or
    at the start of the backward when there is none; the
    value's device bytes are held until the join (moe-plan-memory). A
    buffer moves once with its views: the
    reshapes of it that the backward reads are made again from the fetched
    value.

    The layer of a backward op is the layer of the `layers.N.` parameters
    it reads, or of the moe.recompute clone it is, and otherwise the layer
    of the backward op before it; a layer's backward starts at its first
    op. The fetches of layer N are placed at the start of the backward of
    layer N + `horizon` (`activation_loading_horizon`), or at the start of
    the backward when there is no such layer, so that they overlap the
    backward of the layers between. What the backward reads before any
    layer's backward (the router logits of the load-balancing loss, the
    final norm's input) stays on the device, as do values of parameters
    alone (gathered or cast parameters), and values whose join and fetch
    would fall at the same point (the last `horizon` layers' values, both
    at the start of the backward): their round trip would free nothing
    and cost both copies.

    ```mlir
    %n = moe.rms_norm %x, %w {epsilon = 1.0e-05 : f64} : (...) -> tensor<2x8x32xf32>
    %q = moe.linear %n, %wq : (...) -> tensor<2x8x32xf32>
    %n_host = moe.offload %n layer 0 : tensor<2x8x32xf32> -> tensor<2x8x32xf32, #moe.host>
    ...
    // the start of layer 2's forward, for horizon 1
    moe.offload_join %n_host : tensor<2x8x32xf32, #moe.host>
    ...
    // the start of layer 2's backward, for horizon 2
    %n_0 = moe.fetch %n_host layer 0 : tensor<2x8x32xf32, #moe.host> -> tensor<2x8x32xf32>
    ...
    %dn, %dwq = moe.linear_grad %n_0, %wq, %dq : (...) -> (...)
    ```
  }];
  let dependentDialects = ["::mlir::moe::MoeDialect"];
  let options = [
    Option<"horizon", "horizon", "int64_t", "2",
           "layers ahead of its backward that a layer's values are fetched "
           "(at least 1)">
  ];
  let statistics = [
    Statistic<"numOffloaded", "num-offloaded", "forward values moved to host memory">,
    Statistic<"offloadedBytes", "offloaded-bytes", "bytes of the moved values (static shapes)">
  ];
}

def FuseElementwise : Pass<"moe-fuse-elementwise", "::mlir::func::FuncOp"> {
  let summary = "outlines trees of element-wise arith ops into moe.fusion";
  let description = [{
    Element-wise `arith` ops (addf, subf, mulf, divf, negf, truncf, extf) on
    tensors each cost a pass over memory; chained, every intermediate is
    written and read back. Going backwards through the block, this pass
    takes each element-wise op that is not yet fused as a root and absorbs
    the element-wise ops that produce its operands when their result has no
    other use and the same element count, recursively; a tree of two or more
    ops becomes one `moe.fusion` at the root's place, whose inputs are the
    tree's other operands (splat constants are copied into the body). In
    Mixtral's backward these are the gradient accumulations of the residual
    stream and of q, k and v into the norm's output (`d = a + b + c`).

    Moving the absorbed ops down to the root extends their inputs' lifetimes
    to the root; the memory plan (moe-plan-memory, which runs after) sees
    that. Ops are never duplicated: an intermediate with two uses stays a
    root of its own (a residual sum that a norm also reads, for one, which
    the CUDA printer fuses with the norm).

    ```mlir
    %0 = arith.addf %a, %b : tensor<4x32xf32>
    %d = moe.linear_grad ...
    %1 = arith.addf %0, %d : tensor<4x32xf32>
    // becomes
    %d = moe.linear_grad ...
    %1 = moe.fusion (%a, %b, %d) : (...) -> tensor<4x32xf32> {
    ^bb0(%x: tensor<4x32xf32>, %y: tensor<4x32xf32>, %z: tensor<4x32xf32>):
      %2 = arith.addf %x, %y : tensor<4x32xf32>
      %3 = arith.addf %2, %z : tensor<4x32xf32>
      moe.yield %3 : tensor<4x32xf32>
    }
    ```
  }];
  let dependentDialects = ["::mlir::moe::MoeDialect",
                           "::mlir::arith::ArithDialect"];
  let statistics = [
    Statistic<"numFusions", "num-fusions", "moe.fusion ops created">,
    Statistic<"numFused", "num-fused", "element-wise ops moved into them">
  ];
}

def KeepParamCopies : Pass<"moe-keep-param-copies", "::mlir::func::FuncOp"> {
  let summary = "keeps the bf16 copies of fp32 master weights across steps";
  let description = [{
    With fp32 master weights and bf16 compute, a step starts by casting
    every parameter to bf16 (`arith.truncf` of the argument): a pass over
    all parameters, reading 4 and writing 2 bytes each. The cast's value is
    the previous step's moe.adamw result, rounded: the optimizer can write
    it while it holds the updated value anyway. This pass marks each such
    cast `moe.persistent_copy` when the parameter is updated by a moe.adamw
    of the function and every use of the cast comes before that update. A
    backend then keeps the marked value in persistent storage, has AdamW
    write it, and computes the cast only where no step has written it yet
    (a run's first step); moe-plan-memory gives it no arena bytes. The
    step's semantics do not change (the reference executor ignores the
    mark). Several such casts of one parameter (a partitioned step casts
    before each gather, in the forward and again in the backward) become
    one: the first, which the others' uses then read.

    ```mlir
    func.func @train_step(%w: tensor<4x32xf32> {moe.parameter = "w"}, ...) {
      %c = arith.truncf %w {moe.persistent_copy} : tensor<4x32xf32> to tensor<4x32xbf16>
      ... uses of %c ...
      %p, %m, %v = moe.adamw %w, ...
    ```
  }];
  let statistics = [
    Statistic<"numKept", "num-kept", "parameter casts marked persistent">,
    Statistic<"numMerged", "num-merged",
              "repeated parameter casts replaced by the kept one">
  ];
}

def PlanMemory : Pass<"moe-plan-memory", "::mlir::func::FuncOp"> {
  let summary = "assigns every intermediate tensor an offset in one arena";
  let description = [{
    On a function with static shapes (after moe-specialize-shapes), gives
    every tensor an op produces a byte offset in a single per-rank arena:
    a buffer lives from its producer to its last use (a value the function
    returns, to the end); reshapes (`tensor.expand_shape`,
    `tensor.collapse_shape`) are views of their source and extend its life;
    `linalg.transpose` has a buffer of its own, and the `tensor.empty` that
    gives its `outs` the type has none (one empty may serve several
    transposes, whose results live at the same time). A collective that the
    compute stream joins after it (the collective schedule,
    dialects/Moe/Transforms/CollectiveSchedule.h: parameter gathers, gradient
    reductions) reads its operands and writes its results until the join:
    their buffers live at least until the joining op. Buffers are placed
    largest first at the lowest `alignment`-aligned offset that overlaps no
    buffer alive at the same time. Function arguments (parameters, optimizer
    state, inputs) are the runtime's persistent buffers and not planned;
    neither are results marked `moe.persistent_copy`
    (moe-keep-param-copies).

    The one dynamic dimension allowed is the rows an expert-parallel rank
    receives: moe.dispatch's results, and moe.experts / moe.experts_grad on
    them, get the bytes of their receive bound (`P · tokens · k` rows,
    DispatchOp::getReceiveRowBound), since routing is dropless.

    Each planned op gets `moe.arena_offsets` (one entry per result, -1 for
    views and non-tensors); the function gets `moe.arena_bytes` (the arena's
    size) and `moe.arena_live_bytes` (the most bytes alive at once: a lower
    bound no placement can beat). The pass checks its own placement for
    overlaps and fails if it finds one.

    Activation offloading (moe-offload-activations) splits a saved value's
    device life in two: the value lives from its producer to its
    moe.offload_join (where the compute stream waits for the offload's
    copy, which reads the value until then), the moe.fetch's result from
    the fetch to its last reader, and between them the bytes are free for
    other buffers. The host copies
    (moe.offload's results, encoding `#moe.host`) are planned the same way
    in a region of their own, the pinned host memory (a host copy lives
    from its offload to the last reader of its fetched value, since the
    fetch's copy may read it until the first reader waits for it): each
    moe.offload gets
    `moe.host_offsets` (its copy's offset) and the function
    `moe.host_bytes` (the region's size).
  }];
  let options = [
    Option<"alignment", "alignment", "int64_t", "256",
           "byte alignment of every buffer">
  ];
  let statistics = [
    Statistic<"numBuffers", "num-buffers", "buffers placed in the arena">,
    Statistic<"numHostBuffers", "num-host-buffers", "offloaded values placed in the host region">
  ];
}

def FuseAddRmsNorm : Pass<"moe-fuse-add-rms-norm", "::mlir::func::FuncOp"> {
  let summary = "fuses a residual add into the RMSNorm that reads it";
  let description = [{
    Replaces an `arith.addf` on tensors that the very next op, a
    `moe.rms_norm`, normalises by one `moe.add_rms_norm` computing both the
    sum (still used as the next residual) and the norm, so that a backend
    reads the addends once.

    It runs after moe-plan-memory and keeps the plan: the new op's
    `moe.arena_offsets` are the add's and the norm's. No op runs between
    the two, so the planned lifetimes still hold. A kernel that computes
    both reads addends and writes results of different rows at once, so a
    pair is left as it is when the plan gave the norm's result bytes of an
    addend (the add being the addend's last use). Without a plan, every
    adjacent pair is fused.

    ```mlir
    %s = arith.addf %h, %d {moe.arena_offsets = array<i64: 0>} : tensor<2x8x32xf32>
    %y = moe.rms_norm %s, %w {epsilon = 1.0e-05 : f64, moe.arena_offsets = array<i64: 2048>}
        : (tensor<2x8x32xf32>, tensor<32xf32>) -> tensor<2x8x32xf32>
    // becomes
    %s, %y = moe.add_rms_norm %h, %d, %w
        {epsilon = 1.0e-05 : f64, moe.arena_offsets = array<i64: 0, 2048>}
        : (tensor<2x8x32xf32>, tensor<2x8x32xf32>, tensor<32xf32>)
        -> (tensor<2x8x32xf32>, tensor<2x8x32xf32>)
    ```
  }];
  let dependentDialects = ["::mlir::moe::MoeDialect"];
  let statistics = [
    Statistic<"numFused", "num-fused", "add and rms_norm pairs fused">,
    Statistic<"numOverlapping", "num-overlapping",
              "pairs left unfused because the norm's buffer overlaps an addend">
  ];
}

def GroupAdamW : Pass<"moe-group-adamw", "::mlir::func::FuncOp"> {
  let summary = "groups consecutive moe.adamw ops into multi-tensor updates";
  let description = [{
    Marks every `moe.adamw` with `moe.adamw_group`, the id of the
    multi-tensor update it belongs to, so that a backend updates each group
    in one launch. A group is a run of consecutive moe.adamw ops that agree
    with its first op in everything but the tensors and the weight decay:
    `beta1`, `beta2`, `epsilon`, `max_grad_norm`, `skip_nonfinite`, the
    `step`, `lr` and
    `grad_norm` operands, and the parameters' element type. Ids count from
    0 in program order. The step's semantics do not change.

    ```mlir
    %p0, %m0, %v0 = moe.adamw %w0, ... {..., moe.adamw_group = 0 : i64} : tensor<32xf32>, ...
    %p1, %m1, %v1 = moe.adamw %w1, ... {..., moe.adamw_group = 0 : i64} : tensor<4x32xf32>, ...
    ```
  }];
  let statistics = [
    Statistic<"numGroups", "num-groups", "multi-tensor update groups">
  ];
}

def BuildTrainStep : Pass<"moe-build-train-step", "::mlir::ModuleOp"> {
  let summary = "builds the training step (loss, backward, AdamW) from the forward";
  let description = [{
    Adds `func.func @train_step` next to the raised `@forward`:

        @train_step(params..., exp_avg..., exp_avg_sq..., input_ids, labels,
                    step, lr)
          -> (new params..., new exp_avg..., new exp_avg_sq..., loss,
              ce_loss, aux_loss, z_loss, grad_norm, expert_counts)

    The forward is cloned with every router set to `load-balancing`; the
    lm-head becomes `moe.lm_head_cross_entropy` against the labels (shifted
    by one, `ignore-index` skipped). The loss is
    `ce + aux-loss-coef · aux + z-loss-coef · z`, where `aux` is Hugging
    Face's load-balancing loss (only with `aux_loss`) and `z` the router
    z-loss. Reverse-mode differentiation then walks the clone backwards and
    emits one `moe.*_grad` op per forward op (gradient rules in
    docs/training.md), summing gradients of values used twice. Finally the
    global gradient norm is taken and every parameter gets one `moe.adamw`
    (weight decay only on parameters of rank 2 or more, clipping to
    `max-grad-norm`, `skip_nonfinite`: a step whose gradient norm is not
    finite leaves the state unchanged, and the host decides whether the run
    goes on). Per-layer expert slot counts are returned for metrics.

    With `compute-type=bf16` the forward and backward run on bf16 copies of
    the fp32 master weights (`arith.truncf` at the start, every activation
    and gradient bf16); the gradients are widened to fp32 (`arith.extf`)
    for the norm and the update, which stay fp32.

    With `param-type=bf16` (which needs `compute-type=bf16`) there are no
    fp32 masters: parameters, gradients and both AdamW moments are bf16, as
    in a model loaded in bf16 and trained with torch.optim.AdamW. The step
    takes and returns bf16 state; moe.adamw computes in fp32 and stores bf16.
    `@eval_step` takes the parameters in the same type.
  }];
  let dependentDialects = [
    "::mlir::moe::MoeDialect",
    "::mlir::arith::ArithDialect",
    "::mlir::tensor::TensorDialect",
    "::mlir::linalg::LinalgDialect"
  ];
  let options = [
    Option<"loadBalancing", "load-balancing", "::mlir::moe::LoadBalancing",
           "::mlir::moe::LoadBalancing::aux_loss",
           "router load balancing (a moe::LoadBalancing name: aux_loss, "
           "sinkhorn, balanced, none)",
           "::mlir::moe::LoadBalancingNames{}">,
    Option<"auxLossCoef", "aux-loss-coef", "double", "0.02",
           "weight of the load-balancing loss (router_aux_loss_coef)">,
    Option<"zLossCoef", "z-loss-coef", "double", "0.0",
           "weight of the router z-loss (0: off)">,
    Option<"beta1", "beta1", "double", "0.9", "AdamW beta1">,
    Option<"beta2", "beta2", "double", "0.95", "AdamW beta2">,
    Option<"epsilon", "epsilon", "double", "1e-8", "AdamW epsilon">,
    Option<"weightDecay", "weight-decay", "double", "0.1",
           "AdamW decoupled weight decay (parameters of rank >= 2)">,
    Option<"maxGradNorm", "max-grad-norm", "double", "1.0",
           "clip gradients to this global norm (0: no clipping)">,
    Option<"ignoreIndex", "ignore-index", "int64_t", "-100",
           "label value that does not count in the loss">,
    Option<"computeType", "compute-type", "std::string", "\"f32\"",
           "element type of the forward and backward: f32, or bf16 for "
           "bf16 compute copies of the fp32 master weights">,
    Option<"paramType", "param-type", "std::string", "\"f32\"",
           "element type of the parameters, their gradients and the AdamW "
           "moments: f32 (master weights), or bf16 (needs compute-type=bf16)">,
    Option<"returnGradients", "return-gradients", "bool", "false",
           "also return every parameter's gradient (before clipping), "
           "tagged moe.gradient, for checking against a reference">
  ];
  let statistics = [
    Statistic<"numGradOps", "num-grad-ops", "gradient ops emitted">
  ];
}

#endif // MOE_TRANSFORMS_PASSES_TD
