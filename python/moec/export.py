"""Export Hugging Face Mixtral to ONNX, in one of three forms of its MoE layers.

Usage (from the repository root)::

    PYTHONPATH=python python -m moec.export --config tiny --form ort -o tiny-ort.onnx
    PYTHONPATH=python python -m moec.export --config mixtral-8x7b --form ort \\
        --no-weights --dynamic -o out/mixtral-8x7b/model.onnx

The model is the stock ``transformers.MixtralForCausalLM`` (eager attention)
behind a single input ``input_ids`` (int64 [batch, seq]) and a single output
``logits`` (float32 [batch, seq, vocab]); the attention mask is all ones, built
inside the graph. torch.onnx's dynamo exporter produces the graph. The forms
differ only in the sparse MoE block of each decoder layer:

``ort``
    Router logits (``MatMul`` with the transposed ``mlp.gate.weight``) and one
    onnxruntime contrib node ``com.microsoft::MoE`` (swiglu, ``swiglu_fusion=1``,
    top-k, renormalised routing weights), so onnxruntime's CPU provider runs the
    file as an independent reference. ``MoE`` wants gate and up rows interleaved
    in ``fc1``; the graph interleaves them (Reshape, Transpose, Reshape) from the
    checkpoint's ``mlp.experts.gate_up_proj`` [E, 2I, H] (all gate rows, then all
    up rows), so every initialiser keeps the checkpoint's layout.
``batched_mm``
    transformers' ``experts_implementation="batched_mm"``: standard ONNX only;
    each (token, choice) pair gathers its expert's weights (``GatherND``) and
    runs a batched ``MatMul``.
``grouped_mm``
    transformers' ``experts_implementation="grouped_mm"``: pairs sorted by
    expert, then ``moec::GroupedMatMul`` (see :data:`GROUPED_MATMUL_SPEC`)
    for the up and down projections.

Initialisers holding parameters are named as in the model's ``state_dict``
(``model.layers.0.self_attn.q_proj.weight``, ``lm_head.weight``...) and hold
the parameter unchanged (same shape, same layout); the optimiser is kept from
folding them into anything. Other initialisers are small constants (``val_*``
and the rotary ``inv_freq``-derived tensor).

With ``--no-weights`` the parameters are fake tensors (see
:func:`moec.model.build_model`), nothing is allocated for them, and every
parameter initialiser becomes an ONNX external-data reference (``location`` =
``<output stem>.weights``, ``offset``, ``length``) into a file that need not
exist: raw float32, parameters in ``state_dict`` order, each starting at a
multiple of :data:`WEIGHTS_ALIGNMENT` bytes. Models with weights keep them inline unless
they exceed :data:`INLINE_WEIGHTS_LIMIT` bytes, in which case the same file is
written with the same layout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import onnx
import onnx_ir as ir
import onnxscript
import onnxscript.optimizer
import torch
from onnxscript import opset18 as op

from moec.atomic import check_output, replacing
from moec.model import ATTN_IMPLEMENTATION, FORMS, MixtralLogits, build_model
from moec.presets import PRESETS, ConfigError, load_config

#: Domain of moec's own ONNX ops (``GroupedMatMul``).
MOEC_DOMAIN = "moec"
#: Domain of onnxruntime's contrib ops (``MoE``).
MSFT_DOMAIN = "com.microsoft"

#: ONNX opset of the default domain, pinned so a newer torch cannot change the
#: op vocabulary under the importer (opset 23 adds e.g. RMSNormalization, Attention).
ONNX_OPSET = 20

#: Byte alignment of each tensor in a ``.weights`` file.
WEIGHTS_ALIGNMENT = 4096
#: Above this many bytes of parameters, weights go to ``<stem>.weights`` instead of inline.
INLINE_WEIGHTS_LIMIT = 1 << 30

# Node metadata kept in the file: the module path and class of each node
# ("namespace"). Stack traces and FX dumps are dropped: they carry local paths.
_KEPT_NODE_METADATA = frozenset({"namespace"})


# ---------------------------------------------------------------------------
# ONNX schemas for the ops that onnx does not ship
# ---------------------------------------------------------------------------


#: Specification of ``moec::GroupedMatMul`` (version 1); also the schema's doc.
GROUPED_MATMUL_SPEC = """\
Per-group matrix product over rows sorted by group (an MoE layer's experts).

Inputs:
  X        T [S, K]: rows sorted by group (expert).
  W        T [G, K, N]: one K x N matrix per group.
  offsets  int32 or int64 [G]: inclusive prefix sum of the group sizes, i.e.
           offsets[g] is the end (exclusive) of group g's rows; non-decreasing,
           offsets[G-1] <= S. Group g owns rows [offsets[g-1], offsets[g]) with
           offsets[-1] := 0; empty groups are allowed.
Output:
  Y        T [S, N]: Y[r] = X[r] @ W[g] for each row r of group g; rows
           r >= offsets[G-1] (owned by no group) are zero.
T is float32, float16 or bfloat16; no attributes. It is torch's
grouped_mm(X, W, offs=offsets) for a 2-D X and a 3-D W (transformers'
grouped_mm_fallback).
"""


def _grouped_matmul_schema() -> onnx.defs.OpSchema:
    schema = onnx.defs.OpSchema
    return schema(
        "GroupedMatMul",
        MOEC_DOMAIN,
        1,
        doc=GROUPED_MATMUL_SPEC,
        inputs=[
            schema.FormalParameter("X", "T", "[S, K], rows sorted by group"),
            schema.FormalParameter("W", "T", "[G, K, N]"),
            schema.FormalParameter("offsets", "I", "[G], end row (exclusive) of each group"),
        ],
        outputs=[schema.FormalParameter("Y", "T", "[S, N]")],
        type_constraints=[
            ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float types"),
            ("I", ["tensor(int32)", "tensor(int64)"], "offset types"),
        ],
    )


def _moe_schema() -> onnx.defs.OpSchema:
    """The subset of onnxruntime's ``com.microsoft::MoE`` schema this exporter uses."""
    schema = onnx.defs.OpSchema
    param = schema.FormalParameter
    optional = schema.FormalParameterOption.Optional
    attr = schema.AttrType
    return schema(
        "MoE",
        MSFT_DOMAIN,
        1,
        doc="onnxruntime contrib Mixture of Experts (registered here so onnxscript can build it).",
        inputs=[
            param("input", "T", "[num_tokens, hidden] or [batch, seq, hidden]"),
            param("router_probs", "T", "[num_tokens, num_experts], router logits"),
            param("fc1_experts_weights", "T", "[E, fusion_size * inter, hidden]"),
            param("fc1_experts_bias", "T", "[E, fusion_size * inter]", param_option=optional),
            param("fc2_experts_weights", "T", "[E, hidden, inter]"),
            param("fc2_experts_bias", "T", "[E, hidden]", param_option=optional),
            param("fc3_experts_weights", "T", "[E, inter, hidden]", param_option=optional),
            param("fc3_experts_bias", "T", "[E, inter]", param_option=optional),
        ],
        outputs=[param("output", "T", "same shape as input")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float types")],
        attributes=[
            schema.Attribute("activation_type", attr.STRING, "relu, gelu, silu, swiglu or identity", required=False),
            schema.Attribute("activation_alpha", attr.FLOAT, "swiglu alpha", required=False),
            schema.Attribute("activation_beta", attr.FLOAT, "swiglu beta", required=False),
            schema.Attribute("k", attr.INT, "experts per token", required=False),
            schema.Attribute("normalize_routing_weights", attr.INT, "renormalise top-k", required=False),
            schema.Attribute("swiglu_fusion", attr.INT, "0 separate, 1 interleaved, 2 concatenated", required=False),
            schema.Attribute("swiglu_limit", attr.FLOAT, "clamp limit", required=False),
            schema.Attribute("use_sparse_mixer", attr.INT, "sparse mixer routing", required=False),
        ],
    )


def register_onnx_schemas() -> None:
    """Registers ``com.microsoft::MoE`` and ``moec::GroupedMatMul`` with onnx (idempotent).

    onnxscript builds a node only for an op whose schema onnx knows.
    """
    for make in (_moe_schema, _grouped_matmul_schema):
        schema = make()
        if not onnx.defs.has(schema.name, schema.since_version, schema.domain):
            onnx.defs.register_schema(schema)


# ---------------------------------------------------------------------------
# Form ort: moec::sparse_moe_block -> router MatMul + com.microsoft::MoE
# ---------------------------------------------------------------------------


def _translate_sparse_moe_block(hidden_states, gate_weight, gate_up_proj, down_proj, top_k: int):
    """``moec::sparse_moe_block`` -> router MatMul + ``com.microsoft::MoE``."""
    msft = onnxscript.values.Opset(MSFT_DOMAIN, 1)
    num_experts, two_inter, hidden = (int(d) for d in gate_up_proj.shape)
    inter = two_inter // 2
    tokens = op.Reshape(hidden_states, op.Constant(value_ints=[-1, hidden]))  # [T, H]
    router_logits = op.MatMul(tokens, op.Transpose(gate_weight, perm=[1, 0]))  # [T, E]
    # [E, 2I, H] with rows (gate_0..gate_{I-1}, up_0..up_{I-1}) -> rows (gate_0, up_0, gate_1, up_1, ...).
    split = op.Reshape(gate_up_proj, op.Constant(value_ints=[num_experts, 2, inter, hidden]))
    paired = op.Transpose(split, perm=[0, 2, 1, 3])  # [E, I, 2, H]
    fc1 = op.Reshape(paired, op.Constant(value_ints=[num_experts, two_inter, hidden]))
    moe = msft.MoE(
        tokens,
        router_logits,
        fc1,
        None,
        down_proj,
        activation_type="swiglu",
        activation_alpha=1.0,
        activation_beta=0.0,
        swiglu_fusion=1,
        k=top_k,
        normalize_routing_weights=1,
    )
    return op.Reshape(moe, op.Shape(hidden_states))


# ---------------------------------------------------------------------------
# Form grouped_mm: transformers' grouped_mm -> moec::GroupedMatMul
# ---------------------------------------------------------------------------


def _translate_grouped_mm_fallback(input, weight, offs):
    """``transformers::grouped_mm_fallback(input, weight, offs)`` -> ``moec::GroupedMatMul``."""
    moec = onnxscript.values.Opset(MOEC_DOMAIN, 1)
    return moec.GroupedMatMul(input, weight, offs)


def _translate_aten_grouped_mm(self, mat2, offs=None, bias=None, out_dtype=None):
    """``aten::_grouped_mm`` (2-D x 3-D with offsets, no bias) -> ``moec::GroupedMatMul``."""
    if offs is None or bias is not None or out_dtype is not None:
        raise NotImplementedError("only aten::_grouped_mm(input[S,K], weight[G,K,N], offs) is translated")
    return _translate_grouped_mm_fallback(self, mat2, offs)


def translation_table(form: str) -> dict[Callable, Callable]:
    """The ``custom_translation_table`` torch.onnx needs for ``form``."""
    if form == "ort":
        return {torch.ops.moec.sparse_moe_block.default: _translate_sparse_moe_block}
    if form == "grouped_mm":
        table: dict[Callable, Callable] = {}
        if hasattr(torch.ops.transformers, "grouped_mm_fallback"):
            table[torch.ops.transformers.grouped_mm_fallback.default] = _translate_grouped_mm_fallback
        if hasattr(torch.ops.aten, "_grouped_mm"):
            table[torch.ops.aten._grouped_mm.default] = _translate_aten_grouped_mm
        return table
    return {}


# ---------------------------------------------------------------------------
# Export and post-processing
# ---------------------------------------------------------------------------


@dataclass
class ExportSummary:
    """What :func:`export` produced."""

    path: Path
    form: str
    nodes: int
    initializers: int
    parameter_tensors: int
    parameters: int
    weights_location: str | None
    opset: int


def _strip_metadata(model: ir.Model) -> None:
    """Drops metadata that carries local paths or FX dumps; keeps each node's ``namespace``."""
    for node in model.graph.all_nodes():
        for key in list(node.metadata_props):
            if key not in _KEPT_NODE_METADATA:
                del node.metadata_props[key]
        for value in node.outputs:
            value.metadata_props.clear()
    for value in [*model.graph.inputs, *model.graph.outputs, *model.graph.initializers.values()]:
        value.metadata_props.clear()


def _optimize(model: ir.Model, parameter_names: list[str]) -> None:
    """Runs onnxscript's optimiser without touching parameters.

    While it runs, parameters are graph inputs without values: constant
    folding then leaves them (and everything computed from them) alone, and
    initialiser deduplication cannot merge two equal ones (e.g. RMSNorm weights
    that are all ones) or read weights that are not there.
    """
    graph = model.graph
    hidden: list[tuple[ir.Value, Any]] = []
    for name in parameter_names:
        value = graph.initializers.pop(name)
        hidden.append((value, value.const_value))
        value.const_value = None
        graph.inputs.append(value)
    onnxscript.optimizer.optimize_ir(model)
    constants = dict(graph.initializers)
    graph.initializers.clear()
    for value, tensor in hidden:  # parameters first, in state_dict order
        graph.inputs.remove(value)
        value.const_value = tensor
        graph.register_initializer(value)
    for value in constants.values():
        graph.register_initializer(value)


def _annotate_moe_outputs(model: ir.Model) -> None:
    """Records that each ``com.microsoft::MoE`` output is typed and shaped like its input.

    onnx has no shape inference for the op, so nothing else fills it in.
    """
    for node in model.graph.all_nodes():
        if node.domain == MSFT_DOMAIN and node.op_type == "MoE":
            source, result = node.inputs[0], node.outputs[0]
            result.dtype = source.dtype
            if source.shape is not None:
                result.shape = ir.Shape(source.shape)


def _aligned(offset: int) -> int:
    return (offset + WEIGHTS_ALIGNMENT - 1) // WEIGHTS_ALIGNMENT * WEIGHTS_ALIGNMENT


def weights_path(output: Path) -> Path:
    """The external data file of the model ``output``: ``<stem>.weights`` beside it."""
    return output.with_name(output.stem + ".weights")


def _externalize(
    model: ir.Model,
    parameters: dict[str, torch.Tensor],
    output: Path,
    *,
    write: Path | None,
) -> str:
    """Points every parameter initialiser into ``<stem>.weights``; returns the location.

    With ``write`` the tensors (real ones) are written into that file, which
    the caller renames to ``<stem>.weights``; otherwise only the references
    are made.
    """
    location = weights_path(output).name
    offset = 0
    sink = open(write, "xb") if write else None
    try:
        for name, tensor in parameters.items():
            value = model.graph.initializers[name]
            length = tensor.numel() * tensor.element_size()
            if sink is not None:
                sink.seek(offset)
                sink.write(tensor.detach().contiguous().numpy().tobytes())
            value.const_value = ir.ExternalTensor(
                location,
                offset,
                length,
                value.dtype,
                shape=value.shape,
                name=name,
                base_dir=str(output.parent),
            )
            offset = _aligned(offset + length)
    finally:
        if sink is not None:
            sink.close()
    return location


def export(
    config,
    form: str,
    output: str | Path,
    *,
    batch: int = 2,
    seq: int = 8,
    dynamic: bool = False,
    weights: bool = True,
    seed: int = 0,
    model: MixtralLogits | None = None,
    metadata: dict[str, str] | None = None,
) -> ExportSummary:
    """Exports ``config`` in ``form`` to ``output``; see the module docstring.

    ``model`` may be passed to export an already built model (it must come from
    :func:`moec.model.build_model` with the same ``form``; whether it has
    weights then decides, not ``weights``). ``metadata`` is added to the
    model's ``metadata_props``.
    """
    register_onnx_schemas()
    output = Path(output)
    if dynamic and (batch < 2 or seq < 2):
        raise ValueError("--dynamic needs example sizes of at least 2 (torch.export specialises 0 and 1)")
    if model is None:
        model = build_model(config, form, weights=weights, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
    fake_mode = getattr(model.lm_head.weight, "fake_mode", None)
    weights = fake_mode is None
    if fake_mode is not None:  # torch.export then traces in the parameters' fake mode
        input_ids = fake_mode.from_tensor(input_ids)
    dynamic_shapes = None
    if dynamic:
        dynamic_shapes = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}}

    program = torch.onnx.export(
        model,
        (input_ids,),
        dynamo=True,
        input_names=["input_ids"],
        output_names=["logits"],
        dynamic_shapes=dynamic_shapes,
        custom_translation_table=translation_table(form),
        opset_version=ONNX_OPSET,
        optimize=False,
        verbose=False,
    )
    ir_model = program.model
    parameters = dict(model.named_parameters())
    missing = [name for name in parameters if name not in ir_model.graph.initializers]
    if missing:
        raise RuntimeError(f"parameters without an initialiser of the same name: {missing[:5]}")

    total_bytes = sum(t.numel() * t.element_size() for t in parameters.values())
    external = not weights or total_bytes > INLINE_WEIGHTS_LIMIT
    written = [output, weights_path(output)] if external and weights else [output]
    # The model and its weights go to temporary names, renamed together: a failure leaves the old pair whole.
    with replacing(*written) as temps:
        location = None
        if external:
            location = _externalize(ir_model, parameters, output, write=temps[1] if weights else None)
        _optimize(ir_model, list(parameters))
        _annotate_moe_outputs(ir_model)
        _strip_metadata(ir_model)
        ir_model.metadata_props.update(
            {
                "moec.form": form,
                "moec.attn_implementation": ATTN_IMPLEMENTATION,
                "moec.config": json.dumps(_config_fields(config), sort_keys=True),
                **({"moec.weights": location} if location else {}),
                **(metadata or {}),
            }
        )
        ir.save(ir_model, temps[0])
    graph = ir_model.graph
    return ExportSummary(
        path=output,
        form=form,
        nodes=len(graph),
        initializers=len(graph.initializers),
        parameter_tensors=len(parameters),
        parameters=sum(t.numel() for t in parameters.values()),
        weights_location=location,
        opset=ir_model.opset_imports.get("", 0),
    )


def _config_fields(config) -> dict[str, Any]:
    """The MixtralConfig fields that define the network (recorded in the file's metadata)."""
    keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "num_local_experts",
        "num_experts_per_tok",
        "max_position_embeddings",
        "rms_norm_eps",
        "sliding_window",
        "tie_word_embeddings",
        "router_aux_loss_coef",
        "hidden_act",
    )
    fields = {key: getattr(config, key, None) for key in keys}
    fields["rope_theta"] = config.rope_parameters["rope_theta"]
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moec.export",
        description="Export Hugging Face Mixtral to ONNX (see the module docstring).",
    )
    parser.add_argument("--config", required=True, help="preset name or JSON file of MixtralConfig fields")
    parser.add_argument("--form", choices=FORMS, default="ort", help="how the MoE layers appear (default: ort)")
    parser.add_argument("-o", "--output", required=True, help="output .onnx path")
    parser.add_argument("--batch", type=int, default=2, help="static batch size / example batch (default 2)")
    parser.add_argument("--seq", type=int, default=8, help="static sequence length / example length (default 8)")
    parser.add_argument("--dynamic", action="store_true", help="symbolic batch and seq dims ('batch', 'seq')")
    parser.add_argument(
        "--no-weights",
        action="store_true",
        help="allocate no parameters; reference them as external data in <output stem>.weights",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed for the random init (default 0)")
    args = parser.parse_args(argv)

    if args.batch < 1 or args.seq < 1:
        parser.error("--batch and --seq must be positive")
    if args.dynamic and (args.batch < 2 or args.seq < 2):
        parser.error("--dynamic needs example sizes of at least 2 (torch.export specialises 0 and 1)")
    output = Path(args.output)
    try:
        check_output(output)
        if not args.no_weights:  # written when the weights are too large to keep inline
            check_output(weights_path(output))
    except ValueError as exc:
        print(f"moec.export: error: -o {exc}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"moec.export: error: {exc}", file=sys.stderr)
        return 2
    if args.seq > config.max_position_embeddings:
        parser.error(f"--seq {args.seq} exceeds max_position_embeddings {config.max_position_embeddings}")
    start = time.monotonic()
    summary = export(
        config,
        args.form,
        output,
        batch=args.batch,
        seq=args.seq,
        dynamic=args.dynamic,
        weights=not args.no_weights,
        seed=args.seed,
        metadata={"moec.preset": args.config} if args.config in PRESETS else None,
    )
    elapsed = time.monotonic() - start
    print(
        f"wrote {summary.path} (form {summary.form}, opset {summary.opset}): {summary.nodes} nodes, "
        f"{summary.initializers} initializers, {summary.parameter_tensors} parameter tensors, "
        f"{summary.parameters:,} parameters"
        + (f", weights in {summary.weights_location}" if summary.weights_location else "")
        + f" [{elapsed:.1f} s]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
