"""The training benchmark of DESIGN.md §5 on one GPU: Hugging Face, torchtitan and moec, interleaved over rounds.

Usage (from the repository root)::

    PYTHONPATH=python python -m moec.bench --moec OUT/train_step --recipe fp32-master --json bench.json
    PYTHONPATH=python python -m moec.bench --moec OUT/train_step --torchtitan-path DIR     # torchtitan from DIR
    PYTHONPATH=python python -m moec.bench --recipe bf16 --skip-compile --rounds 1     # eager baselines only
    PYTHONPATH=python python -m moec.bench --smoke                             # tiny model, CPU, 2 steps
    PYTHONPATH=python python -m moec.bench --report bench.json                 # the tables of a --json report

One process, one invocation, the same tokens for every contender:

(a) ``hf-eager``: ``transformers.MixtralForCausalLM`` of ``--config``
    (default ``mixtral-8x7b-2l``), ``attn_implementation="sdpa"`` and the
    default experts implementation (``grouped_mm``), training mode;
(b) ``hf-compile``: the same model under ``torch.compile`` (default mode);
(c) ``titan-eager``: torchtitan 0.3.0's Qwen3 MoE model classes configured as
    the same Mixtral (:mod:`moec.torchtitan_mixtral`: no qk-norm, no shared
    experts, ``GroupedExperts`` on ``torch._grouped_mm``, causal SDPA);
    **its router has no load-balancing loss**: its loss is the cross-entropy
    alone, where the others add the aux loss;
(d) ``titan-compile``: the same, every decoder block compiled on its own
    (``fullgraph=True``) and the loss compiled, as torchtitan's trainer does;
(e) ``moec``: the program ``moec compile`` wrote (``--moec PROGRAM``), run as
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

``--moec`` may be given several times as ``NAME=PROGRAM`` (names start with
``moec``: ``--moec moec-full=A --moec moec-auto=B``), e.g. one program per
activation-checkpointing policy; each runs in every round, and each gets its
speed-up table. For each, a memory table compares the bytes its memory plan
predicts (the manifest's ``state_bytes + parameter_copy_bytes + arena_bytes +
input_bytes``) with the device memory in use at its fullest (its
``device_used_bytes``: ``cudaMemGetInfo``, so the CUDA context and the
libraries' workspaces count too).

``--checkpointing full`` makes every PyTorch contender recompute each
decoder layer in the backward, as their users turn it on: Hugging Face's
``gradient_checkpointing_enable()`` (non-reentrant), torchtitan's full
activation checkpointing (each block in torch's ``checkpoint_wrapper``, and
its compile setting for it). A PyTorch contender that runs out of GPU memory
in the first round is reported as such and left out of every round.

``--skip-hf`` leaves out (a), ``--skip-compile`` (b) and (d), ``--skip NAME``
any one (repeatable). torchtitan is imported from ``--torchtitan-path DIR``
(put first on ``sys.path``: a ``pip install --target`` folder or an unpacked
wheel) or from the environment; where it (or ``spmd_types``, ``tyro``, which
its model files import) is missing, (c) and (d) are skipped with a message
saying what failed to import, and the rest runs.

Job: micro-batch ``--micro-batch`` (4) of ``--seq`` (2048) tokens, top-k and
experts from the config, ``aux_loss`` load balancing with coefficient 0.02
(the model's own ``loss``; none for torchtitan), ``clip_grad_norm_`` to 1.0,
AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on the matrices, 0 on the
norm weights) with ``moec train``'s schedule (linear warm-up over 2 steps to
1e-3, cosine to 1e-4 at step W+N). The PyTorch models start from their own
initialisations (``torch.manual_seed(--seed)``; ``delayed_param`` in numpy
would take hours at this size), so their losses are not moec's; the timings
hardly depend on the values (only through how evenly the router spreads the
tokens).

Numerics recipes (``--recipe``), the same for every PyTorch contender:

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
    the masters. Programs compiled with ``"bf16": true`` use this recipe;
    with ``"grad_dtype": "bf16"`` as well their weight gradients are rounded
    to bf16 like the contenders' (the norm and AdamW widen them as they read
    them), with the default ``"fp32"`` they keep the GEMMs' fp32 sums: more
    precise, 6 bytes per parameter more to move.

Tokens: ``(W + N) * micro_batch`` blocks of ``--seq`` random ids in
``[0, vocab)`` from ``numpy.random.default_rng(--seed)``, written as raw
little-endian int64 to a temporary file for moec; step ``t`` (1-based) of
every contender uses blocks ``(t - 1) * B + b`` (the order of moec's driver).

Rounds: ``--rounds`` (3) times, each contender in turn (the order above)
trains its ``--warmup`` (3) untimed and ``--steps`` (10) timed steps, each
step timed from a ``torch.cuda.synchronize()`` to the next by
``time.perf_counter``; a round's result is the median of its timed steps.
Every round builds each PyTorch model anew and frees it, compiled graphs
included, before the next contender starts: at the benchmark's shape one
model with its optimizer states takes 25 (bf16) to 60 GiB (fp32 masters);
four of them kept between rounds would not fit in the GPU's memory with fp32
masters, and in bf16 would leave too little beside moec's program. Peak memory:
``torch.cuda.max_memory_allocated`` over a contender's run (model, optimizer
states, activations), reset before each; the largest of the rounds.

Model FLOPs per step (DESIGN.md §5) = ``6 * N_active * tokens + 12 * L * h *
S^2 * B / 2`` with ``h`` = heads x head_dim and ``N_active`` = every
parameter but the input embedding table (a lookup: no multiply-adds; the LM
head counts), expert weights counted at ``top_k / E``. For ``mixtral-8x7b-2l``
at B = 4, S = 2048: 919,687,168 active parameters (the 0.92 B of DESIGN.md;
1.05 B with the embedding table), 45.20 + 0.82 = 46.0 TFLOP, the count of
DESIGN.md and of moec's programs (``lib/Analysis/ModelFlops.cpp``).
torchtitan's model has the same parameters (its QKV projection fused).

Output: one line per contender and round, then a markdown table (what,
s/step, tokens/s, model TFLOP/s, peak GiB, speed-up over HF eager, the
rounds' spread): s/step is the median of the rounds' medians, tokens/s and
TFLOP/s the medians of the rounds', the speed-up the median of the
same-round ratios. With ``--moec``, a second table: moec's speed-up over each
contender per round (the contender's s/step over moec's, both of that round)
and their median; then the fastest PyTorch contender. On a GPU, nvidia-smi
samples its power and SM clock while each contender runs
(:mod:`moec.gpu_power`; the samples drawing at least half the power limit):
a last table gives, per contender, the median power, SM clock and share of
samples at the software power cap over the rounds, and the energy per step
(power x s/step) and tokens per joule. ``--json OUT`` writes
``format`` ``moec-bench/2``: the setup, ``results`` (what the table says),
``ratios`` and ``rounds`` (every contender's result in every round, step
times and losses included); ``--report OUT`` prints the tables of such a file
again from its rounds (without torch).

``--smoke``: the ``tiny`` config on the CPU, micro-batch 2 of 64 tokens, 1
warm-up and 2 timed steps, no torch.compile: checks the script end to end
where there is no GPU (no peak memory there).
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import numpy as np

from moec import InputError, json_number, presets, read_text
from moec.atomic import check_output, write_atomically
from moec.gpu_power import PowerSampler
from moec.torchtitan_mixtral import TORCHTITAN_VERSION, TorchtitanUnavailable

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
    #: What the PyTorch contenders recompute in the backward: "none" or
    #: "full" (every decoder layer; moec's programs have theirs compiled in).
    checkpointing: str = "none"

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


def read_manifest(program: Path) -> dict:
    """The JSON object of the manifest.json beside ``program``; raises JobMismatch naming the file when it
    cannot be read or holds no JSON object."""
    path = program.parent / "manifest.json"
    try:
        manifest = json.loads(read_text(path))
    except InputError as e:
        raise JobMismatch(str(e)) from None
    except json.JSONDecodeError as e:
        raise JobMismatch(f"{path} is not JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise JobMismatch(f"{path} is not a moec-compile/3 manifest: its JSON is {type(manifest).__name__}, "
                          "not an object")
    return manifest


def same_value(got: object, wanted: object) -> bool:
    """Whether a manifest value is the wanted one (numbers as numbers: JSON may print 0 for 0.0)."""
    if isinstance(wanted, float):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and math.isclose(got, wanted, rel_tol=1e-12)
    return type(got) is type(wanted) and got == wanted


def check_compiled_job(program: Path, micro_batch: int, seq: int, recipe: str) -> None:
    """Raises JobMismatch unless ``program``'s manifest says it was compiled for this benchmark's job."""
    path = program.parent / "manifest.json"
    if not path.exists():
        raise JobMismatch(f"no {path} beside '{program}': benchmark a program as moec compile wrote it")
    manifest = read_manifest(program)
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
    #: moec only: the bytes its memory plan predicts (the manifest's state,
    #: arena, inputs and kernel scratch) and the device memory in use at
    #: its fullest (cudaMemGetInfo: CUDA context and library workspaces too).
    planned_bytes: int | None = None
    device_used_bytes: int | None = None
    #: The GPU while busy during the contender's run (moec.gpu_power: the
    #: median power and SM clock of the samples drawing at least half the
    #: power limit, and the share of them at the power cap); None without
    #: nvidia-smi, on the CPU, and in reports written before.
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: float | None = None
    power_capped_share: float | None = None


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
# PyTorch contenders
# ----------------------------------------------------------------------------

#: Every contender in the order a round runs them (moec last, as its program).
CONTENDERS = ("hf-eager", "hf-compile", "titan-eager", "titan-compile", "moec")
PYTORCH_CONTENDERS = CONTENDERS[:-1]


def build_hf_model(config, dtype, device: str):
    """``MixtralForCausalLM`` with parameters of ``dtype`` (buffers as Hugging Face makes them), sdpa attention."""
    import torch
    from transformers import MixtralForCausalLM

    with torch.device(device):
        model = MixtralForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.train()


def hf_forward_loss(model, *, compile: bool, checkpointing: bool = False) -> Callable:
    """The step's forward of Hugging Face's model, ``ids -> loss`` (cross-entropy + aux loss).

    ``checkpointing``: ``gradient_checkpointing_enable()`` (each decoder layer
    recomputed in the backward, non-reentrant), as its users turn it on.
    """
    import torch

    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    forward = torch.compile(model) if compile else model

    def run(ids):
        return forward(input_ids=ids, labels=ids, use_cache=False, output_router_logits=True).loss

    return run


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


@dataclass(frozen=True)
class PyTorchContender:
    """How to build and run one PyTorch contender."""

    what: str
    build: Callable  # (dtype) -> the model in training mode, parameters of dtype, on the job's device
    forward_loss: Callable  # (model) -> the step's forward, ids -> loss
    context: Callable = contextlib.nullcontext  # () -> context the contender's whole run is under


def pytorch_contenders(job: Job, config, torchtitan, skipped: set[str]) -> list[PyTorchContender]:
    """The PyTorch contenders not in ``skipped``; torchtitan's only when ``torchtitan`` (its modules) is given."""
    from moec import torchtitan_mixtral

    full = job.checkpointing == "full"
    found = [
        PyTorchContender("hf-eager", partial(build_hf_model, config, device=job.device),
                         partial(hf_forward_loss, compile=False, checkpointing=full)),
        PyTorchContender("hf-compile", partial(build_hf_model, config, device=job.device),
                         partial(hf_forward_loss, compile=True, checkpointing=full)),
    ]
    if torchtitan is not None:
        build = partial(torchtitan_mixtral.build_model, torchtitan, config, job.seq, device=job.device,
                        checkpointing=full)
        found += [
            PyTorchContender("titan-eager", build, partial(torchtitan_mixtral.forward_loss, compile=False)),
            PyTorchContender("titan-compile", build, partial(torchtitan_mixtral.forward_loss, compile=True),
                             partial(torchtitan_mixtral.compile_settings, checkpointing=full)),
        ]
    return [c for c in found if c.what not in skipped]


