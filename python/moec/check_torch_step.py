"""One fp32 training step of a compiled program against PyTorch (Hugging Face transformers, fp32), at any shape.

    python -m moec.check_torch_step tokens --vocab 32000 --batch 2 --seq 2048 -o T    # T.bin, T.pb
    python -m moec.check_torch_step check --checkpoint CK --tokens T.bin --batch 2 --seq 2048 \\
        --adamw ADAMW.csv ADAMW_EXPORT --grads GRADS.csv GRADS_EXPORT [--lr 1e-3] [--grad-lr 1e9 --grad-epsilon 1e6]

The GPU suite's check at the benchmark's shape (tools/gpu-tests.sh, group
``bench-shape``): the CPU reference is too slow there, so the oracle is
``transformers.MixtralForCausalLM`` itself, fp32 on the GPU (TF32 off; eager
attention and experts),
started from the same ``save_pretrained`` checkpoint ``CK`` as the programs
(``train_step --init-from CK``), on the first ``--batch`` blocks of the raw
int64 token file (what the program's step 1 trains on). PyTorch's step:
``loss = ce + router_aux_loss_coef · aux`` (the model's own, labels = the
input ids), backward, ``clip_grad_norm_``, ``torch.optim.AdamW`` — moec's
defaults (betas 0.9/0.95, epsilon 1e-8, weight decay 0.1 on the parameters
of rank >= 2, clipping to 1.0), learning rate ``--lr`` (the program runs with
``--lr L --min-lr L --warmup-steps 0``).

Two runs of the compiled step are compared, each one step with
``--log LOG.csv --export-hf EXPORT`` (fp32):

``--adamw LOG EXPORT``: the program compiled with the default optimizer.
Its loss, ce_loss, aux_loss and grad_norm against PyTorch's, and for every
parameter the update (exported − initial) against PyTorch's AdamW update,
relative L2.

``--grads LOG EXPORT``: the program compiled with ``"weight_decay": 0,
"max_grad_norm": 0, "adam_epsilon": E`` and run with learning rate ``R``
(``--grad-epsilon E``, ``--grad-lr R``). AdamW's first step moves every
element by ``−R·g/(|g| + E)`` (the bias-corrected moments are ``g`` and
``g²``), a monotone function of the gradient ``g``: with E = 1e6 and R = 1e9
the update is about ``−1000·g``, far above the fp32 rounding of the
parameter, and ``g = y·E/(1 − |y|)`` with ``y = −update/R`` recovers it. Every
gradient is compared with PyTorch's, relative L2, as are the run's metrics.

``moec train --reference`` takes the same ``--init-from``, ``--log`` and
``--export-hf`` (its export is the folder itself, not ``step_1``), which
test/python/moec/check-torch-step.test uses to test this check on the tiny
model.

Exits 1 unless the metrics are within ``--metric-tolerance`` (relative),
every gradient within ``--tolerance`` and every update within
``--update-tolerance`` (relative L2; a NaN is not), and both exports hold
PyTorch's parameters with their shapes. The update's tolerance is the looser:
AdamW's first step is about ``−lr·sign(g)``, so an element whose gradient is
near zero flips a whole ``2·lr`` on a rounding difference (at the
benchmark's shape on an H200: updates 2.3e-4 at worst, gradients 1.5e-6). Needs torch and
transformers and a CUDA device (``--device cpu`` for small shapes). Bad input
(a missing or malformed log, a token file too short or outside the
checkpoint's vocabulary, an export that is no save_pretrained folder) exits 1
naming it, before PyTorch's step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from moec import (InputError, json_number, non_negative_float, non_negative_int, positive_float, positive_int,
                  read_text)
from moec.atomic import check_output, write_all_atomically
from moec.check_gpu import METRICS, read_log


def write_tokens(vocab: int, batch: int, seq: int, seed: int, out: Path) -> None:
    """``batch`` blocks of ``seq`` uniform token ids below ``vocab``: ``out``.bin (raw little-endian int64,
    ``train_step --tokens``) and ``out``.pb (onnx TensorProto, ``moec train --tokens``)."""
    import onnx.numpy_helper

    ids = np.random.default_rng(seed).integers(0, vocab, size=(batch, seq), dtype=np.int64)
    write_all_atomically({Path(f"{out}.bin"): ids.astype("<i8").tobytes(),
                          Path(f"{out}.pb"): onnx.numpy_helper.from_array(ids, "input_ids").SerializeToString()})


def step_one(path: Path) -> dict[str, float]:
    """The metrics of step 1 of a program's CSV log."""
    log = read_log(path)
    if 1 not in log:
        raise InputError(f"{path}: no row of step 1 (it holds steps {sorted(log)})")
    return log[1]


