"""Compares the tensors of two Hugging Face checkpoint folders, or of one
folder and a moec --dump folder (final/param/NAME.pb, moec's names).

    python compare_checkpoints.py A B [--tolerance T]

B may be a dump folder: its parameters are split into the checkpoint's
tensors by the name mapping of docs/hf-checkpoints.md. Prints "bit-exact"
when every tensor is equal bit for bit, else the largest relative L2 error
(and fails above the tolerance, 0 by default); names that differ are listed.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from break_checkpoint import read  # noqa: E402


def checkpoint(folder):
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    tensors = {}
    for f in files:
        tensors.update({k: v.astype(np.float32) for k, v in read(folder / f).items()})
    return tensors


def dump(folder):
    import onnx.numpy_helper as h
    import onnx

    tensors = {}
    for path in sorted((folder / "final" / "param").glob("*.pb")):
        t = onnx.TensorProto()
        t.ParseFromString(path.read_bytes())
        name, value = path.name[: -len(".pb")], h.to_array(t)
        prefix, _, rest = name.partition(".mlp.")
        if rest == "gate.weight":
            tensors[prefix + ".block_sparse_moe.gate.weight"] = value
        elif rest == "experts.gate_up_proj":
            inter = value.shape[1] // 2
            for e in range(value.shape[0]):
                tensors[f"{prefix}.block_sparse_moe.experts.{e}.w1.weight"] = value[e, :inter]
                tensors[f"{prefix}.block_sparse_moe.experts.{e}.w3.weight"] = value[e, inter:]
        elif rest == "experts.down_proj":
            for e in range(value.shape[0]):
                tensors[f"{prefix}.block_sparse_moe.experts.{e}.w2.weight"] = value[e]
        else:
            tensors[name] = value
    return tensors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.0)
    args = parser.parse_args()
    a = checkpoint(args.a)
    b = dump(args.b) if (args.b / "final").exists() else checkpoint(args.b)
    if set(a) != set(b):
        print("names differ:", sorted(set(a) ^ set(b))[:5])
        return 1
    worst = 0.0
    exact = True
    for name in a:
        if a[name].shape != b[name].shape:
            print("shape differs:", name, a[name].shape, b[name].shape)
            return 1
        exact &= a[name].tobytes() == b[name].astype(np.float32).tobytes()
        worst = max(worst, float(np.linalg.norm(a[name] - b[name]) / max(np.linalg.norm(b[name]), 1e-30)))
    print("bit-exact" if exact else f"relative L2 {worst:.3g}", len(a), "tensors")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
