"""Runs moec.gpu_power's PowerSampler against stand-ins for nvidia-smi.

    python gpu_power_check.py DIR

Writes an executable DIR/<case>/nvidia-smi per case, puts that folder first
on PATH, samples for as long as the stand-in runs and prints the summary
and the arguments the sampler passed. Cases: `samples` prints three busy
samples at the power cap (690 W of 700, 1560 MHz, reasons 0x4), one busy
one not (650 W, 1700 MHz, 0x0), two idle ones (80 W) and two it cannot
read ([N/A], a short line), then waits to be stopped; `fails` exits 9 at
once; `none` has no nvidia-smi at all.
"""

import os
import stat
import sys
import time
from pathlib import Path

from moec.gpu_power import PowerSampler

LINES = ["690.5, 700.00, 1560, 0x0000000000000004",
         "80.1, 700.00, 345, 0x0000000000000001",
         "691.0, 700.00, 1545, 0x0000000000000004",
         "[N/A], 700.00, 1560, 0x0000000000000004",
         "650.0, 700.00, 1700, 0x0000000000000000",
         "689.9, 700.00, 1575, 0x0000000000000004",
         "79.8, 700.00, 345, 0x0000000000000001",
         "650.0, 700.00"]


def stand_in(folder: Path, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def run(case: str, folder: Path) -> None:
    os.environ["PATH"] = f"{folder}{os.pathsep}/usr/bin{os.pathsep}/bin"
    with PowerSampler("GPU-1234") as sampler:
        time.sleep(1.0)
    print(f"{case}: {sampler.summary()}")


def main(out: Path) -> None:
    lines = "\n".join(LINES)
    stand_in(out / "samples", f'echo "$@" > "{out}/args.txt"\ncat <<END\n{lines}\nEND\nexec sleep 30\n')
    stand_in(out / "fails", "exit 9\n")
    (out / "none").mkdir(parents=True, exist_ok=True)
    for case in ("samples", "fails", "none"):
        run(case, out / case)
    print("args:", (out / "args.txt").read_text().strip())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
