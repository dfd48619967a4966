"""Write the hand-built ONNX models of the importer's tests (test/Inputs/invalid/).

Usage::

    python -m moec.make_invalid_models OUTDIR

(from the repository root, with ``PYTHONPATH=python``; the committed copies
live in ``test/Inputs/invalid``, so ``OUTDIR`` is that folder to regenerate
them). Each model is a graph of one to five nodes built with ``onnx.helper`` that is
wrong in exactly one way the importer (``moec import``) must report: bytes
that are not a ModelProto, an op moec rejects, shapes that disagree, an
undefined input, external data that leaves the model's folder or is not
there, a missing output or type, an element type moec cannot hold. A few
``ok-*.onnx`` models are the valid controls (constants, parameters, omitted
optional inputs, dynamic dimensions). The tests in test/lib/Import/Onnx/ say
what each model checks.

Models are written with ``SerializeToString`` (``onnx.save`` would check
them, and some are broken on purpose); nothing is random, so a rerun
reproduces every byte. Only ``onnx`` and ``numpy`` are needed. External data
files are never written: the tests create them (or not) in a scratch folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from onnx import TensorProto, TypeProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


def tensor_info(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def model(nodes, inputs, outputs, initializers=(), value_info=(), *,
          functions=(), extra_opsets=()):
    """A ModelProto of one graph ``g``, default opset 17 plus `extra_opsets`."""
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs),
                              initializer=list(initializers),
                              value_info=list(value_info))
    opsets = [helper.make_opsetid("", OPSET)]
    opsets += [helper.make_opsetid(domain, 1) for domain in extra_opsets]
    m = helper.make_model(graph, opset_imports=opsets, functions=list(functions),
                          producer_name="moec.make_invalid_models",
                          producer_version="1")
    m.ir_version = IR_VERSION
    return m


def floats(name, shape, start=0.0):
    """A float32 initializer holding start, start + 0.25, ... (exact in fp32)."""
    count = int(np.prod(shape))
    values = start + 0.25 * np.arange(count, dtype=np.float32)
    return numpy_helper.from_array(values.reshape(shape), name)


def external(name, elem_type, dims, location):
    """An initializer whose bytes live in external file `location`."""
    t = TensorProto(name=name, data_type=elem_type, dims=dims)
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", location
    return t


# --- 1. Bytes that are not an ONNX model ----------------------------------------


def garbage():
    # 't' (0x74) opens field 14 with wire type 4 (end of group): a parse error.
    return b"this is not an ONNX model\n"


def empty():
    return b""


def no_graph():
    # A well-formed ModelProto that holds no graph.
    m = helper.make_model(helper.make_graph([], "g", [], []))
    m.ClearField("graph")
    return m


# --- 2. Ops moec rejects ---------------------------------------------------------


def if_subgraph():
    def branch(name, value):
        out = tensor_info(name + "_out", FLOAT, [2])
        const = helper.make_node(
            "Constant", [], [name + "_out"], name=name + "_const",
            value=numpy_helper.from_array(np.full([2], value, np.float32)))
        return helper.make_graph([const], name, [], [out])

    node = helper.make_node("If", ["cond"], ["y"], name="choose",
                            then_branch=branch("then", 1.0),
                            else_branch=branch("else", 0.0))
    return model([node], [tensor_info("cond", TensorProto.BOOL, [])],
                 [tensor_info("y", FLOAT, [2])])


def random_normal():
    node = helper.make_node("RandomNormal", [], ["y"], name="noise",
                            shape=[2, 3], seed=1.0)
    return model([node], [], [tensor_info("y", FLOAT, [2, 3])])


def unknown_domain():
    node = helper.make_node("FastGelu", ["x"], ["y"], name="gelu",
                            domain="com.example")
    return model([node], [tensor_info("x", FLOAT, [2, 3])],
                 [tensor_info("y", FLOAT, [2, 3])], extra_opsets=["com.example"])


def graph_attribute():
    # A sub-graph on an op that is not control flow (If, Loop, Scan).
    body = helper.make_graph([helper.make_node("Relu", ["a"], ["b"])], "body",
                             [tensor_info("a", FLOAT, [2])],
                             [tensor_info("b", FLOAT, [2])])
    node = helper.make_node("Relu", ["x"], ["y"], name="act", body=body)
    return model([node], [tensor_info("x", FLOAT, [2, 3])],
                 [tensor_info("y", FLOAT, [2, 3])])


def local_function():
    body = helper.make_node("Relu", ["a"], ["b"])
    function = helper.make_function(
        "local", "MyRelu", ["a"], ["b"], [body],
        [helper.make_opsetid("", OPSET)])
    node = helper.make_node("MyRelu", ["x"], ["y"], name="act", domain="local")
    return model([node], [tensor_info("x", FLOAT, [2, 3])],
                 [tensor_info("y", FLOAT, [2, 3])], functions=[function],
                 extra_opsets=["local"])


# --- 3. Shapes that disagree -----------------------------------------------------


def matmul_inner_dims():
    # proj.weight is [4, 5]: its 4 rows do not match x's 3 columns.
    node = helper.make_node("MatMul", ["x", "proj.weight"], ["y"], name="proj")
    return model([node], [tensor_info("x", FLOAT, [2, 3])],
                 [tensor_info("y", FLOAT, [2, 5])],
                 [floats("proj.weight", [4, 5])])


def matmul_output_dims():
    # x [2, 4] times proj.weight [4, 5] is [2, 5]; y is declared [2, 6].
    node = helper.make_node("MatMul", ["x", "proj.weight"], ["y"], name="proj")
    return model([node], [tensor_info("x", FLOAT, [2, 4])],
                 [tensor_info("y", FLOAT, [2, 6])],
                 [floats("proj.weight", [4, 5])])


def matmul_output_rank():
    # x [2, 3, 4] times proj.weight [4, 5] is [2, 3, 5]; y is declared
    # [6, 5] (a mutant of this kind, raised, was a moe.linear that failed to
    # verify: the importer fuzzer's find).
    node = helper.make_node("MatMul", ["x", "proj.weight"], ["y"], name="proj")
    return model([node], [tensor_info("x", FLOAT, [2, 3, 4])],
                 [tensor_info("y", FLOAT, [6, 5])],
                 [floats("proj.weight", [4, 5])])


def matmul_batch_dims():
    # x [2, 3, 4] times proj.weight [4, 5] is [2, 3, 5]; y is declared
    # [7, 3, 5].
    node = helper.make_node("MatMul", ["x", "proj.weight"], ["y"], name="proj")
    return model([node], [tensor_info("x", FLOAT, [2, 3, 4])],
                 [tensor_info("y", FLOAT, [7, 3, 5])],
                 [floats("proj.weight", [4, 5])])


def gemm_operand_rank():
    # Gemm multiplies matrices; x is [2, 3, 4].
    node = helper.make_node("Gemm", ["x", "proj.weight"], ["y"], name="proj",
                            transB=1)
    return model([node], [tensor_info("x", FLOAT, [2, 3, 4])],
                 [tensor_info("y", FLOAT, [2, 5])],
                 [floats("proj.weight", [5, 4])])


def add_broadcast():
    node = helper.make_node("Add", ["a", "b"], ["y"], name="sum")
    return model([node],
                 [tensor_info("a", FLOAT, [2, 3]), tensor_info("b", FLOAT, [2, 4])],
                 [tensor_info("y", FLOAT, [2, 4])])


def parameter_dims():
    # The parameter holds [4, 5]; the graph's value_info declares [4, 6].
    node = helper.make_node("MatMul", ["x", "proj.weight"], ["y"], name="proj")
    return model([node], [tensor_info("x", FLOAT, [2, 4])],
                 [tensor_info("y", FLOAT, [2, 6])],
                 [floats("proj.weight", [4, 5])],
                 [tensor_info("proj.weight", FLOAT, [4, 6])])


def constant_dims():
    # The shape constant holds 2 values; the graph's value_info declares 3.
    shape = numpy_helper.from_array(np.array([3, 2], np.int64), "shape")
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")
    return model([node], [tensor_info("x", FLOAT, [2, 3])],
                 [tensor_info("y", FLOAT, [3, 2])], [shape],
                 [tensor_info("shape", INT64, [3])])


def initializer_input_type():
    # IR version 3 style: the parameter is also a graph input, declared float16.
    node = helper.make_node("MatMul", ["x", "proj.weight"], ["y"], name="proj")
    m = model([node], [tensor_info("x", FLOAT, [2, 4]),
                       tensor_info("proj.weight", TensorProto.FLOAT16, [4, 5])],
              [tensor_info("y", FLOAT, [2, 5])], [floats("proj.weight", [4, 5])])
    m.ir_version = 3
    return m


def negative_dims():
    weight = TensorProto(name="proj.weight", data_type=FLOAT, dims=[-1, 5])
    node = helper.make_node("MatMul", ["x", "proj.weight"], ["y"], name="proj")
    return model([node], [tensor_info("x", FLOAT, [2, 4])],
                 [tensor_info("y", FLOAT, [2, 5])], [weight])


def huge_constant(dims):
    """A shape constant of `dims`, with no elements stored."""
    shape = TensorProto(name="shape", data_type=INT64, dims=dims)
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")
    return model([node], [tensor_info("x", FLOAT, [2, 3])],
                 [tensor_info("y", FLOAT, [3, 2])], [shape])


# Resource limits: declared sizes no step could hold, refused before any IR
# is built for them (no data is stored: the files stay small).
HUGE = [1 << 20, 1 << 20]  # 2^40 elements


def huge_parameter():
    """embed.weight declared [2^20, 2^20] in an external file never written."""
    node = helper.make_node("Gather", ["embed.weight", "input_ids"], ["hidden"],
                            name="embed")
    return model([node], [tensor_info("input_ids", INT64, ["batch", "seq"])],
                 [tensor_info("hidden", FLOAT, ["batch", "seq", 1 << 20])],
                 [external("embed.weight", FLOAT, HUGE, "embed.bin")])


def huge_input():
    node = helper.make_node("Identity", ["x"], ["y"], name="copy")
    return model([node], [tensor_info("x", FLOAT, HUGE + ["batch"])],
                 [tensor_info("y", FLOAT, [2])])


def huge_value():
    """A node output whose value_info declares 2^40 elements."""
    nodes = [helper.make_node("Identity", ["x"], ["t"], name="widen"),
             helper.make_node("Identity", ["t"], ["y"], name="copy")]
    return model(nodes, [tensor_info("x", FLOAT, [2])],
                 [tensor_info("y", FLOAT, [2])],
                 value_info=[tensor_info("t", FLOAT, HUGE)])


def _field(number, payload):
    """A length-delimited protobuf field (wire type 2)."""
    key, size, out = (number << 3) | 2, len(payload), bytearray()
    for v in (key, size):
        while v >= 0x80:
            out.append(v & 0x7F | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out) + payload


def nested_if(depth):
    """If nodes nested `depth` deep through their then-branches (three
    messages per level: node, attribute, graph), written as raw bytes:
    protobuf's Python parser refuses to build it."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="leaf")], "leaf", [],
        [tensor_info("y", FLOAT, [2])]).SerializeToString()
    output = tensor_info("y", FLOAT, [2]).SerializeToString()
    for d in reversed(range(depth)):
        attribute = (_field(1, b"then_branch") + _field(6, graph) +
                     bytes([0xA0, 0x01, 5]))  # type (field 20) = GRAPH
        node = (_field(1, b"cond") + _field(2, b"y") +
                _field(3, f"if{d}".encode()) + _field(4, b"If") +
                _field(5, attribute))
        graph = _field(1, node) + _field(2, f"level{d}".encode())
        if d:
            graph += _field(12, output)
    top = model([], [tensor_info("cond", TensorProto.BOOL, []),
                     tensor_info("x", FLOAT, [2])],
                [tensor_info("y", FLOAT, [2])])
    top.graph.ClearField("node")
    return top.SerializeToString() + _field(7, graph)


