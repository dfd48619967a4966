"""Checks parameters a compiled `init_params` program wrote on the GPU.

    python -m moec.check_init DUMP_DIR --seed N [--tolerance T]

DUMP_DIR is what `init_params --seed N --dump DUMP_DIR` wrote: one raw
little-endian fp32 file per parameter and `manifest.tsv` (name, shape as
AxB, arena offset, kind, std). Each parameter is compared with
python/moec/init.py's numpy twin of the counter-based generator (ones for
kind `ones`); prints the largest max abs and relative L2 error and exits 1
when a relative L2 error exceeds the tolerance (default 1e-6: the GPU's
log/cos may differ from the host's in the last bit).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from moec.init import normal_parameter


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dump", type=Path)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args(argv)
    manifest = args.dump / "manifest.tsv"
    if not manifest.is_file():
        print(f"check_init: error: no {manifest}", file=sys.stderr)
        return 1
    worst_abs = worst_rel = 0.0
    count = 0
    failed = False
    for line in manifest.read_text().splitlines():
        name, shape_text, _offset, kind, std = line.split("\t")
        shape = tuple(int(d) for d in shape_text.split("x"))
        actual = np.fromfile(args.dump / f"{name}.bin", dtype="<f4")
        if actual.size != int(np.prod(shape)):
            print(f"check_init: error: {name}: {actual.size} values for shape {shape}")
            return 1
        if kind == "ones":
            expected = np.ones(shape, dtype=np.float32)
        else:
            expected = normal_parameter(args.seed, name, shape, float(std)).astype(np.float32)
        diff = actual.astype(np.float64) - expected.reshape(-1).astype(np.float64)
        max_abs = float(np.max(np.abs(diff)))
        rel = float(np.linalg.norm(diff) / max(np.linalg.norm(expected), 1e-30))
        worst_abs, worst_rel = max(worst_abs, max_abs), max(worst_rel, rel)
        count += 1
        if not rel <= args.tolerance:
            print(f"check_init: {name}: max abs {max_abs:.3e}, relative L2 {rel:.3e}")
            failed = True
    print(f"{count} parameters vs numpy: max abs error {worst_abs:.3e}, "
          f"relative L2 error {worst_rel:.3e} (tolerance {args.tolerance:.1e})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
