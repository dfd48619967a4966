"""Compares `moec train --dump` folders with a reference one.

Usage: compare_dumps.py REFERENCE RUN...

Every tensor of REFERENCE (metrics, gradients and parameters of every step,
the final parameters) must be in each RUN with a relative L2 difference
below 1e-6 (fp32). Prints "equal: N runs, M tensors", or "differ: " and the
runs that do not match.
"""

import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def tensors(folder):
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".pb"):
                path = os.path.join(root, name)
                tensor = onnx.TensorProto()
                with open(path, "rb") as f:
                    tensor.ParseFromString(f.read())
                found[os.path.relpath(path, folder)] = numpy_helper.to_array(tensor)
    return found


def main():
    reference = tensors(sys.argv[1])
    differ = []
    for run in sys.argv[2:]:
        other = tensors(run)
        for name, want in reference.items():
            got = other.get(name)
            if got is None or got.shape != want.shape:
                differ.append(run)
                break
            want64, got64 = want.astype(np.float64), got.astype(np.float64)
            scale = max(np.linalg.norm(want64), 1e-30)
            if np.linalg.norm(got64 - want64) / scale >= 1e-6:
                differ.append(run)
                break
    if differ:
        print("differ: " + " ".join(os.path.basename(r) for r in differ))
    else:
        print(f"equal: {len(sys.argv) - 2} runs, {len(reference)} tensors")


if __name__ == "__main__":
    main()
