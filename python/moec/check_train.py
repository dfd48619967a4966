"""Check a ``moec train --reference --dump DIR`` against a training golden.

Usage (from the repository root)::

    PYTHONPATH=python python -m moec.check_train GOLDEN.npz DUMP_DIR [--loss-rtol 1e-5] [--rtol-l2 1e-4]
    PYTHONPATH=python python -m moec.check_train GOLDEN.npz --self-check
    PYTHONPATH=python python -m moec.check_train REFERENCE_DUMP_DIR DUMP_DIR [...]

``GOLDEN.npz`` is one case written by ``python -m moec.train_reference --write``
(see test/Inputs/train/README.md); a dump directory in its place is the
golden itself (how a partitioned run is checked against the unpartitioned
one), and then the final AdamW moments are compared too. ``DUMP_DIR`` holds
one serialized ``onnx.TensorProto`` per value:

* ``step_<s>/<key>.pb`` for ``loss``, ``ce_loss``, ``aux_loss``, ``z_loss``,
  ``grad_norm``, ``lr`` (float32 scalars, shape ``[]``) and ``expert_counts``
  (int64 ``[L, E]``), s = 1, 2, ...;
* ``step_<s>/grad/<param name>.pb``: the gradient before clipping (float32);
* ``final/param/<param name>.pb``: the parameter after the last step (float32);
* ``final/exp_avg/<param name>.pb``, ``final/exp_avg_sq/<param name>.pb``:
  its AdamW moments (float32; read only where the golden has them).

Comparisons (dtype and shape must match the golden's):

* ``loss``, ``ce_loss``, ``aux_loss``, ``z_loss``: relative error
  ``|got - want| / |want| <= --loss-rtol``; absolute error ``<= 1e-7`` when the
  golden is 0;
* ``grad_norm``, ``lr``: relative error ``<= 1e-5``;
* ``expert_counts``: exactly equal;
* every gradient, final parameter and moment: relative L2 error
  ``||got - want|| / ||want|| <= --rtol-l2`` (``||got||`` when ``||want|| = 0``).

One line per step (every scalar, the largest gradient rel L2 and its
parameter), one for the final parameters, and one per failing tensor (max
abs error and rel L2). Exits 1 on any failure or missing file, 0 otherwise.

``--self-check`` writes the golden itself into a temporary directory in that
layout and checks it (it must pass), then checks three broken copies (a
loss off by 1e-4, one gradient scaled by 1.001, one file missing), each of
which must fail: this proves the layout and the checker without the C++ side.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moec import non_negative_float

LOSS_KEYS = ("loss", "ce_loss", "aux_loss", "z_loss")
EXACT_SCALAR_RTOL = 1e-5  # grad_norm and lr
ZERO_ATOL = 1e-7
METRIC_KEYS = (*LOSS_KEYS, "grad_norm", "lr", "expert_counts")
FINAL_FOLDERS = ("param", "exp_avg", "exp_avg_sq")


def is_final(key: str) -> bool:
    """Whether ``key`` names a final parameter or moment (``final/<folder>/<name>``)."""
    parts = key.split("/")
    return len(parts) > 2 and parts[0] == "final" and parts[1] in FINAL_FOLDERS


@dataclass
class Tolerances:
    loss_rtol: float = 1e-5
    rtol_l2: float = 1e-4


def steps_of(golden) -> list[int]:
    return sorted({int(m.group(1)) for key in golden if (m := re.match(r"step(\d+)/loss$", key))})


def param_names(golden) -> list[str]:
    return [key[len("final/param/"):] for key in golden if key.startswith("final/param/")]


def load_golden(path: Path) -> dict[str, np.ndarray]:
    """Every array of a golden, read now: a truncated or foreign file is refused (ValueError) before any
    comparison, not half way through one."""
    try:
        if not zipfile.is_zipfile(path):
            raise ValueError("not a zip archive (truncated?)")
        with np.load(path) as loaded:
            golden = {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path}: not a golden .npz of python -m moec.train_reference --write: {e}") from None
    if not steps_of(golden) or not param_names(golden):
        raise ValueError(f"{path}: the golden holds no step<s>/loss or no final/param/<name> "
                         f"(it has {', '.join(golden) or 'no arrays'})")
    return golden


def dump_layout(golden) -> dict[str, str]:
    """Golden key -> path relative to the dump directory."""
    layout = {}
    for key in golden:
        if (m := re.match(r"step(\d+)/(.+)$", key)):
            layout[key] = f"step_{m.group(1)}/{m.group(2)}.pb"
        elif is_final(key):
            layout[key] = f"{key}.pb"
    return layout


def load_dump(directory: Path) -> dict[str, np.ndarray]:
    """A ``moec train --dump`` directory read as a golden (its keys as ``dump_layout`` maps them): every step's
    metrics and gradients, the final parameters and moments; ValueError naming the file that cannot be read."""
    golden = {}
    for path in sorted(directory.rglob("*.pb")):
        relative = path.relative_to(directory).with_suffix("").as_posix()
        if (m := re.match(r"step_(\d+)/(.+)$", relative)):
            golden[f"step{m.group(1)}/{m.group(2)}"] = read_tensor(path)
        elif is_final(relative):
            golden[relative] = read_tensor(path)
    if not steps_of(golden) or not param_names(golden):
        raise ValueError(f"{directory}: not a dump of moec train --dump (no step_<s>/loss.pb or no "
                         f"final/param/<name>.pb)")
    return golden


def write_dump(golden, directory: Path) -> None:
    """Writes the golden's values into ``directory`` in the dump layout."""
    import onnx.numpy_helper

    for key, relative in dump_layout(golden).items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tensor = onnx.numpy_helper.from_array(np.asarray(golden[key]), name=Path(relative).stem)
        path.write_bytes(tensor.SerializeToString())


