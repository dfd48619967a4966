"""The PyTorch reference training step, and the goldens that check moec's.

Usage (from the repository root)::

    PYTHONPATH=python python -m moec.train_reference --write test/Inputs/train
    PYTHONPATH=python python -m moec.train_reference --self-test
    PYTHONPATH=python python -m moec.train_reference --config tiny --mode sinkhorn --top-k 1 --steps 3

The run
-------
Model: stock ``transformers.MixtralForCausalLM(config)``, fp32 on the CPU,
eager attention, eager (per-expert loop) experts, training mode (attention
dropout and router jitter are 0 and required to be), no attention mask (no
padding; causal only), parameters from :func:`moec.init.init_parameters`
(``delayed_param``, seed 1234).

Data: one fixed batch, used by every step. ``rng = numpy.random.default_rng(seed + 1)``;
``input_ids = rng.integers(0, vocab, (2, 8))`` then ``labels = rng.integers(0, vocab, (2, 8))``
(int64, drawn in that order); then ``labels[0, 5] = labels[1, 2] = -100``.

Cross-entropy (Hugging Face ``ForCausalLMLoss``): labels are shifted inside
the loss, position ``t`` predicts ``labels[t + 1]``; the last position and
every target equal to -100 do not count (``labels[:, 0]`` is never a target).
``ce_loss`` is the mean over the counted targets (here 2 * 7 - 2 = 12).

Losses by ``moe_load_balancing`` (L layers, T = B*S tokens, E experts, top-k;
``logits`` are each layer's router logits [T, E], fp32):

``aux_loss``
    Mixtral routing: ``p = softmax(logits)``, the top-k of ``p``,
    gates = those ``p`` renormalised to sum 1. ``aux_loss`` is the model's own
    ``load_balancing_loss_func`` (``output_router_logits=True``): with every
    layer's tokens together (L*T rows), ``f[e]`` = number of (row, choice)
    slots that chose ``e`` / (L*T) (so ``sum_e f = k``), ``P[e]`` = sum of
    ``p[:, e]`` over all rows / (L*T), ``aux_loss = E * sum_e f[e] * P[e]``;
    it is differentiated through ``P`` only. ``loss = ce_loss +
    router_aux_loss_coef * aux_loss`` is the model's ``loss`` output.
``sinkhorn`` (Megatron-Core, training mode)
    Under ``no_grad``: ``cost = exp(logits)``; ``d0 = ones(T)``,
    ``d1 = ones(E)``, ``eps = 1e-8``, ``error = 1e9``, ``d1_old = d1``;
    while ``error > 1e-4``: ``d0 = (1/T) / (sum_e d1[e] * cost[:, e] + eps)``;
    ``d1 = (1/E) / (sum_t d0[t] * cost[t, :] + eps)``;
    ``error = mean(|d1_old - d1|)``; ``d1_old = d1``. The expert indices are
    the top-k of ``d1 * cost * d0[:, None]``. Gates: ``softmax(logits)``
    (``sigmoid(logits)`` when k = 1) gathered at those indices, not
    renormalised; gradients flow through the gathered softmax/sigmoid only.
    (PyTorch evaluates ``c / x`` for a Python number ``c`` as
    ``x.reciprocal() * c``, so Megatron's ``(1/T) * 1 / (...)`` is computed
    that way here too.)
``balanced`` (BASE-layers style, deterministic)
    ``p = softmax(logits)``; capacity ``c_e = floor(T*k/E) + (1 if e < T*k mod E else 0)``.
    Sort all (token, expert) pairs by ``p`` descending, ties by lower token,
    then lower expert; take a pair if its token has fewer than k experts and
    its expert has capacity left. Then each token t still short of k experts
    (in token order), for its missing experts e by descending ``p``: takes e
    if e has room; otherwise finds the first token u (token order) that holds
    e and can move to an expert f with room it lacks (u's best such f), moves
    u from e to f and takes e. (After the greedy pass every expert a short
    token lacks is full and such a u always exists, so every expert ends at
    exactly its capacity: the T*k/E, ±1 of the brief comes from the
    rounding of the capacities only.) A token's k choices are listed by
    descending ``p`` (ties: lower expert); gates = those ``p`` renormalised
    to sum 1, differentiated through ``p``.
``none``
    Mixtral routing, no router loss.

In every mode, with ``--z-loss-coef z > 0``: ``z_loss = mean over the L*T
rows of logsumexp(logits)^2`` and ``loss += z * z_loss``; with z = 0 the
recorded ``z_loss`` is 0. The recorded ``aux_loss`` is the term before its
coefficient, 0 outside ``aux_loss``. ``expert_counts[l, e]`` = token slots
expert ``e`` got in layer ``l`` (each row sums to T*k).
Sinkhorn and balanced couple all T tokens of the step (one micro-batch).

Optimizer (``torch.optim.AdamW``, ``foreach=False``) after
``torch.nn.utils.clip_grad_norm_(params, 1.0)``: ``norm = sqrt(sum over all
grads of g^2)`` (recorded as ``grad_norm``, before clipping), every gradient
times ``min(1, 1.0 / (norm + 1e-6))``; then per parameter, step ``t``::

    p  = p * (1 - lr * wd)              wd = 0.1 for rank >= 2 parameters, 0 for the norm weights
    m  = m + (1 - 0.9) * (g - m)        (lerp)
    v  = 0.95 * v + (1 - 0.95) * g * g
    p  = p - (lr / (1 - 0.9**t)) * m / (sqrt(v) / sqrt(1 - 0.95**t) + 1e-8)

with fp32 parameters and moments starting at zero. Learning rate of 1-based
step ``t`` (W = 2 warm-up steps, schedule length 10, peak 1e-3, minimum
1e-4): ``peak * t / W`` for ``t <= W``, else
``min + 0.5 * (peak - min) * (1 + cos(pi * (t - W) / (10 - W)))``.

Goldens
-------
``--write DIR`` writes one ``<preset>-<mode>[-k1|-z].npz`` per case of
:data:`CASES` (3 steps each; keys in :func:`run_case`, ``config`` is the
run's JSON with the ``moec train`` command that must reproduce it), the
weight-free ONNX graphs that command imports (one per geometry:
``tiny.onnx``, ``tiny-e8.onnx``, ``tiny-k1.onnx``) and ``input_ids.pb`` /
``labels.pb`` (onnx TensorProto int64 [2, 8]). test/Inputs/train/README.md
(by hand) lists them. ``python -m moec.check_train`` compares a
``moec train --dump`` directory against a golden.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

from moec import init, positive_int, presets

MODES = ("aux_loss", "sinkhorn", "balanced", "none")
SEED = 1234
STEPS = 3
BATCH, SEQ = 2, 8
#: Label positions set to -100 (ignored targets).
IGNORED_LABELS = ((0, 5), (1, 2))
SINKHORN_TOLERANCE = 1e-4
SINKHORN_EPS = 1e-8


@dataclass(frozen=True)
class Optimizer:
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class Schedule:
    warmup_steps: int = 2
    total_steps: int = 10
    peak_lr: float = 1e-3
    min_lr: float = 1e-4

    def lr(self, t: int) -> float:
        """Learning rate of 1-based step ``t``."""
        if t <= self.warmup_steps:
            return self.peak_lr * t / self.warmup_steps
        progress = min((t - self.warmup_steps) / (self.total_steps - self.warmup_steps), 1.0)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Run:
    """One reference run: model geometry, routing mode, coefficients, optimizer, schedule."""

    preset: str
    mode: str
    top_k: int | None = None  # None: the preset's num_experts_per_tok
    z_loss_coef: float = 0.0
    seed: int = SEED
    steps: int = STEPS
    optimizer: Optimizer = field(default_factory=Optimizer)
    schedule: Schedule = field(default_factory=Schedule)

    @property
    def name(self) -> str:
        suffix = "-k1" if self.top_k == 1 else f"-k{self.top_k}" if self.top_k else ""
        return f"{self.preset}-{self.mode}{suffix}" + ("-z" if self.z_loss_coef else "")

    @property
    def geometry(self) -> str:
        """Name of the ONNX graph this run imports (the preset, with ``-k<k>`` when overridden)."""
        return self.preset + (f"-k{self.top_k}" if self.top_k else "")

    def model_fields(self) -> dict:
        fields = dict(presets.PRESETS[self.preset])
        if self.top_k:
            fields["num_experts_per_tok"] = self.top_k
        return fields

    def config(self):
        from transformers import MixtralConfig

        fields = self.model_fields()
        presets.validate_fields(fields, origin=self.name)
        return MixtralConfig(**fields)


#: The golden cases written by ``--write``.
CASES: tuple[Run, ...] = (
    *(Run(preset, mode) for preset in ("tiny", "tiny-e8") for mode in MODES),
    Run("tiny", "sinkhorn", top_k=1),
    Run("tiny", "aux_loss", z_loss_coef=1e-3),
)


# ----------------------------------------------------------------------------
# Routing
# ----------------------------------------------------------------------------

@torch.no_grad()
def sinkhorn(logits: torch.Tensor, tolerance: float = SINKHORN_TOLERANCE) -> torch.Tensor:
    """Megatron-Core's Sinkhorn normalisation of ``exp(logits)`` [T, E] (fp32)."""
    cost = torch.exp(logits.float())
    tokens, experts = cost.shape
    d0 = torch.ones(tokens, dtype=cost.dtype)
    d1 = torch.ones(experts, dtype=cost.dtype)
    error = 1e9
    d1_old = d1
    while error > tolerance:
        d0 = (torch.sum(d1 * cost, 1) + SINKHORN_EPS).reciprocal() * (1.0 / tokens)
        d1 = (torch.sum(d0.unsqueeze(1) * cost, 0) + SINKHORN_EPS).reciprocal() * (1.0 / experts)
        error = torch.mean(torch.abs(d1_old - d1))
        d1_old = d1
    return d1 * cost * d0.unsqueeze(1)


