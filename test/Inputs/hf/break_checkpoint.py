"""Copies a Hugging Face checkpoint folder, changing one thing.

    python break_checkpoint.py SRC DST DEFECT

DEFECT is one of: missing (a tensor dropped), shape (k_proj transposed),
dtype (the final norm as F64), extra (a tensor the model does not have),
truncated (the last file cut short), lying (a header whose offsets run past
the data), config (num_local_experts 8), inf-row (the embedding row of token 255 set
to +inf: a corrupt row that only a batch holding token 255 reads, for the
numeric-fault tests), bf16 (every tensor as BF16: not a defect), single (one
model.safetensors, no index: not a defect).

Reads and writes safetensors with numpy and the json module only.
"""

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16}


def read(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = body[begin:end]
        if entry["dtype"] == "BF16":
            array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, DTYPES[entry["dtype"]])
        tensors[name] = array.reshape(entry["shape"])
    return tensors


def write(path, tensors, bf16=False, header_patch=None):
    header, chunks, offset = {}, [], 0
    for name, array in tensors.items():
        if bf16:
            bits = np.ascontiguousarray(array, np.float32).view(np.uint32)
            raw = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
            dtype = "BF16"
        else:
            raw = np.ascontiguousarray(array).tobytes()
            dtype = {np.float32: "F32", np.float64: "F64", np.float16: "F16"}[array.dtype.type]
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if header_patch:
        header_patch(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def main(src, dst, defect):
    src, dst = Path(src), Path(dst)
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    shutil.copy(src / "config.json", dst / "config.json")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    contents = {f: read(src / f) for f in files}
    if defect == "single":
        merged = {name: t for f in files for name, t in contents[f].items()}
        write(dst / "model.safetensors", merged)
        return
    patch = None
    last = files[-1]
    if defect == "missing":
        name = "model.layers.1.block_sparse_moe.experts.2.w3.weight"
        for f in files:
            contents[f].pop(name, None)
        del index["weight_map"][name]
    elif defect == "shape":
        for f in files:
            for name in contents[f]:
                if name == "model.layers.0.self_attn.k_proj.weight":
                    contents[f][name] = contents[f][name].T.copy()
    elif defect == "dtype":
        for f in files:
            if "model.norm.weight" in contents[f]:
                contents[f]["model.norm.weight"] = contents[f]["model.norm.weight"].astype(np.float64)
    elif defect == "extra":
        contents[last]["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
        index["weight_map"]["model.layers.0.self_attn.rotary_emb.inv_freq"] = last
    elif defect == "lying":
        def patch(header):
            entry = header["model.norm.weight"] if "model.norm.weight" in header else next(iter(header.values()))
            entry["data_offsets"] = [entry["data_offsets"][0] + 1000000, entry["data_offsets"][1] + 1000000]
    elif defect == "config":
        config = json.loads((src / "config.json").read_text())
        config["num_local_experts"] = 8
        (dst / "config.json").write_text(json.dumps(config, indent=2))
    elif defect == "inf-row":
        for f in files:
            if "model.embed_tokens.weight" in contents[f]:
                table = contents[f]["model.embed_tokens.weight"].copy()
                table[255] = np.inf
                contents[f]["model.embed_tokens.weight"] = table
    elif defect not in ("truncated", "bf16"):
        raise SystemExit(f"unknown defect {defect}")
    for f in files:
        lying = patch if defect == "lying" and "model.norm.weight" in contents[f] else None
        write(dst / f, contents[f], bf16=defect == "bf16", header_patch=lying)
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if defect == "truncated":
        data = (dst / last).read_bytes()
        (dst / last).write_bytes(data[:-100])


if __name__ == "__main__":
    main(*sys.argv[1:])
