"""Compare a moec output with onnxruntime running the same ONNX file.

onnxruntime is an independent implementation of the model: running the very
file moec imported, on the same token ids, checks the importer and the
reference executor together without PyTorch.

    python -m moec.check_ort MODEL.onnx INPUT.pb MOEC_OUTPUT.pb [--tolerance T]

INPUT.pb and MOEC_OUTPUT.pb are onnx.TensorProto files (the ONNX test-data
format `moec run --input/--output` use). Prints the max abs and relative L2
error of moec's output against onnxruntime's and exits 1 when the relative L2
error exceeds the tolerance (default 1e-5).
"""

import argparse
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def load_tensor(path):
    tensor = onnx.TensorProto()
    with open(path, "rb") as f:
        tensor.ParseFromString(f.read())
    return numpy_helper.to_array(tensor)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args(argv)

    import onnxruntime

    session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    expected = session.run(None, {input_name: load_tensor(args.input)})[0].astype(np.float64)
    actual = load_tensor(args.output).astype(np.float64)
    if actual.shape != expected.shape:
        print(f"error: moec's output has shape {list(actual.shape)} but "
              f"onnxruntime's has {list(expected.shape)}")
        return 1
    max_abs = float(np.max(np.abs(actual - expected)))
    rel_l2 = float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))
    print(f"vs onnxruntime: max abs error {max_abs:.3e}, relative L2 error {rel_l2:.3e} "
          f"(tolerance {args.tolerance:.1e})")
    if not rel_l2 <= args.tolerance:
        print(f"error: relative L2 error {rel_l2:.3e} exceeds the tolerance {args.tolerance:.1e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