#: A routing: (router logits [T, E], k) -> (gates [T, k], experts [T, k]).
RouteFunction = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def route_sinkhorn(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gates [T, k], experts [T, k]) of Sinkhorn routing in training mode."""
    with torch.no_grad():
        _, experts = torch.topk(sinkhorn(logits), top_k, dim=1)
    activation = torch.sigmoid(logits.float()) if top_k == 1 else torch.softmax(logits.float(), dim=-1)
    return torch.gather(activation, 1, experts), experts


def balanced_capacity(tokens: int, experts: int, top_k: int) -> list[int]:
    """``c_e = floor(T*k/E) + (1 if e < T*k mod E else 0)``."""
    slots = tokens * top_k
    return [slots // experts + (1 if e < slots % experts else 0) for e in range(experts)]


def balanced_assignment(probs: np.ndarray, top_k: int) -> np.ndarray:
    """Experts [T, k] (int64) of the balanced greedy assignment of router probabilities ``probs`` [T, E]."""
    tokens, experts = probs.shape
    room = balanced_capacity(tokens, experts, top_k)
    chosen: list[list[int]] = [[] for _ in range(tokens)]
    pairs = sorted(((-float(probs[t, e]), t, e) for t in range(tokens) for e in range(experts)))
    for _, t, e in pairs:
        if len(chosen[t]) < top_k and room[e] > 0:
            chosen[t].append(e)
            room[e] -= 1
    # A token still short lacks only full experts (capacities only shrink) and
    # some expert f still has room. Then a token u holds a full expert e the
    # short token lacks, but not f: u moves from e to f (its best such f) and
    # the short token takes e. Every expert ends exactly at its capacity.
    def by_probability(t: int) -> list[int]:
        return sorted(range(experts), key=lambda e: (-float(probs[t, e]), e))

    for t in range(tokens):
        while len(chosen[t]) < top_k:
            placed = False
            for e in by_probability(t):
                if e in chosen[t]:
                    continue
                if room[e] > 0:
                    room[e] -= 1
                    placed = True
                for u in range(tokens):
                    if placed:
                        break
                    if u == t or e not in chosen[u]:
                        continue
                    for f in by_probability(u):
                        if room[f] > 0 and f not in chosen[u]:
                            chosen[u][chosen[u].index(e)] = f
                            room[f] -= 1
                            placed = True
                            break
                if placed:
                    chosen[t].append(e)
                    break
            if not placed:
                raise AssertionError("balanced routing found no assignment")
    ordered = [sorted(c, key=lambda e, t=t: (-float(probs[t, e]), e)) for t, c in enumerate(chosen)]
    return np.array(ordered, dtype=np.int64).reshape(tokens, top_k)


def route_balanced(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gates [T, k], experts [T, k]) of balanced routing: renormalised probabilities of the assignment."""
    probs = torch.softmax(logits.float(), dim=-1)
    experts = torch.from_numpy(balanced_assignment(probs.detach().numpy(), top_k))
    chosen = torch.gather(probs, 1, experts)
    return chosen / chosen.sum(dim=-1, keepdim=True), experts


