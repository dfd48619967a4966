"""Compares a training run of a compiled program with the CPU reference's.

    python -m moec.check_gpu --reference REF_DIR --reference-log REF.csv \
        --gpu GPU_DIR --gpu-log GPU.csv [--tolerance 1e-4]

REF_DIR / REF.csv: ``moec train MODEL --reference --dump REF_DIR --log REF.csv``;
GPU_DIR / GPU.csv: the compiled ``train_step --dump GPU_DIR --log GPU.csv``
on the same tokens, steps and options. Compares every step's loss, ce_loss,
aux_loss and grad_norm, and every final parameter
(``REF_DIR/final/param/<name>.pb`` against ``GPU_DIR/final/param/<name>.bin``,
shapes from ``GPU_DIR/final/param/index.tsv``). Prints max abs and relative
L2 error for each and exits 1 when any relative error exceeds the tolerance.
"""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from moec.check_train import read_tensor

METRICS = ("loss", "ce_loss", "aux_loss", "grad_norm")


def relative_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    actual = actual.astype(np.float64).ravel()
    expected = expected.astype(np.float64).ravel()
    norm = np.linalg.norm(expected)
    diff = np.linalg.norm(actual - expected)
    return float(diff / norm) if norm > 0 else float(diff)


def read_log(path: Path) -> dict[int, dict[str, float]]:
    with open(path, newline="") as f:
        return {int(row["step"]): {k: float(row[k]) for k in METRICS} for row in csv.DictReader(f)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.check_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--reference-log", type=Path, required=True)
    parser.add_argument("--gpu", type=Path, required=True)
    parser.add_argument("--gpu-log", type=Path, required=True)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)

    failed = False
    ref_log, gpu_log = read_log(args.reference_log), read_log(args.gpu_log)
    if sorted(ref_log) != sorted(gpu_log):
        print(f"check_gpu: error: steps differ: reference {sorted(ref_log)}, gpu {sorted(gpu_log)}", file=sys.stderr)
        return 1
    for step in sorted(ref_log):
        for key in METRICS:
            r, g = ref_log[step][key], gpu_log[step][key]
            rel = abs(g - r) / abs(r) if r != 0 else abs(g - r)
            bad = rel > args.tolerance
            failed |= bad
            print(f"step {step} {key:9s} reference {r:.9g}  gpu {g:.9g}  rel err {rel:.3e}{'  FAIL' if bad else ''}")

    index = args.gpu / "final" / "param" / "index.tsv"
    worst_abs = worst_rel = 0.0
    worst_name = ""
    count = 0
    for line in index.read_text().splitlines():
        name, shape_text = line.split("\t")
        shape = tuple(int(d) for d in shape_text.split("x"))
        gpu = np.fromfile(args.gpu / "final" / "param" / f"{name}.bin", dtype="<f4").reshape(shape)
        ref = read_tensor(args.reference / "final" / "param" / f"{name}.pb")
        if ref.shape != gpu.shape:
            print(f"check_gpu: error: {name}: reference shape {ref.shape}, gpu {gpu.shape}", file=sys.stderr)
            return 1
        abs_err = float(np.max(np.abs(gpu.astype(np.float64) - ref)))
        rel = relative_l2(gpu, ref)
        count += 1
        if rel > worst_rel:
            worst_rel, worst_name = rel, name
        worst_abs = max(worst_abs, abs_err)
        if rel > args.tolerance:
            failed = True
            print(f"{name}: max abs err {abs_err:.3e}, rel L2 err {rel:.3e}  FAIL")
    print(f"{count} final parameters: max abs err {worst_abs:.3e}, worst rel L2 err {worst_rel:.3e} ({worst_name})")
    print("FAIL" if failed else f"PASS (tolerance {args.tolerance:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