def duplicate_initializer():
    shapes = [numpy_helper.from_array(np.array(v, np.int64), "shape")
              for v in ([3, 2], [6])]
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")
    return model([node], [tensor_info("x", FLOAT, [2, 3])],
                 [tensor_info("y", FLOAT, [3, 2])], shapes)


# --- 4. Undefined inputs ---------------------------------------------------------


def missing_initializer():
    # proj.weight is neither a graph input nor an initializer.
    node = helper.make_node("MatMul", ["x", "proj.weight"], ["y"], name="proj")
    return model([node], [tensor_info("x", FLOAT, [2, 3])],
                 [tensor_info("y", FLOAT, [2, 5])])


def unnamed_node():
    # The second node has no name: diagnostics call it Neg#2.
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="act"),
             helper.make_node("Neg", ["g"], ["y"])]
    return model(nodes, [tensor_info("x", FLOAT, [2, 3])],
                 [tensor_info("y", FLOAT, [2, 3])],
                 value_info=[tensor_info("h", FLOAT, [2, 3])])


# --- 5. External data ------------------------------------------------------------


def embedding(location):
    """Token ids -> embed.weight[256, 2] rows, the table in external data."""
    node = helper.make_node("Gather", ["embed.weight", "input_ids"], ["hidden"],
                            name="embed")
    return model([node], [tensor_info("input_ids", INT64, ["batch", "seq"])],
                 [tensor_info("hidden", FLOAT, ["batch", "seq", 2])],
                 [external("embed.weight", FLOAT, [256, 2], location)])