def route_topk(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtral's routing (top-k of softmax, renormalised): the self-test's control for the hook."""
    probs = torch.softmax(logits.float(), dim=-1)
    top, experts = torch.topk(probs, top_k, dim=-1)
    return top / top.sum(dim=-1, keepdim=True), experts


ROUTES: dict[str, RouteFunction] = {
    "sinkhorn": route_sinkhorn,
    "balanced": route_balanced,
    "topk": route_topk,
}


class ReplacedRouter(MixtralTopKRouter):
    """Stands for a layer's ``MixtralTopKRouter`` with another routing function.

    Keeps the router's ``weight`` Parameter (so the name stays
    ``model.layers.<l>.mlp.gate.weight``) and returns what the stock router
    returns: ``(router_logits [T, E], gates [T, k], experts [T, k])``, which
    ``MixtralSparseMoeBlock`` hands to its experts. A subclass, so that
    transformers still records its logits for ``output_router_logits``.
    """

    def __init__(self, router: MixtralTopKRouter, route: RouteFunction):
        torch.nn.Module.__init__(self)  # not MixtralTopKRouter's: it would allocate a new weight
        self.num_experts = router.num_experts
        self.weight = router.weight
        self.top_k = router.top_k
        self.hidden_dim = router.hidden_dim
        self.route = route

    def forward(self, hidden_states: torch.Tensor):
        logits = F.linear(hidden_states.reshape(-1, self.hidden_dim), self.weight)
        gates, experts = self.route(logits, self.top_k)
        return logits, gates, experts


# ----------------------------------------------------------------------------
# Model, data, step
# ----------------------------------------------------------------------------

def build_model(config, mode: str, seed: int, *, route: str | None = None):
    """``MixtralForCausalLM`` with ``delayed_param`` weights and the routing of ``mode``.

    ``route`` overrides the routing function (one of :data:`ROUTES`); by
    default sinkhorn and balanced replace each router, aux_loss and none keep
    Hugging Face's.
    """
    from transformers import MixtralForCausalLM

    if config.tie_word_embeddings or config.pad_token_id is not None:
        raise ValueError("the reference needs untied embeddings and no pad_token_id")
    if config.attention_dropout or config.router_jitter_noise:
        raise ValueError("the reference needs attention_dropout = router_jitter_noise = 0")
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    model = MixtralForCausalLM(config)
    init.load_into(model, init.init_parameters(config, seed))
    route = route or (mode if mode in ("sinkhorn", "balanced") else None)
    if route:
        for layer in model.model.layers:
            layer.mlp.gate = ReplacedRouter(layer.mlp.gate, ROUTES[route])
    return model.train()


def make_batch(seed: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels), int64 [2, 8]; see the module docstring."""
    rng = np.random.default_rng(seed + 1)
    input_ids = rng.integers(0, vocab_size, size=(BATCH, SEQ), dtype=np.int64)
    labels = rng.integers(0, vocab_size, size=(BATCH, SEQ), dtype=np.int64)
    for b, s in IGNORED_LABELS:
        labels[b, s] = -100
    return input_ids, labels


