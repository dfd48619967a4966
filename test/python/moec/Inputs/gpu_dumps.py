"""Writes small synthetic dumps for the tests of python -m moec.check_gpu.

    python gpu_dumps.py DIR

DIR/ref, DIR/ref.csv: a reference run (``moec train --reference --dump``
layout): 3 steps of metrics, two final parameters as TensorProto files.
DIR/<case>, DIR/<case>.csv: GPU runs (``train_step --dump`` layout: raw
fp32 + index.tsv), one per case:

* good: every value within 1e-6 relative of the reference;
* nan-metric: good, but step 2's grad_norm is NaN;
* nan-param: good, but one element of parameter ``b`` is NaN;
* missing: good, but parameter ``b`` is not in the dump;
* empty: the log is good, the dump holds no parameter;
* no-steps: both logs are empty (header only; the reference's in
  DIR/ref-no-steps.csv).
"""

import csv
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper

METRICS = ("loss", "ce_loss", "aux_loss", "grad_norm")
REFERENCE_LOG = {1: (5.58, 5.54, 2.0005, 0.77), 2: (5.57, 5.53, 2.0006, 0.81), 3: (5.55, 5.51, 2.0008, 0.86)}
PARAMETERS = {
    "a": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4),
    "b": np.linspace(0.5, 2.0, 8, dtype=np.float32).reshape(2, 4),
}
CLOSE = 1.0 + 1e-6


def write_log(path: Path, log: dict) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *METRICS])
        for step, values in sorted(log.items()):
            writer.writerow([step, *(repr(v) for v in values)])


def write_gpu_dump(path: Path, parameters: dict) -> None:
    folder = path / "final" / "param"
    folder.mkdir(parents=True)
    lines = []
    for name, value in parameters.items():
        value.astype("<f4").tofile(folder / f"{name}.bin")
        lines.append(f"{name}\t{'x'.join(str(d) for d in value.shape)}\n")
    (folder / "index.tsv").write_text("".join(lines))


def main(root: Path) -> None:
    folder = root / "ref" / "final" / "param"
    folder.mkdir(parents=True)
    for name, value in PARAMETERS.items():
        (folder / f"{name}.pb").write_bytes(onnx.numpy_helper.from_array(value, name).SerializeToString())
    write_log(root / "ref.csv", REFERENCE_LOG)
    write_log(root / "ref-no-steps.csv", {})

    good_log = {step: tuple(v * CLOSE for v in values) for step, values in REFERENCE_LOG.items()}
    good_parameters = {name: value * np.float32(CLOSE) for name, value in PARAMETERS.items()}
    nan_log = dict(good_log)
    nan_log[2] = good_log[2][:3] + (float("nan"),)
    nan_parameters = dict(good_parameters)
    nan_parameters["b"] = good_parameters["b"].copy()
    nan_parameters["b"][1, 2] = np.nan
    cases = {
        "good": (good_log, good_parameters),
        "nan-metric": (nan_log, good_parameters),
        "nan-param": (good_log, nan_parameters),
        "missing": (good_log, {"a": good_parameters["a"]}),
        "empty": (good_log, {}),
        "no-steps": ({}, good_parameters),
    }
    for case, (log, parameters) in cases.items():
        write_log(root / f"{case}.csv", log)
        write_gpu_dump(root / case, parameters)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