def run_pytorch(contender: PyTorchContender, job: Job, tokens: np.ndarray, flops: float) -> Result:
    """Trains ``job.total_steps`` steps of the contender's model by ``job.recipe``; times the last ``job.steps``."""
    import torch

    from moec.train_bf16 import step_blocks
    from moec.train_reference import Optimizer, Schedule

    cuda = job.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(job.seed)
    compute = contender.build(torch.bfloat16)
    copies = list(compute.parameters())
    if job.recipe == "fp32-master":
        masters = list(contender.build(torch.float32).parameters())
        with torch.no_grad():  # the masters own the initial values
            for shadow, param in zip(copies, masters, strict=True):
                shadow.copy_(param)
        for param in masters:  # filled from the bf16 gradients each step
            param.grad = torch.zeros_like(param)
    else:
        masters = copies
    optimizer = make_optimizer(masters)
    forward_loss = contender.forward_loss(compute)
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
        loss = forward_loss(ids)
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
    with contender.context():
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
    return summarise(contender.what, job, flops, seconds[job.warmup:], losses, peak)


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


def import_torchtitan(path: Path | None):
    """torchtitan's modules (:func:`moec.torchtitan_mixtral.import_torchtitan`), ``path`` first on ``sys.path``.

    Raises ``TorchtitanUnavailable``.
    """
    from moec import torchtitan_mixtral

    if path is not None:
        sys.path.insert(0, str(path.resolve()))
    return torchtitan_mixtral.import_torchtitan()


