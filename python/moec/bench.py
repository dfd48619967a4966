"""The training benchmark of DESIGN.md §5 on one GPU: Hugging Face eager, torch.compile and moec, side by side.

Usage (from the repository root)::

    PYTHONPATH=python python -m moec.bench --moec OUT/train_step --recipe fp32-master --json bench.json
    PYTHONPATH=python python -m moec.bench --recipe bf16 --skip-compile        # the PyTorch baselines only
    PYTHONPATH=python python -m moec.bench --smoke                             # tiny model, CPU, 2 steps

One process, one invocation, the same tokens for every contender:

(a) ``hf-eager``: ``transformers.MixtralForCausalLM`` of ``--config``
    (default ``mixtral-8x7b-2l``), ``attn_implementation="sdpa"`` and the
    default experts implementation (``grouped_mm``), training mode;
(b) ``hf-compile``: the same model under ``torch.compile`` (default mode);
(c) ``moec``: the program ``moec compile`` wrote (``--moec PROGRAM``), run as
    ``PROGRAM --tokens FILE --steps W+N --bench-warmup W --log CSV``; its last
    line ``summary {json}`` gives ``median_step_s``, ``tokens_per_s``,
    ``model_tflops`` and ``peak_bytes`` (what it allocated). Its micro-batch,
    sequence length, load balancing and numerics are compiled in: compile it
    for the same job (micro-batch 4, sequence 2048, aux_loss 0.02, and
    ``"bf16": true`` for the ``fp32-master`` recipe, ``"bf16": true,
    "param_dtype": "bf16"`` for the ``bf16`` recipe). The job it was compiled
    for is read from the ``manifest.json`` beside it (``moec compile`` writes
    it); a program compiled for another job is refused, naming each field
    that differs with both values, before anything runs.

Job: micro-batch ``--micro-batch`` (4) of ``--seq`` (2048) tokens, top-k and
experts from the config, ``aux_loss`` load balancing with coefficient 0.02
(the model's own ``loss``), ``clip_grad_norm_`` to 1.0, AdamW (betas 0.9/0.95,
eps 1e-8, weight decay 0.1 on the matrices, 0 on the norm weights) with
``moec train``'s schedule (linear warm-up over 2 steps to 1e-3, cosine to
1e-4 at step W+N). Hugging Face's model starts from its own initialisation
(``torch.manual_seed(--seed)``; ``delayed_param`` in numpy would take hours at
this size), so its losses are not moec's; the timings hardly depend on the
values (only through how evenly the router spreads the tokens).

Numerics recipes (``--recipe``):

``bf16``
    bf16 parameters, gradients and AdamW states (``torch.optim.AdamW(fused=True)``
    on the bf16 parameters): what one gets from a model loaded in bf16.
    Programs compiled with ``"param_dtype": "bf16"`` use this recipe (their
    AdamW is fused too: fp32 arithmetic, bf16 state).
``fp32-master``
    fp32 master parameters and fp32 AdamW states (fused); each step copies the
    masters into a second, bf16 model (explicit copies: autocast does not
    cover ``grouped_mm``, which would then run in fp32), runs forward and
    backward there in bf16, converts the gradients to fp32, clips and steps
    the masters. Programs compiled with ``"bf16": true`` use this recipe.

Tokens: ``(W + N) * micro_batch`` blocks of ``--seq`` random ids in
``[0, vocab)`` from ``numpy.random.default_rng(--seed)``, written as raw
little-endian int64 to a temporary file for moec; step ``t`` (1-based) of
every contender uses blocks ``(t - 1) * B + b`` (the order of moec's driver).

Timing: ``--warmup`` (3) steps, then ``--steps`` (10) timed steps, each from a
``torch.cuda.synchronize()`` to the next, by ``time.perf_counter``; the
median. Peak memory: ``torch.cuda.max_memory_allocated`` over the whole run
(model, optimizer states, activations), reset before each contender; each
model is freed before the next starts.

Model FLOPs per step (DESIGN.md §5) = ``6 * N_active * tokens + 12 * L * h *
S^2 * B / 2`` with ``h`` = heads x head_dim and ``N_active`` = every
parameter but the input embedding table (a lookup: no multiply-adds; the LM
head counts), expert weights counted at ``top_k / E``. For ``mixtral-8x7b-2l``
at B = 4, S = 2048: 919,687,168 active parameters (the 0.92 B of DESIGN.md;
1.05 B with the embedding table), 45.20 + 0.82 = 46.0 TFLOP, the count of
DESIGN.md and of moec's programs (``lib/Target/Cuda/TrainStepEmitter.cpp``).

Output: a markdown table (what, s/step, tokens/s, model TFLOP/s, peak GiB,
speed-up over HF eager) and, with ``--json OUT``, the setup and every
contender's step times and losses.

``--smoke``: the ``tiny`` config on the CPU, micro-batch 2 of 64 tokens, 1
warm-up and 2 timed steps, no torch.compile: checks the script end to end
where there is no GPU (no peak memory there).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from moec.atomic import write_atomically

RECIPES = ("bf16", "fp32-master")
AUX_LOSS_COEF = 0.02


@dataclass(frozen=True)
class Job:
    config: str
    micro_batch: int
    seq: int
    warmup: int
    steps: int
    recipe: str
    seed: int
    device: str

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.seq


class JobMismatch(Exception):
    """The compiled program is not for the benchmark's job."""


