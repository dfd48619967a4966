"""Build a token data set for training the tiny Mixtral from the fortune files.

Usage (from the repository root)::

    PYTHONPATH=python python -m moec.data --out out/fortunes
    PYTHONPATH=python python -m moec.data --out test/Inputs/fortunes \\
        --max-train-blocks 2000 --max-valid-blocks 100      # the bundled fixture

Needs ``pip install sentencepiece numpy onnx`` and the text of Debian's
``fortunes`` package (``apt-get install fortunes``; ``--text-dir`` points
elsewhere). Everything is deterministic: a rerun on the same text reproduces
every output byte for byte.

Steps:

1. *Text.* Every plain-text fortune file directly in ``--text-dir`` (sorted by
   name; the ``.dat`` index files, the ``.u8`` links and subfolders such as
   ``off/``, where the offensive ones live, are skipped) is split into
   documents, one fortune each, at the lines holding only ``%``. The text is
   cleaned: terminal overstriking (``_\\bX``, ``X\\bX``) and bell characters
   are removed, and doubly UTF-8-encoded runs (``Ã¢ÂÂs`` for ``’s``) are decoded.
2. *Tokeniser.* A sentencepiece BPE model (the model type of Mixtral's own
   tokeniser) is trained, single-threaded and seeded, on the documents' lines
   with ``--vocab-size`` pieces (default 256, the tiny preset's vocabulary):
   ``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2 (Mixtral's ids), ``"\\n"`` = 3
   (a user-defined piece, so verse and attributions keep their lines), no
   padding piece. Byte fallback needs 256 byte pieces besides those four, so
   it cannot fit in 256; without it the character coverage is 1.0: every
   character of the text gets a piece and nothing in the data set is
   ``<unk>`` (the summary counts them). Normalisation is sentencepiece's
   ``nmt_nfkc`` (NFKC, tabs and runs of spaces become one space).
3. *Recipe* (Hugging Face ``run_clm``'s ``group_texts``): each document is
   tokenised -- ``<s>``, then its lines encoded one by one (as the tokeniser
   was trained) and joined by the ``"\\n"`` piece, as Mixtral's tokeniser
   prepends ``<s>`` and adds no ``</s>`` --, all documents are concatenated
   into one stream, and the stream is cut into blocks of ``--seq-len`` tokens
   (default 64), the remainder dropped. The labels are the input ids; the
   model shifts them.
4. *Splits.* The last ``--valid-fraction`` of the blocks (default 5%, at
   least one) is the validation split, the rest the training split; then
   ``--max-train-blocks`` / ``--max-valid-blocks`` keep that many blocks of
   each, evenly spaced through the split so that a small fixture still
   samples the whole corpus (and not only its first files).

Outputs in ``--out`` (checked before the work; all four written to temporary files, then renamed):

* ``train.pb``, ``valid.pb`` -- a serialized ``onnx.TensorProto`` named
  ``input_ids``, int64 (raw little-endian data), shape ``[blocks, seq_len]``;
* ``tokenizer.model`` -- the sentencepiece model (``spm.SentencePieceProcessor
  (model_file=...)``; ``decode`` turns blocks back into text);
* ``meta.json`` -- vocabulary and special ids, sequence length, blocks and
  tokens per split, the source files with their sha256, the output files with
  theirs, the package versions and the command.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moec import checked_argument, positive_int
from moec.atomic import check_output, write_all_atomically

#: Where Debian's ``fortunes`` package installs its files.
DEFAULT_TEXT_DIR = Path("/usr/share/games/fortunes")
DEFAULT_VOCAB_SIZE = 256
DEFAULT_SEQ_LEN = 64
DEFAULT_VALID_FRACTION = 0.05
#: Suffixes of the files in the fortunes folder that are not text.
SKIPPED_SUFFIXES = (".dat", ".u8")
#: The files written in ``--out``.
OUTPUTS = ("train.pb", "valid.pb", "tokenizer.model", "meta.json")

MODEL_TYPE = "bpe"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
NEWLINE_PIECE = "\n"
NEWLINE_ID = 3
#: Pieces that are not learnt: <unk>, <s>, </s> and the newline.
RESERVED_PIECES = 4
SEED = 0


class DataError(Exception):
    """A problem with the inputs or options, reported as one line."""


@dataclass
class Split:
    name: str
    blocks: np.ndarray  # int64 [num_blocks, seq_len]

    @property
    def file(self) -> str:
        return f"{self.name}.pb"


# --- text -------------------------------------------------------------------

_HIGH_LATIN1_RUN_RE = re.compile(r"[\u0080-\u00ff]{2,}")


def _undo_double_encoding(match: re.Match) -> str:
    """``Ã¢ÂÂ`` -> ``'``: UTF-8 bytes that were read as Latin-1, maybe twice."""
    text = match.group(0)
    while True:
        try:
            decoded = text.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return text
        if decoded == text:
            return text
        text = decoded