# ----------------------------------------------------------------------------
# moec
# ----------------------------------------------------------------------------

def planned_bytes(program: Path) -> int:
    """What ``program``'s memory plan predicts it needs: the manifest's state (its parameter copies included),
    arena, inputs and, where the manifest has them, the kernels' scratch (the collective stream's too)."""
    manifest = read_manifest(program)
    return sum(int(manifest.get(key, 0)) for key in ("state_bytes", "arena_bytes", "input_bytes", "scratch_bytes",
                                                     "collective_scratch_bytes"))


def run_moec(what: str, program: Path, job: Job, token_file: Path, log: Path) -> Result:
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
    return Result(what, summary["median_step_s"], summary["tokens_per_s"], summary["model_tflops"],
                  summary["peak_bytes"], [float(r["step_seconds"]) for r in rows[job.warmup:]],
                  [float(r["loss"]) for r in rows], planned_bytes(program), summary.get("device_used_bytes"))


def nvidia_smi_id() -> str | None:
    """nvidia-smi's name of the GPU torch runs on: its UUID (CUDA's device order need not be nvidia-smi's)."""
    import torch

    uuid = str(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", "") or "")
    if not uuid:
        return None
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def with_power(gpu: str | None | bool, run: Callable[[], Result]) -> Result:
    """``run()``'s result with the GPU's power while it ran (moec.gpu_power); ``gpu`` False: not sampled."""
    if gpu is False:
        return run()
    with PowerSampler(gpu) as sampler:
        result = run()
    summary = sampler.summary()
    if summary is None:
        return result
    return replace(result, power_w=summary.power_w, power_limit_w=summary.power_limit_w,
                   sm_clock_mhz=summary.sm_clock_mhz, power_capped_share=summary.capped_share)


def parse_programs(values: list[str]) -> list[tuple[str, Path]]:
    """``--moec [NAME=]PROGRAM`` values as (name, program); a name starts with ``moec`` and is given once.

    Raises ValueError naming the bad value.
    """
    found: list[tuple[str, Path]] = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = "moec", value
        if not name.startswith("moec"):
            raise ValueError(f"--moec {value}: the name '{name}' must start with 'moec' (e.g. moec-full=PROGRAM)")
        if any(name == other for other, _ in found):
            raise ValueError(f"--moec {value}: the name '{name}' is given twice")
        found.append((name, Path(path)))
    return found


# ----------------------------------------------------------------------------
# Rounds and report (no torch here: --report runs without it)
# ----------------------------------------------------------------------------

REPORT_FORMAT = "moec-bench/2"


class BadReport(Exception):
    """Rounds that cannot be aggregated, or a --report file that is not a benchmark report."""


@dataclass
class Aggregate:
    """One contender over all rounds."""

    what: str
    step_s: float  # median of the rounds' medians
    tokens_per_s: float  # median of the rounds'
    model_tflops: float  # median of the rounds'
    peak_bytes: int | None  # the largest of the rounds'
    min_step_s: float  # the fastest round's median
    max_step_s: float  # the slowest round's median
    round_step_s: list[float]  # every round's median, in round order


def check_rounds(rounds: list[list[Result]]) -> list[str]:
    """The contenders of ``rounds`` (the same, in the same order, in every round); raises BadReport."""
    if not rounds or not rounds[0]:
        raise BadReport("no round with a result")
    names = [r.what for r in rounds[0]]
    if len(set(names)) != len(names):
        raise BadReport(f"round 1 names a contender twice: {', '.join(names)}")
    for number, results in enumerate(rounds[1:], 2):
        other = [r.what for r in results]
        if other != names:
            raise BadReport(f"round {number} has contenders {', '.join(other) or 'none'}; "
                            f"round 1 has {', '.join(names)}")
    return names


def aggregate(rounds: list[list[Result]]) -> list[Aggregate]:
    """Every contender's median and spread over ``rounds`` (each a list of per-contender results)."""
    found = []
    for index, what in enumerate(check_rounds(rounds)):
        mine = [results[index] for results in rounds]
        steps = [r.step_s for r in mine]
        peaks = [r.peak_bytes for r in mine if r.peak_bytes is not None]
        found.append(Aggregate(what, statistics.median(steps), statistics.median(r.tokens_per_s for r in mine),
                               statistics.median(r.model_tflops for r in mine), max(peaks) if peaks else None,
                               min(steps), max(steps), steps))
    return found


def same_round_ratios(rounds: list[list[Result]], fast: str) -> dict[str, list[float]]:
    """For every other contender, its s/step over ``fast``'s in each round (``fast``'s speed-up over it)."""
    names = check_rounds(rounds)
    if fast not in names:
        return {}
    mine = names.index(fast)
    return {what: [results[index].step_s / results[mine].step_s for results in rounds]
            for index, what in enumerate(names) if index != mine}


def report_tables(rounds: list[list[Result]]) -> str:
    """The markdown tables and summary lines of the benchmark's output (module docstring)."""
    aggregates = aggregate(rounds)
    eager = same_round_ratios(rounds, "hf-eager")
    count = len(rounds)
    lines = ["| what | s/step | tokens/s | model TFLOP/s | peak GiB | vs HF eager | "
             f"s/step min–max ({count} round{'s' if count > 1 else ''}) |",
             "|---|---|---|---|---|---|---|"]
    for a in aggregates:
        peak = f"{a.peak_bytes / 2**30:.1f}" if a.peak_bytes is not None else "—"
        if a.what == "hf-eager":
            ratio = "1.00x"
        elif eager:
            ratio = f"{statistics.median(1.0 / x for x in eager[a.what]):.2f}x"
        else:
            ratio = "—"
        lines.append(f"| {a.what} | {a.step_s:.4f} | {a.tokens_per_s:,.0f} | {a.model_tflops:.4g} | {peak} | "
                     f"{ratio} | {a.min_step_s:.4f}–{a.max_step_s:.4f} |")
    for name in (a.what for a in aggregates if a.what.startswith("moec")):
        ratios = same_round_ratios(rounds, name)
        others = {what: values for what, values in ratios.items() if not what.startswith("moec")}
        if not others:
            continue
        lines += ["", f"{name}'s speed-up over each contender, from the same round (its s/step over {name}'s):", "",
                  f"| {name} vs | " + " | ".join(f"round {n}" for n in range(1, count + 1)) + " | median |",
                  "|---|" + "---|" * (count + 1)]
        for what, values in others.items():
            lines.append(f"| {what} | " + " | ".join(f"{v:.3f}x" for v in values)
                         + f" | {statistics.median(values):.3f}x |")
        fastest = min((a for a in aggregates if a.what in others), key=lambda a: a.step_s)
        lines += ["", f"fastest PyTorch contender: {fastest.what}, {fastest.step_s:.4f} s/step; {name} "
                      f"{statistics.median(others[fastest.what]):.3f}x as fast (median of the same-round ratios)"]
    planned = [r for r in rounds[-1] if r.planned_bytes is not None and r.device_used_bytes is not None]
    if planned:
        lines += ["", "moec's memory (last round): the plan's prediction (state, parameter copies, arena, inputs), "
                      "what the program allocated, and the device memory in use at its fullest (CUDA context and "
                      "library workspaces too):", "",
                  "| program | planned GiB | allocated GiB | device used GiB | used / planned |",
                  "|---|---|---|---|---|"]
        for r in planned:
            lines.append(f"| {r.what} | {r.planned_bytes / 2**30:.2f} | {r.peak_bytes / 2**30:.2f} | "
                         f"{r.device_used_bytes / 2**30:.2f} | {r.device_used_bytes / r.planned_bytes:.3f} |")
    lines += power_table(rounds)
    return "\n".join(lines)


def power_table(rounds: list[list[Result]]) -> list[str]:
    """The GPU's power per contender (moec.gpu_power), medians over the rounds that sampled it; energy per
    step as each round's median power times its s/step. No lines when no round sampled any."""
    names = check_rounds(rounds)
    rows = []
    for index, what in enumerate(names):
        mine = [results[index] for results in rounds if results[index].power_w is not None]
        if not mine:
            continue
        tokens_per_step = mine[0].tokens_per_s * mine[0].step_s
        energy = statistics.median(r.power_w * r.step_s for r in mine)
        rows.append(f"| {what} | {statistics.median(r.power_w for r in mine):.0f} of {mine[0].power_limit_w:.0f} | "
                    f"{statistics.median(r.sm_clock_mhz for r in mine):.0f} | "
                    f"{statistics.median(r.power_capped_share for r in mine):.0%} | {energy:.1f} | "
                    f"{tokens_per_step / energy:,.0f} | {len(mine)} |")
    if not rows:
        return []
    return ["", "The GPU while busy (nvidia-smi every 100 ms, the samples drawing at least half the power limit; "
                "medians over the rounds): power, SM clock, share of samples at the software power cap, energy "
                "per step (power x s/step) and tokens per joule:", "",
            "| what | power W | SM clock MHz | at the power cap | J/step | tokens/J | rounds |",
            "|---|---|---|---|---|---|---|", *rows]


def report_json(setup: dict, rounds: list[list[Result]]) -> dict:
    """The ``--json`` report: setup, aggregates, moec's same-round ratios and every round's results."""
    names = check_rounds(rounds)
    ratios = {f"{name} vs {what}": {"rounds": values, "median": statistics.median(values)}
              for name in names if name.startswith("moec")
              for what, values in same_round_ratios(rounds, name).items()}
    return {
        "format": REPORT_FORMAT,
        "setup": setup,
        "results": [asdict(a) for a in aggregate(rounds)],
        "ratios": ratios,
        "rounds": [[asdict(r) for r in results] for results in rounds],
    }


#: A report's numbers: key -> (above 0, may be null), each finite and not
#: negative. Null is "not measured": no peak on the CPU, no plan for
#: PyTorch, no power sampled. Byte counts may be written as 28e9.
RESULT_NUMBERS = {
    "step_s": (True, False),
    "tokens_per_s": (False, False),
    "model_tflops": (False, False),
    "peak_bytes": (False, True),
    "planned_bytes": (True, True),
    "device_used_bytes": (False, True),
    "power_w": (True, True),
    "power_limit_w": (True, True),
    "sm_clock_mhz": (False, True),
    "power_capped_share": (False, True),
}
POWER_KEYS = ("power_w", "power_limit_w", "sm_clock_mhz", "power_capped_share")


def read_result(values, where: str) -> Result:
    """One contender's result of a report, every key checked (``where``: the file, round and contender);
    raises BadReport naming the key and the value."""
    if not isinstance(values, dict):
        raise BadReport(f"{where}: expected a result object, found {json.dumps(values)}")
    if unknown := sorted(set(values) - {f.name for f in fields(Result)}):
        raise BadReport(f"{where}: unknown key(s) {', '.join(unknown)}")
    if missing := [key for key in ("what", *list(RESULT_NUMBERS)[:4]) if key not in values]:
        raise BadReport(f"{where}: no {', '.join(missing)}")
    if not isinstance(values["what"], str) or not values["what"]:
        raise BadReport(f"{where}: what: {json.dumps(values['what'])} is not a contender's name")
    where = f"{where} ({values['what']})"
    try:
        for key, (positive, nullable) in RESULT_NUMBERS.items():
            if values.get(key) is not None or not nullable:
                json_number(values.get(key), f"{where}: {key}", positive=positive)
        for key in ("step_seconds", "losses"):
            if not isinstance(values.get(key, []), list):
                raise InputError(f"{where}: {key}: expected a list, found {json.dumps(values[key])}")
            for number, value in enumerate(values.get(key, []), 1):
                # A loss may be NaN: a run that diverged is still a result.
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise InputError(f"{where}: {key}[{number}]: {json.dumps(value)} is not a number")
    except InputError as e:
        raise BadReport(str(e)) from None
    if (values.get("power_capped_share") or 0) > 1:
        raise BadReport(f"{where}: power_capped_share: {values['power_capped_share']} is not a share in [0, 1]")
    # The tables read these together: power with its limit, clock and cap share; a plan with the peak.
    if values.get("power_w") is not None and (unset := [k for k in POWER_KEYS if values.get(k) is None]):
        raise BadReport(f"{where}: power_w is set but {', '.join(unset)} null")
    if values.get("planned_bytes") is not None and values.get("device_used_bytes") is not None \
            and values["peak_bytes"] is None:
        raise BadReport(f"{where}: planned_bytes and device_used_bytes are set but peak_bytes is null")
    return Result(**values)


def read_report(path: Path) -> list[list[Result]]:
    """The rounds of a ``--json`` report; raises BadReport naming the round, the contender and the key."""
    try:
        report = json.loads(path.read_text())
    except OSError as e:
        raise BadReport(f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadReport(f"{path} is not JSON: {e}") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        got = report.get("format") if isinstance(report, dict) else None
        raise BadReport(f"{path} is not a {REPORT_FORMAT} report (format {got!r})")
    if not isinstance(report.get("rounds"), list):
        raise BadReport(f"{path}: rounds: expected a list of rounds, found {json.dumps(report.get('rounds'))}")
    rounds = []
    for number, results in enumerate(report["rounds"], 1):
        if not isinstance(results, list):
            raise BadReport(f"{path}: round {number}: expected a list of results, found {json.dumps(results)}")
        rounds.append([read_result(r, f"{path}: round {number}, contender {index}")
                       for index, r in enumerate(results, 1)])
    try:
        check_rounds(rounds)
    except BadReport as e:
        raise BadReport(f"{path}: {e}") from None
    return rounds


def versions(torchtitan) -> dict[str, str]:
    import torch
    import transformers

    found = {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}
    if torchtitan is not None:
        found["torchtitan"] = torchtitan.version
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="preset or JSON (default mixtral-8x7b-2l; --smoke: tiny)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="run every contender this many times, interleaved (default 3)")
    parser.add_argument("--recipe", choices=RECIPES, default="bf16")
    parser.add_argument("--seed", type=int, default=1234, help="seeds the tokens and the PyTorch initialisations")
    parser.add_argument("--moec", action="append", default=[], metavar="[NAME=]PROGRAM",
                        help="a program moec compile wrote (repeatable; NAME, default moec, starts with moec)")
    parser.add_argument("--checkpointing", choices=("none", "full"), default="none",
                        help="what the PyTorch contenders recompute: none, or full (every decoder layer: Hugging "
                             "Face's gradient_checkpointing_enable(), torchtitan's checkpoint_wrapper per block)")
    parser.add_argument("--skip-hf", action="store_true", help="leave out Hugging Face eager")
    parser.add_argument("--skip-compile", action="store_true",
                        help="leave out the torch.compile contenders (hf-compile, titan-compile)")
    parser.add_argument("--skip", action="append", default=[], choices=PYTORCH_CONTENDERS, metavar="NAME",
                        help=f"leave out this contender (repeatable): {', '.join(PYTORCH_CONTENDERS)}")
    parser.add_argument("--torchtitan-path", type=Path, metavar="DIR",
                        help="import torchtitan (and spmd_types, tyro) from DIR first")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the setup and results here")
    parser.add_argument("--report", type=Path, metavar="FILE",
                        help="print the tables of a report --json wrote, and run nothing")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny config on the CPU, micro-batch 2 x 64, 1 + 2 steps, no torch.compile")
    args = parser.parse_args(argv)
    if args.report:
        try:
            print(report_tables(read_report(args.report)))
        except BadReport as e:
            parser.error(str(e))
        return 0
    if args.smoke:
        # The smoke test runs on the CPU: a config given with it would be silently replaced.
        if args.config is not None:
            parser.error(f"--smoke runs the tiny config; leave out --config {args.config}")
        args.config, args.micro_batch, args.seq, args.warmup, args.steps = "tiny", 2, 64, 1, 2
        args.skip_compile = True
    elif args.config is None:
        args.config = "mixtral-8x7b-2l"
    try:
        programs = parse_programs(args.moec)
    except ValueError as e:
        parser.error(str(e))
    for _, program in programs:
        if not program.is_file():
            parser.error(f"no such program '{program}'")
        try:
            check_compiled_job(program, args.micro_batch, args.seq, args.recipe)
        except JobMismatch as e:
            parser.error(str(e))
    try:
        presets.read_fields(args.config)  # an unknown preset or a bad file, named before torch loads
    except presets.ConfigError as e:
        parser.error(f"--config {e}")
    if args.torchtitan_path is not None and not args.torchtitan_path.is_dir():
        parser.error(f"--torchtitan-path '{args.torchtitan_path}' is not a directory")
    if args.steps < 1 or args.warmup < 0 or args.micro_batch < 1 or args.seq < 1 or args.rounds < 1:
        parser.error("--steps, --micro-batch, --seq and --rounds must be positive, --warmup not negative")
    if args.json is not None:
        try:
            check_output(args.json)
        except ValueError as e:
            parser.error(f"--json {e}")
    skipped = set(args.skip)
    if args.skip_hf:
        skipped.add("hf-eager")
    if args.skip_compile:
        skipped.update({"hf-compile", "titan-compile"})
    if skipped == set(PYTORCH_CONTENDERS) and not programs:
        parser.error("nothing to run: every contender is skipped and no --moec")

    import torch

    if args.smoke:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        parser.error("no CUDA device (use --smoke to check the script on the CPU)")
    job = Job(args.config, args.micro_batch, args.seq, args.warmup, args.steps, args.recipe, args.seed, device,
              args.checkpointing)
    try:
        config = presets.load_config(args.config)
    except presets.ConfigError as e:
        parser.error(f"--config {e}")
    config.router_aux_loss_coef = AUX_LOSS_COEF
    flops, active = model_flops(config, job.micro_batch, job.seq)
    torchtitan, unavailable = None, {}
    titan = [what for what in ("titan-eager", "titan-compile") if what not in skipped]
    if titan:
        try:
            torchtitan = import_torchtitan(args.torchtitan_path)
        except TorchtitanUnavailable as e:
            unavailable = {what: str(e) for what in titan}
    contenders = pytorch_contenders(job, config, torchtitan, skipped)
    if not contenders and not programs:
        why = f" ({next(iter(unavailable.values()))})" if unavailable else ""
        parser.error(f"nothing to run: every contender is skipped and no --moec{why}")
    rng = np.random.default_rng(job.seed)
    tokens = rng.integers(0, config.vocab_size, size=(job.total_steps * job.micro_batch, job.seq), dtype=np.int64)
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    gpu = nvidia_smi_id() if device == "cuda" else False
    print(f"{job.config} on {device_name}: micro-batch {job.micro_batch} x seq {job.seq} "
          f"({job.tokens_per_step} tokens/step), recipe {job.recipe}, {active:,.0f} active parameters, "
          f"{flops / 1e12:.4g} TFLOP/step; {job.warmup} warm-up + {job.steps} timed steps, "
          f"{args.rounds} round{'s' if args.rounds > 1 else ''}", flush=True)
    if job.checkpointing == "full":
        print("PyTorch contenders recompute every decoder layer in the backward (Hugging Face: "
              "gradient_checkpointing_enable(); torchtitan: checkpoint_wrapper per block)", flush=True)
    if unavailable:
        print(f"{', '.join(unavailable)}: skipped: {next(iter(unavailable.values()))} (install torchtitan "
              f"{TORCHTITAN_VERSION} with spmd_types and tyro, or pass --torchtitan-path DIR)", flush=True)
    if torchtitan is not None:
        print(f"titan-*: torchtitan {torchtitan.version}; its router has no load-balancing loss "
              f"(cross-entropy only; the others add aux_loss {AUX_LOSS_COEF})", flush=True)

    rounds: list[list[Result]] = []
    out_of_memory: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "tokens.bin"
        token_file.write_bytes(tokens.astype("<i8").tobytes())
        for number in range(1, args.rounds + 1):
            results = []
            for contender in list(contenders):
                try:
                    result = with_power(gpu, partial(run_pytorch, contender, job, tokens, flops))
                except torch.cuda.OutOfMemoryError as e:
                    if number > 1:
                        raise
                    # It cannot train this job: reported, left out of every round.
                    out_of_memory[contender.what] = str(e).splitlines()[0]
                    contenders.remove(contender)
                    print(f"[round {number}/{args.rounds}] {contender.what}: out of memory: "
                          f"{out_of_memory[contender.what]}", flush=True)
                    continue
                finally:
                    release()
                results.append(result)
                print_result(number, args.rounds, result)
            for name, program in programs:
                result = with_power(gpu, partial(run_moec, name, program, job, token_file,
                                                 Path(tmp) / f"{name}-{number}.csv"))
                results.append(result)
                print_result(number, args.rounds, result)
            rounds.append(results)
    print()
    for what, why in out_of_memory.items():
        print(f"{what}: out of memory at this job ({why})")
    print(report_tables(rounds))
    if args.json:
        command = shlex.join(["python", "-m", "moec.bench", *(sys.argv[1:] if argv is None else argv)])
        setup = {**asdict(job), "rounds": args.rounds, "device_name": device_name,
                 "tokens_per_step": job.tokens_per_step, "model_flops_per_step": flops, "active_parameters": active,
                 "router_aux_loss_coef": AUX_LOSS_COEF, "attention": "sdpa",
                 "experts": config._experts_implementation, "skipped": unavailable,
                 "out_of_memory": out_of_memory, "pytorch_checkpointing": job.checkpointing,
                 "versions": versions(torchtitan), "command": command}
        if torchtitan is not None:
            setup["torchtitan"] = {
                "model": "Qwen3Model as Mixtral: fused QKV, no qk-norm, no shared experts, causal SDPA",
                "experts": "GroupedExperts (torch._grouped_mm)",
                "router": "softmax top-k, renormalised, no load-balancing loss",
                "compile": "each TransformerBlock (fullgraph) and the loss"}
        write_atomically(args.json, (json.dumps(report_json(setup, rounds), indent=1) + "\n").encode("utf-8"))
        print(f"\nwrote {args.json}")
    return 0


def print_result(number: int, rounds: int, result: Result) -> None:
    print(f"[round {number}/{rounds}] {result.what}: {result.step_s:.4f} s/step, "
          f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
