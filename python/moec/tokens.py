"""Converts token blocks from onnx.TensorProto to the raw form compiled programs read.

    python -m moec.tokens IN.pb OUT.bin

IN.pb is a serialized ``onnx.TensorProto`` of int64 ``[blocks, seq]`` (what
``python -m moec.data`` writes and ``moec train --tokens`` reads); OUT.bin is
the same values as raw little-endian int64, row-major, which the training
program printed by ``moec compile`` reads with ``--tokens``. Written
atomically.
"""

import argparse
import sys
from pathlib import Path

import numpy as np


def read_blocks(path: Path) -> np.ndarray:
    from moec.check_train import read_tensor

    blocks = read_tensor(Path(path))
    if blocks.dtype != np.int64 or blocks.ndim != 2 or 0 in blocks.shape:
        raise ValueError(f"{path}: expected int64 [blocks, seq] of at least one token, "
                         f"found {blocks.dtype} {list(blocks.shape)}")
    return blocks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.tokens", description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    from moec.atomic import write_atomically

    try:
        if args.output.is_dir():
            raise ValueError(f"{args.output} is a folder, not a file to write")
        blocks = read_blocks(args.input)
        write_atomically(args.output, blocks.astype("<i8").tobytes())
    except (OSError, ValueError) as e:
        print(f"moec.tokens: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.output}: {blocks.shape[0]} blocks of {blocks.shape[1]} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