def _strike_over(line: str) -> str:
    """A line as a terminal shows it: a backspace moves back, the next character
    overstrikes the one there (an underscore underlines and keeps the letter)."""
    cells: list[str] = []
    column = 0
    for char in line:
        if char == "\x08":
            column = max(0, column - 1)
            continue
        if column < len(cells):
            if char != "_":
                cells[column] = char
        else:
            cells.append(char)
        column += 1
    return "".join(cells)


def clean_text(text: str) -> str:
    """Removes overstriking and bells and repairs doubly encoded characters."""
    if "\x08" in text:
        text = "\n".join(_strike_over(line) if "\x08" in line else line for line in text.split("\n"))
    text = text.replace("\x07", "")
    return _HIGH_LATIN1_RUN_RE.sub(_undo_double_encoding, text)


def find_text_files(text_dir: Path) -> list[Path]:
    """The fortune files of ``text_dir``, sorted by name."""
    if text_dir.exists() and not text_dir.is_dir():
        raise DataError(f"--text-dir {text_dir} is not a folder")
    if not text_dir.is_dir():
        hint = " (install Debian's fortunes package: apt-get install fortunes)" if text_dir == DEFAULT_TEXT_DIR else ""
        raise DataError(f"text folder {text_dir} does not exist{hint}")
    files = sorted(
        path
        for path in text_dir.iterdir()
        if path.is_file()
        and not path.is_symlink()
        and not path.name.startswith(".")
        and not path.name.endswith(SKIPPED_SUFFIXES)
    )
    if not files:
        raise DataError(f"text folder {text_dir} holds no fortune files")
    return files


def split_documents(text: str) -> list[str]:
    """One document per fortune: the text between ``%`` lines, outer blank lines and trailing spaces removed."""
    documents = []
    for chunk in re.split(r"^%[ \t]*$", text, flags=re.MULTILINE):
        lines = [line.rstrip() for line in chunk.split("\n")]
        while lines and not lines[0]:
            lines.pop(0)
        while lines and not lines[-1]:
            lines.pop()
        if lines:
            documents.append("\n".join(lines))
    return documents


def read_documents(files: list[Path]) -> list[str]:
    documents = []
    for path in files:
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"{path} is not UTF-8 text: {error}") from None
        documents += split_documents(clean_text(text))
    return documents


# --- tokeniser --------------------------------------------------------------


def train_tokenizer(documents: list[str], vocab_size: int, byte_fallback: bool) -> bytes:
    """The serialized sentencepiece model trained on the documents' lines."""
    import sentencepiece as spm

    if byte_fallback and vocab_size < 256 + RESERVED_PIECES + 1:
        raise DataError(
            f"byte fallback needs 256 byte pieces besides the {RESERVED_PIECES} reserved ones; "
            f"vocab size {vocab_size} is too small"
        )
    if vocab_size <= RESERVED_PIECES:
        raise DataError(f"vocab size {vocab_size} leaves no room besides the {RESERVED_PIECES} reserved pieces")
    lines = [line for document in documents for line in document.split("\n") if line.strip()]
    if not lines:
        raise DataError("the text holds no non-blank line to train the tokenizer on")
    spm.set_random_generator_seed(SEED)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            model_type=MODEL_TYPE,
            vocab_size=vocab_size,
            character_coverage=0.9995 if byte_fallback else 1.0,
            byte_fallback=byte_fallback,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=-1,
            user_defined_symbols=[NEWLINE_PIECE],
            normalization_rule_name="nmt_nfkc",
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as error:
        message = str(error)
        too_high = re.search(r"Please set it to a value <= (\d+)", message)
        if too_high:
            raise DataError(
                f"too little text for vocab size {vocab_size}: {len(lines)} lines give at most "
                f"{too_high.group(1)} pieces"
            ) from None
        if "smaller than required_chars" in message:
            counts = re.search(r"(\d+) vs (\d+)", message)
            needed = counts.group(2) if counts else "more"
            raise DataError(
                f"vocab size {vocab_size} is smaller than the {needed} pieces the text's characters "
                f"and the reserved pieces need{' (byte fallback takes 256)' if byte_fallback else ''}"
            ) from None
        raise DataError(f"sentencepiece training failed: {message}") from None
    return model.getvalue()


