"""The PyTorch side of the export: the model exactly as it is traced.

* :class:`MixtralLogits` -- stock ``MixtralForCausalLM`` mapping ``input_ids``
  to ``logits`` (all-ones attention mask, no cache).
* :func:`build_model` -- the model for one export form, with seeded random
  weights or with fake (memory-free) parameters.
* ``moec::sparse_moe_block`` / :class:`FusedSparseMoeBlock` -- the whole sparse
  MoE block as one torch custom op, swapped into each decoder layer for the
  ``ort`` form so that torch.onnx can translate it into one
  ``com.microsoft::MoE`` node (see :mod:`moec.export`).

Kept apart from :mod:`moec.export` so that running that module as
``__main__`` does not define the custom op twice, and so node metadata names
these classes ``moec.model.*`` however the exporter is started.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from transformers import MixtralForCausalLM

#: The MoE forms of the export (see moec.export).
FORMS = ("ort", "batched_mm", "grouped_mm")

#: transformers attention implementation used for every export (see docs/onnx-forms.md).
ATTN_IMPLEMENTATION = "eager"


@torch.library.custom_op("moec::sparse_moe_block", mutates_args=())
def sparse_moe_block(
    hidden_states: torch.Tensor,
    gate_weight: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    top_k: int,
) -> torch.Tensor:
    """Mixtral's sparse MoE block as one op (dense reference computation).

    ``hidden_states`` [..., H]; ``gate_weight`` [E, H]; ``gate_up_proj``
    [E, 2I, H] (gate rows, then up rows); ``down_proj`` [E, H, I]. Each token
    goes to its ``top_k`` experts by softmax(router logits), weighted by the
    renormalised top-k probabilities; expert e computes
    ``down_proj[e] @ (silu(gate_e x) * (up_e x))``.
    """
    hidden = hidden_states.shape[-1]
    x = hidden_states.reshape(-1, hidden)
    probs = torch.softmax((x @ gate_weight.t()).float(), dim=-1)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
    gate, up = torch.einsum("th,eoh->teo", x, gate_up_proj).chunk(2, dim=-1)  # [T, E, I] each
    expert_out = torch.einsum("tei,ehi->teh", F.silu(gate) * up, down_proj)  # [T, E, H]
    chosen = expert_out.gather(1, experts.unsqueeze(-1).expand(-1, -1, hidden))  # [T, k, H]
    return (chosen * weights.unsqueeze(-1)).sum(dim=1).reshape(hidden_states.shape)


@sparse_moe_block.register_fake
def _sparse_moe_block_fake(hidden_states, gate_weight, gate_up_proj, down_proj, top_k):
    return torch.empty_like(hidden_states)


class FusedSparseMoeBlock(torch.nn.Module):
    """Stands for a ``MixtralSparseMoeBlock`` as one ``moec::sparse_moe_block`` call.

    Keeps the original ``gate`` and ``experts`` submodules, so parameter names
    (``mlp.gate.weight``, ``mlp.experts.gate_up_proj``, ``mlp.experts.down_proj``)
    do not change.
    """

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.top_k = block.top_k
        self.gate = block.gate
        self.experts = block.experts

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.ops.moec.sparse_moe_block(
            hidden_states, self.gate.weight, self.experts.gate_up_proj, self.experts.down_proj, self.top_k
        )


class MixtralLogits(MixtralForCausalLM):
    """``MixtralForCausalLM`` whose forward maps ``input_ids`` to ``logits`` only.

    The attention mask is all ones (no padding); no KV cache. A subclass rather
    than a wrapper, so parameter names stay the checkpoint's.
    """

    # transformers decides whether a class may pick its experts implementation
    # by looking for `@use_experts_implementation` in the class's own module;
    # this subclass lives elsewhere but its experts are Mixtral's.
    _can_set_experts_implementation_cached_value = True

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        attention_mask = torch.ones_like(input_ids)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def build_model(config, form: str, *, weights: bool = True, seed: int = 0) -> MixtralLogits:
    """Builds the model to export in ``form``.

    With ``weights`` the parameters are initialised on the CPU after
    ``torch.manual_seed(seed)`` (transformers' own initialisation). Otherwise
    they are fake tensors (a ``FakeTensorMode``; no memory behind them) that
    claim the CPU device: the model runs the same code paths as with weights,
    so both give the same graph. (The meta device does not: transformers picks
    int ``histc`` for non-CPU devices, which torch.onnx cannot translate, and
    constants the model makes on its input's device, such as the mask's 0.0,
    would lose their values.) The rotary buffers are real in both cases.
    """
    if form not in FORMS:
        raise ValueError(f"unknown form '{form}'; expected one of {', '.join(FORMS)}")
    config._attn_implementation = ATTN_IMPLEMENTATION
    config._experts_implementation = form if form != "ort" else "eager"
    if weights:
        torch.manual_seed(seed)
        model = MixtralLogits(config)
    else:
        with FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv()):
            model = MixtralLogits(config)
        # Non-persistent buffers are no checkpoint tensors: compute them for real.
        model.model.rotary_emb = type(model.model.rotary_emb)(config)
    model.eval()
    if form == "ort":
        for layer in model.model.layers:
            layer.mlp = FusedSparseMoeBlock(layer.mlp)
    return model
