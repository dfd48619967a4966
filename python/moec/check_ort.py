"""Compare a moec output with onnxruntime running the same ONNX file.

onnxruntime is an independent implementation of the model: running the very
file moec imported, on the same inputs, checks the importer and the
reference executor together without PyTorch.

    python -m moec.check_ort MODEL.onnx INPUT.pb [INPUT.pb ...] MOEC_OUTPUT.pb
        [--tolerance T] [--custom-op DOMAIN::NAME=grouped_matmul] [--numpy-moe]

The INPUT.pb files are the graph's inputs in order (token ids, then an
attention mask for a model that takes one); they and MOEC_OUTPUT.pb are
onnx.TensorProto files (the ONNX test-data format `moec run --input/--output`
use). Prints the max abs and relative L2 error of moec's output against
onnxruntime's and exits 1 when the relative L2 error exceeds the tolerance
(default 1e-5). A model with a custom op onnxruntime does not know, named
with ``--custom-op`` as moec's is, runs on onnx's reference evaluator with
that op in numpy (``grouped_matmul``) instead. ``--numpy-moe`` runs the
file on onnx's reference evaluator with ``com.microsoft::MoE`` in numpy
(``ort_moe``, onnxruntime's documented semantics), for the layouts
onnxruntime's CPU provider refuses (it runs only ``swiglu_fusion=1``).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from moec import InputError, non_negative_float
from moec.check_train import read_tensor


def read_model(path: str) -> onnx.ModelProto:
    """The graph of the ONNX file ``path`` (its external data left unread); raises InputError naming it."""
    try:
        return onnx.load(path, load_external_data=False)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    except DecodeError as e:
        raise InputError(f"{path}: not an ONNX model: {e}") from None


def check_feeds(model: onnx.ModelProto, paths: list[str], arrays: list[np.ndarray]) -> list[str]:
    """The names of the model's inputs, for ``arrays`` read from ``paths``; raises InputError unless each is
    of its input's element type and token ids, the indices of an embedding, are within its rows."""
    tables = {t.name: t for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in tables]
    if len(arrays) != len(inputs):
        raise InputError(f"the model has {len(inputs)} inputs, {len(arrays)} were given")
    for value, path, array in zip(inputs, paths, arrays):
        elem_type = value.type.tensor_type.elem_type  # 0 where the model leaves it out: the run says so
        if elem_type and array.dtype != onnx.helper.tensor_dtype_to_np_dtype(elem_type):
            want = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
            raise InputError(f"{path}: {array.dtype} values, the model's input {value.name} is {want}")
        rows = next((tables[n.input[0]].dims[0] for n in model.graph.node
                     if n.op_type == "Gather" and n.input[1] == value.name and n.input[0] in tables), None)
        # A negative index would count from the table's end: a silently wrong row.
        if rows is not None and array.size and (array.min() < 0 or array.max() >= rows):
            bad = array.min() if array.min() < 0 else array.max()
            raise InputError(f"{path}: token id {bad} is outside the model's vocabulary [0, {rows})")
    return [value.name for value in inputs]


