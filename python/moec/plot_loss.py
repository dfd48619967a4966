"""Plot a training run's loss curve from its per-step metrics CSV.

Usage (from the repository root)::

    PYTHONPATH=python python -m moec.plot_loss LOG.csv -o curve.png [--title TITLE]
    moec train ... | PYTHONPATH=python python -m moec.plot_loss - -o curve.png

Needs ``pip install matplotlib`` (drawn with the Agg backend; no display).

The CSV (as the trainer writes it) has a header line naming its columns,
``step`` and ``loss`` first, others optional (``step,loss,aux_loss,grad_norm,lr``
...); lines before the header that do not start with ``step,`` and lines
starting with ``#`` are skipped. The plot shows the training loss per step
(thin), its exponential moving average (``--smoothing``, debiased as
TensorBoard's; 0 turns it off) and, where a row has a ``valid_loss`` value,
that value as a point. An empty field or ``nan`` is a missing value.
``--uniform V`` draws the loss of a uniform guess over V tokens (ln V) for
reference. The PNG is written to a temporary file and renamed. Prints the
number of steps and the first, last and smallest smoothed losses.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from moec import InputError, checked_argument, positive_int, read_text
from moec.atomic import check_output, write_atomically

DEFAULT_SMOOTHING = 0.9


class CsvError(Exception):
    """A malformed metrics file, reported as one line with its line number."""


@dataclass
class Metrics:
    steps: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    valid_steps: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)


def _number(text: str, column: str, line: int) -> float:
    text = text.strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise CsvError(f"line {line}: {column} {text!r} is not a number") from None


def read_metrics(text: str) -> Metrics:
    """Parses the CSV text; needs the columns ``step`` and ``loss``, reads ``valid_loss`` if there."""
    lines = text.splitlines()
    header_index = next(
        (i for i, line in enumerate(lines) if line.replace(" ", "").startswith("step,")), None
    )
    if header_index is None:
        raise CsvError("no header line starting with 'step,' (expected step,loss[,valid_loss,...])")
    header = [name.strip() for name in next(csv.reader([lines[header_index]]))]
    if "loss" not in header:
        raise CsvError(f"line {header_index + 1}: header {','.join(header)} has no 'loss' column")
    step_col, loss_col = header.index("step"), header.index("loss")
    valid_col = header.index("valid_loss") if "valid_loss" in header else None

    metrics = Metrics()
    for index in range(header_index + 1, len(lines)):
        line = lines[index]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        row = next(csv.reader([line]))
        if len(row) != len(header):
            raise CsvError(f"line {index + 1}: {len(row)} fields, the header has {len(header)}")
        step = _number(row[step_col], "step", index + 1)
        if math.isnan(step):
            raise CsvError(f"line {index + 1}: no step")
        metrics.steps.append(step)
        metrics.loss.append(_number(row[loss_col], "loss", index + 1))
        if valid_col is not None:
            valid = _number(row[valid_col], "valid_loss", index + 1)
            if not math.isnan(valid):
                metrics.valid_steps.append(step)
                metrics.valid_loss.append(valid)
    if not metrics.steps:
        raise CsvError("no data rows after the header")
    return metrics


def smooth(values: list[float], weight: float) -> list[float]:
    """Debiased exponential moving average (TensorBoard's); non-finite values are skipped."""
    out, average, norm = [], 0.0, 0.0
    for value in values:
        if math.isfinite(value):
            average = weight * average + (1.0 - weight) * value
            norm = weight * norm + (1.0 - weight)
        out.append(average / norm if norm else math.nan)
    return out


def plot(metrics: Metrics, title: str, smoothing: float, uniform: int | None) -> bytes:
    """The PNG bytes of the loss plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    raw_style = {"alpha": 0.35, "linewidth": 0.8} if smoothing > 0 else {"linewidth": 1.2}
    ax.plot(metrics.steps, metrics.loss, color="tab:blue", label="train loss", **raw_style)
    if smoothing > 0:
        ax.plot(metrics.steps, smooth(metrics.loss, smoothing), color="tab:blue", linewidth=1.8,
                label=f"train loss (EMA {smoothing:g})")
    if metrics.valid_loss:
        ax.plot(metrics.valid_steps, metrics.valid_loss, "o", color="tab:orange", markersize=4,
                label="valid loss")
    if uniform:
        ax.axhline(math.log(uniform), color="gray", linestyle="--", linewidth=1,
                   label=f"uniform guess, ln {uniform} = {math.log(uniform):.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _smoothing(text: str) -> float:
    return checked_argument(float, "a number in [0, 1)", lambda v: 0.0 <= v < 1.0, text)


def read_csv_text(name: str) -> str:
    """The text of the CSV file ``name``, '-' for standard input; raises InputError naming it."""
    if name != "-":
        return read_text(name)
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"standard input: not UTF-8 text (byte {e.start}: {e.reason})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.plot_loss", description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="metrics CSV, '-' for standard input")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", help="plot title (default: the CSV's file name)")
    parser.add_argument("--smoothing", type=_smoothing, default=DEFAULT_SMOOTHING,
                        help=f"EMA weight of the smoothed line, 0 for none (default {DEFAULT_SMOOTHING})")
    parser.add_argument("--uniform", type=positive_int, metavar="V",
                        help="draw ln V, the loss of a uniform guess over V tokens")
    args = parser.parse_args(argv)

    try:
        check_output(args.output)
        text = read_csv_text(args.csv)
    except ValueError as error:  # check_output's, or read_csv_text's InputError
        print(f"moec.plot_loss: error: {error}", file=sys.stderr)
        return 1
    try:
        metrics = read_metrics(text)
    except CsvError as error:
        print(f"moec.plot_loss: error: {args.csv}: {error}", file=sys.stderr)
        return 1
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("moec.plot_loss: error: python module matplotlib not found: pip install matplotlib", file=sys.stderr)
        return 1

    title = args.title or ("loss" if args.csv == "-" else Path(args.csv).name)
    write_atomically(args.output, plot(metrics, title, args.smoothing, args.uniform))

    smoothed = [v for v in smooth(metrics.loss, args.smoothing or 0.0) if math.isfinite(v)]
    summary = f"{len(metrics.steps)} steps, loss {metrics.loss[0]:.4f} -> {metrics.loss[-1]:.4f}"
    if args.smoothing and smoothed:
        summary += f", smoothed min {min(smoothed):.4f}"
    if metrics.valid_loss:
        summary += f", valid loss {metrics.valid_loss[-1]:.4f} at step {metrics.valid_steps[-1]:g}"
    print(f"{summary} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
