"""Token blocks from a JSON Lines corpus, streamed: the data moec trains on from the files people have.

Usage (from the repository root)::

    PYTHONPATH=python python -m moec.jsonl corpus.jsonl train.bin --seq-length 4096 --tokenizer tokenizer.json
    PYTHONPATH=python python -m moec.jsonl ids.jsonl train.pb --seq-length 64 --vocab-size 256

Each line of the input is one document, a JSON object with either

* ``"text"``: a string, tokenised by ``--tokenizer`` (a Hugging Face
  ``tokenizer.json``, read with the ``tokenizers`` package) with its special
  tokens, as ``tokenizer(text)`` does in transformers (Mixtral's prepends
  ``<s>``); or
* ``"input_ids"``: the document already tokenised, a list of integers.

Blank lines are skipped; anything else (not JSON, not an object, neither key,
ids that are not integers, negative, or at least the vocabulary size where
it is known) stops the conversion with an error naming the file, the line and the
problem, and leaves no output behind.

The recipe is Hugging Face ``run_clm``'s ``group_texts``, as
``python -m moec.data`` uses it: all documents are concatenated into one
stream of ids, the stream is cut into blocks of ``--seq-length``, the
remainder is dropped, and the labels are the input ids (the model shifts
them). The input is read line by line and full blocks are written as they
fill, so memory does not grow with the corpus (``--max-blocks`` stops early).

Output by suffix, written to a temporary file and renamed when complete:

* ``.bin``: raw little-endian int64, row-major ``[blocks, seq]``: what a
  program ``moec compile`` wrote reads with ``--tokens``;
* ``.pb``: a serialized ``onnx.TensorProto`` ``input_ids``, int64
  ``[blocks, seq]``: what ``moec train --reference --tokens`` reads (it is
  assembled in memory: use ``.bin`` for large corpora, ``python -m
  moec.tokens`` converts between the two).

Progress: with ``--progress`` (the default when stderr is a terminal), a line
on stderr redrawn as the input is read: percent of its bytes, documents,
blocks, MB/s. The summary on stdout counts documents, tokens, blocks and the
dropped remainder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moec import positive_int
from moec.atomic import open_atomically, write_atomically


class CorpusError(Exception):
    """A line of the corpus that cannot be read as a document; the message names the place."""


@dataclass
class Counts:
    documents: int = 0
    tokens: int = 0
    blocks: int = 0
    dropped: int = 0  # tokens of the last, incomplete block


class Progress:
    """One stderr line, redrawn at most every 0.2 s: how far through the input the conversion is."""

    def __init__(self, total_bytes: int, enabled: bool):
        self.total = max(total_bytes, 1)
        self.enabled = enabled
        self.start = self.last = time.monotonic()

    def update(self, done_bytes: int, counts: Counts, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < 0.2):
            return
        self.last = now
        rate = done_bytes / max(now - self.start, 1e-9) / 1e6
        sys.stderr.write(f"\r{100.0 * done_bytes / self.total:5.1f}%  {counts.documents:,} documents  "
                         f"{counts.blocks:,} blocks  {rate:.1f} MB/s" + ("\n" if final else ""))
        sys.stderr.flush()


def load_tokenizer(path: Path):
    """``tokenizers.Tokenizer`` of a ``tokenizer.json``; raises CorpusError saying what is missing."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise CorpusError("--tokenizer needs the 'tokenizers' package (pip install tokenizers)") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the package raises its own exception types
        raise CorpusError(f"{path}: not a tokenizer.json the tokenizers package reads: {e}") from None


def document_ids(line: str, where: str, tokenizer, vocab: int | None) -> list[int]:
    """The ids of one JSON Lines document (module docstring); raises CorpusError naming ``where``."""
    try:
        document = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{where}: not JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(document, dict):
        raise CorpusError(f"{where}: a document is a JSON object, not {type(document).__name__}")
    if "input_ids" in document:
        ids = document["input_ids"]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise CorpusError(f"{where}: \"input_ids\" must be a list of integers")
    elif "text" in document:
        text = document["text"]
        if not isinstance(text, str):
            raise CorpusError(f"{where}: \"text\" must be a string, not {type(text).__name__}")
        if tokenizer is None:
            raise CorpusError(f"{where}: a \"text\" document needs --tokenizer tokenizer.json")
        ids = tokenizer.encode(text).ids
    else:
        keys = ", ".join(sorted(document)) or "none"
        raise CorpusError(f"{where}: a document has \"text\" or \"input_ids\"; this one has keys: {keys}")
    for position, i in enumerate(ids):
        # A negative id is never a token, with or without a vocabulary to check against.
        if i < 0:
            raise CorpusError(f"{where}: token {position} is {i}, a negative id")
        if vocab is not None and i >= vocab:
            raise CorpusError(f"{where}: token {position} is {i}, outside the vocabulary [0, {vocab})")
    return ids