def read_ids(path: Path, batch: int, seq: int) -> np.ndarray:
    """The first ``batch`` blocks of ``seq`` ids of a raw int64 token file."""
    try:
        with open(path, "rb") as f:
            ids = np.fromfile(f, dtype="<i8", count=batch * seq)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    if ids.size < batch * seq:
        raise InputError(f"{path} holds {ids.size} tokens, fewer than batch {batch} x seq {seq}")
    return ids.reshape(batch, seq)


def hf_config(folder: Path, what: str) -> dict:
    """The config.json of the save_pretrained folder ``folder`` (the argument ``what``)."""
    path = folder / "config.json"
    if not path.is_file():
        raise InputError(f"{what} {folder}: not a save_pretrained folder (no config.json)")
    try:
        config = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON: {e}") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: not a JSON object")
    return config


def relative_l2(got, want) -> float:
    import torch

    norm = torch.linalg.vector_norm(want).item()
    diff = torch.linalg.vector_norm(got - want).item()
    return diff / norm if norm > 0 else diff


def torch_step(checkpoint: Path, ids, lr: float, device: str):
    """PyTorch's step from ``checkpoint``: (metrics, initial, gradients, AdamW-updated), fp64 tensors by name."""
    import torch
    from transformers import MixtralForCausalLM

    from moec.train_reference import Optimizer

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # Eager attention and experts: the model's plain fp32 arithmetic (as in
    # moec.train_reference), not a fused kernel's.
    model = MixtralForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="eager",
                                               experts_implementation="eager").to(device).train()
    params = dict(model.named_parameters())
    initial = {name: p.detach().double().clone() for name, p in params.items()}
    ids = torch.from_numpy(ids).to(device)
    result = model(input_ids=ids, labels=ids, use_cache=False, output_router_logits=True)
    with torch.no_grad():
        ce = model.loss_function(result.logits, ids, model.config.vocab_size)
    result.loss.backward()
    grads = {name: p.grad.detach().double().clone() for name, p in params.items()}
    opt = Optimizer()
    norm = torch.nn.utils.clip_grad_norm_(list(params.values()), opt.max_grad_norm)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params.values() if p.dim() >= 2], "weight_decay": opt.weight_decay},
            {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=lr, betas=(opt.beta1, opt.beta2), eps=opt.eps, foreach=False)
    optimizer.step()
    updated = {name: p.detach().double().clone() for name, p in params.items()}
    metrics = {"loss": result.loss.item(), "ce_loss": ce.item(), "aux_loss": result.aux_loss.item(),
               "grad_norm": norm.item()}
    del model, optimizer, result
    return metrics, initial, grads, updated


def exported(folder: Path, names, device: str):
    """The parameters of a program's ``--export-hf`` step folder, as transformers loads them (fp64, by name)."""
    import torch
    from transformers import MixtralForCausalLM

    model = MixtralForCausalLM.from_pretrained(folder, dtype=torch.float32)
    params = {name: p.detach().to(device).double() for name, p in model.named_parameters()}
    if sorted(params) != sorted(names):
        raise SystemExit(f"check_torch_step: error: {folder} holds parameters {sorted(set(params) ^ set(names))} "
                         "that PyTorch's model does not, or lacks them")
    return params


def compare_metrics(what: str, got: dict[str, float], want: dict[str, float], tolerance: float) -> bool:
    passed = True
    for key in METRICS:
        g, w = got[key], want[key]
        rel = abs(g - w) / abs(w) if w != 0 else abs(g - w)
        bad = not rel <= tolerance
        passed &= not bad
        print(f"{what} {key:9s} torch {w:.9g}  moec {g:.9g}  rel err {rel:.3e}{'  FAIL' if bad else ''}")
    return passed