def compiled_job_fields(micro_batch: int, seq: int, recipe: str) -> dict[str, object]:
    """What the compiled job (the manifest's ``job``, moec's config keys) must say for this benchmark."""
    return {
        "micro_batch_size": micro_batch,
        "seq_length": seq,
        "bf16": True,
        "param_dtype": "bf16" if recipe == "bf16" else "fp32",
        "moe_load_balancing": "aux_loss",
        "router_aux_loss_coef": AUX_LOSS_COEF,
        "router_z_loss_coef": 0.0,
        # One GPU: a partitioned program runs on world_size ranks.
        "world_size": 1,
    }


def same_value(got: object, wanted: object) -> bool:
    """Whether a manifest value is the wanted one (numbers as numbers: JSON may print 0 for 0.0)."""
    if isinstance(wanted, float):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and math.isclose(got, wanted, rel_tol=1e-12)
    return type(got) is type(wanted) and got == wanted


def check_compiled_job(program: Path, micro_batch: int, seq: int, recipe: str) -> None:
    """Raises JobMismatch unless ``program``'s manifest says it was compiled for this benchmark's job."""
    path = program.parent / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise JobMismatch(f"no {path} beside '{program}': benchmark a program as moec compile wrote it") from None
    except json.JSONDecodeError as e:
        raise JobMismatch(f"{path} is not JSON: {e}") from None
    if manifest.get("format") != "moec-compile/3" or not isinstance(manifest.get("job"), dict):
        raise JobMismatch(f"{path} is not a moec-compile/3 manifest with a job "
                          f"(format {manifest.get('format')!r}): recompile the program")
    compiled = manifest["job"]
    wrong = []
    for key, wanted in compiled_job_fields(micro_batch, seq, recipe).items():
        got = compiled.get(key)
        if not same_value(got, wanted):
            wrong.append(f"{key}: compiled {json.dumps(got)}, this benchmark runs {json.dumps(wanted)}")
    if wrong:
        raise JobMismatch(f"'{program}' was compiled for another job (recipe {recipe}):\n  " + "\n  ".join(wrong))


@dataclass
class Result:
    what: str
    step_s: float
    tokens_per_s: float
    model_tflops: float
    peak_bytes: int | None
    step_seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------
# Model FLOPs
# ----------------------------------------------------------------------------

def parameter_counts(config) -> dict[str, int]:
    """Total, embedding-table and expert parameter counts of ``MixtralForCausalLM(config)`` (meta device)."""
    import torch
    from transformers import MixtralForCausalLM

    with torch.device("meta"):
        model = MixtralForCausalLM(config)
    counts = {"total": 0, "embedding": 0, "expert": 0}
    for name, param in model.named_parameters():
        counts["total"] += param.numel()
        if name == "model.embed_tokens.weight":
            counts["embedding"] += param.numel()
        elif ".mlp.experts." in name:
            counts["expert"] += param.numel()
    return counts


def model_flops(config, micro_batch: int, seq: int) -> tuple[float, float]:
    """(model FLOPs per step, active parameters) by DESIGN.md §5's formula (see the module docstring)."""
    counts = parameter_counts(config)
    ratio = config.num_experts_per_tok / config.num_local_experts
    active = counts["total"] - counts["embedding"] - (1.0 - ratio) * counts["expert"]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = config.num_attention_heads * head_dim
    attention = 12.0 * config.num_hidden_layers * width * seq * seq * micro_batch / 2
    return 6.0 * active * micro_batch * seq + attention, active


