"""PyTorch's bf16 loss curve on the fortunes data: the golden that moec's bf16 GPU program tracks.

Usage (from the repository root)::

    PYTHONPATH=python python -m moec.train_bf16 --steps 50 --out test/Inputs/train-bf16/tiny-fortunes-bf16.json
    PYTHONPATH=python python -m moec.train_bf16 --check LOG.csv \\
        --golden test/Inputs/train-bf16/tiny-fortunes-bf16.json
    PYTHONPATH=python python -m moec.train_bf16 --bf16-model --steps 50 \
        --out test/Inputs/train-bf16/tiny-fortunes-bf16-model.json                 # "param_dtype": "bf16"
    PYTHONPATH=python python -m moec.train_bf16 --fp32 --steps 3 --out fp32.json   # moec train --reference's numerics

The run
-------
Model, routing and initialisation are :mod:`moec.train_reference`'s: the
stock ``MixtralForCausalLM`` of the ``tiny`` preset (eager attention, eager
experts, training mode), Mixtral's routing with the ``aux_loss`` load
balancing (``router_aux_loss_coef`` 0.02), parameters by
:func:`moec.init.init_parameters` (``delayed_param``, seed 1234).

Data: the token blocks of ``--tokens`` (default
``test/Inputs/fortunes/train.pb``, onnx TensorProto int64 [blocks, 64]).
Step ``t`` (1-based) trains on blocks ``((t - 1) * B + b) mod blocks`` for
``b < B`` (micro-batch ``B`` = 2), labels = the input ids (the loss shifts
them): the block order of ``moec train`` and of the compiled program's driver.

Optimizer and schedule: ``moec train``'s defaults (tools/moec/TrainCommand.cpp),
which are also train_reference's: ``clip_grad_norm_`` to 1.0, then
``torch.optim.AdamW`` (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on the
rank >= 2 parameters and 0 on the norm weights, ``foreach=False``); learning
rate of step ``t``: linear warm-up over 2 steps to 1e-3, then cosine to 1e-4
at ``total_steps``, which is ``--steps`` (``moec train``'s ``--total-steps``
default).

Numerics ("fp32 master weights, bf16 compute"): the fp32 parameters are the
masters, and so are AdamW's moments. Each step copies every master into a
second model whose parameters are bf16 (``copy_``: round to nearest even; its
buffers, the rotary frequencies, stay fp32, as in a model Hugging Face loads
in bf16), runs forward and backward entirely in that model, in bf16, as
Hugging Face's code does it (the attention softmax, RMSNorm and the router
softmax in fp32 inside; the logits upcast to fp32 for the cross-entropy),
converts the bf16 gradients to fp32, clips them by their global norm in fp32
and applies AdamW to the masters. ``--fp32`` skips the copy: forward and
backward on the fp32 masters, which is what ``moec train --reference``
computes (when written: 3 steps, losses and gradient norms within 1e-7
relative, final parameters within 6e-7 relative L2).

``--bf16-model`` ("a model loaded in bf16", what moec compiles with
``"param_dtype": "bf16"``): no masters; the model's parameters are the fp32
initial values rounded once to bf16 (buffers stay fp32), forward and
backward as above, ``clip_grad_norm_`` on the bf16 gradients, then
``torch.optim.AdamW(fused=True)`` on the bf16 parameters, whose moments are
bf16 and whose arithmetic is fp32 inside (the fused kernel's).

Output (``--out``, written atomically): JSON with ``config`` (model fields,
recipe, data, optimizer, schedule, versions), ``command`` (this command line)
and ``steps``: one record per step with ``step``, ``loss``, ``ce_loss``,
``aux_loss``, ``grad_norm`` (before clipping) and ``lr``.

``--check LOG.csv --golden FILE.json`` compares a CSV log (the compiled
program's ``--log``: ``step,loss,ce_loss,aux_loss,z_loss,grad_norm,lr,...``;
``moec train --log`` writes the same leading columns) with a golden: one line
per step with the relative difference ``|moec - torch| / |torch|`` of loss,
ce_loss, aux_loss and grad_norm, then each metric's largest and median
difference. Each metric is gated on its own, at every step and in the
median over the steps (``TOLERANCES``: a broken gradient shows at every
step, while correct bf16 runs differ most at a few outlying steps). Exits 1
when a difference is outside its tolerance (a NaN is), when the learning
rates differ (another schedule), or when the steps are not the golden's.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from moec.atomic import write_atomically

PRESET = "tiny"
MODE = "aux_loss"
MICRO_BATCH = 2
DEFAULT_TOKENS = Path("test/Inputs/fortunes/train.pb")
#: Relative difference of the learning rates above which a log is taken to follow another schedule.
LR_RTOL = 1e-6
COMPARED = ("loss", "ce_loss", "aux_loss", "grad_norm")

#: ``--check``'s relative tolerances per metric: (at every step, median over the steps).
#: Set from the measured differences of correct bf16 runs from the golden
#: tiny-fortunes-bf16.json over its 50 steps, with headroom:
#:
#: * the compiled program (docs/cuda-backend.md): loss 9.2e-5 with fp32 masters,
#:   1.3e-4 as a bf16 model (against tiny-fortunes-bf16-model.json), at worst;
#: * ``moec train --reference --bf16`` (the CPU reference executor's bf16
#:   recipe, independent of PyTorch's and of the GPU program's), measured with this
#:   checker when these tolerances were set, at worst / median: loss
#:   1.3e-4 / 3.3e-5, ce_loss 1.2e-4 / 3.3e-5, aux_loss 1.0e-3 / 2.1e-4,
#:   grad_norm 1.4e-2 / 1.4e-3. The gradient norm of single steps moves by
#:   up to 1.4% (steps 39 and 50; 90% of the steps within 3.1e-3), so its
#:   every-step bound is loose and its median bound tight.
TOLERANCES = {
    "loss": (1e-3, 2e-4),
    "ce_loss": (1e-3, 2e-4),
    "aux_loss": (3e-3, 1e-3),
    "grad_norm": (5e-2, 5e-3),
}

#: What a golden's own rounding adds to the grad_norm tolerances, by recipe.
#: A bf16 model's golden norm is torch's clip_grad_norm_ of bf16 gradients,
#: computed in bf16: the per-tensor norms and the norm of those are each
#: rounded to bf16, up to 2^-8 relative each; moec's norm is fp32.
GOLDEN_GRAD_NORM_ROUNDING = {"bf16-model": 2 * 2.0 ** -8}


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------

def step_blocks(step: int, micro_batch: int, blocks: int) -> list[int]:
    """Indices of the token blocks that 1-based ``step`` trains on."""
    return [((step - 1) * micro_batch + b) % blocks for b in range(micro_batch)]


def bf16_copy(master):
    """A copy of ``master`` whose parameters are bf16 (buffers keep their dtype)."""
    import copy

    import torch

    compute = copy.deepcopy(master)
    for parameter in compute.parameters():
        parameter.data = parameter.data.to(torch.bfloat16)
    return compute


def train(tokens, steps: int, *, recipe: str, micro_batch: int = MICRO_BATCH, verbose: bool = True) -> list[dict]:
    """Trains ``steps`` steps on ``tokens`` (int64 [blocks, seq]) in ``recipe``; returns one record per step."""
    import torch

    from moec.train_reference import SEED, Optimizer, Schedule, build_model

    torch.manual_seed(0)  # nothing should draw from it; fixed anyway
    config = model_config()
    master = build_model(config, MODE, SEED)
    if recipe == "bf16-model":
        master = bf16_copy(master)
    copied = recipe == "bf16"  # a bf16 compute copy of fp32 masters
    compute = bf16_copy(master) if copied else master
    masters = list(master.parameters())
    copies = list(compute.parameters())
    opt, schedule = Optimizer(), Schedule(total_steps=steps)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in masters if p.dim() >= 2], "weight_decay": opt.weight_decay},
            {"params": [p for p in masters if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=schedule.lr(1),
        betas=(opt.beta1, opt.beta2),
        eps=opt.eps,
        **({"fused": True} if recipe == "bf16-model" else {"foreach": False}),
    )
    records = []
    for t in range(1, steps + 1):
        ids = torch.from_numpy(tokens[step_blocks(t, micro_batch, len(tokens))])
        lr = schedule.lr(t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        compute.zero_grad(set_to_none=True)
        if copied:
            with torch.no_grad():
                for shadow, param in zip(copies, masters):
                    shadow.copy_(param)
        result = compute(input_ids=ids, labels=ids, use_cache=False, output_router_logits=True)
        with torch.no_grad():
            ce = compute.loss_function(result.logits, ids, config.vocab_size)
        result.loss.backward()
        if copied:
            for shadow, param in zip(copies, masters):
                param.grad = shadow.grad.float()
        norm = torch.nn.utils.clip_grad_norm_(masters, opt.max_grad_norm)
        optimizer.step()
        record = {"step": t, "loss": result.loss.item(), "ce_loss": ce.item(), "aux_loss": result.aux_loss.item(),
                  "grad_norm": norm.item(), "lr": lr}
        if not all(map(_finite, record.values())):
            raise FloatingPointError(f"step {t}: not finite: {record}")
        records.append(record)
        if verbose:
            print(f"step {t:4d}  loss {record['loss']:.6f}  ce {record['ce_loss']:.6f}  "
                  f"aux {record['aux_loss']:.6f}  grad_norm {record['grad_norm']:.4f}  lr {lr:.3e}", flush=True)
    return records


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def model_config():
    from moec import presets

    return presets.load_config(PRESET)


def run_json(tokens_path: Path, tokens, steps: int, recipe: str, command: str, records: list[dict]) -> dict:
    """The output file's content (see the module docstring)."""
    import numpy as np
    import torch
    import transformers

    from moec import presets
    from moec.train_reference import SEED, Optimizer, Schedule

    numerics = {
        "fp32": "fp32: forward and backward on the fp32 masters",
        "bf16": "fp32 master weights and AdamW states; forward and backward on bf16 copies of the masters "
                "(Hugging Face's own fp32 upcasts inside); bf16 gradients converted to fp32, clipped and "
                "applied in fp32",
        "bf16-model": "bf16 parameters, gradients and AdamW states (torch.optim.AdamW fused, fp32 inside); "
                      "forward and backward as in bf16 (Hugging Face's own fp32 upcasts inside)",
    }[recipe]
    return {
        "config": {
            "preset": PRESET,
            "model": presets.PRESETS[PRESET],
            "attention": "eager",
            "experts": "eager",
            "recipe": recipe,
            "numerics": numerics,
            "moe_load_balancing": MODE,
            "router_aux_loss_coef": model_config().router_aux_loss_coef,
            "seed": SEED,
            "init": "delayed_param (moec.init.init_parameters)",
            "tokens": {"file": tokens_path.name, "sha256": hashlib.sha256(tokens_path.read_bytes()).hexdigest(),
                       "blocks": int(tokens.shape[0]), "seq": int(tokens.shape[1])},
            "micro_batch": MICRO_BATCH,
            "block_order": "step t (1-based) uses blocks ((t - 1) * micro_batch + b) mod blocks; labels = input ids",
            "steps": steps,
            "optimizer": {"name": "adamw", **asdict(Optimizer()), "weight_decay_params": "rank >= 2",
                          "clip_epsilon": 1e-6},
            "schedule": {**asdict(Schedule(total_steps=steps)), "kind": "linear warm-up, cosine to min_lr"},
            "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
                         "numpy": np.__version__},
        },
        "command": command,
        "steps": records,
    }


