"""Compares a training run of a compiled program with the CPU reference's (or another program's).

    python -m moec.check_gpu --reference REF_DIR --reference-log REF.csv \
        --gpu GPU_DIR --gpu-log GPU.csv [--tolerance 1e-4]

REF_DIR / REF.csv: ``moec train MODEL --reference --dump REF_DIR --log REF.csv``,
or another compiled program's dump and log (its parameters read like the
GPU's; activation checkpointing compares each policy with none so);
GPU_DIR / GPU.csv: the compiled ``train_step --dump GPU_DIR --log GPU.csv``
on the same tokens, steps and options. Compares every step's loss, ce_loss,
aux_loss and grad_norm, and every final parameter of the reference
(``REF_DIR/final/param/<name>.pb``) with the GPU's
(``GPU_DIR/final/param/<name>.bin``, shapes from
``GPU_DIR/final/param/index.tsv``). Prints max abs and relative L2 error for
each and exits 1 unless every relative error is at most the tolerance (a NaN
is not), the logs hold the same steps (at least one), and the two dumps hold
the same parameters (at least one) with the same shapes.
"""

import argparse
import csv
import io
import math
import sys
from pathlib import Path

import numpy as np

from moec import InputError, non_negative_float, read_text
from moec.check_train import read_tensor

METRICS = ("loss", "ce_loss", "aux_loss", "grad_norm")


def relative(got: float, want: float) -> float:
    return abs(got - want) / abs(want) if want != 0 else abs(got - want)


def relative_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    actual = actual.astype(np.float64).ravel()
    expected = expected.astype(np.float64).ravel()
    norm = np.linalg.norm(expected)
    diff = np.linalg.norm(actual - expected)
    return float(diff / norm) if norm > 0 else float(diff)


def within(error: float, tolerance: float) -> bool:
    """``error <= tolerance``, spelled so that a NaN error is outside."""
    return error <= tolerance


def read_log(path: Path) -> dict[int, dict[str, float]]:
    """A program's CSV log (``--log``): step -> its METRICS. Raises InputError naming the file, and the line
    of a bad row: no such column, a row of another number of fields, a step that is no integer or comes
    twice, a value that is no number (``nan`` is one: the comparison fails on it)."""
    rows = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        return _log_rows(path, rows)
    except csv.Error as e:  # a field past csv's size limit
        raise InputError(f"{path}:{rows.line_num}: {e}") from None


def _log_rows(path: Path, rows) -> dict[int, dict[str, float]]:
    header = next(rows, [])
    missing = [key for key in ("step", *METRICS) if key not in header]
    if missing:
        raise InputError(f"{path}: no column {', '.join(missing)} (the header is '{','.join(header)}')")
    column = {key: header.index(key) for key in ("step", *METRICS)}
    log = {}
    for fields in rows:
        where = f"{path}:{rows.line_num}"
        if len(fields) != len(header):
            raise InputError(f"{where}: {len(fields)} fields, the header has {len(header)}")
        text = fields[column["step"]]
        try:
            step = int(text)
        except ValueError:
            raise InputError(f"{where}: step '{text}' is not an integer") from None
        if step in log:
            raise InputError(f"{where}: step {step} again")
        log[step] = {}
        for key in METRICS:
            text = fields[column[key]]
            try:
                log[step][key] = float(text)
            except ValueError:
                raise InputError(f"{where}: {key} '{text}' is not a number") from None
    return log


def read_index(path: Path) -> dict[str, tuple[int, ...]]:
    """A GPU dump's ``index.tsv``: parameter name -> shape. Raises InputError naming the file and line of a
    line that is no ``NAME<tab>SHAPE``."""
    shapes = {}
    for number, line in enumerate(read_text(path).splitlines(), 1):
        name, tab, shape_text = line.partition("\t")
        try:
            shape = tuple(int(d) for d in shape_text.split("x")) if shape_text else ()
        except ValueError:
            shape = None
        if not name or not tab or shape is None or any(d < 0 for d in shape):
            raise InputError(f"{path}:{number}: '{line}' is not NAME<tab>SHAPE (dimensions joined by 'x')")
        shapes[name] = shape
    return shapes


def read_floats(path: Path) -> np.ndarray:
    """A GPU dump's raw little-endian fp32 file."""
    try:
        return np.fromfile(path, dtype="<f4")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None


