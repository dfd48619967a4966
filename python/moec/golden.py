"""Regenerate the golden fixtures of the tiny Mixtral under test/Inputs/tiny/.

Usage (from the repository root)::

    PYTHONPATH=python python -m moec.golden --listings docs/onnx-forms
    PYTHONPATH=python python -m moec.golden --out DIR  # fixtures elsewhere, no listings

Everything is deterministic (preset ``tiny``, seed 0), so a rerun reproduces
the files byte for byte. It writes:

* ``tiny-ort.onnx``, ``tiny-batched_mm.onnx``, ``tiny-grouped_mm.onnx`` -- the
  three export forms (see :mod:`moec.export`) of one model (same weights), with
  symbolic ``batch`` and ``seq``;
* ``tiny-ort-static.onnx`` -- the ``ort`` form for batch 2, seq 8;
* ``data_b2s8/`` and ``data_b1s13/`` -- ``input_0.pb`` (TensorProto int64
  ``input_ids``) and ``output_0.pb`` (TensorProto float32 ``logits``, from
  PyTorch in float32), onnx's test-data layout;
* with ``--listings DIR``: ``DIR/<form>-layer0.txt``, each fixture printed by
  ``moec.inspect_onnx --layer 0`` (the listings in docs/onnx-forms/).

The reference logits come from the stock ``MixtralForCausalLM`` (eager
attention, transformers' eager per-expert loop) with the same weights and an
all-ones attention mask. It then checks, and prints, how far each of these is
from the reference (max abs error and relative L2 error): the three PyTorch
variants that are exported, onnxruntime (CPU) on forms ``ort`` (dynamic and
static) and ``batched_mm``, and onnx's ReferenceEvaluator on form
``grouped_mm`` with :func:`grouped_matmul` as ``moec::GroupedMatMul`` (which
onnxruntime cannot run: it does not know the op). It exits non-zero when an
error exceeds the tolerance or the preset JSON files are stale.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch

from moec import presets
from moec.atomic import check_output, write_atomically
from moec.check_ort import grouped_matmul
from moec.export import export
from moec.model import FORMS, build_model

#: Default output directory, relative to the repository root.
DEFAULT_OUT = Path("test/Inputs/tiny")
PRESET = "tiny"
SEED = 0
#: (batch, seq) of each data set; its directory is data_b{batch}s{seq}.
SHAPES = ((2, 8), (1, 13))
STATIC_SHAPE = (2, 8)
#: The fixture models, tiny-<name>.onnx.
MODELS = (*FORMS, "ort-static")
#: Largest accepted errors against the PyTorch reference (float32 throughout).
MAX_ABS_TOLERANCE = 1e-5
REL_L2_TOLERANCE = 1e-5


@dataclass
class Comparison:
    """One candidate's logits against the reference on one input shape."""

    what: str
    shape: tuple[int, int]
    max_abs: float
    rel_l2: float

    @property
    def ok(self) -> bool:
        return self.max_abs <= MAX_ABS_TOLERANCE and self.rel_l2 <= REL_L2_TOLERANCE

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        batch, seq = self.shape
        return f"{self.what:<40} b{batch}s{seq:<3} max_abs {self.max_abs:.3e}  rel_l2 {self.rel_l2:.3e}  {verdict}"


def compare(what: str, shape: tuple[int, int], got: np.ndarray, want: np.ndarray) -> Comparison:
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape} != reference {want.shape}")
    diff = got.astype(np.float64) - want.astype(np.float64)
    rel = float(np.linalg.norm(diff) / np.linalg.norm(want.astype(np.float64)))
    return Comparison(what, shape, float(np.abs(diff).max()), rel)


def input_ids_for(shape: tuple[int, int], vocab_size: int) -> np.ndarray:
    """Deterministic token ids for one data set (seeded by its shape)."""
    batch, seq = shape
    generator = torch.Generator().manual_seed(1000 * batch + seq)
    return torch.randint(0, vocab_size, shape, generator=generator).numpy()


def _reference_evaluator(path: Path):
    """onnx's ReferenceEvaluator for ``path`` with ``moec::GroupedMatMul`` implemented."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class GroupedMatMul(OpRun):
        op_domain = "moec"

        def _run(self, x, w, offsets):
            return (grouped_matmul(x, w, offsets),)

    return ReferenceEvaluator(str(path), new_ops=[GroupedMatMul])


def _reference_model(config):
    """The stock MixtralForCausalLM with the fixtures' weights (eager everywhere)."""
    from transformers import MixtralForCausalLM

    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    torch.manual_seed(SEED)
    return MixtralForCausalLM(config).eval()