# ----------------------------------------------------------------------------
# Checking a log against a golden
# ----------------------------------------------------------------------------

def relative(got: float, want: float) -> float:
    return abs(got - want) / abs(want) if want != 0 else abs(got - want)


def tolerances_for(recipe: str) -> dict[str, tuple[float, float]]:
    """``TOLERANCES`` for a golden of ``recipe``, with that golden's own rounding added."""
    rounding = GOLDEN_GRAD_NORM_ROUNDING.get(recipe, 0.0)
    every, typical = TOLERANCES["grad_norm"]
    return {**TOLERANCES, "grad_norm": (every + rounding, typical + rounding)}


def median(values: list[float]) -> float:
    """The median; NaN when a value is NaN (so that it fails every bound)."""
    if any(v != v for v in values):
        return float("nan")
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def check(log_path: Path, golden_path: Path) -> bool:
    """Prints the comparison of a CSV log with a golden; True when it passes."""
    golden_json = json.loads(golden_path.read_text())
    golden = {r["step"]: r for r in golden_json["steps"]}
    tolerances = tolerances_for(golden_json["config"]["recipe"])
    with open(log_path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [key for key in ("step", *COMPARED, "lr") if rows and key not in rows[0]]
    if not rows or missing:
        print(f"train_bf16: error: {log_path}: no rows" if not rows else
              f"train_bf16: error: {log_path}: no column {', '.join(missing)}", file=sys.stderr)
        return False
    log = {int(row["step"]): row for row in rows}
    if len(log) != len(rows) or sorted(log) != sorted(golden):
        print(f"train_bf16: error: {log_path} holds steps {sorted(log)[:3]}...{sorted(log)[-3:]} "
              f"({len(rows)} rows); the golden holds steps 1..{len(golden)} once each", file=sys.stderr)
        return False
    print(f"step  {'torch loss':>11}  {'moec loss':>11}" + "".join(f"  {k:>10}" for k in COMPARED))
    diffs = {key: [] for key in COMPARED}
    failed = False
    for step in sorted(golden):
        want, got = golden[step], log[step]
        line = {key: relative(float(got[key]), want[key]) for key in COMPARED}
        outside = [key for key in COMPARED if not line[key] <= tolerances[key][0]]  # a NaN is outside
        lr_bad = relative(float(got["lr"]), want["lr"]) > LR_RTOL
        failed |= bool(outside) or lr_bad
        for key in COMPARED:
            diffs[key].append(line[key])
        note = (f"  FAIL {', '.join(outside)}" if outside else "") + \
            (f"  LR {float(got['lr']):.9g} != {want['lr']:.9g}" if lr_bad else "")
        print(f"{step:4d}  {want['loss']:11.6f}  {float(got['loss']):11.6f}"
              + "".join(f"  {line[k]:10.2e}" for k in COMPARED) + note)
    for key in COMPARED:
        every, typical = tolerances[key]
        worst = max(diffs[key], key=lambda d: (d != d, d))
        middle = median(diffs[key])
        bad = not (worst <= every and middle <= typical)
        failed |= bad
        print(f"{key:9s} relative difference: max {worst:.3e} (tolerance {every:.3g}), "
              f"median {middle:.3e} (tolerance {typical:.3g})" + ("  FAIL" if bad else ""))
    print("FAIL" if failed else "PASS")
    return not failed


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.train_bf16", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="training steps, also the schedule's length (default 50)")
    parser.add_argument("--tokens", type=Path, default=DEFAULT_TOKENS,
                        help=f"token blocks, onnx TensorProto int64 [blocks, seq] (default {DEFAULT_TOKENS})")
    recipe = parser.add_mutually_exclusive_group()
    recipe.add_argument("--fp32", action="store_true", help="forward and backward in fp32 (moec train --reference)")
    recipe.add_argument("--bf16-model", action="store_true",
                        help="bf16 parameters and AdamW states, no masters (moec's \"param_dtype\": \"bf16\")")
    parser.add_argument("--out", type=Path, help="write the run's JSON here")
    parser.add_argument("--check", type=Path, metavar="LOG.csv", help="compare this CSV log with --golden")
    parser.add_argument("--golden", type=Path, help="with --check: a JSON this command wrote")
    args = parser.parse_args(argv)
    if args.check:
        if not args.golden:
            parser.error("--check needs --golden")
        for path in (args.check, args.golden):
            if not path.is_file():
                print(f"train_bf16: error: no such file '{path}'", file=sys.stderr)
                return 1
        return 0 if check(args.check, args.golden) else 1
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    import torch

    from moec.tokens import read_blocks

    command = shlex.join(["python", "-m", "moec.train_bf16", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(1)
    tokens = read_blocks(args.tokens)
    recipe = "fp32" if args.fp32 else "bf16-model" if args.bf16_model else "bf16"
    records = train(tokens, args.steps, recipe=recipe)
    if args.out:
        text = json.dumps(run_json(args.tokens, tokens, args.steps, recipe, command, records), indent=1)
        write_atomically(args.out, (text + "\n").encode("utf-8"))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
