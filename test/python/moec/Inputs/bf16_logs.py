"""Writes training logs for the tests of python -m moec.train_bf16 --check.

    python bf16_logs.py GOLDEN.json DIR

Each log is the golden's own series (the compiled program's CSV columns),
changed in one way; every change but `nan` also carries noise at the level
measured for correct bf16 runs (train_bf16.TOLERANCES' comment: per metric a
median relative difference, and one step at the largest):

* measured.csv: the noise only;
* diverging.csv: loss and ce_loss drift away after step 10, by 0.5% from
  step 20 on (a wrong gradient of the experts or attention);
* grad-norm.csv: grad_norm 2% too large at every step (a gradient scaled
  wrong), the losses as measured;
* aux-drift.csv: aux_loss drifts by 0.5% after step 10, the loss by its
  share of that (coefficient 0.02): a wrong router gradient that the total
  loss hardly shows;
* nan.csv: the golden, with step 7's grad_norm NaN.
"""

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

COLUMNS = ("step", "loss", "ce_loss", "aux_loss", "z_loss", "grad_norm", "lr")
#: (median, largest) relative difference of a correct bf16 run, per metric.
MEASURED = {"loss": (3.3e-5, 1.3e-4), "ce_loss": (3.3e-5, 1.2e-4), "aux_loss": (2.1e-4, 1.0e-3),
            "grad_norm": (1.4e-3, 1.4e-2)}
SPIKE_STEP = 39
AUX_COEF = 0.02


def noisy(steps: list[dict], rng) -> list[dict]:
    """The series with relative noise of MEASURED's median, at most its largest, reached at SPIKE_STEP."""
    out = []
    for record in steps:
        changed = dict(record)
        for key, (typical, largest) in MEASURED.items():
            size = largest if record["step"] == SPIKE_STEP else min(largest, rng.exponential(typical / math.log(2)))
            changed[key] = record[key] * (1 + rng.choice((-1, 1)) * size)
        out.append(changed)
    return out


def drift(step: int) -> float:
    """0 up to step 10, rising to 0.5% at step 20 and staying there."""
    return 0.005 * min(1.0, max(0.0, (step - 10) / 10))


def write(path: Path, steps: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for record in steps:
            writer.writerow([record["step"], *(repr(float(record.get(k, 0.0))) for k in COLUMNS[1:])])


def main(golden_path: Path, out: Path) -> None:
    golden = json.loads(golden_path.read_text())["steps"]
    rng = np.random.default_rng(20261202)
    measured = noisy(golden, rng)
    write(out / "measured.csv", measured)
    write(out / "diverging.csv", [{**r, "loss": r["loss"] * (1 + drift(r["step"])),
                                   "ce_loss": r["ce_loss"] * (1 + drift(r["step"]))} for r in measured])
    write(out / "grad-norm.csv", [{**r, "grad_norm": r["grad_norm"] * 1.02} for r in measured])
    aux_drift = []
    for r in measured:
        extra = r["aux_loss"] * drift(r["step"])
        aux_drift.append({**r, "aux_loss": r["aux_loss"] + extra, "loss": r["loss"] + AUX_COEF * extra})
    write(out / "aux-drift.csv", aux_drift)
    write(out / "nan.csv", [{**r, "grad_norm": float("nan")} if r["step"] == 7 else r for r in golden])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