def encode_documents(model: bytes, documents: list[str]) -> np.ndarray:
    """The token stream: per document ``<s>`` and its lines joined by the newline piece."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=model)
    assert processor.piece_to_id(NEWLINE_PIECE) == NEWLINE_ID and processor.bos_id() == BOS_ID
    stream: list[int] = []
    for document in documents:
        stream.append(BOS_ID)
        for index, ids in enumerate(processor.encode(document.split("\n"))):
            if index:
                stream.append(NEWLINE_ID)
            stream += ids
    return np.asarray(stream, dtype=np.int64)


# --- blocks, splits, files ----------------------------------------------------


def group_blocks(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """run_clm's ``group_texts``: blocks of ``seq_len`` tokens, the remainder dropped."""
    num_blocks = len(stream) // seq_len
    return stream[: num_blocks * seq_len].reshape(num_blocks, seq_len)


def split_blocks(
    blocks: np.ndarray, valid_fraction: float, max_train: int | None, max_valid: int | None
) -> tuple[Split, Split]:
    num_valid = max(1, round(len(blocks) * valid_fraction))
    if len(blocks) - num_valid < 1:
        raise DataError(f"{len(blocks)} blocks are too few for a training and a validation split")
    train, valid = blocks[:-num_valid], blocks[-num_valid:]
    return Split("train", _evenly_spaced(train, max_train)), Split("valid", _evenly_spaced(valid, max_valid))


