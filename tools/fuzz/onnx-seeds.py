#!/usr/bin/env python3
"""Writes the onnx-import fuzz target's seed corpus from bundled models.

    tools/fuzz/onnx-seeds.py OUT_FOLDER MODEL.onnx...

Each model is written weights-free: every initializer the importer takes as
a parameter (isParameter in lib/Import/Onnx/OnnxImporter.cpp: a floating
point initializer named like a checkpoint weight, or of rank >= 2 with no
unit dimension) becomes an external-data reference to a file that is not
written. The importer checks a parameter's type and data location but
never reads its values, so the variant imports and raises as the model
does; without the weights libFuzzer's byte mutations land on the graph
(nodes, shapes, attributes, constants) instead of on weight bytes no
check reads, and each execution parses a few kilobytes instead of
hundreds. Constants (shape tensors, rotary tables, ...) stay inline. The
nodes' and the model's metadata_props (the exporter's module paths, most of
a model's bytes once the weights are out) are dropped: the importer does
not read them.
Files under 16 KiB (the hand-made invalid models, each made to test one
refusal, some not parseable at all) are copied unchanged.
"""
import os
import shutil
import sys

import onnx
from onnx import TensorProto

FLOATING = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16,
            TensorProto.DOUBLE}


def is_parameter(tensor):
    if tensor.data_type not in FLOATING:
        return False
    if tensor.name.endswith((".weight", ".bias", "_proj")):
        return True
    return len(tensor.dims) >= 2 and all(d > 1 for d in tensor.dims)


def externalize(tensor, offset):
    """Points `tensor` at `offset` in model.weights; returns its byte size."""
    size = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    for d in tensor.dims:
        size *= d
    if tensor.data_location == TensorProto.EXTERNAL:
        return 0
    for field in ("float_data", "int32_data", "double_data", "raw_data"):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "model.weights"), ("offset", offset),
                       ("length", size)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    return size


def main():
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} OUT_FOLDER MODEL.onnx...")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for path in sys.argv[2:]:
        name = os.path.basename(path)
        if os.path.getsize(path) < 16 * 1024:
            shutil.copy(path, os.path.join(out, name))
            continue
        model = onnx.load(path, load_external_data=False)
        offset = 0
        model.ClearField("metadata_props")
        for node in model.graph.node:
            node.ClearField("metadata_props")
        for tensor in model.graph.initializer:
            if is_parameter(tensor):
                offset += externalize(tensor, offset)
        with open(os.path.join(out, name), "wb") as f:
            f.write(model.SerializeToString())


if __name__ == "__main__":
    main()
