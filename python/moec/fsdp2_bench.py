"""PyTorch FSDP2 training of the Hugging Face Mixtral, timed: the multi-GPU contender of moec's partitioned programs.

Usage (one process per GPU, from the repository root)::

    PYTHONPATH=python torchrun --nproc-per-node N -m moec.fsdp2_bench --config PRESET_OR_JSON \\
        --micro-batch B --seq S --compile {none,per-layer,model} --warmup W --steps N \\
        [--activation-checkpointing] --json OUT

The model is ``transformers.MixtralForCausalLM`` of ``--config`` (a preset of
:mod:`moec.presets`, e.g. ``mixtral-8x7b-2l``, or a JSON file of
``MixtralConfig`` fields), sdpa attention and the default experts
implementation, built on the meta device (so a model larger than one GPU
can be benchmarked) and then sharded as PyTorch's FSDP2 recipe does:

- ``fully_shard`` on every decoder layer, then on the root (the embedding,
  the final norm and the LM head), with
  ``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``: the
  sharded parameters are fp32 master weights, each layer's are all-gathered
  in bf16 for its forward and backward, and the gradients are
  reduce-scattered in fp32;
- ``--compile per-layer``: every decoder layer under ``torch.compile``
  (default mode) before it is sharded, as torchtitan's trainer compiles
  each block; ``--compile model``: the whole sharded model compiled in
  place (``model.compile()`` after ``fully_shard``, as Hugging Face
  Accelerate compiles the model it wrapped; Dynamo breaks the graph where
  it cannot trace FSDP2's hooks and runs them eagerly); ``none`` runs
  eagerly. Which compiled one is faster changes from run to run: on one
  H200 (2026-12-03, mixtral-8x7b-2l, B 4 × S 2048) ``model`` took
  0.154–0.168 s/step, ``per-layer`` 0.162–0.179 s and eager 0.171–0.172 s,
  so tools/multi-gpu.sh runs all three and compares with the fastest;
- ``--activation-checkpointing``: every decoder layer recomputed in the
  backward (torch's non-reentrant ``checkpoint_wrapper``), inside the
  compiled region with ``per-layer``.

After ``to_empty`` on the GPU the parameters are drawn from
N(0, initializer_range) (norm weights 1) on each rank's shard, and the
rotary embedding's buffers are made again from the config; the timings do
not depend on the values.

A step: the rank's micro-batch of ``B`` sequences of ``S`` token ids, the
model's own loss (cross-entropy + ``router_aux_loss_coef`` × the aux
loss), backward, ``clip_grad_norm_`` to 1.0 over the sharded gradients,
fused AdamW with ``moec train``'s hyperparameters and learning-rate
schedule (:func:`moec.bench.make_optimizer`). Tokens: random ids in
``[0, vocab)`` from ``numpy.random.default_rng(--seed)``; at step t rank r
reads blocks ``(t-1)·N·B + r·B + b`` (the order of moec's driver).

Timing: every step from a ``torch.cuda.synchronize()`` to the next, the
step's time is the slowest rank's (an all-reduce of the times, outside the
timed region); the result is the median of the ``--steps`` steps after
``--warmup`` untimed ones (the warm-up includes compilation). Reported per
GPU: tokens/s (``B·S`` / step), model TFLOP/s (DESIGN.md §5's count of
:func:`moec.bench.model_flops` for ``B``, ``S``: the same formula as
``python -m moec.bench`` and moec's programs), and the largest
``torch.cuda.max_memory_allocated`` over the ranks.

``--json OUT`` (rank 0) writes ``format`` ``moec-fsdp2-bench/1``: the setup
(config, ranks, B, S, compile, checkpointing, versions) and the result
(median step, tokens/s per GPU, TFLOP/s per GPU, peak bytes, every step's
time and loss). :func:`comparison` makes the table of several such files
and moec summaries (``tools/multi-gpu.sh`` uses it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from moec.atomic import check_output, write_atomically

FORMAT = "moec-fsdp2-bench/1"

#: ``--compile`` and the contender's name in the reports.
COMPILE_MODES = {"none": "fsdp2-eager", "per-layer": "fsdp2-compile", "model": "fsdp2-compile-model"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m moec.fsdp2_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mixtral-8x7b-2l", help="a preset name or a JSON file of MixtralConfig fields")
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per GPU per step")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per sequence")
    parser.add_argument("--compile", choices=COMPILE_MODES, default="none",
                        help="none (eager), per-layer (each decoder layer) or model (the whole sharded model)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute every decoder layer in the backward")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the result here (rank 0)")
    args = parser.parse_args(argv)
    for name in ("micro_batch", "seq", "steps"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must not be negative, got {args.warmup}")
    if args.json is not None:
        try:
            check_output(args.json)
        except ValueError as e:
            parser.error(f"--json {e}")
    return args


def build_sharded_model(config, *, compile_mode: str, checkpointing: bool, device):
    """The FSDP2-sharded ``MixtralForCausalLM`` (fp32 masters, bf16 compute, fp32 reduction) on ``device``."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import MixtralForCausalLM

    with torch.device("meta"):
        model = MixtralForCausalLM._from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    layers = model.model.layers
    for index, layer in enumerate(list(layers)):
        if checkpointing:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

            layer = checkpoint_wrapper(layer)
        if compile_mode == "per-layer":
            layer = torch.compile(layer)
        layers[index] = layer
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    model.to_empty(device=device)
    initialise(model, config, device)
    if compile_mode == "model":
        model.compile()
    return model