class RouterRecorder:
    """Collects each layer's router logits and chosen experts during one forward."""

    def __init__(self, model):
        self.logits: list[torch.Tensor] = []
        self.experts: list[torch.Tensor] = []
        self.handles = [layer.mlp.gate.register_forward_hook(self._record) for layer in model.model.layers]

    def _record(self, module, args, output):
        logits, _, experts = output
        self.logits.append(logits)
        self.experts.append(experts)

    def clear(self):
        self.logits.clear()
        self.experts.clear()


def load_balancing_loss(logits: list[torch.Tensor], experts: list[torch.Tensor], num_experts: int) -> torch.Tensor:
    """``E * sum_e f[e] * P[e]`` over all layers' rows (an independent restatement of HF's)."""
    rows = sum(layer.shape[0] for layer in logits)
    counts = torch.bincount(torch.cat([x.reshape(-1) for x in experts]), minlength=num_experts).float()
    prob_sum = torch.cat([torch.softmax(layer.float(), dim=-1) for layer in logits]).sum(dim=0)
    return num_experts * torch.sum((counts / rows) * (prob_sum / rows))


def z_loss(logits: list[torch.Tensor]) -> torch.Tensor:
    """Mean over all layers' rows of ``logsumexp(logits)^2``."""
    return torch.cat([torch.logsumexp(layer.float(), dim=-1) for layer in logits]).pow(2).mean()


def routing_margin(run: Run, logits: list[torch.Tensor], top_k: int) -> float:
    """How far the step's routing is from choosing differently.

    top-k modes: the smallest gap, over tokens and layers, between the k-th
    and (k+1)-th selection score (softmax probabilities, or Sinkhorn scores
    divided by their row maximum). balanced: the largest uniform noise
    (1e-3, 1e-4, ... 1e-8) on the logits under which 20 random perturbations
    all leave the assignment unchanged (0 if none).
    """
    if run.mode == "balanced":
        generator = torch.Generator().manual_seed(0)
        for noise in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
            stable = True
            for layer in logits:
                layer = layer.detach().float()
                want = balanced_assignment(torch.softmax(layer, -1).numpy(), top_k)
                for _ in range(20):
                    jitter = (torch.rand(layer.shape, generator=generator) * 2 - 1) * noise
                    got = balanced_assignment(torch.softmax(layer + jitter, -1).numpy(), top_k)
                    stable &= np.array_equal(want, got)
            if stable:
                return noise
        return 0.0
    gaps = []
    for layer in logits:
        layer = layer.detach().float()
        scores = sinkhorn(layer) if run.mode == "sinkhorn" else torch.softmax(layer, dim=-1)
        scores = scores / scores.max(dim=-1, keepdim=True).values
        ordered = scores.sort(dim=-1, descending=True).values
        if top_k < ordered.shape[1]:
            gaps.append(float((ordered[:, top_k - 1] - ordered[:, top_k]).min()))
    return min(gaps, default=math.inf)


