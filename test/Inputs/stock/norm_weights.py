"""Counts how the RMSNorm weights of a 2-layer model's `moec train --dump` moved.

Usage: norm_weights.py DUMP

Reads the five norm weights (input and post-attention norms of layers 0 and
1, the final norm) from DUMP/final/param and prints how many there are, how
many left their all-ones initialisation, and how many of the pairs differ:
untied parameters that each get their own update differ after one step.
"""

import itertools
import sys

import numpy as np
import onnx
from onnx import numpy_helper

NAMES = [f"model.layers.{layer}.{norm}_layernorm.weight"
         for layer in (0, 1) for norm in ("input", "post_attention")] + ["model.norm.weight"]


def load(folder: str, name: str) -> np.ndarray:
    tensor = onnx.TensorProto()
    with open(f"{folder}/final/param/{name}.pb", "rb") as f:
        tensor.ParseFromString(f.read())
    return numpy_helper.to_array(tensor)


def main() -> int:
    weights = {name: load(sys.argv[1], name) for name in NAMES}
    print("norm weights:", len(weights))
    print("moved from ones:", sum(not np.array_equal(w, np.ones_like(w)) for w in weights.values()))
    pairs = list(itertools.combinations(NAMES, 2))
    differ = sum(not np.array_equal(weights[a], weights[b]) for a, b in pairs)
    print(f"pairs that differ: {differ} of {len(pairs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