def convert(source: Path, out, seq: int, tokenizer, vocab: int | None, max_blocks: int | None,
            progress: Progress) -> Counts:
    """Streams ``source``'s documents into blocks of ``seq`` ids written to the binary file ``out``."""
    counts = Counts()
    pending = np.empty(0, dtype=np.int64)
    done = 0
    with open(source, "rb") as f:
        for number, raw in enumerate(f, 1):
            done += len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{source}:{number}: not UTF-8 at byte {e.start}") from None
            if not line.strip():
                continue
            ids = document_ids(line.rstrip("\r\n"), f"{source}:{number}", tokenizer, vocab)
            counts.documents += 1
            counts.tokens += len(ids)
            pending = np.concatenate([pending, np.asarray(ids, dtype=np.int64)])
            full = len(pending) // seq
            if max_blocks is not None:
                full = min(full, max_blocks - counts.blocks)
            if full:
                out.write(pending[:full * seq].astype("<i8").tobytes())
                pending = pending[full * seq:]
                counts.blocks += full
            progress.update(done, counts)
            if max_blocks is not None and counts.blocks >= max_blocks:
                break
    counts.dropped = len(pending)
    progress.update(done, counts, final=True)
    if counts.blocks == 0:
        raise CorpusError(f"{source}: {counts.tokens} tokens in {counts.documents} documents make no block of "
                          f"{seq}; nothing written")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.jsonl", description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="JSON Lines, one document per line")
    parser.add_argument("output", type=Path, help="OUT.bin (raw int64) or OUT.pb (onnx.TensorProto)")
    parser.add_argument("--seq-length", type=int, required=True, help="tokens per block")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json for \"text\" documents")
    parser.add_argument("--vocab-size", type=positive_int,
                        help="refuse ids outside [0, N) (default: the tokenizer's vocabulary, if given)")
    parser.add_argument("--max-blocks", type=int, help="stop after this many blocks")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress line on stderr (default: when stderr is a terminal)")
    args = parser.parse_args(argv)
    if args.seq_length < 1:
        parser.error(f"--seq-length must be positive, not {args.seq_length}")
    if args.max_blocks is not None and args.max_blocks < 1:
        parser.error(f"--max-blocks must be positive, not {args.max_blocks}")
    if args.output.suffix not in (".bin", ".pb"):
        parser.error(f"'{args.output}': the output is OUT.bin (raw int64) or OUT.pb (onnx.TensorProto)")
    if not args.input.is_file():
        parser.error(f"no such file '{args.input}'")
    try:
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        vocab = args.vocab_size if args.vocab_size is not None else (tokenizer.get_vocab_size(with_added_tokens=True) if tokenizer else None)
        progress = Progress(args.input.stat().st_size,
                            sys.stderr.isatty() if args.progress is None else args.progress)
        if args.output.suffix == ".bin":
            with open_atomically(args.output) as out:
                counts = convert(args.input, out, args.seq_length, tokenizer, vocab, args.max_blocks, progress)
        else:
            import io

            from onnx import numpy_helper

            buffer = io.BytesIO()
            counts = convert(args.input, buffer, args.seq_length, tokenizer, vocab, args.max_blocks, progress)
            blocks = np.frombuffer(buffer.getvalue(), dtype="<i8").reshape(counts.blocks, args.seq_length)
            write_atomically(args.output, numpy_helper.from_array(blocks, name="input_ids").SerializeToString())
    except CorpusError as e:
        print(f"moec.jsonl: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.output}: {counts.blocks} blocks of {args.seq_length} tokens from {counts.documents} documents "
          f"({counts.tokens} tokens, {counts.dropped} dropped at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
