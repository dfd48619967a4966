"""The expert dispatch's all-to-all against NCCL's own, in bus bandwidth (issue 18's part (c)).

    python -m moec.dispatch_speed --profile PROFILE --per-call-bytes
    python -m moec.dispatch_speed --profile PROFILE --nccl NCCL.json --ranks N [--target 0.8]

PROFILE: what a partitioned program printed for its profiled step
(``train_step --profile-step K``; a launcher's ``[rank 0] `` prefix
allowed): the ``collective: expert all_to_all`` lines (calls, bytes, time;
moert/CollectiveTimes.h) and the op profile's ``moe.dispatch`` and
``moe.combine`` rows. NCCL.json: ``moert-alltoall-bench --json`` of the
same GPUs (a list of ``method``, ``ranks``, ``bytes``, ``time_us``,
``busbw_gb_per_s``).

``--per-call-bytes`` prints the bytes of one all-to-all call (the step's
bytes over its calls), the size to ask ``moert-alltoall-bench`` for.
Otherwise the program's bus bandwidth is compared with NCCL's best method
at that size (the bench rounds a size down to a multiple of the ranks):
bus bandwidth as nccl-tests defines it for all-to-all, algbw · (n − 1) / n
with algbw = bytes / time; once for the all-to-all calls' own time and once
for the ``moe.dispatch`` and ``moe.combine`` ops' (the calls plus the
packing around them). Exits 4 when the calls reach less than ``--target``
of NCCL's on two or more ranks; on one rank no bus bandwidth exists (the
factor (n − 1) / n is 0) and the ratio is not judged. Exits 2, naming the
file, when the profile has no all-to-all of the expert group or NCCL.json
no result of that size or results of another number of ranks, and naming
the entry and key, when an NCCL.json entry is not of that form (integer
ranks and bytes above 0, a finite time, a finite bus bandwidth above 0 on
two or more ranks).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from moec import InputError, json_number, non_negative_float

ALL_TO_ALL = re.compile(r"collective: expert +all_to_all +(\d+) calls +(\d+) bytes +([0-9.]+) ms")
OP = re.compile(r"profile: (moe\.dispatch|moe\.combine) +\d+ +([0-9.]+)")


class Refused(Exception):
    pass


@dataclass
class Profile:
    calls: int
    bytes: int
    ms: float  # the all-to-all calls' time
    op_ms: float  # moe.dispatch + moe.combine

    @property
    def per_call(self) -> int:
        return self.bytes // self.calls


def read_profile(path: Path) -> Profile:
    calls = total = 0
    ms = op_ms = 0.0
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise Refused(f"{path}: not a program's output (not UTF-8 text: {e.reason} at byte {e.start})") from None
    for line in text.splitlines():
        if m := ALL_TO_ALL.search(line):
            calls += int(m.group(1))
            total += int(m.group(2))
            ms += float(m.group(3))
        elif m := OP.search(line):
            op_ms += float(m.group(2))
    if calls == 0:
        raise Refused(f"{path}: no 'collective: expert all_to_all' line (was a step profiled?)")
    return Profile(calls, total, ms, op_ms)


def read_nccl(path: Path) -> list[dict]:
    """moert-alltoall-bench --json's results, each entry checked (its place named: file, entry, key)."""
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Refused(f"{path}: not moert-alltoall-bench --json output: {e}") from None
    if not isinstance(entries, list):
        raise Refused(f"{path}: expected a list of results, found a JSON {type(entries).__name__}")
    for number, entry in enumerate(entries, 1):
        where = f"{path}: entry {number}"
        if not isinstance(entry, dict):
            raise Refused(f"{where}: expected an object, found {json.dumps(entry)}")
        if missing := [k for k in ("method", "ranks", "bytes", "time_us", "busbw_gb_per_s") if k not in entry]:
            raise Refused(f"{where}: no {', '.join(missing)}")
        if not isinstance(entry["method"], str):
            raise Refused(f"{where}: method: {json.dumps(entry['method'])} is not a string")
        json_number(entry["ranks"], f"{where}: ranks", integer=True, positive=True)
        json_number(entry["bytes"], f"{where}: bytes", integer=True, positive=True)
        json_number(entry["time_us"], f"{where}: time_us")
        # One rank moves nothing between ranks: its bus bandwidth is 0.
        json_number(entry["busbw_gb_per_s"], f"{where}: busbw_gb_per_s", positive=entry["ranks"] > 1)
    return entries