def external_constant():
    # An int64 shape constant (not a parameter: it is read at import).
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")
    return model([node], [tensor_info("x", FLOAT, [2, 3])],
                 [tensor_info("y", FLOAT, [3, 2])],
                 [external("shape", INT64, [2], "shape.bin")])


# --- 6. Missing outputs and types ------------------------------------------------


def output_not_produced():
    node = helper.make_node("Relu", ["x"], ["h"], name="act")
    return model([node], [tensor_info("x", FLOAT, [2, 3])],
                 [tensor_info("h", FLOAT, [2, 3]), tensor_info("y", FLOAT, [2, 3])])


def no_type():
    # h, between the two nodes, has no value_info.
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="act"),
             helper.make_node("Neg", ["h"], ["y"], name="neg")]
    return model(nodes, [tensor_info("x", FLOAT, [2, 3])],
                 [tensor_info("y", FLOAT, [2, 3])])


def output_no_type():
    node = helper.make_node("Relu", ["x"], ["y"], name="act")
    return model([node], [tensor_info("x", FLOAT, [2, 3])],
                 [helper.make_value_info("y", TypeProto())])


def no_shape():
    # x has an element type but no shape, not even a rank.
    node = helper.make_node("Relu", ["x"], ["y"], name="act")
    return model([node], [tensor_info("x", FLOAT, None)],
                 [tensor_info("y", FLOAT, [2, 3])])