def routing_margin(model: torch.nn.Module, inputs: dict[tuple[int, int], np.ndarray]) -> float:
    """Smallest gap between the k-th and (k+1)-th router probability over all tokens and layers.

    Numerical noise far below it cannot change which experts a token goes to.
    """
    gaps: list[float] = []

    def record(module, args, output):
        probs = torch.softmax(output[0].float(), dim=-1).sort(dim=-1, descending=True).values
        k = module.top_k
        gaps.append((probs[:, k - 1] - probs[:, k]).min().item())

    hooks = [layer.mlp.gate.register_forward_hook(record) for layer in model.model.layers]
    try:
        with torch.no_grad():
            for ids in inputs.values():
                ids = torch.from_numpy(ids)
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return min(gaps)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def write_tensor(path: Path, array: np.ndarray, name: str) -> None:
    write_atomically(path, onnx.numpy_helper.from_array(array, name=name).SerializeToString())


def outputs(out: Path, listings: Path | None) -> list[Path]:
    """Every file :func:`generate` and :func:`write_listings` write."""
    files = [out / f"tiny-{name}.onnx" for name in MODELS]
    files += [out / f"data_b{batch}s{seq}" / name for batch, seq in SHAPES for name in ("input_0.pb", "output_0.pb")]
    if listings:
        files += [listings / f"{name}-layer0.txt" for name in MODELS]
    return files


def generate(out: Path) -> list[Comparison]:
    """Writes all fixtures to ``out`` and returns the checks (see the module docstring)."""
    import onnxruntime

    config = presets.load_config(PRESET)
    reference = _reference_model(config)
    inputs = {shape: input_ids_for(shape, config.vocab_size) for shape in SHAPES}
    with torch.no_grad():
        expected = {
            shape: reference(
                input_ids=torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)), use_cache=False
            ).logits.numpy()
            for shape, ids in inputs.items()
        }
    print(f"note: smallest router-probability gap between chosen and unchosen experts: "
          f"{routing_margin(reference, inputs):.2e}")
    for (batch, seq), ids in inputs.items():
        data = out / f"data_b{batch}s{seq}"
        write_tensor(data / "input_0.pb", ids, "input_ids")
        write_tensor(data / "output_0.pb", expected[(batch, seq)], "logits")

    checks: list[Comparison] = []
    files: dict[str, Path] = {}
    for form in FORMS:
        model = build_model(presets.load_config(PRESET), form, weights=True, seed=SEED)
        if not _same_weights(model, reference):
            raise AssertionError(f"form {form}: weights differ from the reference model's")
        with torch.no_grad():
            for shape, ids in inputs.items():
                checks.append(compare(f"torch {form} (as traced)", shape, model(torch.from_numpy(ids)).numpy(), expected[shape]))
        files[form] = out / f"tiny-{form}.onnx"
        export(config, form, files[form], dynamic=True, seed=SEED, model=model, metadata={"moec.preset": PRESET})
        if form == "ort":
            batch, seq = STATIC_SHAPE
            files["ort-static"] = out / "tiny-ort-static.onnx"
            export(config, form, files["ort-static"], batch=batch, seq=seq, seed=SEED, model=model,
                   metadata={"moec.preset": PRESET})

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    for name in ("ort", "ort-static", "batched_mm"):
        session = onnxruntime.InferenceSession(str(files[name]), options, providers=["CPUExecutionProvider"])
        for shape, ids in inputs.items():
            if name.endswith("-static") and shape != STATIC_SHAPE:
                continue
            (logits,) = session.run(None, {"input_ids": ids})
            checks.append(compare(f"onnxruntime tiny-{name}.onnx", shape, logits, expected[shape]))
    try:
        onnxruntime.InferenceSession(str(files["grouped_mm"]), options, providers=["CPUExecutionProvider"])
        print("note: onnxruntime loaded tiny-grouped_mm.onnx")
    except Exception as exc:  # onnxruntime raises its own Fail type
        print(f"note: onnxruntime cannot load tiny-grouped_mm.onnx: {str(exc).strip().splitlines()[0]}")
    evaluator = _reference_evaluator(files["grouped_mm"])
    for shape, ids in inputs.items():
        (logits,) = evaluator.run(None, {"input_ids": ids})
        checks.append(compare("onnx.reference tiny-grouped_mm.onnx", shape, logits, expected[shape]))
    return checks


def write_listings(fixtures: Path, listings: Path) -> None:
    """Writes ``<name>-layer0.txt`` (moec.inspect_onnx --layer 0) for each tiny ONNX fixture."""
    import onnx_ir as ir

    from moec.inspect_onnx import describe

    for name in MODELS:
        text = describe(ir.load(fixtures / f"tiny-{name}.onnx"), layer=0)
        write_atomically(listings / f"{name}-layer0.txt", text.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.golden", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--listings", type=Path, help="also write <form>-layer0.txt listings here (docs/onnx-forms)")
    args = parser.parse_args(argv)
    try:
        for path in outputs(args.out, args.listings):
            check_output(path)
    except ValueError as e:
        print(f"moec.golden: error: {e}", file=sys.stderr)
        return 1
    status = presets.main(["--check"])
    checks = generate(args.out)
    if args.listings:
        write_listings(args.out, args.listings)
    for check in checks:
        print(check)
    failed = [c for c in checks if not c.ok]
    if failed:
        print(f"{len(failed)} checks exceed max_abs {MAX_ABS_TOLERANCE} / rel_l2 {REL_L2_TOLERANCE}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