def compare_tensors(what: str, got: dict, want: dict, tolerance: float) -> bool:
    passed, worst = True, (-1.0, "")
    for name in sorted(want):
        if got[name].shape != want[name].shape:
            print(f"{what} {name}: shape {tuple(got[name].shape)}, torch {tuple(want[name].shape)}  FAIL")
            passed = False
            continue
        rel = relative_l2(got[name], want[name])
        bad = not rel <= tolerance
        passed &= not bad
        print(f"{what} {name}: rel L2 {rel:.3e}{'  FAIL' if bad else ''}")
        if rel != rel or rel > worst[0]:
            worst = (float("nan") if rel != rel else rel, name)
    print(f"{what}: {len(want)} tensors, worst rel L2 {worst[0]:.3e} ({worst[1]})")
    return passed


def check(args) -> bool:
    # Every input read or looked at before PyTorch's step, which takes minutes at the benchmark's shape.
    ids = read_ids(args.tokens, args.batch, args.seq)
    vocab = json_number(hf_config(args.checkpoint, "--checkpoint").get("vocab_size"),
                        f"{args.checkpoint / 'config.json'}: vocab_size", integer=True, positive=True)
    if ids.min() < 0 or ids.max() >= vocab:
        bad = ids.min() if ids.min() < 0 else ids.max()
        raise InputError(f"{args.tokens}: token id {bad} is outside the checkpoint's vocabulary [0, {vocab})")
    (adamw_log, adamw_folder), (grads_log, grads_folder) = args.adamw, args.grads
    adamw_metrics, grads_metrics = step_one(adamw_log), step_one(grads_log)
    hf_config(adamw_folder, "--adamw")
    hf_config(grads_folder, "--grads")
    want, initial, grads, updated = torch_step(args.checkpoint, ids, args.lr, args.device)
    passed = True

    passed &= compare_metrics("adamw", adamw_metrics, want, args.metric_tolerance)
    got = exported(adamw_folder, initial, args.device)
    passed &= compare_tensors("adamw update", {n: got[n] - initial[n] for n in initial},
                              {n: updated[n] - initial[n] for n in initial}, args.update_tolerance)

    passed &= compare_metrics("grads", grads_metrics, want, args.metric_tolerance)
    got = exported(grads_folder, initial, args.device)
    recovered = {}
    for name in initial:
        y = (initial[name] - got[name]) / args.grad_lr
        recovered[name] = y * args.grad_epsilon / (1.0 - y.abs())
    passed &= compare_tensors("gradient", recovered, grads, args.tolerance)
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.check_torch_step", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("tokens", help="write random token blocks for train_step --tokens")
    p.add_argument("--vocab", type=positive_int, required=True)
    p.add_argument("--batch", type=positive_int, required=True)
    p.add_argument("--seq", type=positive_int, required=True)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("-o", "--out", type=Path, required=True, help="writes OUT.bin and OUT.pb")
    p = commands.add_parser("check", help="compare two one-step runs of a program with PyTorch's step")
    p.add_argument("--checkpoint", type=Path, required=True, help="the save_pretrained folder both runs started from")
    p.add_argument("--tokens", type=Path, required=True, help="the runs' raw int64 token file")
    p.add_argument("--batch", type=positive_int, required=True)
    p.add_argument("--seq", type=positive_int, required=True)
    p.add_argument("--adamw", type=Path, nargs=2, required=True, metavar=("LOG", "EXPORT"))
    p.add_argument("--grads", type=Path, nargs=2, required=True, metavar=("LOG", "EXPORT"))
    p.add_argument("--lr", type=positive_float, default=1e-3, help="the --adamw run's learning rate")
    p.add_argument("--grad-lr", type=positive_float, default=1e9, help="the --grads run's learning rate")
    p.add_argument("--grad-epsilon", type=positive_float, default=1e6, help="the --grads program's adam_epsilon")
    p.add_argument("--tolerance", type=non_negative_float, default=1e-4, help="relative L2 of every gradient")
    p.add_argument("--update-tolerance", type=non_negative_float, default=1e-3,
                   help="relative L2 of every AdamW update")
    p.add_argument("--metric-tolerance", type=non_negative_float, default=1e-4, help="relative error of each metric")
    p.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if args.command == "tokens":
        try:
            for suffix in (".bin", ".pb"):
                check_output(Path(f"{args.out}{suffix}"))
            write_tokens(args.vocab, args.batch, args.seq, args.seed, args.out)
        except (OSError, ValueError) as e:
            print(f"check_torch_step: error: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        passed = check(args)
    except InputError as e:
        print(f"check_torch_step: error: {e}", file=sys.stderr)
        return 1
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