def initialise(model, config, device) -> None:
    """Fills the (sharded) parameters and remakes the buffers ``to_empty`` left undefined."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.fill_(1.0)  # the RMS norms' weights
            else:
                param.normal_(0.0, config.initializer_range)
        remade = set()
        for name, module in model.named_modules():
            if not type(module).__name__.endswith("RotaryEmbedding"):
                continue
            fresh = type(module)(config=config).to(device)
            for buffer, value in fresh.named_buffers(recurse=False):
                getattr(module, buffer).copy_(value)
                remade.add(f"{name}.{buffer}")
            if hasattr(module, "original_inv_freq"):
                module.original_inv_freq = module.inv_freq
        left = [name for name, _ in model.named_buffers() if name not in remade]
        if left:
            raise RuntimeError(f"buffers of the meta-device model not remade after to_empty: {', '.join(left)}")


def run(args: argparse.Namespace, config) -> dict:
    import torch
    import torch.distributed as dist

    from moec.bench import make_optimizer, model_flops
    from moec.train_reference import Optimizer, Schedule

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank)
    dist.init_process_group("nccl", device_id=device)
    rank, ranks = dist.get_rank(), dist.get_world_size()
    flops, active = model_flops(config, args.micro_batch, args.seq)
    leader = rank == 0
    if leader:
        print(f"fsdp2_bench: {args.config} on {ranks} GPU(s), micro-batch {args.micro_batch} x {args.seq} per GPU, "
              f"compile {args.compile}, activation checkpointing {'full' if args.activation_checkpointing else 'none'}; "
              f"{flops / 1e12:.4g} model TFLOP per GPU per step ({active:,.0f} active parameters); "
              f"{args.warmup} warm-up + {args.steps} timed steps", flush=True)

    torch.manual_seed(args.seed + rank)
    torch.cuda.reset_peak_memory_stats(device)
    model = build_sharded_model(config, compile_mode=args.compile,
                                checkpointing=args.activation_checkpointing, device=device)
    optimizer = make_optimizer(list(model.parameters()))
    total = args.warmup + args.steps
    schedule = Schedule(total_steps=total)
    max_norm = Optimizer().max_grad_norm
    blocks = total * ranks * args.micro_batch
    tokens = np.random.default_rng(args.seed).integers(0, config.vocab_size, size=(blocks, args.seq), dtype=np.int64)
    tokens = torch.from_numpy(tokens).to(device)

    def step(t: int) -> torch.Tensor:
        first = (t - 1) * ranks * args.micro_batch + rank * args.micro_batch
        ids = tokens[first:first + args.micro_batch]
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(t)
        loss = model(input_ids=ids, labels=ids, use_cache=False, output_router_logits=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    seconds, losses = [], []
    for t in range(1, total + 1):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = step(t)
        torch.cuda.synchronize(device)
        took = torch.tensor([time.perf_counter() - start], device=device, dtype=torch.float64)
        dist.all_reduce(took, op=dist.ReduceOp.MAX)
        seconds.append(float(took.item()))
        losses.append(float(loss.item()))
        if leader:
            print(f"fsdp2_bench: step {t} loss {losses[-1]:.4f} {seconds[-1]:.4f} s"
                  f"{' (warm-up)' if t <= args.warmup else ''}", flush=True)
    peak = torch.tensor([torch.cuda.max_memory_allocated(device)], device=device, dtype=torch.int64)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    timed = seconds[args.warmup:]
    median = statistics.median(timed)
    what = COMPILE_MODES[args.compile]
    result = {
        "what": what,
        "ranks": ranks,
        "step_s": median,
        "tokens_per_s_per_gpu": args.micro_batch * args.seq / median,
        "model_tflops_per_gpu": flops / median / 1e12,
        "peak_bytes": int(peak.item()),
        "step_times": seconds,
        "losses": losses,
    }
    report = {
        "format": FORMAT,
        "setup": {
            "config": args.config, "ranks": ranks, "micro_batch": args.micro_batch, "seq": args.seq,
            "tokens_per_gpu_per_step": args.micro_batch * args.seq, "compile": args.compile,
            "activation_checkpointing": args.activation_checkpointing, "warmup": args.warmup,
            "steps": args.steps, "seed": args.seed, "model_flops_per_gpu_per_step": flops,
            "active_parameters": active, "versions": versions(),
        },
        "result": result,
    }
    if leader:
        print(f"fsdp2_bench: {what} on {ranks} GPU(s): {median:.4f} s/step, "
              f"{result['tokens_per_s_per_gpu']:,.0f} tokens/s per GPU, "
              f"{result['model_tflops_per_gpu']:.1f} model TFLOP/s per GPU, "
              f"peak {result['peak_bytes'] / 2**30:.1f} GiB", flush=True)
        if args.json:
            write_atomically(args.json, (json.dumps(report, indent=1) + "\n").encode())
    dist.destroy_process_group()
    return report


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": str(torch.version.cuda), "gpu": torch.cuda.get_device_name()}


# ----------------------------------------------------------------------------
# The comparison with moec
# ----------------------------------------------------------------------------

def read_moec_summary(path: Path) -> dict:
    """The ``summary {json}`` line a moec program printed (a launcher's ``[rank 0]`` prefix allowed)."""
    for line in reversed(path.read_text().splitlines()):
        text = line.split("] ", 1)[1] if line.startswith("[rank ") else line
        if text.startswith("summary "):
            return json.loads(text[len("summary "):])
    raise ValueError(f"{path}: no 'summary {{...}}' line (did the program finish?)")


def comparison(fsdp_reports: list[Path], moec_runs: list[tuple[str, Path]], single: tuple[str, Path] | None) -> dict:
    """The rows (what, GPUs, s/step, tokens/s per GPU, TFLOP/s per GPU, peak GiB) and the ratios.

    ``moec_runs``: (name, output of the program's run); ``single``: the one-GPU
    program's run, the base of the scaling efficiency (tokens/s per GPU of a
    multi-GPU moec run over the one-GPU program's).
    """
    rows = []
    for path in fsdp_reports:
        r = json.loads(path.read_text())["result"]
        rows.append({"what": r["what"], "gpus": r["ranks"], "step_s": r["step_s"],
                     "tokens_per_s_per_gpu": r["tokens_per_s_per_gpu"],
                     "tflops_per_gpu": r["model_tflops_per_gpu"], "peak_bytes": r["peak_bytes"]})
    base = None
    for name, path in ([single] if single else []) + moec_runs:
        s = read_moec_summary(path)
        gpus = int(s.get("ranks", 1))
        row = {"what": name, "gpus": gpus, "step_s": s["median_step_s"],
               "tokens_per_s_per_gpu": s.get("tokens_per_s_per_gpu", s["tokens_per_s"]),
               "tflops_per_gpu": s["model_tflops"], "peak_bytes": s["peak_bytes"]}
        if single and name == single[0]:
            base = row["tokens_per_s_per_gpu"]
        elif base:
            row["scaling_efficiency"] = row["tokens_per_s_per_gpu"] / base
        rows.append(row)
    fsdp = {r["what"]: r for r in rows if r["what"].startswith("fsdp2-")}
    for row in rows:
        if not row["what"].startswith("fsdp2-"):
            for other, f in fsdp.items():
                row[f"vs_{other}"] = row["tokens_per_s_per_gpu"] / f["tokens_per_s_per_gpu"]
    result = {"rows": rows}
    if fsdp:
        result["fastest_fsdp2"] = max(fsdp.values(), key=lambda r: r["tokens_per_s_per_gpu"])["what"]
    return result


def comparison_table(result: dict) -> str:
    others = sorted({k for r in result["rows"] for k in r if k.startswith("vs_")})
    head = ["what", "GPUs", "s/step", "tokens/s per GPU", "model TFLOP/s per GPU", "peak GiB",
            "scaling efficiency"] + [k[3:].replace("fsdp2-", "vs FSDP2 ") for k in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["what"], str(r["gpus"]), f"{r['step_s']:.4f}", f"{r['tokens_per_s_per_gpu']:,.0f}",
                 f"{r['tflops_per_gpu']:.1f}", f"{r['peak_bytes'] / 2**30:.1f}",
                 f"{r['scaling_efficiency']:.1%}" if "scaling_efficiency" in r else ""]
        cells += [f"{r[k]:.3f}x" if k in r else "" for k in others]
        lines.append("| " + " | ".join(cells) + " |")
    fastest = result.get("fastest_fsdp2")
    if fastest:
        ratios = ", ".join(f"{r['what']} {r['vs_' + fastest]:.3f}x" for r in result["rows"] if "vs_" + fastest in r)
        lines += ["", f"fastest FSDP2 contender: {fastest}" + (f"; per GPU against it: {ratios}" if ratios else "")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from moec.presets import ConfigError, load_config

    # Before the process group starts: every rank would fail at once, each with a traceback.
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"fsdp2_bench: error: --config {e}", file=sys.stderr)
        return 2
    run(args, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