# ----------------------------------------------------------------------------
# Hugging Face contenders
# ----------------------------------------------------------------------------

def build_model(config, dtype, device: str):
    """``MixtralForCausalLM`` with parameters of ``dtype`` (buffers as Hugging Face makes them), sdpa attention."""
    import torch
    from transformers import MixtralForCausalLM

    with torch.device(device):
        model = MixtralForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.train()


def make_optimizer(params):
    """Fused AdamW with ``moec train``'s hyperparameters; weight decay on the rank >= 2 parameters only."""
    import torch

    from moec.train_reference import Optimizer

    opt = Optimizer()
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": opt.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=0.0,
        betas=(opt.beta1, opt.beta2),
        eps=opt.eps,
        fused=True,
    )


def run_hf(job: Job, config, tokens: np.ndarray, flops: float, *, compile: bool) -> Result:
    """Trains ``job.total_steps`` steps of Hugging Face's model; times the last ``job.steps``."""
    import torch

    from moec.train_bf16 import step_blocks
    from moec.train_reference import Optimizer, Schedule

    cuda = job.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(job.seed)
    compute = build_model(config, torch.bfloat16, job.device)
    copies = list(compute.parameters())
    if job.recipe == "fp32-master":
        masters = list(build_model(config, torch.float32, job.device).parameters())
        with torch.no_grad():  # the masters own the initial values
            for shadow, param in zip(copies, masters):
                shadow.copy_(param)
        for param in masters:  # filled from the bf16 gradients each step
            param.grad = torch.zeros_like(param)
    else:
        masters = copies
    optimizer = make_optimizer(masters)
    forward = torch.compile(compute) if compile else compute
    schedule = Schedule(total_steps=job.total_steps)
    max_norm = Optimizer().max_grad_norm
    ids_all = torch.from_numpy(tokens).to(job.device)

    def step(t: int) -> torch.Tensor:
        ids = ids_all[step_blocks(t, job.micro_batch, len(tokens))]
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(t)
        if masters is not copies:
            with torch.no_grad():
                for shadow, param in zip(copies, masters):
                    shadow.copy_(param)
        loss = forward(input_ids=ids, labels=ids, use_cache=False, output_router_logits=True).loss
        loss.backward()
        if masters is not copies:
            with torch.no_grad():
                for shadow, param in zip(copies, masters):
                    param.grad.copy_(shadow.grad)
                    shadow.grad = None
        torch.nn.utils.clip_grad_norm_(masters, max_norm)
        optimizer.step()
        if masters is copies:
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    seconds, losses = [], []
    for t in range(1, job.total_steps + 1):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = step(t)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return summarise("hf-compile" if compile else "hf-eager", job, flops, seconds[job.warmup:], losses, peak)


def summarise(what: str, job: Job, flops: float, timed: list[float], losses: list[float], peak) -> Result:
    median = statistics.median(timed)
    return Result(what, median, job.tokens_per_step / median, flops / median / 1e12, peak, timed, losses)


def release() -> None:
    """Frees what the last contender left on the GPU (compiled graphs included)."""
    import torch

    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------
# moec
# ----------------------------------------------------------------------------

def run_moec(program: Path, job: Job, token_file: Path, log: Path) -> Result:
    """Runs the compiled program on ``token_file``; its ``summary`` line gives the result."""
    command = [str(program), "--tokens", str(token_file), "--steps", str(job.total_steps),
               "--bench-warmup", str(job.warmup), "--log", str(log)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{tail}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("summary ")]
    if not lines:
        raise RuntimeError(f"{program} printed no 'summary {{json}}' line")
    summary = json.loads(lines[-1][len("summary "):])
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    return Result("moec", summary["median_step_s"], summary["tokens_per_s"], summary["model_tflops"],
                  summary["peak_bytes"], [float(r["step_seconds"]) for r in rows[job.warmup:]],
                  [float(r["loss"]) for r in rows])


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------

