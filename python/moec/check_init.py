"""Checks parameters a compiled `init_params` program wrote on the GPU.

    python -m moec.check_init DUMP_DIR --seed N [--tolerance T]

DUMP_DIR is what `init_params --seed N --dump DUMP_DIR` wrote: one raw
little-endian fp32 file per parameter and `manifest.tsv` (name, shape as
AxB, arena offset, kind, std). Each parameter is compared with
python/moec/init.py's numpy twin of the counter-based generator (ones for
kind `ones`); prints the largest max abs and relative L2 error and exits 1
when a relative L2 error exceeds the tolerance (default 1e-6: the GPU's
log/cos may differ from the host's in the last bit), or, naming the line,
when the manifest is empty or a line is malformed (an unknown kind, a bad
shape or std) or a parameter's file is missing or of another size.
"""

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np

from moec import non_negative_float
from moec.init import normal_parameter


KINDS = ("normal", "ones")


def read_manifest(path: Path) -> list[tuple[str, tuple[int, ...], str, float]]:
    """``manifest.tsv``'s (name, shape, kind, std) per parameter; raises ValueError naming the line."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        where = f"{path}:{number}"
        fields = line.split("\t")
        if len(fields) != 5:
            raise ValueError(f"{where}: {len(fields)} tab-separated fields, expected 5 (name, shape, offset, kind, std)")
        name, shape_text, _offset, kind, std_text = fields
        if not re.fullmatch(r"\d+(x\d+)*", shape_text):
            raise ValueError(f"{where}: {name}: shape '{shape_text}' is not AxB... of non-negative integers")
        if kind not in KINDS:
            raise ValueError(f"{where}: {name}: unknown init kind '{kind}' (expected {' or '.join(KINDS)})")
        try:
            std = float(std_text)
        except ValueError:
            std = math.nan
        if not (math.isfinite(std) and std >= 0):
            raise ValueError(f"{where}: {name}: std '{std_text}' is not a finite number >= 0")
        entries.append((name, tuple(int(d) for d in shape_text.split("x")), kind, std))
    if not entries:
        # Nothing compared must not read as a pass.
        raise ValueError(f"{path}: no parameters")
    return entries


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m moec.check_init", description=__doc__.splitlines()[0])
    parser.add_argument("dump", type=Path)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--tolerance", type=non_negative_float, default=1e-6)
    args = parser.parse_args(argv)
    manifest = args.dump / "manifest.tsv"
    if not manifest.is_file():
        print(f"check_init: error: no {manifest}", file=sys.stderr)
        return 1
    try:
        entries = read_manifest(manifest)
    except (OSError, ValueError) as e:
        print(f"check_init: error: {e}", file=sys.stderr)
        return 1
    worst_abs = worst_rel = 0.0
    failed = False
    for name, shape, kind, std in entries:
        path = args.dump / f"{name}.bin"
        if not path.is_file():
            print(f"check_init: error: {name}: no {path}", file=sys.stderr)
            return 1
        actual = np.fromfile(path, dtype="<f4")
        if actual.size != int(np.prod(shape)):
            print(f"check_init: error: {name}: {actual.size} values for shape {shape}", file=sys.stderr)
            return 1
        if kind == "ones":
            expected = np.ones(shape, dtype=np.float32)
        else:
            expected = normal_parameter(args.seed, name, shape, std).astype(np.float32)
        diff = actual.astype(np.float64) - expected.reshape(-1).astype(np.float64)
        max_abs = float(np.max(np.abs(diff), initial=0.0))
        rel = float(np.linalg.norm(diff) / max(np.linalg.norm(expected), 1e-30))
        worst_abs, worst_rel = max(worst_abs, max_abs), max(worst_rel, rel)
        if not rel <= args.tolerance:
            print(f"check_init: {name}: max abs {max_abs:.3e}, relative L2 {rel:.3e}")
            failed = True
    print(f"{len(entries)} parameters vs numpy: max abs error {worst_abs:.3e}, "
          f"relative L2 error {worst_rel:.3e} (tolerance {args.tolerance:.1e})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
