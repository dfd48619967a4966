"""Counter-based parameter initialisation (``delayed_param``), in numpy.

Every element of every parameter is a pure function of (seed, parameter name,
element index), so any rank can create any shard of any parameter on its own
and the global parameters are the same for every parallel layout. This is the
generator of ``include/moec/Support/ParamInit.h``; the two must agree bit for
bit. With ``MASK = 2**64 - 1`` (all integer arithmetic wraps modulo 2**64)::

    splitmix64(z): z = (z + 0x9E3779B97F4A7C15) & MASK
                   z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
                   z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
                   return z ^ (z >> 31)
    key(name)      = FNV-1a 64 of the UTF-8 bytes of name
                     (h = 0xcbf29ce484222325; per byte: h = ((h ^ byte) * 0x100000001b3) & MASK)
    base(seed, name) = splitmix64(splitmix64(seed) ^ key(name))
    bits(i, j)     = splitmix64(base ^ (2*i + j))                 j in {0, 1}
    u_j            = ((bits(i, j) >> 11) + 0.5) * 2**-53          in (0, 1), exact in float64
    normal(i)      = sqrt(-2 * ln(u_0)) * cos(2*pi * u_1)         float64 (2*pi = 6.283185307179586)
    value(i)       = float32(normal(i) * std)                     one float64 product, then round

``i`` is the row-major flat index of the element in the full (unsharded)
parameter. ``ln`` and ``cos`` are the C library's (``math.log``/``math.cos``,
what ``std::log``/``std::cos`` call): numpy's own SIMD ``log`` differs from
glibc's in the last bit of about 0.3% of float64 results, so the hashing and
the arithmetic are vectorised in numpy but the two transcendental functions
go through libm element by element.

Which initialiser each parameter gets follows Hugging Face's Mixtral
``_init_weights``: ``normal(0, config.initializer_range)`` for every linear
weight (``self_attn.{q,k,v,o}_proj.weight``, the router ``mlp.gate.weight``,
``lm_head.weight``), the embedding ``model.embed_tokens.weight`` and the
experts' ``mlp.experts.gate_up_proj`` [E, 2I, H] and ``mlp.experts.down_proj``
[E, H, I]; ones for the RMSNorm weights (``input_layernorm``,
``post_attention_layernorm``, ``model.norm``). (Hugging Face also zeroes the
embedding row of ``pad_token_id`` when one is set; this generator does not.
The presets set none.)

API: :func:`init_parameters` (``config, seed -> {name: float32 array}``, the
names and shapes of ``MixtralForCausalLM(config).state_dict()``),
:func:`load_into`, and :func:`standard_normal` for one parameter.

Self-test (vectorised against a pure-Python scalar reference, bit for bit)::

    PYTHONPATH=python python -m moec.init --self-test
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

MASK = (1 << 64) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3

_log = np.frompyfunc(math.log, 1, 1)
_cos = np.frompyfunc(math.cos, 1, 1)


def splitmix64(z: int) -> int:
    """splitmix64's output function on one Python integer (scalar reference)."""
    z = (z + _GOLDEN_GAMMA) & MASK
    z = ((z ^ (z >> 30)) * _MIX1) & MASK
    z = ((z ^ (z >> 27)) * _MIX2) & MASK
    return z ^ (z >> 31)


def name_key(name: str) -> int:
    """FNV-1a 64 of the UTF-8 bytes of ``name``."""
    h = _FNV_OFFSET
    for byte in name.encode("utf-8"):
        h = ((h ^ byte) * _FNV_PRIME) & MASK
    return h


def stream_base(seed: int, name: str) -> int:
    """``splitmix64(splitmix64(seed) ^ key(name))``: the counter key of one parameter."""
    return splitmix64(splitmix64(seed & MASK) ^ name_key(name))


