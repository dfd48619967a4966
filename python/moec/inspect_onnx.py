"""Print an ONNX model node by node, with the shapes recorded in its value_info.

Usage (from the repository root)::

    PYTHONPATH=python python -m moec.inspect_onnx model.onnx            # every node
    PYTHONPATH=python python -m moec.inspect_onnx model.onnx --layer 0  # nodes outside
                                                                        # decoder layers + layer 0
    PYTHONPATH=python python -m moec.inspect_onnx model.onnx --summary  # op counts only

Output: the opset imports and ``moec.*`` metadata, the graph inputs and
outputs, the initialisers (dtype, shape, external-data location, and the values
of small ones), then one line per node::

    #12 MatMul(mul_107: f32[batch,seq,32], val_93: f32[32,32]) -> linear: f32[batch,seq,32]

Inputs that are small constants are shown with their values (``val_90=[-1]``;
with the type too when of rank 2 or more, values flattened);
attributes follow the outputs in braces. A ``# <module path> (<class>)`` line
opens each run of nodes that comes from the same PyTorch module (read from the
``namespace`` metadata torch.onnx records on each node). Symbolic dimensions
print by name (``batch``, ``seq``, ``seq*batch``). Nothing here needs torch;
external weights are never read.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

import onnx_ir as ir

from moec.atomic import check_output, write_atomically

#: Constants with at most this many elements print with their values.
SMALL_CONSTANT = 16

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)(\.|$)")

_DTYPE_NAMES = {
    ir.DataType.FLOAT: "f32",
    ir.DataType.FLOAT16: "f16",
    ir.DataType.BFLOAT16: "bf16",
    ir.DataType.DOUBLE: "f64",
    ir.DataType.INT64: "i64",
    ir.DataType.INT32: "i32",
    ir.DataType.INT8: "i8",
    ir.DataType.UINT8: "u8",
    ir.DataType.BOOL: "bool",
}


def format_type(value: ir.Value) -> str:
    """``f32[batch,seq,32]``; ``?`` where the type or shape is unknown."""
    dtype = _DTYPE_NAMES.get(value.dtype, str(value.dtype).lower()) if value.dtype is not None else "?"
    if value.shape is None:
        return f"{dtype}[?]"
    dims = ",".join(str(d) if not isinstance(d, ir.SymbolicDim) else (d.value or "?") for d in value.shape)
    return f"{dtype}[{dims}]"


def _constant_values(value: ir.Value) -> str | None:
    """The values of a small in-memory constant, or None."""
    tensor = value.const_value
    if tensor is None or isinstance(tensor, ir.ExternalTensor) or tensor.size > SMALL_CONSTANT:
        return None
    array = tensor.numpy()
    if array.ndim == 0:
        return _format_scalar(array.item())
    return "[" + ", ".join(_format_scalar(x) for x in array.reshape(-1).tolist()) + "]"


def _format_scalar(x) -> str:
    if isinstance(x, float):
        return repr(x) if x == x and abs(x) != float("inf") else str(x)
    return str(x)


def format_input(value: ir.Value | None) -> str:
    if value is None:
        return "<none>"
    constant = _constant_values(value)
    if constant is not None:
        if value.shape is not None and value.shape.rank() > 1:  # keep the shape visible
            return f"{value.name}: {format_type(value)}={constant}"
        return f"{value.name}={constant}"
    return f"{value.name}: {format_type(value)}"


def format_attribute(attr: ir.Attr) -> str:
    if attr.type == ir.AttributeType.TENSOR:
        tensor = attr.value
        if tensor.size <= SMALL_CONSTANT:
            return f"{attr.name}=tensor<{_DTYPE_NAMES.get(tensor.dtype, tensor.dtype)}>{tensor.numpy().tolist()}"
        return f"{attr.name}=tensor<{_DTYPE_NAMES.get(tensor.dtype, tensor.dtype)}{list(tensor.shape)}>"
    if attr.type == ir.AttributeType.GRAPH:
        return f"{attr.name}=<graph>"
    value = attr.value
    if isinstance(value, (list, tuple)):
        value = list(value)
    return f"{attr.name}={value!r}"


def format_node(index: int, node: ir.Node) -> str:
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    inputs = ", ".join(format_input(v) for v in node.inputs)
    outputs = ", ".join(f"{v.name}: {format_type(v)}" for v in node.outputs)
    line = f"#{index} {op}({inputs}) -> {outputs}"
    if node.attributes:
        line += " {" + ", ".join(format_attribute(a) for a in node.attributes.values()) + "}"
    return line


def node_scope(node: ir.Node) -> tuple[str, str]:
    """(module path, module class) of the innermost PyTorch module a node came from.

    Read from torch.onnx's ``namespace`` metadata (``path: class/path: class/...``);
    the final entry names the aten op, so the one before it is the module.
    A node the optimiser made has none; it takes the scope of the node that
    produces its first input. ``("", "")`` at the top level.
    """
    seen = 0
    while "namespace" not in node.metadata_props and seen < 8:
        producer = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
        if producer is None:
            return ("", "")
        node, seen = producer, seen + 1
    namespace = node.metadata_props.get("namespace", "")
    entries = [e for e in namespace.split("/") if e]
    modules = []
    for entry in entries:
        path, _, cls = entry.partition(": ")
        modules.append((path.strip(), cls.strip()))
    if len(modules) >= 2 and modules[-2][0] != modules[-2][1]:
        return modules[-2]
    return ("", "")  # top level, or torch's placeholder for graph-input sizes


def layer_of(node: ir.Node) -> int | None:
    """The decoder layer index a node belongs to, or None."""
    match = _LAYER_RE.match(node_scope(node)[0])
    return int(match.group(1)) if match else None


def describe(model: ir.Model, *, layer: int | None = None, summary: bool = False) -> str:
    """The listing described in the module docstring."""
    graph = model.graph
    lines = []
    opsets = ", ".join(f"{domain or 'ai.onnx'}={version}" for domain, version in sorted(model.opset_imports.items()))
    lines.append(f"opset_import: {opsets}")
    for key, value in sorted(model.metadata_props.items()):
        if key.startswith("moec."):
            lines.append(f"metadata {key} = {value}")
    for value in graph.inputs:
        lines.append(f"input  {value.name}: {format_type(value)}")
    for value in graph.outputs:
        lines.append(f"output {value.name}: {format_type(value)}")

    nodes = list(graph)
    counts = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in nodes)
    lines.append(f"nodes: {len(nodes)}; initializers: {len(graph.initializers)}")
    lines.append("op counts: " + ", ".join(f"{op} {n}" for op, n in sorted(counts.items(), key=lambda x: (-x[1], x[0]))))
    if summary:
        return "\n".join(lines) + "\n"

    lines.append("")
    lines.append("initializers:")
    for name, value in graph.initializers.items():
        tensor = value.const_value
        text = f"  {name}: {format_type(value)}"
        if isinstance(tensor, ir.ExternalTensor):
            text += f" external({tensor.location}, offset={tensor.offset}, length={tensor.length})"
        else:
            constant = _constant_values(value)
            if constant is not None:
                text += f" = {constant}"
        lines.append(text)

    lines.append("")
    lines.append("nodes:" if layer is None else f"nodes (outside decoder layers, and decoder layer {layer}):")
    previous_scope = None
    elided: Counter[int] = Counter()
    for index, node in enumerate(nodes):
        node_layer = layer_of(node)
        if layer is not None and node_layer is not None and node_layer != layer:
            elided[node_layer] += 1
            continue
        scope = node_scope(node)
        if scope != previous_scope:
            path, cls = scope
            lines.append(f"# {path or '<top>'} ({cls.rsplit('.', 1)[-1] if cls else 'no module recorded'})")
            previous_scope = scope
        lines.append(format_node(index, node))
    if elided:
        lines.append("")
        lines.append(
            "elided: " + ", ".join(f"{count} nodes of layer {n}" for n, count in sorted(elided.items()))
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.inspect_onnx", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an .onnx file (external weights are not read)")
    parser.add_argument("--layer", type=int, help="list decoder layer N only (plus nodes outside any layer)")
    parser.add_argument("--summary", action="store_true", help="header and op counts only")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    args = parser.parse_args(argv)
    path = Path(args.model)
    if args.output:
        try:
            check_output(args.output)
        except ValueError as e:
            print(f"moec.inspect_onnx: error: -o {e}", file=sys.stderr)
            return 2
    if not path.is_file():
        print(f"moec.inspect_onnx: error: no such file '{path}'", file=sys.stderr)
        return 2
    try:
        model = ir.load(path)
    except Exception as exc:  # onnx raises several types for malformed files
        print(f"moec.inspect_onnx: error: cannot load '{path}': {exc}", file=sys.stderr)
        return 2
    # onnx loads a tensor of a negative dimension; its values would not.
    negative = [f"{name} {list(value.const_value.shape)}" for name, value in model.graph.initializers.items()
                if value.const_value is not None and any(d < 0 for d in value.const_value.shape)]
    if negative:
        print(f"moec.inspect_onnx: error: '{path}': initializer {negative[0]} has a negative dimension",
              file=sys.stderr)
        return 2
    layers = sorted({layer_of(node) for node in model.graph} - {None})
    if args.layer is not None and args.layer not in layers:
        have = f"decoder layers {layers[0]}..{layers[-1]}" if layers else "no decoder layers"
        print(f"moec.inspect_onnx: error: --layer {args.layer}: '{path}' has {have}", file=sys.stderr)
        return 2
    text = describe(model, layer=args.layer, summary=args.summary)
    if args.output:
        write_atomically(Path(args.output), text.encode())
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