def check_metrics(ref_log: dict, gpu_log: dict, tolerance: float) -> bool:
    """Prints every step's metrics side by side; True when all are within ``tolerance``."""
    if not ref_log:
        print("check_gpu: error: the reference log holds no steps", file=sys.stderr)
        return False
    if sorted(ref_log) != sorted(gpu_log):
        print(f"check_gpu: error: steps differ: reference {sorted(ref_log)}, gpu {sorted(gpu_log)}", file=sys.stderr)
        return False
    passed = True
    for step in sorted(ref_log):
        for key in METRICS:
            r, g = ref_log[step][key], gpu_log[step][key]
            rel = relative(g, r)
            bad = not within(rel, tolerance)
            passed &= not bad
            print(f"step {step} {key:9s} reference {r:.9g}  gpu {g:.9g}  rel err {rel:.3e}{'  FAIL' if bad else ''}")
    return passed


def check_parameters(reference: Path, gpu: Path, tolerance: float) -> bool:
    """Compares every final parameter of the reference dump with the GPU's.

    The reference's parameters are the list to check: one missing from the
    GPU dump fails, and so does one that only the GPU dump holds. True when
    all are present, of the same shape and within ``tolerance``.
    """
    ref_dir, gpu_dir = reference / "final" / "param", gpu / "final" / "param"
    ref_index = ref_dir / "index.tsv"
    if ref_index.is_file():
        # Another program's dump: float32 values, shapes from its index.
        ref_shapes = read_index(ref_index)
        names = sorted(ref_shapes)

        def read_reference(name):
            values = read_floats(ref_dir / f"{name}.bin")
            return values.reshape(ref_shapes[name]).astype(np.float64)
    else:
        names = sorted(path.name[: -len(".pb")] for path in ref_dir.glob("*.pb"))

        def read_reference(name):
            return read_tensor(ref_dir / f"{name}.pb")

    if not names:
        print(f"check_gpu: error: the reference dump holds no final parameters ({ref_dir})", file=sys.stderr)
        return False
    index = gpu_dir / "index.tsv"
    if not index.is_file():
        print(f"check_gpu: error: the GPU dump has no parameter index ({index})", file=sys.stderr)
        return False
    shapes = read_index(index)
    passed = True
    for name in sorted(set(shapes) - set(names)):
        print(f"{name}: in the GPU dump but not in the reference  FAIL")
        passed = False
    errors = []  # (rel L2, max abs, name) of each compared parameter
    for name in names:
        if name not in shapes:
            print(f"{name}: missing from the GPU dump  FAIL")
            passed = False
            continue
        ref = read_reference(name)
        values = read_floats(gpu_dir / f"{name}.bin")
        if ref.shape != shapes[name] or values.size != ref.size:
            print(f"{name}: reference shape {ref.shape}, gpu {shapes[name]} ({values.size} values)  FAIL")
            passed = False
            continue
        gpu_values = values.reshape(ref.shape).astype(np.float64)
        abs_err = float(np.max(np.abs(gpu_values - ref))) if ref.size else 0.0
        rel = relative_l2(gpu_values, ref)
        errors.append((rel, abs_err, name))
        if not within(rel, tolerance):
            print(f"{name}: max abs err {abs_err:.3e}, rel L2 err {rel:.3e}  FAIL")
            passed = False
    if errors:
        # A NaN is the worst error.
        worst_rel, _, worst_name = max(errors, key=lambda e: (math.isnan(e[0]), e[0]))
        worst_abs = max((e[1] for e in errors), key=lambda a: (math.isnan(a), a))
        print(f"{len(errors)} of {len(names)} final parameters compared: max abs err {worst_abs:.3e}, "
              f"worst rel L2 err {worst_rel:.3e} ({worst_name})")
    return passed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.check_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--reference-log", type=Path, required=True)
    parser.add_argument("--gpu", type=Path, required=True)
    parser.add_argument("--gpu-log", type=Path, required=True)
    parser.add_argument("--tolerance", type=non_negative_float, default=1e-4)
    args = parser.parse_args(argv)

    try:
        passed = check_metrics(read_log(args.reference_log), read_log(args.gpu_log), args.tolerance)
        passed &= check_parameters(args.reference, args.gpu, args.tolerance)
    except ValueError as e:  # an InputError, or read_tensor's on a reference .pb
        print(f"check_gpu: error: {e}", file=sys.stderr)
        return 1
    print(f"PASS (tolerance {args.tolerance:g})" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