def string_input():
    node = helper.make_node("Identity", ["text"], ["y"], name="copy")
    return model([node], [tensor_info("text", TensorProto.STRING, [2])],
                 [tensor_info("y", TensorProto.STRING, [2])])


def complex_initializer():
    c = numpy_helper.from_array(np.array([1 + 2j, 3 - 4j], np.complex64), "phase")
    node = helper.make_node("Mul", ["x", "phase"], ["y"], name="rotate")
    return model([node], [tensor_info("x", FLOAT, [2])],
                 [tensor_info("y", FLOAT, [2])], [c])


def constant_not_tensor():
    # Constant's `value` must be a tensor; this one is an int.
    node = helper.make_node("Constant", [], ["y"], name="three")
    node.attribute.append(helper.make_attribute("value", 3))
    return model([node], [], [tensor_info("y", INT64, [])])


# --- Valid controls --------------------------------------------------------------


def ok_constants():
    """Constant node, constant initializer, parameter, Softmax, dynamic batch."""
    nodes = [
        helper.make_node("Constant", [], ["bias"], name="bias_const",
                         value=numpy_helper.from_array(
                             np.array([0.5, -0.5, 1.0, -1.0], np.float32), "bias")),
        helper.make_node("Add", ["x", "bias"], ["biased"], name="add_bias"),
        helper.make_node("MatMul", ["biased", "proj.weight"], ["projected"],
                         name="proj"),
        helper.make_node("Mul", ["projected", "scale"], ["scaled"], name="mul_scale"),
        helper.make_node("Softmax", ["scaled"], ["y"], name="softmax", axis=-1),
    ]
    return model(nodes, [tensor_info("x", FLOAT, ["batch", 4])],
                 [tensor_info("y", FLOAT, ["batch", 3])],
                 [floats("proj.weight", [4, 3]), floats("scale", [3], start=1.0)],
                 [tensor_info("biased", FLOAT, ["batch", 4]),
                  tensor_info("projected", FLOAT, ["batch", 3]),
                  tensor_info("scaled", FLOAT, ["batch", 3])])


def ok_absent_inputs():
    """Clip without min (omitted in the middle), then without max (at the end)."""
    nodes = [
        helper.make_node("Clip", ["x", "", "hi"], ["upper"], name="clip_max"),
        helper.make_node("Clip", ["upper", "lo", ""], ["y"], name="clip_min"),
    ]
    lo = numpy_helper.from_array(np.array(-1.0, np.float32), "lo")
    hi = numpy_helper.from_array(np.array(1.0, np.float32), "hi")
    return model(nodes, [tensor_info("x", FLOAT, ["batch", "seq", 8])],
                 [tensor_info("y", FLOAT, ["batch", "seq", 8])], [lo, hi],
                 [tensor_info("upper", FLOAT, ["batch", "seq", 8])])