def read_tensor(path: Path) -> np.ndarray:
    """A serialized onnx.TensorProto's values; raises ValueError naming ``path`` when the file cannot be read
    or is not one (or keeps its values in another file: a dump or a token file is one file each)."""
    import onnx
    import onnx.numpy_helper
    from google.protobuf.message import DecodeError

    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(path.read_bytes())
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None
    except DecodeError as e:
        raise ValueError(f"{path}: not an onnx.TensorProto: {e}") from None
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise ValueError(f"{path}: its values are in another file (external data), not in the file")
    if any(d < 0 for d in tensor.dims):
        raise ValueError(f"{path}: negative dimension in {list(tensor.dims)}")
    try:
        return onnx.numpy_helper.to_array(tensor)
    except (TypeError, ValueError) as e:  # an undefined element type, a size that does not match the dims
        raise ValueError(f"{path}: not an onnx.TensorProto of {list(tensor.dims)} values: {e}") from None


class Checker:
    """Compares one dump against one golden and collects what failed."""

    def __init__(self, golden, directory: Path, tolerances: Tolerances):
        self.golden = golden
        self.directory = directory
        self.tol = tolerances
        self.failures: list[str] = []
        self.pending: list[str] = []  # failures of the line being assembled
        self.layout = dump_layout(golden)

    def fail(self, message: str) -> None:
        self.failures.append(message)
        self.pending.append(message)

    def report(self, line: str) -> None:
        """Prints ``line``, then the failures found while computing it."""
        print(line)
        for message in self.pending:
            print(f"  FAIL {message}")
        self.pending.clear()

    def load(self, key: str) -> np.ndarray | None:
        """The dumped value of ``key`` with the golden's dtype and shape, or None (failure recorded)."""
        path = self.directory / self.layout[key]
        want = np.asarray(self.golden[key])
        if not path.is_file():
            self.fail(f"{self.layout[key]}: missing")
            return None
        try:
            got = read_tensor(path)
        except Exception as exc:  # protobuf's DecodeError and onnx's errors have no common base
            self.fail(f"{self.layout[key]}: not an onnx.TensorProto: {exc}")
            return None
        if got.dtype != want.dtype or got.shape != want.shape:
            self.fail(f"{self.layout[key]}: {got.dtype} {list(got.shape)}, expected {want.dtype} {list(want.shape)}")
            return None
        return got

    def scalar(self, key: str, rtol: float) -> str:
        got = self.load(key)
        want = float(self.golden[key])
        if got is None:
            return "missing"
        got = float(got)
        error = abs(got - want)
        if want == 0.0:
            ok, shown = error <= ZERO_ATOL, f"abs {error:.1e}"
        else:
            ok, shown = error <= rtol * abs(want), f"rel {error / abs(want):.1e}"
        if not ok:
            self.fail(f"{self.layout[key]}: {got!r} vs golden {want!r} ({shown}, tolerance "
                      f"{'abs ' + str(ZERO_ATOL) if want == 0.0 else 'rel ' + str(rtol)})")
        return f"{got:.7g} ({shown})"

    def counts(self, key: str) -> str:
        got = self.load(key)
        want = np.asarray(self.golden[key])
        if got is None:
            return "missing"
        if not np.array_equal(got, want):
            self.fail(f"{self.layout[key]}: {got.tolist()} != golden {want.tolist()}")
            return "DIFFER"
        return "equal"

    def tensors(self, prefix: str, names: list[str]) -> tuple[float, str]:
        """Largest rel L2 over ``prefix + name`` for all names, and which."""
        worst, worst_name = 0.0, "-"
        for name in names:
            key = prefix + name
            got = self.load(key)
            if got is None:
                continue
            want = np.asarray(self.golden[key]).astype(np.float64)
            diff = got.astype(np.float64) - want
            reference = np.linalg.norm(want)
            rel = float(np.linalg.norm(diff) / reference) if reference > 0 else float(np.linalg.norm(got))
            if not np.isfinite(rel) or rel > self.tol.rtol_l2:
                max_abs = float(np.abs(diff).max()) if diff.size else 0.0
                self.fail(f"{self.layout[key]}: max_abs {max_abs:.3e} rel_l2 {rel:.3e} (tolerance {self.tol.rtol_l2})")
            if not np.isfinite(rel) or rel > worst:
                worst, worst_name = rel, name
        return worst, worst_name

    def run(self) -> bool:
        config = json.loads(str(self.golden["config"])) if "config" in self.golden else {}
        names = param_names(self.golden)
        print(f"golden {config.get('case', '?')}: {len(names)} parameters; dump {self.directory}")
        for step in steps_of(self.golden):
            prefix = f"step{step}/"
            parts = [f"{key} {self.scalar(prefix + key, self.tol.loss_rtol)}" for key in LOSS_KEYS]
            parts += [f"{key} {self.scalar(prefix + key, EXACT_SCALAR_RTOL)}" for key in ("grad_norm", "lr")]
            parts.append(f"expert_counts {self.counts(prefix + 'expert_counts')}")
            worst, which = self.tensors(prefix + "grad/", names)
            parts.append(f"grads max rel_l2 {worst:.2e} ({which})")
            self.report(f"step {step}: " + "  ".join(parts))
        worst, which = self.tensors("final/param/", names)
        self.report(f"final params: max rel_l2 {worst:.2e} ({which})")
        for folder in FINAL_FOLDERS[1:]:
            if f"final/{folder}/{names[0]}" in self.golden:
                worst, which = self.tensors(f"final/{folder}/", names)
                self.report(f"final {folder}: max rel_l2 {worst:.2e} ({which})")
        verdict = "ok" if not self.failures else f"FAILED: {len(self.failures)} checks"
        print(verdict)
        return not self.failures