def bus_bandwidth(total_bytes: float, ms: float, ranks: int) -> float:
    """GB/s as nccl-tests' all-to-all: algbw · (n − 1) / n; 0 without time."""
    return total_bytes / (ms / 1e3) / 1e9 * (ranks - 1) / ranks if ms > 0 else 0.0


def compare(profile: Profile, nccl: list[dict], ranks: int, target: float, nccl_path: Path) -> tuple[list[str], bool]:
    """The report's lines and whether the target is met (always on one rank)."""
    size = profile.per_call // ranks * ranks
    if other := sorted({r["ranks"] for r in nccl} - {ranks}):
        raise Refused(f"{nccl_path}: results of {', '.join(map(str, other))} rank(s), not of {ranks}")
    same = [r for r in nccl if r["bytes"] == size]
    if not same:
        sizes = ", ".join(str(r["bytes"]) for r in nccl) or "none"
        raise Refused(f"{nccl_path}: no result for {size} bytes (it has {sizes})")
    best = max(same, key=lambda r: r["busbw_gb_per_s"])
    program = bus_bandwidth(profile.bytes, profile.ms, ranks)
    ops = bus_bandwidth(profile.bytes, profile.op_ms, ranks)
    lines = [f"program: {profile.calls} all_to_all calls of the expert group, {profile.bytes} bytes "
             f"({profile.per_call} per call), {profile.ms:.3f} ms: busbw {program:.1f} GB/s; "
             f"moe.dispatch + moe.combine (profile) {profile.op_ms:.3f} ms: {ops:.1f} GB/s over the same bytes",
             f"NCCL ({best['method']}) all-to-all of {best['bytes']} bytes: {best['time_us']:.1f} us, "
             f"busbw {best['busbw_gb_per_s']:.1f} GB/s"]
    if ranks < 2:
        lines.append(f"ratio: none on {ranks} rank(s) (no bus bandwidth; target {target:.0%} on two or more)")
        return lines, True
    ratio = program / best["busbw_gb_per_s"]
    lines.append(f"ratio: the all_to_all calls {ratio:.1%}, the dispatch and combine ops "
                 f"{ops / best['busbw_gb_per_s']:.1%} of NCCL (target {target:.0%})")
    return lines, ratio >= target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.dispatch_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, required=True, help="a profiled step's output")
    parser.add_argument("--per-call-bytes", action="store_true", help="print one call's bytes and stop")
    parser.add_argument("--nccl", type=Path, help="moert-alltoall-bench --json of the same GPUs")
    parser.add_argument("--ranks", type=int, help="the ranks of the expert group")
    parser.add_argument("--target", type=non_negative_float, default=0.8, help="the share of NCCL's bus bandwidth to reach")
    args = parser.parse_args(argv)
    try:
        profile = read_profile(args.profile)
        if args.per_call_bytes:
            print(profile.per_call)
            return 0
        if args.nccl is None or args.ranks is None or args.ranks < 1:
            parser.error("--nccl FILE and --ranks N (at least 1) are needed unless --per-call-bytes")
        lines, met = compare(profile, read_nccl(args.nccl), args.ranks, args.target, args.nccl)
    except (Refused, InputError, OSError) as e:
        print(f"dispatch_speed: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0 if met else 4


if __name__ == "__main__":
    sys.exit(main())
