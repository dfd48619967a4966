"""Compare a moec output with onnxruntime running the same ONNX file.

onnxruntime is an independent implementation of the model: running the very
file moec imported, on the same inputs, checks the importer and the
reference executor together without PyTorch.

    python -m moec.check_ort MODEL.onnx INPUT.pb [INPUT.pb ...] MOEC_OUTPUT.pb
        [--tolerance T] [--custom-op DOMAIN::NAME=grouped_matmul]

The INPUT.pb files are the graph's inputs in order (token ids, then an
attention mask for a model that takes one); they and MOEC_OUTPUT.pb are
onnx.TensorProto files (the ONNX test-data format `moec run --input/--output`
use). Prints the max abs and relative L2 error of moec's output against
onnxruntime's and exits 1 when the relative L2 error exceeds the tolerance
(default 1e-5). A model with a custom op onnxruntime does not know, named
with ``--custom-op`` as moec's is, runs on onnx's reference evaluator with
that op in numpy (``moec.golden.grouped_matmul``) instead.
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


def grouped_matmul(x: np.ndarray, w: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``moec::GroupedMatMul`` in numpy (``moec.export.GROUPED_MATMUL_SPEC``)."""
    out = np.zeros((x.shape[0], w.shape[2]), dtype=x.dtype)
    start = 0
    for group, end in enumerate(offsets.tolist()):
        out[start:end] = x[start:end] @ w[group]
        start = end
    return out


def reference_evaluator(model, custom_ops):
    """onnx's ReferenceEvaluator for ``model`` with each ``DOMAIN::NAME=grouped_matmul`` in numpy."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    ops = []
    for spec in custom_ops:
        name, _, kind = spec.partition("=")
        domain, _, op_type = name.partition("::")
        if kind != "grouped_matmul" or not domain or not op_type:
            raise SystemExit(f"error: --custom-op '{spec}' is not DOMAIN::NAME=grouped_matmul")
        ops.append(type(op_type, (OpRun,), {
            "op_domain": domain,
            "_run": lambda self, x, w, offsets: (grouped_matmul(x, w, offsets),),
        }))
    evaluator = ReferenceEvaluator(model, new_ops=ops)
    return evaluator.run, list(evaluator.input_names)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("files", nargs="+", metavar="INPUT.pb ... MOEC_OUTPUT.pb")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--custom-op", action="append", default=[], metavar="DOMAIN::NAME=grouped_matmul")
    args = parser.parse_args(argv)
    if len(args.files) < 2:
        parser.error("give at least one input and moec's output")
    inputs, output = args.files[:-1], args.files[-1]

    if args.custom_op:
        run, names = reference_evaluator(args.model, args.custom_op)
        which = "onnx.reference"
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])
        run, names = session.run, [i.name for i in session.get_inputs()]
        which = "onnxruntime"
    if len(inputs) != len(names):
        print(f"error: the model has {len(names)} inputs, {len(inputs)} were given")
        return 1
    feeds = {name: load_tensor(path) for name, path in zip(names, inputs)}
    expected = run(None, feeds)[0].astype(np.float64)
    actual = load_tensor(output).astype(np.float64)
    if actual.shape != expected.shape:
        print(f"error: moec's output has shape {list(actual.shape)} but "
              f"onnxruntime's has {list(expected.shape)}")
        return 1
    max_abs = float(np.max(np.abs(actual - expected)))
    rel_l2 = float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))
    print(f"vs {which}: max abs error {max_abs:.3e}, relative L2 error {rel_l2:.3e} "
          f"(tolerance {args.tolerance:.1e})")
    if not rel_l2 <= args.tolerance:
        print(f"error: relative L2 error {rel_l2:.3e} exceeds the tolerance {args.tolerance:.1e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
