"""Python side of moec: model export, presets and golden-data generation.

The C++ compiler consumes ONNX files; this package produces them from the stock
Hugging Face ``transformers.MixtralForCausalLM`` and writes the reference data
the compiler's tests compare against.

Modules:

* :mod:`moec.presets` -- named ``MixtralConfig`` presets (mirrored as JSON in
  ``moec/configs/*.json`` for the C++ side) and config loading.
* :mod:`moec.model` -- the PyTorch model as exported (logits-only Mixtral,
  the fused sparse-MoE custom op, weights-free construction).
* :mod:`moec.export` -- ``python -m moec.export``: Mixtral to ONNX in one of
  three forms (``ort``, ``batched_mm``, ``grouped_mm``).
* :mod:`moec.golden` -- ``python -m moec.golden``: regenerates the fixtures
  under ``test/Inputs/tiny/``.
* :mod:`moec.inspect_onnx` -- ``python -m moec.inspect_onnx``: prints an ONNX
  graph node by node with shapes.
* :mod:`moec.check_ort` -- compares a ``moec run`` output with onnxruntime.
* :mod:`moec.make_invalid_models` -- writes the broken models the importer's
  error tests use (``test/Inputs/invalid``).
* :mod:`moec.init` -- ``delayed_param``: the counter-based parameter
  initialisation, the same as the C++ ``ParamInit.h``.
* :mod:`moec.train_reference` -- the PyTorch reference training step (all four
  load-balancing modes) and the goldens in ``test/Inputs/train``.
* :mod:`moec.check_train` -- compares a ``moec train --dump`` with a golden.
* :mod:`moec.data` -- tokenises Debian's fortunes into token-block files.
* :mod:`moec.plot_loss` -- draws a training-metrics CSV.
* :mod:`moec.atomic` -- atomic file writes.
* :mod:`moec.check_init` -- checks parameters a compiled ``init_params`` wrote.
* :mod:`moec.bench` -- ``python -m moec.bench``: the one-GPU training
  benchmark, PyTorch contenders and a compiled program interleaved over rounds.
* :mod:`moec.torchtitan_mixtral` -- torchtitan's Qwen3 MoE classes configured
  as Mixtral, the benchmark's ``titan-*`` contenders.

Run them with ``PYTHONPATH=python`` from the repository root.

The package itself holds the checks of bad input the modules share: the
argparse types of numbers, :func:`json_number` for a JSON field and
:func:`read_text` for a text file.
"""

import argparse
import json
import math
from pathlib import Path


class InputError(ValueError):
    """A value read from a file that is not what the file's format says; the message names where."""


def json_number(value, where: str, *, integer: bool = False, positive: bool = False):
    """``value`` of the JSON field ``where`` (its place, e.g. ``report.json: round 2, moec: step_s``), checked:
    a finite number (an integer with ``integer``; JSON's true and false are not numbers) at least 0, above 0
    with ``positive``. Raises InputError naming ``where`` and the value."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise InputError(f"{where}: {json.dumps(value)} is not {kind}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise InputError(f"{where}: {value} is not a finite {'positive' if positive else 'non-negative'} number")
    return value


def read_text(path) -> str:
    """The text of the UTF-8 file ``path``; raises InputError naming the file when it cannot be read (missing,
    a folder, no permission) or is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


# argparse types. Each rejects with its own message: argparse's default,
# "invalid <function name> value", names Python internals.
def checked_argument(convert, kind: str, accept, text: str):
    """``convert(text)``, or argparse's error saying that ``text`` is not ``kind`` when it does not convert
    or ``accept`` refuses it: the body of an argparse type (a module's own range calls it too)."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not {kind}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"{text} is not {kind}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type of a tolerance or a target: a finite number at least 0 (NaN would let everything pass)."""
    return checked_argument(float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0, text)


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    return checked_argument(float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0, text)


def positive_int(text: str) -> int:
    """argparse type: an integer at least 1."""
    return checked_argument(int, "an integer >= 1", lambda v: v >= 1, text)


def non_negative_int(text: str) -> int:
    """argparse type: an integer at least 0."""
    return checked_argument(int, "an integer >= 0", lambda v: v >= 0, text)