def _splitmix64_array(z: np.ndarray) -> np.ndarray:
    """splitmix64 on a uint64 array (numpy's uint64 arithmetic wraps)."""
    z = z + np.uint64(_GOLDEN_GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def _uniform(bits: np.ndarray) -> np.ndarray:
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def standard_normal(seed: int, name: str, indices: np.ndarray) -> np.ndarray:
    """``normal(seed, name, i)`` (float64) for each flat index in ``indices``."""
    counters = np.asarray(indices, dtype=np.uint64) * np.uint64(2)
    base = np.uint64(stream_base(seed, name))
    u0 = _uniform(_splitmix64_array(base ^ counters))
    u1 = _uniform(_splitmix64_array(base ^ (counters + np.uint64(1))))
    radius = np.sqrt(-2.0 * _log(u0).astype(np.float64))
    return radius * _cos((2.0 * math.pi) * u1).astype(np.float64)


def normal_parameter(seed: int, name: str, shape: tuple[int, ...], std: float) -> np.ndarray:
    """The whole parameter ``name`` of ``shape``: ``float32(normal(i) * std)``."""
    count = math.prod(shape)
    values = standard_normal(seed, name, np.arange(count, dtype=np.uint64)) * float(std)
    return values.astype(np.float32).reshape(shape)


def scalar_normal(seed: int, name: str, index: int) -> float:
    """``normal(seed, name, index)`` computed with Python integers and ``math`` only."""
    base = stream_base(seed, name)
    u0 = ((splitmix64(base ^ (2 * index)) >> 11) + 0.5) * 2.0**-53
    u1 = ((splitmix64(base ^ (2 * index + 1)) >> 11) + 0.5) * 2.0**-53
    return math.sqrt(-2.0 * math.log(u0)) * math.cos(2.0 * math.pi * u1)


def parameter_shapes(config) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, "normal" | "ones")}`` in ``MixtralForCausalLM(config).state_dict()`` order.

    Built on the meta device (no memory); buffers are not included (Mixtral's
    only buffers, the rotary frequencies, are non-persistent).
    """
    import torch
    from transformers import MixtralForCausalLM
    from transformers.models.mixtral import modeling_mixtral as mixtral

    with torch.device("meta"):
        model = MixtralForCausalLM(config)
    kinds: dict[str, str] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, mixtral.MixtralRMSNorm):
            kind = "ones"
        elif isinstance(module, (torch.nn.Linear, torch.nn.Embedding, mixtral.MixtralExperts,
                                 mixtral.MixtralTopKRouter)):
            kind = "normal"
        else:
            kind = None
        for param_name, _ in module.named_parameters(recurse=False):
            if kind is None:
                raise ValueError(f"no initialiser for parameter '{prefix}{param_name}' of {type(module).__name__}")
            kinds[prefix + param_name] = kind
    shapes = {}
    for name, tensor in model.state_dict().items():
        if name not in kinds:
            raise ValueError(f"state_dict entry '{name}' is not a parameter")
        shapes[name] = (tuple(tensor.shape), kinds[name])
    return shapes


def init_parameters(config, seed: int) -> dict[str, np.ndarray]:
    """All parameters of ``MixtralForCausalLM(config)`` by ``delayed_param`` (float32 arrays)."""
    std = config.initializer_range
    params = {}
    for name, (shape, kind) in parameter_shapes(config).items():
        if kind == "ones":
            params[name] = np.ones(shape, dtype=np.float32)
        else:
            params[name] = normal_parameter(seed, name, shape, std)
    return params


def load_into(model, params: dict[str, np.ndarray]) -> None:
    """Copies ``params`` into ``model``'s state dict; names and shapes must match exactly."""
    import torch

    state = model.state_dict()
    if set(state) != set(params):
        missing = sorted(set(state) - set(params))
        extra = sorted(set(params) - set(state))
        raise ValueError(f"parameter names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for name, tensor in state.items():
            value = params[name]
            if tuple(tensor.shape) != value.shape:
                raise ValueError(f"{name}: shape {value.shape} != model's {tuple(tensor.shape)}")
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def self_test(count: int = 4096) -> int:
    """Vectorised against scalar on ``count`` indices of a few names and seeds; 0 if bit-identical."""
    failures = 0
    cases = [(1234, "model.layers.0.mlp.experts.gate_up_proj"), (0, "lm_head.weight"), (2**64 - 1, "ü/é"), (7, "")]
    # Known answers: FNV-1a 64 of "" and "a", splitmix64(0) (the first output of splitmix64 seeded 0).
    known = [
        (name_key(""), 0xCBF29CE484222325),
        (name_key("a"), 0xAF63DC4C8601EC8C),
        (splitmix64(0), 0xE220A8397B1DCDAF),
    ]
    for got, want in known:
        if got != want:
            print(f"FAIL known answer {got:#018x} != {want:#018x}")
            failures += 1
    rng = np.random.default_rng(0)
    for seed, name in cases:
        indices = np.concatenate([np.arange(count // 2), rng.integers(0, 2**40, count // 2)]).astype(np.uint64)
        vector = standard_normal(seed, name, indices)
        scalar = np.array([scalar_normal(seed, name, int(i)) for i in indices])
        same64 = np.array_equal(vector.view(np.uint64), scalar.view(np.uint64))
        same32 = np.array_equal((vector * 0.02).astype(np.float32), (scalar * 0.02).astype(np.float32))
        stats = f"mean {vector.mean():+.4f} std {vector.std():.4f}"
        print(f"{'ok  ' if same64 and same32 else 'FAIL'} seed {seed} name {name!r}: {len(indices)} indices, "
              f"float64 and float32 bit-identical: {same64}/{same32}; {stats}")
        failures += not (same64 and same32)
    print("self-test " + ("passed" if failures == 0 else f"FAILED ({failures})"))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.init", description=__doc__.splitlines()[0])
    parser.add_argument("--self-test", action="store_true",
                        help="check the vectorised generator against the scalar one")
    parser.add_argument("--config", default="tiny", help="preset or JSON path (default tiny): print a summary")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    if args.self_test:
        return self_test()
    from moec import presets

    params = init_parameters(presets.load_config(args.config), args.seed)
    for name, value in params.items():
        print(f"{name:<50} {str(value.shape):<16} std {value.std():.5f}  [0] {value.flat[0]:+.8e}")
    print(f"{sum(v.size for v in params.values())} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