def run_case(run: Run, *, verbose: bool = False) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Trains ``run.steps`` steps; returns the golden's arrays and per-step summaries.

    Keys: ``input_ids``, ``labels``, ``config``; for each step s:
    ``step{s}/loss``, ``ce_loss``, ``aux_loss``, ``z_loss``, ``grad_norm``,
    ``lr`` (float32 scalars), ``expert_counts`` (int64 [L, E]),
    ``grad/<param>`` (float32, before clipping); ``final/param/<param>``.
    """
    if run.mode not in MODES:
        raise ValueError(f"unknown load-balancing mode '{run.mode}'; expected {', '.join(MODES)}")
    torch.manual_seed(0)  # nothing should draw from it; fixed anyway
    config = run.config()
    model = build_model(config, run.mode, run.seed)
    top_k, num_experts = config.num_experts_per_tok, config.num_local_experts
    names = [name for name, _ in model.named_parameters()]
    if names != list(model.state_dict()):
        raise AssertionError("parameters and state_dict disagree")
    params = [p for _, p in model.named_parameters()]
    opt = run.optimizer
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": opt.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=run.schedule.lr(1),
        betas=(opt.beta1, opt.beta2),
        eps=opt.eps,
        foreach=False,
    )
    input_ids, labels = make_batch(run.seed, config.vocab_size)
    ids_t, labels_t = torch.from_numpy(input_ids), torch.from_numpy(labels)
    recorder = RouterRecorder(model)
    out: dict[str, np.ndarray] = {"input_ids": input_ids, "labels": labels}
    summaries = []

    for t in range(1, run.steps + 1):
        lr = run.schedule.lr(t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        recorder.clear()
        with_aux = run.mode == "aux_loss"
        result = model(input_ids=ids_t, labels=labels_t, use_cache=False, output_router_logits=with_aux)
        ce = model.loss_function(result.logits, labels_t, config.vocab_size)
        loss = result.loss
        if with_aux:
            aux = result.aux_loss
            mine = load_balancing_loss(recorder.logits, recorder.experts, num_experts)
            if not torch.allclose(mine, aux, rtol=1e-6, atol=0) or not torch.allclose(
                    loss, ce + config.router_aux_loss_coef * aux, rtol=1e-6, atol=0):
                raise AssertionError(f"{run.name} step {t}: HF's aux loss {aux.item()} / loss {loss.item()} "
                                     f"disagree with the restatement {mine.item()} / ce {ce.item()}")
        else:
            aux = torch.zeros(())
            if not torch.equal(loss, ce):
                raise AssertionError(f"{run.name} step {t}: loss {loss.item()} != ce {ce.item()}")
        z = z_loss(recorder.logits) if run.z_loss_coef else torch.zeros(())
        if run.z_loss_coef:
            loss = loss + run.z_loss_coef * z
        loss.backward()
        counts = np.stack([np.bincount(x.reshape(-1).numpy(), minlength=num_experts) for x in recorder.experts])
        if not (counts.sum(axis=1) == ids_t.numel() * top_k).all():
            raise AssertionError(f"{run.name} step {t}: expert counts {counts.tolist()} do not sum to T*k")
        grads = {name: p.grad.detach().clone().numpy() for name, p in zip(names, params)}
        norm = torch.nn.utils.clip_grad_norm_(params, opt.max_grad_norm)
        optimizer.step()

        prefix = f"step{t}/"
        for key, value in (("loss", loss.item()), ("ce_loss", ce.item()), ("aux_loss", aux.item()),
                           ("z_loss", z.item()), ("grad_norm", norm.item()), ("lr", lr)):
            out[prefix + key] = np.asarray(value, dtype=np.float32)
        out[prefix + "expert_counts"] = counts.astype(np.int64)
        for name, grad in grads.items():
            out[prefix + "grad/" + name] = stored_precision(grad)
        summary = {
            "step": t, "loss": loss.item(), "ce_loss": ce.item(), "aux_loss": aux.item(), "z_loss": z.item(),
            "grad_norm": norm.item(), "lr": lr, "expert_counts": counts.tolist(),
            "routing_margin": routing_margin(run, recorder.logits, top_k),
        }
        summaries.append(summary)
        if verbose:
            print(format_summary(run.name, summary))
    for name, p in zip(names, params):
        out["final/param/" + name] = stored_precision(p.detach().clone().numpy())
    out["config"] = np.array(json.dumps(run_json(run, config), sort_keys=True))
    return out, summaries


def format_summary(name: str, s: dict) -> str:
    counts = " | ".join(" ".join(str(c) for c in row) for row in s["expert_counts"])
    return (f"{name:<22} step {s['step']}  loss {s['loss']:.7f}  ce {s['ce_loss']:.7f}  aux {s['aux_loss']:.7f}  "
            f"z {s['z_loss']:.5f}  grad_norm {s['grad_norm']:.6f}  lr {s['lr']:.4e}  experts [{counts}]  "
            f"margin {s['routing_margin']:.1e}")


def command_line(run: Run) -> str:
    """The ``moec train`` invocation (from test/Inputs/train) that must reproduce ``run``."""
    opt, sched = run.optimizer, run.schedule
    args = [
        f"moec train {run.geometry}.onnx --reference --tokens input_ids.pb --labels labels.pb",
        f"--micro-batch-size {BATCH} --steps {run.steps} --total-steps {sched.total_steps}",
        f"--warmup-steps {sched.warmup_steps} --lr {sched.peak_lr:g} --min-lr {sched.min_lr:g}",
        f"--seed {run.seed} --moe-load-balancing {run.mode}",
        f"--router-aux-loss-coef {presets.PRESETS[run.preset]['router_aux_loss_coef']:g}",
        f"--router-z-loss-coef {run.z_loss_coef:g}",
        f"--beta1 {opt.beta1:g} --beta2 {opt.beta2:g} --adam-epsilon {opt.eps:g}",
        f"--weight-decay {opt.weight_decay:g} --max-grad-norm {opt.max_grad_norm:g} --dump DIR",
    ]
    return " ".join(args)


def run_json(run: Run, config) -> dict:
    """The run's description stored as the golden's ``config``."""
    from transformers import __version__ as transformers_version

    return {
        "case": run.name,
        "preset": run.preset,
        "model": run.model_fields(),
        "onnx": f"{run.geometry}.onnx",
        "moe_load_balancing": run.mode,
        "router_aux_loss_coef": config.router_aux_loss_coef if run.mode == "aux_loss" else 0.0,
        "router_z_loss_coef": run.z_loss_coef,
        "seed": run.seed,
        "initializer_range": config.initializer_range,
        "steps": run.steps,
        "batch": BATCH,
        "seq": SEQ,
        "data": f"numpy default_rng(seed + 1): input_ids then labels, integers [0, vocab) [{BATCH}, {SEQ}]",
        "ignored_labels": [list(p) for p in IGNORED_LABELS],
        "optimizer": {"name": "adamw", **asdict(run.optimizer), "weight_decay_params": "rank >= 2",
                      "clip_epsilon": 1e-6},
        "schedule": {**asdict(run.schedule), "kind": "linear warm-up, cosine to min_lr"},
        "sinkhorn": {"tolerance": SINKHORN_TOLERANCE, "eps": SINKHORN_EPS},
        "command": command_line(run),
        "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers_version,
                     "numpy": np.__version__},
    }


# ----------------------------------------------------------------------------
# Writing the goldens
# ----------------------------------------------------------------------------

def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``numpy.savez_compressed``, but with fixed zip timestamps so a rerun writes the same bytes."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def stored_precision(array: np.ndarray) -> np.ndarray:
    """Rounds float32 values to 16 mantissa bits (relative error <= 2**-17, far
    inside the checker's 1e-4 tolerance) so the goldens compress to about
    half: gradients and parameters are stored this way, losses exactly."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x3F) + ((bits >> np.uint32(7)) & np.uint32(1))) & np.uint32(0xFFFFFF80)
    return rounded.view(np.float32).reshape(array.shape)


def write_tensor(path: Path, array: np.ndarray, name: str) -> None:
    import onnx.numpy_helper

    path.write_bytes(onnx.numpy_helper.from_array(array, name=name).SerializeToString())


def export_geometry(run: Run, path: Path) -> None:
    """The run's model as a weight-free ONNX graph (form ``ort``, symbolic batch and seq)."""
    from moec.export import export

    export(run.config(), "ort", path, dynamic=True, weights=False,
           metadata={"moec.preset": run.preset, "moec.geometry": run.geometry})


def write_goldens(out: Path, cases: tuple[Run, ...] = CASES, *, onnx_models: bool = True
                  ) -> list[tuple[Run, list[dict]]]:
    """Writes every case's golden, the shared batch and (``onnx_models``) the graphs to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results = []
    batch = None
    for run in cases:
        arrays, summaries = run_case(run, verbose=True)
        save_npz(out / f"{run.name}.npz", arrays)
        results.append((run, summaries))
        if batch is None:
            batch = arrays["input_ids"], arrays["labels"]
            write_tensor(out / "input_ids.pb", batch[0], "input_ids")
            write_tensor(out / "labels.pb", batch[1], "labels")
        elif not (np.array_equal(batch[0], arrays["input_ids"]) and np.array_equal(batch[1], arrays["labels"])):
            raise AssertionError(f"{run.name}: another batch than the first case's; input_ids.pb/labels.pb are shared")
    if onnx_models:
        for geometry, run in {run.geometry: run for run in cases}.items():
            export_geometry(run, out / f"{geometry}.onnx")
    return results


# ----------------------------------------------------------------------------
# Self-test
# ----------------------------------------------------------------------------

def _sinkhorn_float64(logits: np.ndarray, tolerance: float = SINKHORN_TOLERANCE) -> np.ndarray:
    """The Sinkhorn definition in float64 loops: an independent check of :func:`sinkhorn`."""
    cost = np.exp(logits.astype(np.float64))
    tokens, experts = cost.shape
    d0, d1 = np.ones(tokens), np.ones(experts)
    error, d1_old = 1e9, d1
    while error > tolerance:
        d0 = np.array([(1 / tokens) / (sum(d1[e] * cost[t, e] for e in range(experts)) + SINKHORN_EPS)
                       for t in range(tokens)])
        d1 = np.array([(1 / experts) / (sum(d0[t] * cost[t, e] for t in range(tokens)) + SINKHORN_EPS)
                       for e in range(experts)])
        error = np.mean(np.abs(d1_old - d1))
        d1_old = d1
    return d1[None, :] * cost * d0[:, None]


def self_test() -> int:
    failures = []

    def check(ok: bool, what: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    # Sinkhorn: every token prefers expert 0, Sinkhorn splits them 2/2 by preference strength.
    logits = torch.tensor([[2.0, 0.0], [1.5, 0.0], [1.0, 0.0], [0.5, 0.0]])
    scores = sinkhorn(logits)
    check(torch.allclose(scores, torch.from_numpy(_sinkhorn_float64(logits.numpy())).float(), rtol=1e-5, atol=0),
          "sinkhorn matches a float64 loop restatement")
    check(torch.allclose(scores.sum(0), torch.full((2,), 0.5), rtol=1e-6), "sinkhorn: each expert column sums to 1/E")
    check(torch.allclose(scores.sum(1), torch.full((4,), 0.25), rtol=1e-3), "sinkhorn: each token row sums to 1/T")
    gates, experts = route_sinkhorn(logits, 1)
    got = experts.reshape(-1).tolist()
    check(got == [0, 0, 1, 1], f"sinkhorn top-1 balances [0,0,1,1] (got {got}; softmax top-1 would be [0,0,0,0])")
    check(torch.equal(gates, torch.gather(torch.sigmoid(logits), 1, experts)), "sinkhorn k=1 gates are sigmoid(logits)")
    logits3 = torch.tensor([[3.0, 2.0, 0.0], [2.9, 2.0, 0.0], [2.8, 0.0, 2.0], [0.0, 3.0, 2.9]])
    gates, experts = route_sinkhorn(logits3, 2)
    check(torch.equal(gates, torch.gather(torch.softmax(logits3, -1), 1, experts)),
          "sinkhorn k=2 gates are softmax(logits) gathered, not renormalised")
    leaf = logits3.clone().requires_grad_()
    g, e = route_sinkhorn(leaf, 2)
    (g * torch.arange(1.0, 3.0)).sum().backward()
    ref = leaf.detach().clone().requires_grad_()
    (torch.gather(torch.softmax(ref, -1), 1, e) * torch.arange(1.0, 3.0)).sum().backward()
    check(torch.allclose(leaf.grad, ref.grad), "sinkhorn gradient is the gathered softmax's only")

    # Balanced: hand-worked examples (see the module docstring for the rule).
    p = np.array([[0.5, 0.4, 0.1], [0.45, 0.35, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32)
    check(balanced_assignment(p, 2).tolist() == [[0, 1], [1, 2], [0, 2]], "balanced: greedy pass, capacity 2 each")
    p = np.array([[0.5, 0.4, 0.1], [0.45, 0.35, 0.2], [0.3, 0.25, 0.45]], dtype=np.float32)
    got = balanced_assignment(p, 2)
    # (t1,e0) and (t2,e2) tie at 0.45: t1 first; e0 and e1 fill; t2 is left with e2 only. Its best
    # missing expert e0 is full: t0 moves from e0 to e2 (which has room) and t2 takes e0.
    check(got.tolist() == [[1, 2], [0, 1], [2, 0]],
          f"balanced: tie by token, exchange when short (got {got.tolist()})")
    check(np.bincount(got.reshape(-1), minlength=3).tolist() == [2, 2, 2],
          "balanced: counts [2, 2, 2], every expert at capacity")
    logits_b = torch.log(torch.from_numpy(p)).requires_grad_()
    gates, experts = route_balanced(logits_b, 2)
    probs = torch.softmax(logits_b.detach(), -1)
    chosen = torch.gather(probs, 1, experts)
    check(torch.allclose(gates, chosen / chosen.sum(-1, keepdim=True)), "balanced gates are the chosen p renormalised")
    rng = np.random.default_rng(7)
    ok = True
    for tokens, experts_n, k in ((16, 4, 2), (16, 8, 2), (16, 4, 1), (13, 8, 2), (5, 8, 2), (7, 3, 3)):
        for _ in range(50):
            probs = rng.dirichlet(np.full(experts_n, 0.3), size=tokens).astype(np.float32)
            a = balanced_assignment(probs, k)
            counts = np.bincount(a.reshape(-1), minlength=experts_n)
            cap = np.array(balanced_capacity(tokens, experts_n, k))
            ok &= all(len(set(row)) == k for row in a.tolist())
            ok &= bool((counts == cap).all())
            ok &= np.array_equal(a, balanced_assignment(probs.copy(), k))
    check(ok, "balanced on random inputs: k distinct experts per token, counts == capacity, deterministic")

    # The router replacement is used, and is exact: Mixtral's own routing through it equals the stock model.
    config = Run("tiny", "aux_loss").config()
    ids, labels = (torch.from_numpy(a) for a in make_batch(SEED, config.vocab_size))
    stock = build_model(config, "aux_loss", SEED)
    replaced = build_model(Run("tiny", "aux_loss").config(), "aux_loss", SEED, route="topk")
    check(isinstance(replaced.model.layers[0].mlp.gate, ReplacedRouter), "router replaced in each layer")
    results = []
    for model in (stock, replaced):
        r = model(input_ids=ids, labels=labels, use_cache=False, output_router_logits=True)
        r.loss.backward()
        results.append((r.loss.detach(), r.aux_loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (l0, a0, g0), (l1, a1, g1) = results
    check(torch.equal(l0, l1) and torch.equal(a0, a1) and all(torch.equal(g0[n], g1[n]) for n in g0),
          f"stock routing vs the same routing through ReplacedRouter: loss, aux loss and every gradient identical "
          f"(loss {l0.item():.7f}, aux {a0.item():.7f})")
    recorder = RouterRecorder(stock)
    r = stock(input_ids=ids, labels=labels, use_cache=False, output_router_logits=True)
    mine = load_balancing_loss(recorder.logits, recorder.experts, config.num_local_experts)
    ce = stock.loss_function(r.logits, labels, config.vocab_size)
    check(torch.allclose(mine, r.aux_loss, rtol=1e-6, atol=0),
          f"aux loss restated = HF's ({mine.item():.7f} vs {r.aux_loss.item():.7f})")
    check(torch.allclose(r.loss, ce + config.router_aux_loss_coef * r.aux_loss, rtol=1e-6, atol=0),
          "HF's loss = ce + router_aux_loss_coef * aux")
    shifted = F.cross_entropy(r.logits[:, :-1].reshape(-1, config.vocab_size), labels[:, 1:].reshape(-1),
                              ignore_index=-100)
    check(torch.allclose(ce, shifted, rtol=1e-6, atol=0) and int((labels[:, 1:] != -100).sum()) == 12,
          "ce = mean over the 12 counted targets of position t predicting labels[t+1]")
    print("self-test " + ("passed" if not failures else f"FAILED: {len(failures)}"))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.train_reference", description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, metavar="DIR", help="write every golden case (and graphs, data) to DIR")
    parser.add_argument("--no-onnx", action="store_true", help="with --write: skip the ONNX graphs")
    parser.add_argument("--self-test", action="store_true", help="check routing, the router hook and the aux loss")
    parser.add_argument("--config", default="tiny", help="preset for a single run (default tiny)")
    parser.add_argument("--mode", choices=MODES, default="aux_loss")
    parser.add_argument("--top-k", type=positive_int, help="override num_experts_per_tok")
    parser.add_argument("--z-loss-coef", type=float, default=0.0)
    parser.add_argument("--steps", type=positive_int, default=STEPS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.self_test:
        return self_test()
    if args.write:
        write_goldens(args.write, onnx_models=not args.no_onnx)
        total = sum(f.stat().st_size for f in args.write.iterdir() if f.is_file())
        print(f"wrote {args.write}: {total / 1e6:.2f} MB")
        return 0
    if args.config not in presets.PRESETS:
        parser.error(f"--config must be one of {', '.join(presets.PRESETS)}")
    try:
        run_case(Run(args.config, args.mode, top_k=args.top_k, z_loss_coef=args.z_loss_coef, steps=args.steps,
                     seed=args.seed), verbose=True)
    except presets.ConfigError as e:  # e.g. a --top-k above the preset's experts
        parser.error(f"--config {args.config} with --top-k {args.top_k}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
