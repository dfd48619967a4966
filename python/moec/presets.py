"""Named Mixtral configurations and config loading.

A *preset* is a dictionary of Hugging Face ``MixtralConfig`` fields. The same
presets are kept as JSON files in ``moec/configs/<name>.json`` so the C++ side
reads exactly what the Python side exports; ``python -m moec.presets`` rewrites
those files from :data:`PRESETS` and ``python -m moec.presets --check`` fails if
they differ.

:func:`load_config` accepts either a preset name or a path to a JSON file with
``MixtralConfig`` fields (``rope_theta`` may be given flat, as in Hugging Face
``config.json`` files) and returns a validated ``MixtralConfig``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

#: Directory holding the JSON mirror of :data:`PRESETS`.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

_TINY: dict[str, Any] = {
    "model_type": "mixtral",
    "vocab_size": 256,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 128,
    "rope_theta": 1e6,
    "rms_norm_eps": 1e-5,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "router_aux_loss_coef": 0.02,
    "hidden_act": "silu",
}

# Mixtral 8x7B as published (mistralai/Mixtral-8x7B-v0.1 config.json).
_MIXTRAL_8X7B: dict[str, Any] = {
    "model_type": "mixtral",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1e6,
    "rms_norm_eps": 1e-5,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "router_aux_loss_coef": 0.02,
    "hidden_act": "silu",
}

#: Preset name -> MixtralConfig fields.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _TINY,
    "tiny-e8": {**_TINY, "num_local_experts": 8},
    "mixtral-8x7b": _MIXTRAL_8X7B,
    "mixtral-8x7b-2l": {**_MIXTRAL_8X7B, "num_hidden_layers": 2},
}

# Fields that must be present and positive integers for the exporter to work.
_REQUIRED_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "num_local_experts",
    "num_experts_per_tok",
    "max_position_embeddings",
)


class ConfigError(ValueError):
    """A config spec that names no preset, is not valid JSON or is inconsistent."""


def read_fields(spec: str) -> dict[str, Any]:
    """Returns the MixtralConfig fields named by ``spec``.

    ``spec`` is a preset name (see :data:`PRESETS`) or a path to a JSON file
    holding one object of MixtralConfig fields. Raises :class:`ConfigError`.
    """
    if spec in PRESETS:
        return dict(PRESETS[spec])
    path = Path(spec)
    if not path.is_file():
        looks_like_path = spec.endswith(".json") or "/" in spec or path.suffix
        what = f"no such file '{spec}'" if looks_like_path else f"unknown preset '{spec}'"
        raise ConfigError(f"{what}; expected a JSON file or one of the presets: {', '.join(PRESETS)}")
    try:
        fields = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{spec}: invalid JSON: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{spec}: cannot read: {exc}") from exc
    if not isinstance(fields, dict):
        raise ConfigError(f"{spec}: expected a JSON object of MixtralConfig fields, got {type(fields).__name__}")
    return fields


def validate_fields(fields: dict[str, Any], origin: str = "config") -> None:
    """Checks the fields the exporter relies on; raises :class:`ConfigError`."""
    model_type = fields.get("model_type", "mixtral")
    if model_type != "mixtral":
        raise ConfigError(f"{origin}: model_type '{model_type}' is not 'mixtral'")
    for name in _REQUIRED_INT_FIELDS:
        if name not in fields:
            continue  # MixtralConfig's default applies
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{origin}: {name} must be a positive integer, got {value!r}")

    def get(name: str) -> Any:
        return fields.get(name, _mixtral_default(name))

    heads, kv_heads, hidden = get("num_attention_heads"), get("num_key_value_heads"), get("hidden_size")
    if heads % kv_heads != 0:
        raise ConfigError(f"{origin}: num_key_value_heads {kv_heads} does not divide num_attention_heads {heads}")
    if fields.get("head_dim") is None and hidden % heads != 0:
        raise ConfigError(f"{origin}: num_attention_heads {heads} does not divide hidden_size {hidden}")
    experts, top_k = get("num_local_experts"), get("num_experts_per_tok")
    if top_k > experts:
        raise ConfigError(f"{origin}: num_experts_per_tok {top_k} exceeds num_local_experts {experts}")
    act = get("hidden_act")
    if act != "silu":
        raise ConfigError(f"{origin}: hidden_act '{act}' is not supported (only 'silu')")


@functools.cache
def _mixtral_defaults():
    from transformers import MixtralConfig

    return MixtralConfig()


def _mixtral_default(name: str) -> Any:
    return getattr(_mixtral_defaults(), name)


def load_config(spec: str):
    """Returns a validated ``transformers.MixtralConfig`` for a preset name or JSON path."""
    from transformers import MixtralConfig

    fields = read_fields(spec)
    validate_fields(fields, origin=spec)
    try:
        return MixtralConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{spec}: MixtralConfig rejected the fields: {exc}") from exc


def preset_json(name: str) -> str:
    """The canonical JSON text of preset ``name`` (as stored in ``configs/``)."""
    return json.dumps(PRESETS[name], indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.presets", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if configs/*.json differ from PRESETS")
    args = parser.parse_args(argv)
    stale = []
    for name in PRESETS:
        path = CONFIG_DIR / f"{name}.json"
        text = preset_json(name)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            CONFIG_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("stale preset JSON (run python -m moec.presets): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