def table(results: list[Result]) -> str:
    baseline = next((r for r in results if r.what == "hf-eager"), None)
    lines = ["| what | s/step | tokens/s | model TFLOP/s | peak GiB | vs HF eager |", "|---|---|---|---|---|---|"]
    for r in results:
        peak = f"{r.peak_bytes / 2**30:.1f}" if r.peak_bytes is not None else "—"
        ratio = f"{baseline.step_s / r.step_s:.2f}x" if baseline else "—"
        lines.append(f"| {r.what} | {r.step_s:.4f} | {r.tokens_per_s:,.0f} | {r.model_tflops:.4g} | {peak} | {ratio} |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mixtral-8x7b-2l", help="preset or JSON (default mixtral-8x7b-2l)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--recipe", choices=RECIPES, default="bf16")
    parser.add_argument("--seed", type=int, default=1234, help="seeds the tokens and Hugging Face's initialisation")
    parser.add_argument("--moec", type=Path, metavar="PROGRAM", help="the program moec compile wrote")
    parser.add_argument("--skip-hf", action="store_true", help="leave out Hugging Face eager")
    parser.add_argument("--skip-compile", action="store_true", help="leave out torch.compile")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the setup and results here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny config on the CPU, micro-batch 2 x 64, 1 + 2 steps, no torch.compile")
    args = parser.parse_args(argv)
    if args.smoke:
        args.config, args.micro_batch, args.seq, args.warmup, args.steps = "tiny", 2, 64, 1, 2
        args.skip_compile = True
    if args.moec:
        if not args.moec.is_file():
            parser.error(f"no such program '{args.moec}'")
        try:
            check_compiled_job(args.moec, args.micro_batch, args.seq, args.recipe)
        except JobMismatch as e:
            parser.error(str(e))

    import torch

    from moec import presets

    if args.smoke:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        parser.error("no CUDA device (use --smoke to check the script on the CPU)")
    if args.steps < 1 or args.warmup < 0 or args.micro_batch < 1 or args.seq < 1:
        parser.error("--steps, --micro-batch and --seq must be positive, --warmup not negative")
    if args.skip_hf and args.skip_compile and not args.moec:
        parser.error("nothing to run: every contender is skipped and no --moec")
    job = Job(args.config, args.micro_batch, args.seq, args.warmup, args.steps, args.recipe, args.seed, device)
    config = presets.load_config(args.config)
    config.router_aux_loss_coef = AUX_LOSS_COEF
    flops, active = model_flops(config, job.micro_batch, job.seq)
    rng = np.random.default_rng(job.seed)
    tokens = rng.integers(0, config.vocab_size, size=(job.total_steps * job.micro_batch, job.seq), dtype=np.int64)
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{job.config} on {device_name}: micro-batch {job.micro_batch} x seq {job.seq} "
          f"({job.tokens_per_step} tokens/step), recipe {job.recipe}, {active:,.0f} active parameters, "
          f"{flops / 1e12:.4g} TFLOP/step; {job.warmup} warm-up + {job.steps} timed steps", flush=True)

    results: list[Result] = []
    contenders = [(False, args.skip_hf), (True, args.skip_compile)]
    for compile, skipped in contenders:
        if skipped:
            continue
        result = run_hf(job, config, tokens, flops, compile=compile)
        release()
        results.append(result)
        print(f"{result.what}: {result.step_s:.4f} s/step, loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}",
              flush=True)
    if args.moec:
        with tempfile.TemporaryDirectory() as tmp:
            token_file = Path(tmp) / "tokens.bin"
            token_file.write_bytes(tokens.astype("<i8").tobytes())
            result = run_moec(args.moec, job, token_file, Path(tmp) / "moec.csv")
        results.append(result)
        print(f"moec: {result.step_s:.4f} s/step, loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}",
              flush=True)
    print()
    print(table(results))
    if args.json:
        command = shlex.join(["python", "-m", "moec.bench", *(sys.argv[1:] if argv is None else argv)])
        setup = {**asdict(job), "device_name": device_name, "tokens_per_step": job.tokens_per_step,
                 "model_flops_per_step": flops, "active_parameters": active, "router_aux_loss_coef": AUX_LOSS_COEF,
                 "attention": "sdpa", "experts": config._experts_implementation, "versions": versions(),
                 "command": command}
        report = {"setup": setup, "results": [asdict(r) for r in results]}
        write_atomically(args.json, (json.dumps(report, indent=1) + "\n").encode("utf-8"))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
