"""Export Hugging Face Mixtral with torch.onnx's defaults, as a new user does.

Usage (from the repository root)::

    PYTHONPATH=python python -m moec.stock_export --fixtures test/Inputs/stock
    PYTHONPATH=python python -m moec.stock_export --config tiny --dynamic -o model.onnx

The stock ``MixtralForCausalLM`` with its default attention (``sdpa``),
``use_cache=False`` and ``experts_implementation="batched_mm"`` (the
default ``grouped_mm`` does not export), called on ``input_ids`` alone, and
``torch.onnx.export(model, (input_ids,), dynamo=True)`` with everything else
left at its default, including onnxscript's optimiser. What that optimiser
does to the parameters is the point of these files: it folds the
``Transpose`` in front of each linear layer's ``MatMul`` into a new
initialiser ``val_*`` stored [in, out], and merges initialisers of equal
values (at a fresh initialisation every RMSNorm weight is all ones, so the
five norms of a 2-layer model share one). Node metadata (stack traces that
carry local paths) is dropped; nothing else is changed.

``--fixtures DIR`` writes the tiny test models of ``test/Inputs/stock``
(preset ``tiny``, seed 0): ``sdpa-static.onnx`` (batch 2, seq 8) and
``sdpa-dynamic.onnx`` (symbolic batch and seq), with ``data_b2s8`` and
``data_b1s13`` (``input_0.pb`` token ids, ``output_0.pb`` PyTorch's logits).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch
from transformers import MixtralConfig, MixtralForCausalLM

from moec.presets import ConfigError, load_config

#: The experts implementation: transformers' default, grouped_mm, does not export.
EXPERTS_IMPLEMENTATION = "batched_mm"

#: The fixtures' input shapes: (batch, seq).
FIXTURE_SHAPES = ((2, 8), (1, 13))


def build(config: MixtralConfig, seed: int) -> MixtralForCausalLM:
    """The stock model, attention left at transformers' default."""
    config.use_cache = False
    config._experts_implementation = EXPERTS_IMPLEMENTATION
    torch.manual_seed(seed)
    return MixtralForCausalLM(config).eval()


def export(model: MixtralForCausalLM, output: Path, *, dynamic: bool) -> None:
    """torch.onnx.export(dynamo=True) with its defaults, node metadata dropped."""
    ids = torch.zeros(2, 8, dtype=torch.int64)
    shapes = None
    if dynamic:
        shapes = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}}
    program = torch.onnx.export(model, (ids,), dynamo=True, dynamic_shapes=shapes)
    proto = program.model_proto
    for node in proto.graph.node:
        del node.metadata_props[:]
    for values in (proto.graph.input, proto.graph.output, proto.graph.value_info):
        for value in values:
            del value.metadata_props[:]
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, output)


def _write_tensor(path: Path, array: np.ndarray, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx.numpy_helper.from_array(array, name).SerializeToString())


def fixtures(out: Path) -> int:
    model = build(load_config("tiny"), seed=0)
    export(model, out / "sdpa-static.onnx", dynamic=False)
    export(model, out / "sdpa-dynamic.onnx", dynamic=True)
    vocab = model.config.vocab_size
    for batch, seq in FIXTURE_SHAPES:
        ids = (np.arange(batch * seq, dtype=np.int64).reshape(batch, seq) * 37 + 11) % vocab
        with torch.no_grad():
            logits = model(torch.from_numpy(ids)).logits.numpy().astype(np.float32)
        data = out / f"data_b{batch}s{seq}"
        _write_tensor(data / "input_0.pb", ids, "input_ids")
        _write_tensor(data / "output_0.pb", logits, "logits")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.stock_export",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, help="write the test models into this folder")
    parser.add_argument("--config", default="tiny", help="preset name or config JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dynamic", action="store_true", help="symbolic batch and seq")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)
    if args.fixtures:
        return fixtures(args.fixtures)
    if not args.output:
        parser.error("give -o OUTPUT or --fixtures DIR")
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"moec.stock_export: error: {e}", file=sys.stderr)
        return 1
    export(build(config, args.seed), args.output, dynamic=args.dynamic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