def self_check(golden: dict[str, np.ndarray], tolerances: Tolerances) -> bool:
    """The golden against itself passes; three broken copies fail (see the module docstring)."""
    import onnx.numpy_helper

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_dump(golden, directory)
        print("== the golden, dumped: must pass")
        passed = Checker(golden, directory, tolerances).run()
        names = param_names(golden)
        last = steps_of(golden)[-1]

        def rewrite(relative: str, scale: float) -> bytes:
            path = directory / relative
            original = path.read_bytes()
            value = read_tensor(path)
            broken = (value.astype(np.float64) * scale).astype(value.dtype)
            path.write_bytes(onnx.numpy_helper.from_array(broken, name=path.stem).SerializeToString())
            return original

        breakages = [
            (f"step_{last}/loss.pb", "loss off by 1e-4 (relative)", lambda rel: rewrite(rel, 1 + 1e-4)),
            (f"step_1/grad/{names[0]}.pb", "one gradient scaled by 1.001", lambda rel: rewrite(rel, 1.001)),
            (f"final/param/{names[-1]}.pb", "one file missing", lambda rel: _remove(directory / rel)),
        ]
        caught = True
        for relative, what, breaker in breakages:
            print(f"== {what} ({relative}): must fail")
            original = breaker(relative)
            failed = not Checker(golden, directory, tolerances).run()
            (directory / relative).write_bytes(original)
            if not failed:
                print(f"self-check: the checker missed: {what}")
            caught &= failed
    ok = passed and caught
    print("self-check " + ("passed" if ok else "FAILED"))
    return ok