def grouped_matmul(x: np.ndarray, w: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``moec::GroupedMatMul`` in numpy (``moec.export.GROUPED_MATMUL_SPEC``)."""
    out = np.zeros((x.shape[0], w.shape[2]), dtype=x.dtype)
    start = 0
    for group, end in enumerate(offsets.tolist()):
        out[start:end] = x[start:end] @ w[group]
        start = end
    return out


def ort_moe(x, router_probs, fc1, fc1_bias=None, fc2=None, fc2_bias=None, fc3=None, fc3_bias=None, *,
            activation_type="relu", swiglu_fusion=0, k=1, normalize_routing_weights=0,
            activation_alpha=1.0, activation_beta=0.0, **unsupported):
    """onnxruntime's ``com.microsoft::MoE`` in numpy, for plain SwiGLU experts without biases.

    Softmax of ``router_probs`` (the router logits), top ``k`` (renormalised
    with ``normalize_routing_weights``); expert e computes ``fc2[e] @ (g *
    sigmoid(alpha g) * (u + beta))`` where ``g, u`` are ``fc1[e] @ x`` split
    by ``swiglu_fusion``: 0 ``fc1`` and ``fc3``, 1 interleaved rows, 2 gate
    rows then up rows.
    """
    if activation_type != "swiglu" or unsupported or any(
            b is not None for b in (fc1_bias, fc2_bias, fc3_bias)):
        raise SystemExit("error: the numpy MoE runs plain SwiGLU experts without biases or limits")
    flat = x.reshape(-1, x.shape[-1])
    logits = router_probs.reshape(flat.shape[0], -1).astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    chosen = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    weights = np.take_along_axis(probs, chosen, -1)
    if normalize_routing_weights:
        weights /= weights.sum(-1, keepdims=True)
    out = np.zeros(flat.shape, dtype=np.float64)
    for t in range(flat.shape[0]):
        for j in range(k):
            e = chosen[t, j]
            h = fc1[e].astype(np.float64) @ flat[t]
            if swiglu_fusion == 0:
                g, u = h, fc3[e].astype(np.float64) @ flat[t]
            elif swiglu_fusion == 1:
                g, u = h[0::2], h[1::2]
            else:
                g, u = np.split(h, 2)
            act = g / (1 + np.exp(-activation_alpha * g)) * (u + activation_beta)
            out[t] += weights[t, j] * (fc2[e].astype(np.float64) @ act)
    return out.astype(x.dtype).reshape(x.shape)


def reference_evaluator(model, custom_ops, numpy_moe=False):
    """The ``run`` of onnx's ReferenceEvaluator for ``model`` with each ``DOMAIN::NAME=grouped_matmul`` in numpy
    (and, with ``numpy_moe``, ``com.microsoft::MoE``)."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    ops = []
    if numpy_moe:
        def run_moe(self, *inputs, **attributes):
            return (ort_moe(*inputs, **{name: value for name, value in attributes.items() if value is not None}),)

        ops.append(type("MoE", (OpRun,), {"op_domain": "com.microsoft", "_run": run_moe}))
    for spec in custom_ops:
        name, _, kind = spec.partition("=")
        domain, _, op_type = name.partition("::")
        if kind != "grouped_matmul" or not domain or not op_type:
            raise SystemExit(f"error: --custom-op '{spec}' is not DOMAIN::NAME=grouped_matmul")
        ops.append(type(op_type, (OpRun,), {
            "op_domain": domain,
            "_run": lambda self, x, w, offsets: (grouped_matmul(x, w, offsets),),
        }))
    return ReferenceEvaluator(model, new_ops=ops).run


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m moec.check_ort", description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("files", nargs="+", metavar="INPUT.pb ... MOEC_OUTPUT.pb")
    parser.add_argument("--tolerance", type=non_negative_float, default=1e-5)
    parser.add_argument("--custom-op", action="append", default=[], metavar="DOMAIN::NAME=grouped_matmul")
    parser.add_argument("--numpy-moe", action="store_true",
                        help="run com.microsoft::MoE in numpy on onnx's reference evaluator")
    args = parser.parse_args(argv)
    if len(args.files) < 2:
        parser.error("give at least one input and moec's output")
    inputs, output = args.files[:-1], args.files[-1]

    try:
        model = read_model(args.model)
        arrays = [read_tensor(Path(path)) for path in inputs]
        actual = read_tensor(Path(output)).astype(np.float64)
        names = check_feeds(model, inputs, arrays)
    except ValueError as e:  # an InputError, or read_tensor's
        print(f"error: {e}", file=sys.stderr)
        return 1
    which = "onnx.reference" if args.custom_op or args.numpy_moe else "onnxruntime"
    try:
        if args.custom_op or args.numpy_moe:
            run = reference_evaluator(args.model, args.custom_op, args.numpy_moe)
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # its errors are reported below, not logged twice
            run = onnxruntime.InferenceSession(args.model, options, providers=["CPUExecutionProvider"]).run
        expected = run(None, dict(zip(names, arrays)))[0].astype(np.float64)
    except Exception as e:  # onnxruntime's errors have no common base but Exception
        print(f"error: {which} cannot run {args.model}: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    if actual.shape != expected.shape:
        print(f"error: moec's output has shape {list(actual.shape)} but "
              f"onnxruntime's has {list(expected.shape)}", file=sys.stderr)
        return 1
    max_abs = float(np.max(np.abs(actual - expected)))
    rel_l2 = float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))
    print(f"vs {which}: max abs error {max_abs:.3e}, relative L2 error {rel_l2:.3e} "
          f"(tolerance {args.tolerance:.1e})")
    if not rel_l2 <= args.tolerance:
        print(f"error: relative L2 error {rel_l2:.3e} exceeds the tolerance {args.tolerance:.1e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
