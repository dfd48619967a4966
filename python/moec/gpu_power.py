"""The GPU's power and SM clock while a benchmark contender runs.

On an H200 the training step runs at the board's power limit (700 W), the SM
clock well below its maximum (docs/benchmarks.md, "The step at the power
cap"): a kernel that is faster at full clock need not make the step faster,
and two contenders at the same power differ in energy per step as they do in
time. :class:`PowerSampler` runs ``nvidia-smi`` beside a contender, one
sample every 100 ms; :func:`summarise` keeps the busy samples (drawing at
least half the power limit, so that compiling, loading and freeing are left
out) and gives their median power and SM clock and the share of them with
the software power cap among the clock event reasons (bit 0x4 of
``clocks_event_reasons.active``).

Without ``nvidia-smi`` (or when it fails) nothing is sampled and the summary
is ``None``: the benchmark reports time without power.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
from dataclasses import dataclass

#: nvidia-smi's fields, in the order :func:`parse_line` reads them.
QUERY = "power.draw,power.limit,clocks.sm,clocks_event_reasons.active"
#: Bit 0x4 of clocks_event_reasons.active: the software power cap.
SW_POWER_CAP = 0x4


@dataclass
class PowerSummary:
    samples: int  #: busy samples (at least half the power limit)
    power_w: float  #: their median power draw
    power_limit_w: float
    sm_clock_mhz: float  #: their median SM clock
    capped_share: float  #: the share of them at the software power cap


def parse_line(line: str) -> tuple[float, float, float, int] | None:
    """One ``--format=csv,noheader,nounits`` line: power, limit, SM clock, reasons; None if unreadable."""
    fields = [f.strip() for f in line.split(",")]
    if len(fields) != 4:
        return None
    try:
        return float(fields[0]), float(fields[1]), float(fields[2]), int(fields[3], 16)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def summarise(samples: list[tuple[float, float, float, int]]) -> PowerSummary | None:
    """The busy samples' medians (see the module docstring); None when none was busy."""
    busy = [s for s in samples if s[1] > 0 and s[0] >= 0.5 * s[1]]
    if not busy:
        return None
    return PowerSummary(len(busy), statistics.median(s[0] for s in busy), busy[0][1],
                        statistics.median(s[2] for s in busy),
                        sum(1 for s in busy if s[3] & SW_POWER_CAP) / len(busy))


class PowerSampler:
    """``with PowerSampler(gpu) as sampler: ...`` samples GPU ``gpu`` (an nvidia-smi ``-i`` id: index or
    UUID; None: the only GPU) until the block ends; ``sampler.summary()`` then summarises."""

    def __init__(self, gpu: str | None = None, interval_ms: int = 100):
        self.command = None
        smi = shutil.which("nvidia-smi")
        if smi:
            self.command = [smi, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                            "-lms", str(interval_ms)]
            if gpu is not None:
                self.command += ["-i", gpu]
        self.samples: list[tuple[float, float, float, int]] = []
        self._process = None
        self._reader = None

    def __enter__(self) -> PowerSampler:
        if self.command:
            try:
                self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                                 stderr=subprocess.DEVNULL, text=True)
            except OSError:
                self._process = None
            else:
                self._reader = threading.Thread(target=self._read, daemon=True)
                self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            sample = parse_line(line)
            if sample is not None:
                self.samples.append(sample)

    def __exit__(self, *exc) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=5)

    def summary(self) -> PowerSummary | None:
        return summarise(self.samples)
