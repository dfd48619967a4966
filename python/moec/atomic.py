"""Atomic file writes: a reader never sees half a file, and a failed write
leaves what was there before.

    from moec.atomic import check_output, open_atomically, replacing, write_all_atomically, write_atomically
"""

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def replacing(*paths: Path):
    """Temporary paths, one beside each of ``paths``, to write a set of files through (a library that takes
    a path may write them): when the ``with`` block ends normally each is renamed over its path (after its
    bytes reach the disk), when it raises all are removed. A failure in the block leaves the old set whole,
    never some files old and some new."""
    paths = [Path(path) for path in paths]
    temps = [path.with_name(f".{path.name}.{os.getpid()}.tmp") for path in paths]
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        yield temps
        for temp in temps:
            with open(temp, "rb") as f:
                os.fsync(f.fileno())
        for temp, path in zip(temps, paths):
            os.replace(temp, path)
    except BaseException:
        for temp in temps:
            with contextlib.suppress(OSError):  # not written, or its folder is not there
                temp.unlink()
        raise


@contextlib.contextmanager
def open_atomically(path: Path):
    """A binary file to write ``path`` through: a temporary file beside it, renamed over ``path`` when the
    ``with`` block ends normally (after its bytes reach the disk), removed when it raises."""
    with replacing(path) as (temp,), open(temp, "xb") as f:
        yield f


def write_atomically(path: Path, data: bytes) -> None:
    """Writes ``data`` to a temporary file beside ``path``, then renames it over ``path``."""
    write_all_atomically({path: data})


def write_all_atomically(files: dict[Path, bytes]) -> None:
    """Writes each file's bytes to a temporary file beside it, then renames them all: a failure leaves the
    old set of files whole (see :func:`replacing`)."""
    with replacing(*files) as temps:
        for temp, data in zip(temps, files.values()):
            with open(temp, "xb") as f:
                f.write(data)


def check_output(path: Path) -> None:
    """Raises ValueError, naming ``path``, when a file cannot be written there (a folder is there, or the
    nearest existing folder above it is not one or not writable): called before long work, so that the
    work is not lost at its end."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a file to write")
    above = next(p for p in path.absolute().parents if p.exists())
    if not above.is_dir():
        raise ValueError(f"{path}: {above} is not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: {above} is not writable")
