"""torchtitan's Qwen3 MoE model classes configured as Mixtral: the ``titan-*`` contenders of :mod:`moec.bench`.

torchtitan 0.3.0 has no Mixtral, but its Qwen3 MoE decoder is Mixtral once
its Qwen3-specific parts are switched off. :func:`model_config` builds, from
a ``MixtralConfig``:

* ``Qwen3Model`` / ``Qwen3TransformerBlock`` (``torchtitan.models.qwen3.model``)
  with the config's hidden size, layers, vocabulary and RMSNorm epsilon, no
  weight tying (unless the config ties);
* ``GQAttention`` with the heads, KV heads and head dim, the fused QKV
  projection (torchtitan's default), rotate-half RoPE (``CosSinRoPE``, the
  config's ``rope_theta``, cache of ``seq`` positions as torchtitan's trainer
  sizes it), **no qk-norm**, and ``ScaledDotProductAttention`` (causal) as
  the inner attention. torchtitan's own registry refuses SDPA for language
  models (its loaders pack documents and need the per-document masks of flex
  or varlen attention); here every row is one sequence, so causal SDPA is
  exact, and flex attention, the registry's default, fails on torch 2.11;
* ``MoE`` with the config's experts and top-k, **no shared experts**, the
  ``TokenChoiceTopKRouter`` as Mixtral routes (softmax over all experts, top-k,
  the k weights renormalised), ``GroupedExperts`` (SwiGLU on
  ``torch._grouped_mm``) and the ``LocalTokenDispatcher`` (one GPU, no expert
  parallelism). ``load_balance_coeff`` is None: **no load balancing at all**.
  torchtitan's router has no auxiliary loss (its balancing is the
  aux-loss-free expert bias, which its trainer updates in an optimizer hook
  the benchmark does not run), so the loss is the cross-entropy alone, where
  Hugging Face's and moec's add Mixtral's aux loss (coefficient 0.02);
* initialisation: normal(0.02) for the matrices and the embedding, ones for
  the norms (Qwen3's own scheme without its scaled output projections;
  timings do not depend on it).

:func:`build_model` builds the model as torchtitan's trainer does (on the
meta device, ``to_empty``, ``init_states``) with parameters of the wanted
dtype and buffers as torchtitan computes them (the RoPE cache and the MoE
token counters in fp32). :func:`forward_loss` returns the step's forward:
the decoder's logits, then torchtitan's cross-entropy (logits upcast to fp32)
of the next token; compiled, each ``TransformerBlock`` is compiled on its own
(``fullgraph=True``, inductor) and so is the loss, as torchtitan's
``apply_compile`` and ``CompileConfig(components=["model", "loss"])`` do, under
:func:`compile_settings`.

Importing: torchtitan's package ``torchtitan.models.qwen3`` imports its
training stack in its ``__init__`` (optimizers, pipeline parallelism and the
FSDP wrapper, which expects ``torch.distributed.fsdp.DataParallelMeshDims``,
missing in torch 2.11), but nothing the model needs: the model classes live in
``torchtitan.models.qwen3.model`` and ``torchtitan.models.common``, which
import on torch 2.11. :func:`import_torchtitan` therefore registers the
``qwen3`` package without running its ``__init__`` (a module object whose
search path is the package's folder) and imports the submodules from there;
the model files themselves run unchanged. Their own imports need
``spmd_types`` 0.2.3 and ``tyro`` (with its ``docstring-parser`` and
``typeguard``) beside torch.

``python -m moec.torchtitan_mixtral --check`` checks that the configured model
is Mixtral: Hugging Face's ``MixtralForCausalLM`` of the ``tiny`` preset in
fp32 with random weights (normal, std 0.3 for the matrices, so that routing
and attention matter), the same weights loaded into the model of
:func:`model_config` (q/k/v through torchtitan's own fused-QKV load hook, the
experts' gate/up halves as ``w1``/``w3``), the logits of random tokens
compared on the CPU: relative L2 difference at most 0.02. ``GroupedExperts``
computes in bf16 whatever the parameters' dtype: measured 6.1e-3, against
0.22 with the top-k weights not renormalised, and 0 (identical logits) with
its bf16 casts taken out. With more experts the bf16 rounding of the first
layer flips near-tied routing choices in the second (``tiny-e8``: 4.6e-2),
hence the fixed preset.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

#: The release whose model classes this file configures (their configs change between releases).
TORCHTITAN_VERSION = "0.3.0"

#: Label of positions without a next token, skipped by the loss (torchtitan's IGNORE_INDEX).
IGNORE_INDEX = -100

_QWEN3_PACKAGE = "torchtitan.models.qwen3"


class TorchtitanUnavailable(Exception):
    """torchtitan or one of the modules its model files import cannot be imported."""


@dataclass(frozen=True)
class Torchtitan:
    """The torchtitan modules the contender uses."""

    version: str
    qwen3: ModuleType  # torchtitan.models.qwen3.model
    common: ModuleType  # torchtitan.models.common
    config_utils: ModuleType  # torchtitan.models.common.config_utils
    moe: ModuleType  # torchtitan.models.common.moe
    token_dispatcher: ModuleType  # torchtitan.models.common.token_dispatcher


def import_torchtitan() -> Torchtitan:
    """Imports torchtitan's model modules without ``torchtitan.models.qwen3``'s ``__init__`` (module docstring).

    Raises :class:`TorchtitanUnavailable` naming what failed to import.
    """
    try:
        import torchtitan
        import torchtitan.models
    except ImportError as e:
        raise TorchtitanUnavailable(f"torchtitan cannot be imported: {e}") from None
    registered = _QWEN3_PACKAGE not in sys.modules
    if registered:
        spec = importlib.machinery.ModuleSpec(_QWEN3_PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [str(Path(torchtitan.models.__file__).parent / "qwen3")]
        sys.modules[_QWEN3_PACKAGE] = importlib.util.module_from_spec(spec)
    try:
        return Torchtitan(
            version=torchtitan.__version__,
            qwen3=importlib.import_module(f"{_QWEN3_PACKAGE}.model"),
            common=importlib.import_module("torchtitan.models.common"),
            config_utils=importlib.import_module("torchtitan.models.common.config_utils"),
            moe=importlib.import_module("torchtitan.models.common.moe"),
            token_dispatcher=importlib.import_module("torchtitan.models.common.token_dispatcher"),
        )
    except ImportError as e:
        if registered:
            sys.modules.pop(_QWEN3_PACKAGE, None)
        raise TorchtitanUnavailable(f"torchtitan {torchtitan.__version__}'s model modules cannot be imported: "
                                    f"{e}") from None


def model_config(tt: Torchtitan, config, seq: int):
    """``Qwen3Model.Config`` of the Mixtral ``config`` (a ``MixtralConfig``) for sequences of ``seq`` tokens."""
    from functools import partial

    import torch.nn as nn

    common, cu = tt.common, tt.config_utils
    dim = config.hidden_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or dim // heads
    experts, top_k = config.num_local_experts, config.num_experts_per_tok
    matrix_init = {"weight": partial(nn.init.normal_, std=0.02)}

    def norm(width: int):
        return common.RMSNorm.Config(normalized_shape=width, eps=config.rms_norm_eps,
                                     param_init={"weight": nn.init.ones_})

    rope = common.CosSinRoPE.Config(dim=head_dim, max_seq_len=seq, theta=float(config.rope_parameters["rope_theta"]))
    layers = []
    for _ in range(config.num_hidden_layers):
        attention = cu.make_gqa_config(
            dim=dim, n_heads=heads, n_kv_heads=kv_heads, head_dim=head_dim,
            wqkv_param_init=matrix_init, wo_param_init=matrix_init,
            inner_attention=common.ScaledDotProductAttention.Config(),
            fuse_qkv=True, rope=rope, qk_norm=None)
        router = cu.make_router_config(dim=dim, num_experts=experts, gate_param_init=matrix_init, top_k=top_k,
                                       score_func="softmax", route_norm=True)
        routed = tt.moe.RoutedExperts.Config(
            inner_experts=tt.moe.GroupedExperts.Config(
                dim=dim, hidden_dim=config.intermediate_size, num_experts=experts,
                param_init={name: matrix_init["weight"] for name in ("w1_EFD", "w2_EDF", "w3_EFD")}),
            token_dispatcher=tt.token_dispatcher.LocalTokenDispatcher.Config(num_experts=experts, top_k=top_k))
        moe = cu.make_moe_config(num_experts=experts, router=router, routed_experts=routed, shared_experts=None,
                                 load_balance_coeff=None)
        layers.append(tt.qwen3.Qwen3TransformerBlock.Config(
            attention_norm=norm(dim), ffn_norm=norm(dim), attention=attention, moe=moe))
    vocab = config.vocab_size
    return tt.qwen3.Qwen3Model.Config(
        vocab_size=vocab, dim=dim, norm=norm(dim), enable_weight_tying=bool(config.tie_word_embeddings),
        tok_embeddings=common.Embedding.Config(num_embeddings=vocab, embedding_dim=dim, param_init=matrix_init),
        lm_head=common.Linear.Config(in_features=dim, out_features=vocab, param_init=matrix_init),
        layers=layers)


def build_model(tt: Torchtitan, config, seq: int, dtype, device: str, checkpointing: bool = False):
    """The model of :func:`model_config` in training mode, parameters of ``dtype`` on ``device``, initialised.

    ``checkpointing``: every ``TransformerBlock`` wrapped to be recomputed in
    the backward, as torchtitan's full activation checkpointing (``FullAC``)
    wraps them: torch's ``checkpoint_wrapper``, non-reentrant, RNG state kept.
    Draws from torch's global generator: seed it first.
    """
    import torch

    model_cfg = model_config(tt, config, seq)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the parameters' dtype; the buffers are fp32 by construction
    try:
        with torch.device("meta"):
            model = model_cfg.build()
        model.to_empty(device=device)
        with torch.no_grad():
            model.init_states(buffer_device=torch.device(device))
    finally:
        torch.set_default_dtype(previous)
    if checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for name, block in list(model.layers.named_children()):
            model.layers.register_module(name, checkpoint_wrapper(block, preserve_rng_state=True))
    return model.train()


def next_token_labels(ids):
    """Labels of ``ids`` [B, S]: the next token, ``IGNORE_INDEX`` at the last position (the shift HF's loss does)."""
    import torch

    return torch.cat([ids[:, 1:], ids.new_full((ids.shape[0], 1), IGNORE_INDEX)], dim=1)


def cross_entropy(logits, labels):
    """torchtitan's loss: the cross-entropy of the fp32-upcast logits, averaged over the labelled positions."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(0, 1), ignore_index=IGNORE_INDEX)


def forward_loss(model, *, compile: bool):
    """The step's forward, ``ids -> loss``; ``compile``: every block and the loss compiled.

    Run the compiled forward under :func:`compile_settings`.
    """
    import torch

    loss_fn = cross_entropy
    if compile:
        for block in model.layers.values():
            block.compile(backend="inductor", fullgraph=True)
        loss_fn = torch.compile(cross_entropy)

    def run(ids):
        return loss_fn(model(ids), next_token_labels(ids))

    return run


def compile_settings(checkpointing: bool = False):
    """Context of torchtitan's ``apply_compile`` dynamo settings.

    Scalar outputs are captured for the MoE dispatch; with ``checkpointing``,
    forward side effects are not replayed in the recomputation (torchtitan
    sets both). Scoped so that the other contenders compile with torch's
    defaults.
    """
    import torch

    settings = {"capture_scalar_outputs": True}
    if checkpointing:
        settings["skip_fwd_side_effects_in_bwd_under_checkpoint"] = True
    return torch._dynamo.config.patch(**settings)


#: Largest relative L2 difference of the logits --check accepts (the experts run in bf16).
CHECK_TOLERANCE = 0.02


def hf_state_dict(hf, intermediate_size: int) -> dict:
    """The weights of Hugging Face's ``MixtralForCausalLM`` ``hf`` under the names of :func:`model_config`'s model."""
    found = {"tok_embeddings.weight": hf.model.embed_tokens.weight, "norm.weight": hf.model.norm.weight,
             "lm_head.weight": hf.lm_head.weight}
    for i, layer in enumerate(hf.model.layers):
        attention, experts, prefix = layer.self_attn, layer.mlp.experts, f"layers.{i}."
        if not hasattr(experts, "gate_up_proj"):
            raise ValueError(f"Hugging Face's experts of layer {i} ({type(experts).__name__}) have no fused "
                             "gate_up_proj: --check needs transformers 5's Mixtral")
        found.update({
            prefix + "attention.qkv_linear.wq.weight": attention.q_proj.weight,  # merged into wqkv by its hook
            prefix + "attention.qkv_linear.wk.weight": attention.k_proj.weight,
            prefix + "attention.qkv_linear.wv.weight": attention.v_proj.weight,
            prefix + "attention.wo.weight": attention.o_proj.weight,
            prefix + "moe.router.gate.weight": layer.mlp.gate.weight,
            prefix + "moe.routed_experts.inner_experts.w1_EFD": experts.gate_up_proj[:, :intermediate_size],
            prefix + "moe.routed_experts.inner_experts.w3_EFD": experts.gate_up_proj[:, intermediate_size:],
            prefix + "moe.routed_experts.inner_experts.w2_EDF": experts.down_proj,
            prefix + "attention_norm.weight": layer.input_layernorm.weight,
            prefix + "ffn_norm.weight": layer.post_attention_layernorm.weight,
        })
    return {name: tensor.detach().clone() for name, tensor in found.items()}


def logits_difference(tt: Torchtitan, config, seq: int = 64, batch: int = 2, seed: int = 0) -> float:
    """Relative L2 difference of Hugging Face's and the configured model's logits, same weights (module docstring)."""
    import torch
    from transformers import MixtralForCausalLM

    torch.manual_seed(seed)
    hf = MixtralForCausalLM._from_config(config, dtype=torch.float32, attn_implementation="sdpa").eval()
    with torch.no_grad():
        for param in hf.parameters():
            param.copy_(torch.randn_like(param) * 0.3 if param.dim() > 1 else torch.randn_like(param))
    model = build_model(tt, config, seq, torch.float32, "cpu").eval()
    model.load_state_dict(hf_state_dict(hf, config.intermediate_size), strict=True)
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
        got = model(ids)
    return ((got - expected).norm() / expected.norm()).item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.torchtitan_mixtral",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", required=True,
                        help="compare the configured model's logits with Hugging Face's Mixtral")
    parser.add_argument("--torchtitan-path", type=Path, metavar="DIR",
                        help="import torchtitan (and spmd_types, tyro) from DIR first")
    args = parser.parse_args(argv)
    if args.torchtitan_path is not None:
        if not args.torchtitan_path.is_dir():
            parser.error(f"--torchtitan-path '{args.torchtitan_path}' is not a directory")
        sys.path.insert(0, str(args.torchtitan_path.resolve()))

    from moec import presets

    try:
        tt = import_torchtitan()
    except TorchtitanUnavailable as e:
        parser.error(str(e))
    difference = logits_difference(tt, presets.load_config("tiny"))
    print(f"torchtitan {tt.version} as Mixtral (tiny) against Hugging Face's Mixtral: logits relative "
          f"L2 difference {difference:.3e} (tolerance {CHECK_TOLERANCE})")
    print("PASS" if difference <= CHECK_TOLERANCE else "FAIL")
    return 0 if difference <= CHECK_TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
