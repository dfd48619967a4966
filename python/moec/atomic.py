"""Atomic file writes: a reader never sees half a file, and a failed write
leaves what was there before.

    from moec.atomic import check_output, open_atomically, write_atomically
"""

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def open_atomically(path: Path):
    """A binary file to write ``path`` through: a temporary file beside it, renamed over ``path`` when the
    ``with`` block ends normally (after its bytes reach the disk), removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: bytes) -> None:
    """Writes ``data`` to a temporary file beside ``path``, then renames it over ``path``."""
    with open_atomically(path) as f:
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
