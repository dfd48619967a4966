"""Hugging Face Mixtral checkpoints for moec's ``--init-from`` and ``--export-hf``.

``python -m moec.hf_checkpoint make --config tiny --seed 0 -o DIR [--max-shard-size 200KB]``
builds a random ``MixtralForCausalLM`` the way a user would and saves it with
``save_pretrained`` (sharded with an index when the weights exceed the shard
size): the checkpoint a fine-tuning run starts from.

``python -m moec.hf_checkpoint logits DIR --tokens TOKENS.npy -o LOGITS.npy``
loads a checkpoint folder with ``MixtralForCausalLM.from_pretrained``,
unchanged, and writes its float32 logits on the int64 token blocks: what the
GPU suite compares with moec's reference forward on the exported parameters.

Both need torch and transformers.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np


def make(config_name: str, seed: int, out: Path, max_shard_size: str) -> None:
    import torch
    from transformers import MixtralForCausalLM

    from moec.presets import load_config

    torch.manual_seed(seed)
    model = MixtralForCausalLM(load_config(config_name)).eval()
    model.save_pretrained(out, max_shard_size=max_shard_size)


def read_tokens(path: Path) -> np.ndarray:
    """The int64 ``[batch, seq]`` token blocks of a .npy; raises ValueError naming the file. Floats are
    refused: cast to ids they would silently be other tokens."""
    try:
        ids = np.load(path)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a .npy array: {e}") from None
    if not isinstance(ids, np.ndarray) or not np.issubdtype(ids.dtype, np.integer) or ids.ndim != 2 or 0 in ids.shape:
        found = f"{ids.dtype} {list(ids.shape)}" if isinstance(ids, np.ndarray) else "an archive of arrays"
        raise ValueError(f"{path}: expected integer token ids [batch, seq], found {found}")
    return ids.astype(np.int64)


def logits(folder: Path, ids: np.ndarray, tokens: Path, out: Path) -> None:
    import torch
    from transformers import MixtralForCausalLM

    from moec.atomic import write_atomically

    model = MixtralForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    if ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(f"{tokens}: token ids {ids.min()}..{ids.max()} leave the vocabulary [0, {vocab}) of {folder}")
    ids = torch.from_numpy(ids)
    with torch.no_grad():
        result = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    buffer = io.BytesIO()
    np.save(buffer, result.float().numpy())
    write_atomically(out, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.hf_checkpoint",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("make", help="save a random MixtralForCausalLM with save_pretrained")
    p.add_argument("--config", default="tiny", help="preset name or JSON file of MixtralConfig fields")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-shard-size", default="5GB", help="save_pretrained's max_shard_size")
    p.add_argument("-o", "--out", type=Path, required=True)
    p = commands.add_parser("logits", help="from_pretrained a folder and write its logits")
    p.add_argument("folder", type=Path)
    p.add_argument("--tokens", type=Path, required=True, help=".npy of int64 [batch, seq]")
    p.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)
    # save_pretrained writes into a folder; over a file it would fail after building the model.
    if args.command == "make" and args.out.exists() and not args.out.is_dir():
        parser.error(f"-o {args.out}: exists and is not a folder")
    if args.command == "make":
        make(args.config, args.seed, args.out, args.max_shard_size)
        return 0
    if not args.folder.is_dir():
        # from_pretrained would take the name for a Hub repository.
        parser.error(f"no such checkpoint folder '{args.folder}'")
    if args.out.is_dir():
        parser.error(f"-o {args.out}: is a folder, not a .npy file")
    try:
        logits(args.folder, read_tokens(args.tokens), args.tokens, args.out)
    except (OSError, ValueError) as e:
        print(f"moec.hf_checkpoint: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