def custom_grouped_matmul(x_shape=(6, 4), w_shape=(2, 4, 3), inputs=("x", "w", "offsets")):
    """``custom::GroupedGemm``, a grouped matmul in a domain moec does not know."""
    node = helper.make_node("GroupedGemm", list(inputs), ["y"], name="experts_up",
                            domain="custom")
    return model([node],
                 [tensor_info("x", FLOAT, list(x_shape)), tensor_info("w", FLOAT, list(w_shape)),
                  tensor_info("offsets", INT64, [w_shape[0]])],
                 [tensor_info("y", FLOAT, [x_shape[0], w_shape[2]])], extra_opsets=["custom"])


#: File name -> what builds it (a ModelProto, or raw bytes).
def cast_to(to, declared):
    """A Cast whose `to` is `to`, its output declared of element type `declared`."""
    node = helper.make_node("Cast", ["x"], ["y"], name="to_half", to=to)
    return model([node], [tensor_info("x", FLOAT, [2, 3])], [tensor_info("y", declared, [2, 3])])


def reshape_float_shape():
    # The shape operand is a float tensor: ONNX says int64.
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="flatten")
    return model([node], [tensor_info("x", FLOAT, [2, 3]), tensor_info("shape", FLOAT, [1])],
                 [tensor_info("y", FLOAT, [6])])


MODELS: dict[str, Callable[[], object]] = {
    "garbage.onnx": garbage,
    "empty.onnx": empty,
    "no-graph.onnx": no_graph,
    "if-subgraph.onnx": if_subgraph,
    "random-normal.onnx": random_normal,
    "unknown-domain.onnx": unknown_domain,
    "graph-attribute.onnx": graph_attribute,
    "local-function.onnx": local_function,
    "matmul-inner-dims.onnx": matmul_inner_dims,
    "matmul-output-dims.onnx": matmul_output_dims,
    "matmul-output-rank.onnx": matmul_output_rank,
    "matmul-batch-dims.onnx": matmul_batch_dims,
    "gemm-operand-rank.onnx": gemm_operand_rank,
    "add-broadcast.onnx": add_broadcast,
    "parameter-dims.onnx": parameter_dims,
    "constant-dims.onnx": constant_dims,
    "initializer-input-type.onnx": initializer_input_type,
    "negative-dims.onnx": negative_dims,
    # 2^40 elements: too many to allocate; 2^70: too many to count in int64.
    "huge-constant.onnx": lambda: huge_constant([1 << 40]),
    "overflow-constant.onnx": lambda: huge_constant([1 << 40, 1 << 30]),
    "huge-parameter.onnx": huge_parameter,
    "huge-input.onnx": huge_input,
    "huge-value.onnx": huge_value,
    "nested-if.onnx": lambda: nested_if(40),
    "duplicate-initializer.onnx": duplicate_initializer,
    "missing-initializer.onnx": missing_initializer,
    "unnamed-node.onnx": unnamed_node,
    "external-absolute.onnx": lambda: embedding("/nonexistent/embed.bin"),
    "external-parent.onnx": lambda: embedding("../embed.bin"),
    "external-param.onnx": lambda: embedding("embed.bin"),
    "external-constant.onnx": external_constant,
    "output-not-produced.onnx": output_not_produced,
    "no-type.onnx": no_type,
    "output-no-type.onnx": output_no_type,
    "no-shape.onnx": no_shape,
    "string-input.onnx": string_input,
    "complex-initializer.onnx": complex_initializer,
    "constant-not-tensor.onnx": constant_not_tensor,
    "custom-grouped-matmul.onnx": custom_grouped_matmul,
    "custom-grouped-matmul-arity.onnx": lambda: custom_grouped_matmul(inputs=("x", "w")),
    "custom-grouped-matmul-shapes.onnx": lambda: custom_grouped_matmul(w_shape=(2, 5, 3)),
    "cast-to-invalid.onnx": lambda: cast_to(100, FLOAT),
    "cast-to-other.onnx": lambda: cast_to(TensorProto.FLOAT16, FLOAT),
    "reshape-float-shape.onnx": reshape_float_shape,
    "ok-constants.onnx": ok_constants,
    "ok-absent-inputs.onnx": ok_absent_inputs,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, build in MODELS.items():
        built = build()
        data = built if isinstance(built, bytes) else built.SerializeToString()
        (args.outdir / name).write_bytes(data)
        total += len(data)
    print(f"wrote {len(MODELS)} models ({total} bytes) to {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
