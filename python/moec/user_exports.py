"""Export Hugging Face Mixtral to ONNX the way users do, not the way moec does.

Usage (from the repository root)::

    PYTHONPATH=python python -m moec.user_exports --form mask-sdpa --dynamic -o model.onnx
    PYTHONPATH=python python -m moec.user_exports --fixtures test/Inputs/user
    PYTHONPATH=python python -m moec.user_exports --form ort-hf --config mixtral-8x7b \\
        --dynamic --no-weights -o test/Inputs/mixtral-8x7b/user-ort-hf.onnx

Where :mod:`moec.export` shapes its exports for moec (one ``input_ids``
input, parameters kept by name, eager attention), this script does what a
user of transformers and torch.onnx would: the stock ``MixtralForCausalLM``
called with a tokenizer's output (``input_ids`` and ``attention_mask``, both
graph inputs), ``use_cache=False``, ``torch.onnx.export(..., dynamo=True)``
with its defaults (its own optimiser, which renames folded weights ``val_*``).
The forms:

``mask-eager``, ``mask-sdpa``
    the model with ``attn_implementation`` eager or sdpa and
    ``experts_implementation="batched_mm"`` (transformers' default
    ``grouped_mm`` does not export);
``ort-hf``
    each sparse MoE block replaced by a module that interleaves the gate and
    up rows of ``gate_up_proj`` in PyTorch (``chunk``, ``stack``,
    ``flatten``) and calls one custom op that the export translates to
    onnxruntime's ``com.microsoft::MoE``. Exported with ``optimize=False``
    (as a model without weights must be), then optimised with the
    parameters as external data, so the interleave stays in the graph as
    ``Split``/``Unsqueeze``/``Concat``/``Reshape`` on Hugging Face-layout
    initialisers;
``ort-hf-bf16``
    the expert weights kept in bf16 (as the published checkpoint stores
    them); the custom op's translation casts them to float and interleaves
    (``Cast``, then ``Reshape``/``Transpose``/``Reshape``; fc2: ``Cast``);
``ort-hf-transposed``
    the expert weights stored the way a grouped GEMM reads them,
    ``gate_up_proj`` [E, H, 2I] and ``down_proj`` [E, I, H] (the layout
    torch.onnx's optimiser folds the stock model's weights into); the
    translation transposes and interleaves them (``Transpose``, then
    ``Reshape``/``Transpose``/``Reshape``; fc2: ``Transpose``). These two
    arrange the weights in the translation, not in PyTorch: torch.export
    folds a conversion or transpose of a parameter into a new constant
    (``_to_copy_2``, ``transpose_4``), which moec reads as a renamed weight;
``ort-hf-fused``
    the block hands ``gate_up_proj`` to onnxruntime's MoE as it is, gate rows
    then up rows (``swiglu_fusion=2``); onnxruntime's CPU provider runs only
    ``swiglu_fusion=1``, so this file is checked on onnx's reference
    evaluator with the MoE op in numpy (``moec.check_ort --numpy-moe``);
``ort-hf-fc3``
    the block splits ``gate_up_proj`` (``chunk``) and hands the gate rows as
    fc1 and the up rows as fc3 (``swiglu_fusion=0``: a ``Split`` in the
    graph); checked like ``ort-hf-fused``;
``ort-hf-per-expert``
    the expert weights held as transformers 4.x held them, one
    ``nn.Linear`` per expert and role (``experts.{e}.w1`` [I, H] the gate,
    ``w3`` [I, H] the up, ``w2`` [H, I] the down, as the 4.x checkpoints
    name them), stacked in PyTorch (``torch.stack``) and the gate and up
    stacks interleaved for onnxruntime (``swiglu_fusion=1``): in the graph,
    ``Unsqueeze``/``Concat`` of the per-expert initialisers, then the
    interleave;
``custom-grouped-mm``
    ``experts_implementation="grouped_mm"`` with transformers' grouped matmul
    translated to an op of the user's own domain, ``custom::GroupedGemm``
    (the semantics of ``moec::GroupedMatMul``), which moec imports with
    ``--custom-op custom::GroupedGemm=grouped_matmul``.

Every form takes ``attention_mask``; ``--dynamic`` makes batch and sequence
symbolic. ``--no-weights`` builds the model with fake parameters and stores
every parameter as an external-data reference to a file that is not written.
Node metadata (stack traces with local paths) is dropped; nothing else is
changed.

``--fixtures DIR`` writes the tiny test models of ``test/Inputs/user`` and
their inputs (``data_b2s8``, ``data_b1s13``: ``input_0.pb`` token ids,
``input_1.pb`` the all-ones mask, ``output_0.pb`` PyTorch's logits), and
checks each file against PyTorch with onnxruntime (``custom-grouped-mm``:
onnx's reference evaluator with a numpy grouped matmul; ``ort-hf-fused``:
with a numpy MoE; ``ort-hf-bf16``: against PyTorch's model with the same
bf16 expert weights).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript
import onnxscript.optimizer
import torch
from onnxscript import opset18 as op
from transformers import MixtralConfig, MixtralForCausalLM

from moec.check_ort import reference_evaluator
from moec.export import MSFT_DOMAIN, _optimize, register_onnx_schemas
from moec.presets import load_config

FORMS = ("mask-eager", "mask-sdpa", "ort-hf", "ort-hf-bf16", "ort-hf-transposed", "ort-hf-fused",
         "ort-hf-fc3", "ort-hf-per-expert", "custom-grouped-mm")

#: The forms whose MoE blocks are onnxruntime's com.microsoft::MoE.
ORT_FORMS = ("ort-hf", "ort-hf-bf16", "ort-hf-transposed", "ort-hf-fused", "ort-hf-fc3", "ort-hf-per-expert")

#: The forms onnxruntime's CPU provider cannot run (checked on onnx's reference evaluator).
NOT_ON_ORT_CPU = ("ort-hf-fused", "ort-hf-fc3")

#: The domain and name of the user's grouped matmul in form custom-grouped-mm.
CUSTOM_DOMAIN = "custom"
CUSTOM_OP = "GroupedGemm"

#: A smaller Mixtral than the preset ``tiny``, so that each fixture is tens of KB.
SMALL = dict(
    vocab_size=128,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    num_local_experts=4,
    num_experts_per_tok=2,
    max_position_embeddings=64,
    rope_theta=1e6,
    tie_word_embeddings=False,
)

#: (batch, seq) of each fixture data set; the static fixtures use the first.
SHAPES = ((2, 8), (1, 13))
SEED = 0
REL_L2_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------
# Form ort-hf: the user's MoE block and its translation
# ---------------------------------------------------------------------------


@torch.library.custom_op("user::mixtral_moe", mutates_args=())
def mixtral_moe(hidden: torch.Tensor, router: torch.Tensor, fc1: torch.Tensor, fc2: torch.Tensor,
                fc3: torch.Tensor | None, top_k: int, fusion: int, stored: str) -> torch.Tensor:
    """Mixtral's sparse MoE block on onnxruntime's weight layout: fc1 rows gate0, up0, gate1, ...
    (``fusion`` 1), all gate rows then all up rows (``fusion`` 2), or the gate rows with fc3 the up
    rows (``fusion`` 0); fc2 [E, H, I].

    ``stored`` says how the block holds the weights when it does not hand over
    that layout: ``bf16`` (Hugging Face's layout in bf16) or ``transposed``
    ([E, H, 2I] and [E, I, H]); the op (and its translation) arranges them.
    """
    if stored:
        fc1, fc2 = _hf_layout(fc1, stored), _hf_layout(fc2, stored)
        fc1 = _interleave(fc1) if fusion == 1 else fc1
    x = hidden.reshape(-1, hidden.shape[-1])
    weights, experts = torch.topk(torch.softmax(x @ router.t(), dim=-1), top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    projected = torch.einsum("th,eoh->teo", x, fc1)
    if fusion == 0:
        gate, up = projected, torch.einsum("th,eoh->teo", x, fc3)
    elif fusion == 1:
        gate, up = projected[..., 0::2], projected[..., 1::2]
    else:
        gate, up = projected.chunk(2, dim=-1)
    out = torch.einsum("tei,ehi->teh", torch.nn.functional.silu(gate) * up, fc2)
    chosen = out.gather(1, experts.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return (chosen * weights.unsqueeze(-1)).sum(dim=1).reshape(hidden.shape)


@mixtral_moe.register_fake
def _mixtral_moe_fake(hidden, router, fc1, fc2, fc3, top_k, fusion, stored):
    return torch.empty_like(hidden)


def _hf_layout(weight: torch.Tensor, stored: str) -> torch.Tensor:
    """A stored expert weight in Hugging Face's layout and float32."""
    return weight.float() if stored == "bf16" else weight.transpose(1, 2)


def _interleave(gate_up: torch.Tensor) -> torch.Tensor:
    """[E, 2I, H] gate rows then up rows -> rows gate0, up0, gate1, up1, ..."""
    gate, up = gate_up.chunk(2, dim=1)  # [E, I, H] each
    return torch.stack((gate, up), dim=2).flatten(1, 2)


class OrtMoeBlock(torch.nn.Module):
    """A ``MixtralSparseMoeBlock`` as one ``user::mixtral_moe`` call, same parameters.

    ``form`` says how the block holds its expert weights and hands them to
    onnxruntime's MoE (module docstring).
    """

    def __init__(self, block: torch.nn.Module, form: str):
        super().__init__()
        self.top_k = block.top_k
        self.gate = block.gate
        self.experts = block.experts
        self.stored = {"ort-hf-bf16": "bf16", "ort-hf-transposed": "transposed"}.get(form, "")
        self.fusion = {"ort-hf-fused": 2, "ort-hf-fc3": 0}.get(form, 1)
        for name in ("gate_up_proj", "down_proj") if self.stored else ():
            weight = getattr(block.experts, name).detach()
            # The checkpoint's bf16, kept to save memory; or the grouped-GEMM layout.
            weight = weight.to(torch.bfloat16) if self.stored == "bf16" else weight.transpose(1, 2).contiguous()
            setattr(self.experts, name, torch.nn.Parameter(weight))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate_up, down, up = self.experts.gate_up_proj, self.experts.down_proj, None
        if not self.stored and self.fusion == 1:
            gate_up = _interleave(gate_up)
        if self.fusion == 0:
            gate_up, up = gate_up.chunk(2, dim=1)
        return torch.ops.user.mixtral_moe(hidden_states, self.gate.weight, gate_up, down, up, self.top_k,
                                          self.fusion, self.stored)


class PerExpertMoeBlock(torch.nn.Module):
    """A ``MixtralSparseMoeBlock`` with transformers 4.x's per-expert weights (``experts.{e}.w1``,
    ``w2``, ``w3``, each an ``nn.Linear``), the same values, stacked and interleaved in PyTorch
    for one ``user::mixtral_moe`` call (``swiglu_fusion=1``)."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.top_k = block.top_k
        self.gate = block.gate
        gate_up, down = block.experts.gate_up_proj.detach(), block.experts.down_proj.detach()
        inter = gate_up.shape[1] // 2
        self.experts = torch.nn.ModuleList()
        for e in range(gate_up.shape[0]):
            expert = torch.nn.Module()
            for name, weight in (("w1", gate_up[e, :inter]), ("w2", down[e]), ("w3", gate_up[e, inter:])):
                linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                linear.weight = torch.nn.Parameter(weight.clone())
                setattr(expert, name, linear)
            self.experts.append(expert)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate = torch.stack([expert.w1.weight for expert in self.experts])  # [E, I, H]
        up = torch.stack([expert.w3.weight for expert in self.experts])
        down = torch.stack([expert.w2.weight for expert in self.experts])  # [E, H, I]
        fc1 = torch.stack((gate, up), dim=2).flatten(1, 2)  # rows gate0, up0, gate1, ...
        return torch.ops.user.mixtral_moe(hidden_states, self.gate.weight, fc1, down, None, self.top_k, 1, "")


def _translate_mixtral_moe(hidden, router, fc1, fc2, fc3, top_k: int, fusion: int, stored: str):
    msft = onnxscript.values.Opset(MSFT_DOMAIN, 1)
    hidden_size = int(hidden.shape[-1])
    if stored:
        # The user's translation arranges the stored weights for onnxruntime:
        # a Cast to float or a Transpose, then the interleave.
        experts, rows = int(fc1.shape[0]), 2 * int(fc2.shape[1 if stored == "transposed" else 2])
        if stored == "bf16":
            fc1, fc2 = op.Cast(fc1, to=ir.DataType.FLOAT), op.Cast(fc2, to=ir.DataType.FLOAT)
        else:
            fc1, fc2 = op.Transpose(fc1, perm=[0, 2, 1]), op.Transpose(fc2, perm=[0, 2, 1])
        fc1 = op.Reshape(fc1, op.Constant(value_ints=[experts, 2, rows // 2, hidden_size]))
        fc1 = op.Transpose(fc1, perm=[0, 2, 1, 3])
        fc1 = op.Reshape(fc1, op.Constant(value_ints=[experts, rows, hidden_size]))
    x = op.Reshape(hidden, op.Constant(value_ints=[-1, hidden_size]))
    logits = op.MatMul(x, op.Transpose(router, perm=[1, 0]))
    extra = (None, fc3) if fc3 is not None else ()
    y = msft.MoE(x, logits, fc1, None, fc2, *extra, activation_type="swiglu", activation_alpha=1.0,
                 activation_beta=0.0, swiglu_fusion=fusion, k=top_k, normalize_routing_weights=1)
    return op.Reshape(y, op.Shape(hidden))


def _translate_grouped_mm(input, weight, offs):
    custom = onnxscript.values.Opset(CUSTOM_DOMAIN, 1)
    return custom.GroupedGemm(input, weight, offs)


def _grouped_gemm_schema() -> onnx.defs.OpSchema:
    schema = onnx.defs.OpSchema
    return schema(
        CUSTOM_OP, CUSTOM_DOMAIN, 1, doc="grouped matmul (torch grouped_mm)",
        inputs=[schema.FormalParameter("X", "T"), schema.FormalParameter("W", "T"),
                schema.FormalParameter("offsets", "I")],
        outputs=[schema.FormalParameter("Y", "T")],
        type_constraints=[("T", ["tensor(float)"], ""), ("I", ["tensor(int32)", "tensor(int64)"], "")],
    )


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------


def build(config: MixtralConfig, form: str, *, weights: bool) -> torch.nn.Module:
    """The stock model for ``form`` (seeded weights, or fake parameters)."""
    attn = "eager" if form == "mask-eager" else "sdpa"
    experts = "grouped_mm" if form == "custom-grouped-mm" else "batched_mm"

    def make() -> torch.nn.Module:
        model = MixtralForCausalLM._from_config(config, attn_implementation=attn, experts_implementation=experts)
        if form in ORT_FORMS:
            for layer in model.model.layers:
                layer.mlp = PerExpertMoeBlock(layer.mlp) if form == "ort-hf-per-expert" else OrtMoeBlock(layer.mlp, form)
        return model

    if weights:
        torch.manual_seed(SEED)
        model = make()
    else:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv

        with FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv()):
            model = make()
        model.model.rotary_emb = type(model.model.rotary_emb)(config)  # a buffer, not a parameter
    return model.eval()


def _drop_node_metadata(model: ir.Model) -> None:
    for node in model.graph.all_nodes():
        node.metadata_props.clear()
        for value in node.outputs:
            value.metadata_props.clear()
    for value in [*model.graph.inputs, *model.graph.outputs, *model.graph.initializers.values()]:
        value.metadata_props.clear()


def export(config: MixtralConfig, form: str, output: Path, *, dynamic: bool, weights: bool = True,
           batch: int = 2, seq: int = 8, model: torch.nn.Module | None = None) -> None:
    """Exports ``form`` of ``config`` to ``output`` (see the module docstring)."""
    register_onnx_schemas()
    if not onnx.defs.has(CUSTOM_OP, 1, CUSTOM_DOMAIN):
        onnx.defs.register_schema(_grouped_gemm_schema())
    model = model or build(config, form, weights=weights)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(SEED))
    mask = torch.ones_like(ids)
    fake_mode = getattr(model.lm_head.weight, "fake_mode", None)
    if fake_mode is not None:
        ids, mask = fake_mode.from_tensor(ids), fake_mode.from_tensor(mask)
    dynamic_shapes = None
    if dynamic:
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
        dynamic_shapes = {"input_ids": dims, "attention_mask": dims, "use_cache": None}
    table = {}
    if form in ORT_FORMS:
        table[torch.ops.user.mixtral_moe.default] = _translate_mixtral_moe
    if form == "custom-grouped-mm":
        table[torch.ops.transformers.grouped_mm_fallback.default] = _translate_grouped_mm
    # Without weights (and for the ort forms, whose interleave the optimiser
    # would fold into a new initialiser) the exporter must not read
    # parameters.
    external = form in ORT_FORMS or fake_mode is not None
    program = torch.onnx.export(
        model, (), kwargs={"input_ids": ids, "attention_mask": mask, "use_cache": False},
        dynamo=True, dynamic_shapes=dynamic_shapes, custom_translation_table=table or None,
        optimize=not external)
    ir_model = program.model
    output.parent.mkdir(parents=True, exist_ok=True)
    if external:
        # The parameters as external data (written only when real), then the
        # stock optimiser with the expert weights (all parameters, without
        # weights) hidden from it: it would fold their rearrangement into a
        # new initialiser, and it cannot read weights that are not there.
        location = output.stem + ".weights"
        parameters = dict(model.named_parameters())
        offset = 0
        sink = open(output.parent / location, "wb") if fake_mode is None else None
        for name, tensor in parameters.items():
            value = ir_model.graph.initializers[name]
            length = tensor.numel() * tensor.element_size()
            if sink is not None:
                sink.write(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
            value.const_value = ir.ExternalTensor(location, offset, length, value.dtype, shape=value.shape,
                                                  name=name, base_dir=str(output.parent))
            offset += length
        if sink is not None:
            sink.close()
        _optimize(ir_model, [name for name in parameters if fake_mode is not None or ".mlp.experts." in name])
        for node in ir_model.graph.all_nodes():  # onnx has no shape inference for MoE
            if node.domain == MSFT_DOMAIN and node.op_type == "MoE":
                node.outputs[0].dtype = node.inputs[0].dtype
                node.outputs[0].shape = ir.Shape(node.inputs[0].shape)
    _drop_node_metadata(ir_model)
    ir.save(ir_model, output)
    if external and fake_mode is None:
        # Tiny fixtures keep their weights inline: one self-contained file.
        proto = onnx.load(str(output))
        onnx.save(proto, str(output))
        (output.parent / location).unlink()


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


def _write_tensor(path: Path, array: np.ndarray, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx.numpy_helper.from_array(array, name=name).SerializeToString())


def fixtures(out: Path, forms: tuple[str, ...] = FORMS) -> int:
    """Writes the tiny fixtures of ``forms`` (and the data) into ``out`` and checks them against
    PyTorch."""
    import onnxruntime

    config = MixtralConfig(**SMALL)
    inputs = {}
    for batch, seq in SHAPES:
        generator = torch.Generator().manual_seed(1000 * batch + seq)
        ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
        inputs[(batch, seq)] = ids
    reference = build(config, "mask-eager", weights=True)
    expected = {}
    with torch.no_grad():
        for shape, ids in inputs.items():
            mask = torch.ones_like(ids)
            expected[shape] = reference(input_ids=ids, attention_mask=mask, use_cache=False).logits.numpy()
            data = out / f"data_b{shape[0]}s{shape[1]}"
            _write_tensor(data / "input_0.pb", ids.numpy(), "input_ids")
            _write_tensor(data / "input_1.pb", mask.numpy(), "attention_mask")
            _write_tensor(data / "output_0.pb", expected[shape], "logits")
    files = []
    for form in forms:
        for dynamic in (True, False) if form.startswith("mask-") else (True,):
            name = f"{form}-{'dynamic' if dynamic else 'static'}.onnx"
            export(config, form, out / name, dynamic=dynamic, batch=SHAPES[0][0], seq=SHAPES[0][1])
            files.append((name, form, dynamic))
    failed = 0
    for name, form, dynamic in files:
        want_of = expected
        if form == "ort-hf-bf16":
            # Its expert weights are rounded to bf16: PyTorch runs that model.
            model = build(config, form, weights=True)
            with torch.no_grad():
                want_of = {shape: model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        use_cache=False).logits.numpy() for shape, ids in inputs.items()}
        if form == "custom-grouped-mm":
            run = reference_evaluator(str(out / name), [f"{CUSTOM_DOMAIN}::{CUSTOM_OP}=grouped_matmul"])
            which = "onnx.reference"
        elif form in NOT_ON_ORT_CPU:
            # onnxruntime's CPU MoE runs only swiglu_fusion=1: the file runs
            # on onnx's reference evaluator with the MoE op in numpy.
            run = reference_evaluator(str(out / name), [], numpy_moe=True)
            which = "onnx.reference"
        else:
            run = onnxruntime.InferenceSession(str(out / name), providers=["CPUExecutionProvider"]).run
            which = "onnxruntime"
        for shape, ids in inputs.items():
            if not dynamic and shape != SHAPES[0]:
                continue
            (logits,) = run(None, {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())})
            want = want_of[shape].astype(np.float64)
            rel = float(np.linalg.norm(logits - want) / np.linalg.norm(want))
            ok = rel <= REL_L2_TOLERANCE
            failed += not ok
            print(f"{name:<32} b{shape[0]}s{shape[1]:<3} relative L2 ({which}) vs PyTorch {rel:.2e} "
                  f"{'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.user_exports", description=__doc__.splitlines()[0])
    parser.add_argument("--form", choices=FORMS, help="what to export (with --fixtures: only this fixture)")
    parser.add_argument("--config", help="preset name or JSON file of MixtralConfig fields (default: a small model)")
    parser.add_argument("-o", "--output", type=Path, help="output .onnx path")
    parser.add_argument("--dynamic", action="store_true", help="symbolic batch and sequence")
    parser.add_argument("--no-weights", action="store_true", help="fake parameters, as unwritten external data")
    parser.add_argument("--fixtures", type=Path, help="write the tiny fixtures and their data into this folder")
    args = parser.parse_args(argv)
    if args.fixtures:
        return fixtures(args.fixtures, (args.form,) if args.form else FORMS)
    if not args.form or not args.output:
        parser.error("--form and -o are needed (or --fixtures)")
    config = load_config(args.config) if args.config else MixtralConfig(**SMALL)
    export(config, args.form, args.output, dynamic=args.dynamic, weights=not args.no_weights)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