def _evenly_spaced(blocks: np.ndarray, count: int | None) -> np.ndarray:
    """`count` blocks spread evenly over `blocks` (all of them if fewer)."""
    if count is None or count >= len(blocks):
        return blocks
    return blocks[np.linspace(0, len(blocks) - 1, count).round().astype(np.int64)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _debian_package_version(package: str) -> str | None:
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return result.stdout.strip() or None


def _check_modules(*names: str) -> None:
    import importlib.util

    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise DataError(f"python module(s) {', '.join(missing)} not found: pip install {' '.join(missing)}")


def _fraction(text: str) -> float:
    return checked_argument(float, "a number between 0 and 1 (both excluded)", lambda v: 0.0 < v < 1.0, text)


def check_out(out: Path) -> None:
    """Refuses an ``--out`` where the outputs cannot be written, before the work."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder")
    try:
        for name in OUTPUTS:
            check_output(out / name)
    except ValueError as error:
        raise DataError(f"--out {error}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moec.data", description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--text-dir", type=Path, default=DEFAULT_TEXT_DIR, help="folder of fortune files")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--vocab-size", type=positive_int, default=DEFAULT_VOCAB_SIZE)
    parser.add_argument("--seq-len", type=positive_int, default=DEFAULT_SEQ_LEN, help="tokens per block")
    parser.add_argument("--valid-fraction", type=_fraction, default=DEFAULT_VALID_FRACTION,
                        help="share of the blocks, from the end, held out for validation")
    parser.add_argument("--max-train-blocks", type=positive_int, help="keep N training blocks, evenly spaced")
    parser.add_argument("--max-valid-blocks", type=positive_int, help="keep N validation blocks, evenly spaced")
    parser.add_argument("--byte-fallback", action="store_true",
                        help="byte pieces for unknown characters (needs a vocab size above 260)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "moec.data", *(sys.argv[1:] if argv is None else argv)])

    try:
        check_out(args.out)
        files = find_text_files(args.text_dir)
        _check_modules("sentencepiece", "onnx")
        documents = read_documents(files)
        if not documents:
            raise DataError(f"no fortune in the {len(files)} files of {args.text_dir}")
        model = train_tokenizer(documents, args.vocab_size, args.byte_fallback)
        stream = encode_documents(model, documents)
        blocks = group_blocks(stream, args.seq_len)
        if len(blocks) < 2:
            raise DataError(f"{len(stream)} tokens make {len(blocks)} blocks of {args.seq_len}; need at least 2")
        train, valid = split_blocks(blocks, args.valid_fraction, args.max_train_blocks, args.max_valid_blocks)
    except DataError as error:
        print(f"moec.data: error: {error}", file=sys.stderr)
        return 1

    import onnx
    import sentencepiece
    from onnx import numpy_helper

    text_bytes = sum(len(document.encode("utf-8")) for document in documents)
    unknown = int(np.count_nonzero(stream == UNK_ID))
    outputs: dict[str, bytes] = {"tokenizer.model": model}
    for split in (train, valid):
        outputs[split.file] = numpy_helper.from_array(split.blocks, name="input_ids").SerializeToString()

    meta = {
        "format": "onnx.TensorProto int64 [blocks, seq_len] named input_ids; labels = input_ids (the model shifts)",
        "vocab_size": args.vocab_size,
        "seq_len": args.seq_len,
        "tokenizer": {
            "file": "tokenizer.model",
            "library": "sentencepiece",
            "model_type": MODEL_TYPE,
            "byte_fallback": args.byte_fallback,
            "character_coverage": 0.9995 if args.byte_fallback else 1.0,
            "normalization": "nmt_nfkc",
            "unk_id": UNK_ID,
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
            "pad_id": None,
            "newline_id": NEWLINE_ID,
        },
        "recipe": "per document: <s>, its lines encoded one by one and joined by the newline piece; "
        "documents concatenated; blocks of seq_len, remainder dropped; the last valid_fraction "
        "of the blocks is the validation split; then max_*_blocks keep the first blocks of each",
        "valid_fraction": args.valid_fraction,
        "max_train_blocks": args.max_train_blocks,
        "max_valid_blocks": args.max_valid_blocks,
        "source": {
            "package": "fortunes (Debian)",
            "package_version": _debian_package_version("fortunes") if args.text_dir == DEFAULT_TEXT_DIR else None,
            "documents": len(documents),
            "text_bytes": text_bytes,
            "files": [{"name": path.name, "sha256": sha256(path.read_bytes())} for path in files],
        },
        "stream": {
            "tokens": len(stream),
            "blocks": len(blocks),
            "dropped_tokens": len(stream) - len(blocks) * args.seq_len,
            "unknown_tokens": unknown,
            "bytes_per_token": round(text_bytes / len(stream), 4),
        },
        "splits": {
            split.name: {
                "file": split.file,
                "blocks": int(split.blocks.shape[0]),
                "tokens": int(split.blocks.size),
                "sha256": sha256(outputs[split.file]),
            }
            for split in (train, valid)
        },
        "tokenizer_sha256": sha256(model),
        "versions": {"sentencepiece": sentencepiece.__version__, "onnx": onnx.__version__, "numpy": np.__version__},
        "command": command,
    }
    outputs["meta.json"] = (json.dumps(meta, indent=2) + "\n").encode("utf-8")
    try:
        # All four at once: meta.json describes the others, and a failure leaves the old set whole.
        write_all_atomically({args.out / name: outputs[name] for name in OUTPUTS})
    except OSError as error:
        print(f"moec.data: error: cannot write in {args.out}: {error}", file=sys.stderr)
        return 1

    print(f"text: {len(files)} files, {len(documents)} documents, {text_bytes} bytes")
    print(
        f"tokens: {len(stream)} ({text_bytes / len(stream):.3f} bytes/token, {unknown} <unk>), "
        f"{len(blocks)} blocks of {args.seq_len}, {len(stream) - len(blocks) * args.seq_len} dropped"
    )
    for split in (train, valid):
        print(
            f"{split.name}: {split.blocks.shape[0]} blocks, {split.blocks.size} tokens, "
            f"{len(outputs[split.file])} bytes -> {args.out / split.file}"
        )
    print(f"tokenizer: {MODEL_TYPE}, vocab {args.vocab_size}, {len(model)} bytes -> {args.out / 'tokenizer.model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