def _remove(path: Path) -> bytes:
    data = path.read_bytes()
    path.unlink()
    return data


def run_moec(moec: str, golden: dict[str, np.ndarray], golden_path: Path, dump: Path) -> bool:
    """Runs the `moec train` command recorded in the golden's config (paths
    relative to the golden's folder), with --dump DUMP; True on success."""
    import shlex
    import subprocess

    try:
        command_text = json.loads(str(golden["config"].reshape(-1)[0]))["command"]
        words = shlex.split(command_text)
    except (KeyError, TypeError, ValueError):
        print(f"check_train: error: {golden_path} records no `moec train` command (its config's \"command\")",
              file=sys.stderr)
        return False
    if words[:2] != ["moec", "train"] or words[-2:] != ["--dump", "DIR"]:
        print(f"check_train: error: unexpected command in {golden_path}: {command_text}", file=sys.stderr)
        return False
    command = [moec] + words[1:-1] + [str(dump.resolve())]
    try:
        result = subprocess.run(command, cwd=golden_path.resolve().parent)
    except OSError as e:
        print(f"check_train: error: --run {moec}: cannot run it: {e.strerror}", file=sys.stderr)
        return False
    if result.returncode != 0:
        print(f"check_train: error: {' '.join(command)} exited with {result.returncode}", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.check_train", description=__doc__.splitlines()[0])
    parser.add_argument("golden", type=Path,
                        help="a .npz from python -m moec.train_reference --write, or a reference dump directory")
    parser.add_argument("dump", type=Path, nargs="?", help="the directory moec train --dump wrote")
    parser.add_argument("--loss-rtol", type=non_negative_float, default=1e-5, help="relative tolerance of the losses (default 1e-5)")
    parser.add_argument("--rtol-l2", type=non_negative_float, default=1e-4,
                        help="relative L2 tolerance of gradients and final parameters (default 1e-4)")
    parser.add_argument("--self-check", action="store_true", help="check the golden against itself (no dump needed)")
    parser.add_argument("--run", metavar="MOEC",
                        help="first run the golden's own `moec train` command with this moec binary, from the "
                             "golden's directory, dumping into DUMP_DIR")
    args = parser.parse_args(argv)
    tolerances = Tolerances(args.loss_rtol, args.rtol_l2)
    if not args.golden.exists():
        print(f"check_train: error: no such golden '{args.golden}'", file=sys.stderr)
        return 1
    if args.golden.is_dir() and args.run:
        print(f"check_train: error: --run needs a golden .npz (it runs the command the golden records), not the "
              f"dump directory '{args.golden}'", file=sys.stderr)
        return 1
    try:
        golden = load_dump(args.golden) if args.golden.is_dir() else load_golden(args.golden)
    except ValueError as e:
        print(f"check_train: error: {e}", file=sys.stderr)
        return 1
    if args.self_check:
        return 0 if self_check(golden, tolerances) else 1
    if args.dump is None:
        parser.error("DUMP_DIR is required (or --self-check)")
    if args.run and not run_moec(args.run, golden, args.golden, args.dump):
        return 1
    if not args.dump.is_dir():
        print(f"check_train: error: no such dump directory '{args.dump}'", file=sys.stderr)
        return 1
    return 0 if Checker(golden, args.dump, tolerances).run() else 1


if __name__ == "__main__":
    sys.exit(main())
